"""Data-parallel training with torchrun (CPU, gloo)."""

from __future__ import annotations

import glob
import os
import socket
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import ppo_gru
import ppo_trxl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = {
    "ppo_trxl": ["--trxl-dim", "32", "--trxl-num-heads", "2", "--trxl-num-layers", "1", "--trxl-memory-length", "8"],
    "ppo_gru": ["--rnn-hidden-size", "32", "--embed-dim", "32", "--hidden-dim", "32"],
    "ppo_mamba": ["--embed-dim", "32", "--hidden-dim", "32", "--mamba-head-dim", "16", "--mamba-state-size", "8"],
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("script", ["ppo_trxl", "ppo_gru", "ppo_mamba"])
def test_two_rank_run_keeps_parameters_identical_and_checkpoints(script, tmp_path):
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}", os.path.join(ROOT, f"{script}.py"),
        "--env-id", "ProofOfMemory-v0", "--num-envs", "2", "--num-steps", "16", "--num-minibatches", "2",
        "--total-timesteps", str(3 * 2 * 16 * 2), "--checkpoint-interval", "3", "--save-model", "--no-cuda", *TINY[script],
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "parameters identical on all 2 ranks" in result.stdout
    assert result.stdout.count("iter 3/3") == 1  # only rank 0 prints
    assert "step 192 " in result.stdout  # steps of both ranks are counted
    (run_dir,) = glob.glob(str(tmp_path / "runs" / f"ProofOfMemory-v0__{script}-2ranks__1__*"))
    checkpoint = torch.load(os.path.join(run_dir, "checkpoint.pt"), weights_only=True)
    assert checkpoint["args"]["world_size"] == 2 and len(checkpoint["ranks"]) == 2
    # The ranks stepped differently seeded envs.
    first, second = (r["next_obs"][1] for r in checkpoint["ranks"])
    assert checkpoint["ranks"][0]["envs"] != checkpoint["ranks"][1]["envs"] or not torch.equal(first, second)

    # Resuming with another number of ranks is refused.
    single = subprocess.run([sys.executable, os.path.join(ROOT, f"{script}.py"), "--resume",
                             os.path.join(run_dir, "checkpoint.pt"), "--total-timesteps", "1000"],
                            cwd=tmp_path, capture_output=True, text=True, env=env, timeout=120)
    assert single.returncode != 0 and "written by 2 ranks" in single.stderr


def _average_on_rank(rank: int, port: int, script: str, same_data: bool, queue) -> None:
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    data = torch.arange(6.0).reshape(2, 3) * (1 if same_data else rank + 1)
    model(data).pow(2).sum().backward()
    {"ppo_trxl": ppo_trxl, "ppo_gru": ppo_gru}[script].average_gradients(list(model.parameters()), 2)
    # Plain lists: a tensor would travel as a shared-memory handle that dies with this process.
    queue.put((rank, [p.grad.tolist() for p in model.parameters()]))
    dist.destroy_process_group()


def local_gradients(scale: float) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 2)
    model(torch.arange(6.0).reshape(2, 3) * scale).pow(2).sum().backward()
    return [p.grad.clone() for p in model.parameters()]


@pytest.mark.parametrize("script", ["ppo_trxl", "ppo_gru"])
@pytest.mark.parametrize("same_data", [True, False], ids=["same-data", "different-data"])
def test_gradients_are_averaged_across_ranks(script, same_data):
    context = mp.get_context("spawn")
    queue = context.Queue()
    port = free_port()
    processes = [context.Process(target=_average_on_rank, args=(r, port, script, same_data, queue)) for r in range(2)]
    for p in processes:
        p.start()
    results = dict(queue.get(timeout=120) for _ in processes)
    for p in processes:
        p.join(timeout=60)
        assert p.exitcode == 0
    expected = local_gradients(1) if same_data else [(a + b) / 2 for a, b in zip(local_gradients(1), local_gradients(2))]
    for rank in (0, 1):
        for got, want in zip(results[rank], expected):
            torch.testing.assert_close(torch.tensor(got), want)


CRASHING_ENV = '''
import os
import gymnasium as gym
import numpy as np


class CrashOnRankOne(gym.Env):
    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)
    steps_in_process = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        CrashOnRankOne.steps_in_process += 1
        if os.environ.get("RANK") == "1" and CrashOnRankOne.steps_in_process > 100:
            raise RuntimeError("simulated failure")
        return np.zeros(3, np.float32), 0.0, CrashOnRankOne.steps_in_process % 8 == 0, False, {}


gym.register("CrashOnRankOne-v0", entry_point=CrashOnRankOne)
'''


def test_a_crashing_rank_takes_the_job_down_with_its_name(tmp_path):
    (tmp_path / "crashing_env.py").write_text(CRASHING_ENV)
    command = [
        sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
        f"--master_port={free_port()}", os.path.join(ROOT, "ppo_gru.py"), "--env-id", "crashing_env:CrashOnRankOne-v0",
        "--num-envs", "2", "--num-steps", "16", "--num-minibatches", "2", "--total-timesteps", "100000", "--no-cuda",
        *TINY["ppo_gru"],
    ]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ["PYTHONPATH"]]), "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode != 0
    assert "rank 1 failed: training stopped in iteration" in result.stderr
    assert "by RuntimeError: simulated failure" in result.stderr
