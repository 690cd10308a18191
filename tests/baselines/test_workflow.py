"""The researcher's workflow: held-out evaluation, exact resume, interruption, divergence, videos."""

from __future__ import annotations

import glob
import os
import signal
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import ppo_gru
import ppo_mamba
import ppo_trxl
import run_utils

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = {
    ppo_trxl: dict(trxl_dim=32, trxl_num_heads=2, trxl_num_layers=2, trxl_memory_length=8),
    ppo_gru: dict(rnn_hidden_size=32, embed_dim=32, hidden_dim=32),
    ppo_mamba: dict(embed_dim=32, hidden_dim=32, mamba_head_dim=16, mamba_state_size=8, mamba_chunk_size=5),
}
SCRIPTS = pytest.mark.parametrize("script", [ppo_trxl, ppo_gru, ppo_mamba], ids=["trxl", "gru", "mamba"])
# What run_utils.Run does around every script's loop (signals, evaluation's separate envs and random stream):
# two scripts cover it, the suite's time is kept for what each script does itself.
LIFE_CYCLE_SCRIPTS = pytest.mark.parametrize("script", [ppo_trxl, ppo_gru], ids=["trxl", "gru"])
ROLLOUT = dict(num_envs=4, num_steps=16, num_minibatches=2, update_epochs=2, cuda=False)


def args_for(script, **overrides):
    return script.Args(**{"env_id": "ProofOfMemoryImage-v0", "reconstruction_coef": 0.1, **ROLLOUT, **SMALL[script], **overrides})


def trajectory(history: list[dict]) -> list[dict]:
    """What must not change: losses and training episodes (speeds and evaluation excluded)."""
    return [{k: v for k, v in h.items() if k.startswith(("losses/", "episode/", "charts/episodic"))} for h in history]


