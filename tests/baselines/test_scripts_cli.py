"""The scripts as users run them: end-to-end subprocess runs, presets, and errors on bad input."""

from __future__ import annotations

import glob
import os
import subprocess
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = {
    "ppo_trxl.py": ["--trxl-dim", "32", "--trxl-num-heads", "2", "--trxl-num-layers", "1", "--trxl-memory-length", "8"],
    "ppo_gru.py": ["--rnn-hidden-size", "32", "--embed-dim", "32", "--hidden-dim", "32"],
}
SCRIPTS = pytest.mark.parametrize("script", list(TINY))


def run(script: str, *flags: str, cwd: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, os.path.join(ROOT, script), *flags],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
    )


@SCRIPTS
def test_image_run_with_reconstruction_config_and_saved_model(script, tmp_path):
    config = tmp_path / "preset.toml"
    config.write_text('# a tiny preset\nenv_id = "ProofOfMemoryImage-v0"\nnum_envs = 2\nnum_steps = 16\n'
                      "num_minibatches = 2\nreconstruction_coef = 0.1\ntotal_timesteps = 64\n")
    # A flag given on the command line overrides the preset.
    result = run(script, "--config", str(config), "--num-steps", "8", "--save-model", "--no-cuda", *TINY[script], cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "iter 4/4" in result.stdout  # 64 steps / (2 envs x 8 steps)
    (run_dir,) = glob.glob(str(tmp_path / "runs" / "ProofOfMemoryImage-v0__*"))
    assert glob.glob(os.path.join(run_dir, "events.out.tfevents.*"))
    saved = torch.load(glob.glob(os.path.join(run_dir, "*.cleanrl_model"))[0], weights_only=True)
    assert saved["args"]["num_steps"] == 8 and saved["args"]["reconstruction_coef"] == 0.1
    assert any(key.startswith("decoder.") for key in saved["model_weights"])


@SCRIPTS
@pytest.mark.parametrize(
    "flags, preset, message",
    [
        (["--env-id", "NoSuchEnv-v0"], None, "unknown environment id 'NoSuchEnv-v0'"),
        (["--env-id", "Pendulum-v1"], None, "incompatible action space"),
        ([], 'env_id = "ProofOfMemory-v0"\nnum_envz = 4\n', "unknown key 'num_envz'"),
        ([], 'num_envs = "four"\n', "num_envs must be an integer"),
        ([], "num_envs = [\n", "is not valid TOML"),
        (["--env-id", "ProofOfMemory-v0", "--env-kwargs", '{"min_delay": -1}'], None, "error: ProofOfMemory-v0: reset parameter 'min_delay' must be an integer in [0, "),
    ],
    ids=["unknown-env", "continuous-actions", "unknown-config-key", "config-type", "malformed-config", "bad-env-param"],
)
def test_bad_input_exits_with_a_message_naming_the_problem(script, flags, preset, message, tmp_path):
    if preset is not None:
        config = tmp_path / "bad.toml"
        config.write_text(preset)
        flags = ["--config", str(config), *flags]
    result = run(script, *flags, "--num-envs", "2", "--num-steps", "8", "--total-timesteps", "16", "--no-cuda", cwd=tmp_path)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr


@SCRIPTS
def test_track_mirrors_scalars_to_an_offline_wandb_run(script, tmp_path):
    result = run(
        script, "--env-id", "ProofOfMemory-v0", "--num-envs", "2", "--num-steps", "8", "--num-minibatches", "2",
        "--total-timesteps", "32", "--track", "--no-cuda", *TINY[script],
        cwd=tmp_path, env={"WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path)},
    )
    assert result.returncode == 0, result.stderr
    (record,) = glob.glob(str(tmp_path / "wandb" / "offline-run-*" / "run-*.wandb"))
    data = open(record, "rb").read()
    for scalar in (b"charts/SPS", b"charts/episodic_return", b"losses/policy_loss", b"losses/value_loss"):
        assert scalar in data


def test_starting_a_script_does_not_load_the_compiler():
    """torch's compiler takes a second or more to import; only a run with --compile needs it."""
    code = "import sys, enjoy, ppo_gru, ppo_mamba, ppo_trxl; print('torch._dynamo' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.stdout.strip() == "False", result.stderr
