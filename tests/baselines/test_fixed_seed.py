"""Fixed-seed CPU runs of every script, whose losses, returns and evaluations must not change."""

from __future__ import annotations

import json
import os

import pytest
import torch

import ppo_gru
import ppo_mamba
import ppo_trxl

FIXTURE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "fixed_seed_runs.json")
SCRIPTS = {"ppo_trxl": ppo_trxl, "ppo_gru": ppo_gru, "ppo_mamba": ppo_mamba}
SMALL = {
    "ppo_trxl": ["--trxl-dim", "32", "--trxl-num-heads", "2", "--trxl-num-layers", "2", "--trxl-memory-length", "8"],
    "ppo_gru": ["--rnn-hidden-size", "32", "--embed-dim", "32", "--hidden-dim", "32"],
    "ppo_mamba": ["--embed-dim", "32", "--hidden-dim", "32", "--mamba-head-dim", "16", "--mamba-state-size", "8"],
}
ROLLOUT = ["--num-envs", "4", "--num-steps", "16", "--num-minibatches", "2", "--update-epochs", "2", "--no-cuda",
           "--eval-interval", "2", "--eval-seeds", "2", "--eval-repetitions", "1", "--total-timesteps", str(3 * 4 * 16)]
# Two settings: the image probe with the reconstruction loss, and an endless task with the ground-truth head.
RUNS = {
    "probe-image": ["--env-id", "ProofOfMemoryImage-v0", "--reconstruction-coef", "0.1"],
    "endless-mortar-mayhem": ["--env-id", "Endless-MortarMayhem-v0", "--ground-truth-coef", "0.1",
                              "--eval-env-kwargs", '{"max_steps": 48}'],
}


def fixed_seed_run(script: str, run: str) -> list[dict]:
    """Every logged number of each iteration except timings."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # the same reduction order whatever the machine's core count
    try:
        history = SCRIPTS[script].train(SCRIPTS[script].parse_args([*RUNS[run], *ROLLOUT, *SMALL[script]]))
    finally:
        torch.set_num_threads(threads)
    return [{k: float(v) for k, v in h.items() if "SPS" not in k} for h in history]


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("run", RUNS)
def test_fixed_seed_run_matches_the_recorded_numbers(script, run):
    with open(FIXTURE) as f:
        recorded = json.load(f)[script][run]
    assert fixed_seed_run(script, run) == recorded


if __name__ == "__main__":  # record the fixture: python tests/baselines/test_fixed_seed.py
    import tempfile

    os.chdir(tempfile.mkdtemp())
    numbers = {script: {run: fixed_seed_run(script, run) for run in RUNS} for script in SCRIPTS}
    with open(FIXTURE, "w") as f:
        json.dump(numbers, f, indent=1)
    print(f"wrote {FIXTURE}")
