"""The floating-point work of one environment step of each script, and the share of this machine's
matrix-product peak that training reaches end to end.

Counts with `torch.utils.flop_counter` (matrix products, convolutions, attention: the elementwise work
is left out) the operations of one rollout (acting) and of one update epoch's minibatches, forward and
backward (updating, times the preset's epochs), with the paper's agents, divided by the steps they cover.
The peak is the best rate of float32 matrix products (2048 x 2048) on all cores; the share divides the work
per step times the end-to-end steps per second measured by `train_throughput.py` by that peak.

    python benchmarks/flops.py                          # Mortar Mayhem Grid, 8 envs x 128 steps, window 119
    python benchmarks/flops.py --no-throughput          # the counts and the peak only
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from types import SimpleNamespace

import torch
from torch.utils.flop_counter import FlopCounterMode

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import ppo_gru  # noqa: E402
import ppo_mamba  # noqa: E402
import ppo_trxl  # noqa: E402
import precision_ratio  # noqa: E402
import train_throughput  # noqa: E402
from run_utils import EpisodeStats  # noqa: E402

SCRIPTS = {"ppo_trxl": ppo_trxl, "ppo_gru": ppo_gru, "ppo_mamba": ppo_mamba}


def work_per_step(script, args) -> tuple[float, float]:
    """(acting, updating) floating-point operations per environment step."""
    envs, agent, rollout = precision_ratio.start(script, args)
    steps = args.num_envs * args.num_steps
    script.collect_rollout(agent, envs, rollout, torch.device("cpu"), EpisodeStats(args.num_envs))  # a full memory
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        script.collect_rollout(agent, envs, rollout, torch.device("cpu"), EpisodeStats(args.num_envs))
    acting = counter.get_total_flops() / steps
    with FlopCounterMode(display=False) as counter:
        for _, logprob, value in precision_ratio.update_pass(script, args, agent, rollout):
            (logprob.sum() + value.sum()).backward()
    envs.close()
    return acting, counter.get_total_flops() / steps * args.update_epochs


def matmul_peak(seconds: float = 3.0, size: int = 2048) -> float:
    """Best float32 matrix-product rate over one-second windows, FLOP/s (all cores torch uses)."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        count, started = 0, time.perf_counter()
        while time.perf_counter() - started < 1.0:
            torch.mm(a, b)
            count += 1
        best = max(best, 2 * size**3 * count / (time.perf_counter() - started))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scripts", nargs="+", default=list(SCRIPTS), choices=SCRIPTS)
    parser.add_argument("--env-id", default="MortarMayhem-Grid-v0")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--num-steps", type=int, default=128)
    parser.add_argument("--no-throughput", action="store_true", help="skip the end-to-end measurement")
    options = parser.parse_args()
    peak = matmul_peak()
    print(f"{torch.get_num_threads()} threads, float32 matrix-product peak {peak / 1e9:.1f} GFLOP/s; "
          f"{options.env_id}, {options.num_envs} envs x {options.num_steps} steps, the paper's agents\n")
    print("| script | MFLOP / step, acting | MFLOP / step, updating (all epochs) | total | SPS end to end | share of peak |")
    print("|---|---:|---:|---:|---:|---:|")
    for name in options.scripts:
        script = SCRIPTS[name]
        flags = ["--config", os.path.join(ROOT, "configs", "paper", name, f"{options.env_id}.toml"), "--no-cuda",
                 "--num-envs", str(options.num_envs), "--num-steps", str(options.num_steps)]  # fmt: skip
        args = script.parse_args(flags)
        acting, updating = work_per_step(script, args)
        total = acting + updating
        sps, share = "-", "-"
        if not options.no_throughput:
            measured = train_throughput.measure(
                SimpleNamespace(env_id=options.env_id, num_envs=options.num_envs, num_steps=options.num_steps, iterations=3,
                                extra=" ".join(flags[:2] + flags[2:3])), name, 1, "")  # fmt: skip
            sps, share = f"{measured['sps']:,.0f}", f"{total * measured['sps'] / peak:.1%}"
        print(f"| {name} | {acting / 1e6:.1f} | {updating / 1e6:.1f} | {total / 1e6:.1f} | {sps} | {share} |", flush=True)


if __name__ == "__main__":
    main()