@LIFE_CYCLE_SCRIPTS
def test_evaluation_leaves_the_training_trajectory_untouched(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    plain = script.train(args_for(script, total_timesteps=4 * 64, exp_name="plain"))
    evaluated = script.train(
        args_for(script, total_timesteps=4 * 64, exp_name="eval", eval_interval=2, eval_seeds=3, eval_repetitions=2)
    )
    assert trajectory(plain) == trajectory(evaluated)
    assert [("eval/return_mean" in h) for h in evaluated] == [False, True, False, True]
    assert 0.0 <= evaluated[-1]["eval/success_mean"] <= 1.0 and "eval/length_se" in evaluated[-1]


@SCRIPTS
def test_evaluation_plays_every_held_out_seed_once_per_repetition(script):
    args = args_for(script, eval_seeds=3, eval_repetitions=2, eval_seed_start=500)
    seen = []

    class RecordingEnvs(gym.vector.VectorWrapper):
        def reset(self, *, seed=None, options=None):
            seen.append(list(seed))
            return self.env.reset(seed=seed, options=options)

    envs = RecordingEnvs(run_utils.make_envs(args, 3))
    image, vector = run_utils.observation_layout(envs.single_observation_space)
    agent = script.Agent(args, image, vector, [2])
    episodes = run_utils.evaluate_policy(args, agent, envs, torch.device("cpu"), script.new_rollout, script.collect_rollout)
    assert seen == [[500, 501, 502]] * 2
    assert len(episodes) == 6
    # Each seed's level is the same in both repetitions (only the sampled actions differ).
    reference = gym.make("ProofOfMemoryImage-v0")
    lengths = [reference.unwrapped.game.delay[0] + 2 for s in (500, 501, 502) if reference.reset(seed=s)]
    assert sorted(e["length"] for e in episodes) == sorted(lengths * 2)


def test_held_out_seeds_must_not_overlap_training_seeds():
    with pytest.raises(SystemExit, match="overlap the training seeds"):
        ppo_trxl.check_args(args_for(ppo_trxl, total_timesteps=64, eval_interval=1, eval_seed_start=3))


@SCRIPTS
def test_resumed_run_equals_uninterrupted_run(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    budget = 4 * 16 * 4  # four iterations
    full = script.train(args_for(script, total_timesteps=budget, exp_name="full"))
    first_half = script.train(args_for(script, total_timesteps=budget // 2, exp_name="half", checkpoint_interval=2))
    (checkpoint,) = glob.glob("runs/*__half__*/checkpoint.pt")
    resumed_args = script.parse_args(["--resume", checkpoint, "--total-timesteps", str(budget)])
    second_half = script.train(resumed_args)
    assert trajectory(first_half + second_half) == trajectory(full)
    assert [h["global_step"] for h in second_half] == [192, 256]
    # The resumed run appends to the same TensorBoard run.
    assert len(glob.glob("runs/*__half__*/events.out.tfevents.*")) == 2


@LIFE_CYCLE_SCRIPTS
def test_sigterm_writes_a_checkpoint_that_resumes(script, tmp_path):
    name = script.__name__
    command = [sys.executable, os.path.join(ROOT, f"{name}.py"), "--env-id", "ProofOfMemory-v0", "--num-envs", "2",
               "--num-steps", "16", "--num-minibatches", "2", "--total-timesteps", "10000000", "--no-cuda"]
    command += [f"--{k.replace('_', '-')}={v}" for k, v in SMALL[script].items()]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in process.stdout:
        if line.startswith("iter 2/"):
            break
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM, err
    assert "checkpoint written" in out
    (checkpoint,) = glob.glob(str(tmp_path / "runs" / "*" / "checkpoint.pt"))
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["iteration"] >= 2
    resumed = subprocess.run([sys.executable, os.path.join(ROOT, f"{name}.py"), "--resume", checkpoint,
                              "--total-timesteps", str(32 * (saved["iteration"] + 1))],
                             cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert resumed.returncode == 0, resumed.stderr
    assert f"iter {saved['iteration'] + 1}/{saved['iteration'] + 1}" in resumed.stdout


@SCRIPTS
def test_damaged_checkpoints_are_refused_clearly(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    script.train(args_for(script, total_timesteps=64, checkpoint_interval=1))
    (checkpoint,) = glob.glob("runs/*/checkpoint.pt")
    data = open(checkpoint, "rb").read()
    open("truncated.pt", "wb").write(data[: len(data) // 2])
    with pytest.raises(SystemExit, match="is truncated, damaged or not a checkpoint"):
        script.parse_args(["--resume", "truncated.pt"])
    torch.save({"weights": torch.zeros(2)}, "other.pt")
    with pytest.raises(SystemExit, match="is not a checkpoint of ppo_trxl, ppo_gru or ppo_mamba"):
        script.parse_args(["--resume", "other.pt"])
    with pytest.raises(SystemExit, match="num_envs differs"):
        script.train(script.parse_args(["--resume", checkpoint, "--num-envs", "8"]))


class NaNAfterEnv(gym.Env):
    """A vector-observation env whose rewards turn NaN after a number of steps (to force divergence)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)
    steps = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action):
        NaNAfterEnv.steps += 1
        reward = float("nan") if NaNAfterEnv.steps > 4 * 16 * 2 else 0.0
        return self.observation_space.sample(), reward, False, False, {}


@SCRIPTS
def test_divergence_stops_clearly_and_keeps_the_last_good_checkpoint(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "NaNAfter-v0" not in gym.registry:
        gym.register("NaNAfter-v0", entry_point=NaNAfterEnv)
    NaNAfterEnv.steps = 0
    args = args_for(script, env_id="NaNAfter-v0", reconstruction_coef=0.0, total_timesteps=64 * 6, checkpoint_interval=1)
    with pytest.raises(SystemExit, match=r"training diverged at step .*resume from the last good checkpoint with --resume runs/"):
        script.train(args)
    (checkpoint,) = glob.glob("runs/*/checkpoint.pt")
    saved = torch.load(checkpoint, weights_only=True)
    assert saved["iteration"] == 2
    assert all(torch.isfinite(p).all() for p in saved["model"].values())


@SCRIPTS
def test_captured_video_decodes_to_the_episode_length(script, tmp_path, monkeypatch):
    import imageio_ffmpeg

    monkeypatch.chdir(tmp_path)
    args = args_for(script, total_timesteps=64, capture_video=True)
    script.train(args)
    reference = gym.make("ProofOfMemoryImage-v0")
    reference.reset(seed=args.seed)
    length = int(reference.unwrapped.game.delay[0]) + 2  # cue, blank steps, query
    video = glob.glob("videos/*/episode-1.mp4")[0]
    reader = imageio_ffmpeg.read_frames(video)
    meta = reader.__next__()
    frames = list(reader)
    assert len(frames) == length
    assert tuple(meta["size"]) == (672, 336)  # agent view (x4) beside the 336x336 ground truth
