"""What a rollout step sends to the device and reads back: the observation and the episode ends in, through
`run_utils.Upload` (pinned buffers and non-blocking copies on CUDA); the actions out, once; nothing else
read on the host (no `.item()`, no `bool()` of a tensor, no argument validation), so that on a GPU the step's
one wait is for the actions. The rewards go in once per rollout."""

from __future__ import annotations

import os
import sys

import pytest
import torch

import ppo_gru
import ppo_mamba
import ppo_trxl
import run_utils

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks"))
import precision_ratio  # noqa: E402

SMALL = {
    ppo_trxl: ["--trxl-dim", "16", "--trxl-num-heads", "2", "--trxl-num-layers", "1", "--trxl-memory-length", "4"],
    ppo_gru: ["--rnn-hidden-size", "8", "--embed-dim", "8", "--hidden-dim", "8"],
    ppo_mamba: ["--embed-dim", "16", "--hidden-dim", "16", "--mamba-head-dim", "8", "--mamba-state-size", "8"],
}


@pytest.mark.parametrize("script", [ppo_trxl, ppo_gru, ppo_mamba], ids=["trxl", "gru", "mamba"])
@pytest.mark.parametrize("env_id, observation", [("MortarMayhem-Grid-v0", "image"), ("ProofOfMemory-v0", "vector")])
def test_a_rollout_step_sends_the_observation_once_and_reads_the_actions_once(script, env_id, observation):
    steps = 16
    args = script.parse_args(["--env-id", env_id, "--num-envs", "2", "--num-steps", str(steps), "--no-cuda",
                              "--total-timesteps", "32", *SMALL[script]])
    crossings = precision_ratio.rollout_crossings(script, args)
    assert crossings["reads"] == {"cpu": steps}
    # The observation once a step and once more for the bootstrap value; the rewards once a rollout.
    assert crossings["uploads"] == {observation: steps + 1, "done": steps, "rewards": 1}


def test_upload_on_the_cpu_shares_the_array_and_converts_once():
    upload = run_utils.Upload(torch.device("cpu"))
    array = torch.arange(4.0).numpy()
    shared = upload("x", array)
    array[0] = 7.0
    assert shared[0] == 7.0, "no copy on the CPU"
    assert upload("y", [True, False], torch.float32).tolist() == [1.0, 0.0]
