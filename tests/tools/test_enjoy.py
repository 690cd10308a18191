"""Watching a saved agent: metrics per episode and a video per episode that decodes."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest

import ppo_gru
import ppo_mamba
import ppo_trxl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = {
    ppo_trxl: dict(trxl_dim=32, trxl_num_heads=2, trxl_num_layers=1, trxl_memory_length=8),
    ppo_gru: dict(rnn_hidden_size=32, embed_dim=32, hidden_dim=32),
    ppo_mamba: dict(embed_dim=32, hidden_dim=32, mamba_head_dim=16, mamba_state_size=8),
}


# Both kinds of file for two scripts (the loading is run_utils'); ppo_mamba from its checkpoint.
@pytest.mark.parametrize("script, saved", [(script, saved) for script in (ppo_trxl, ppo_gru) for saved in ("model", "checkpoint")]
                         + [(ppo_mamba, "checkpoint")], ids=["trxl-model", "trxl-checkpoint", "gru-model", "gru-checkpoint",
                                                             "mamba-checkpoint"])
def test_enjoy_plays_episodes_and_writes_decodable_videos(script, saved, tmp_path, monkeypatch):
    import imageio_ffmpeg

    monkeypatch.chdir(tmp_path)
    script.train(script.Args(env_id="ProofOfMemoryImage-v0", num_envs=2, num_steps=16, num_minibatches=2,
                             total_timesteps=32, save_model=True, checkpoint_interval=1, cuda=False, **SMALL[script]))
    pattern = "runs/*/*.cleanrl_model" if saved == "model" else "runs/*/checkpoint.pt"
    (path,) = glob.glob(pattern)
    result = subprocess.run([sys.executable, os.path.join(ROOT, "enjoy.py"), path, "--episodes", "2",
                             "--video-folder", "watch"], capture_output=True, text=True, cwd=tmp_path,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    lines = [l for l in result.stdout.splitlines() if l.startswith("episode ")]
    assert len(lines) == 2
    assert sorted(os.listdir("watch")) == ["episode-1.mp4", "episode-2.mp4"]  # numbered like the printed episodes
    for number, line in enumerate(lines, start=1):
        length = int(line.split(" length ")[1].split()[0])
        reader = imageio_ffmpeg.read_frames(os.path.join("watch", f"episode-{number}.mp4"))
        reader.__next__()
        assert sum(1 for _ in reader) == length


def test_enjoy_refuses_a_file_that_is_not_a_model(tmp_path):
    bogus = tmp_path / "bogus.pt"
    bogus.write_bytes(b"not a model")
    result = subprocess.run([sys.executable, os.path.join(ROOT, "enjoy.py"), str(bogus)], capture_output=True,
                            text=True, timeout=60)
    assert result.returncode != 0 and "is not a checkpoint or saved model" in result.stderr
    assert "weights_only" not in result.stderr and "Traceback" not in result.stderr
