"""Environment steps per second of every Memory Gym id registered by `envs`, on one core.

For each id: the single env (`gym.make`, resetting itself when an episode ends) and the native
vector env (`gym.make_vec`, same-step autoreset) with 32 and 256 envs, stepping pre-sampled random
actions; episode resets are included. Speeds are steps per second of the process's own CPU time
(pinned to one core), so other load on a shared machine does not distort them. With `--memory-gym-python PATH` the reference
(memory-gym 1.0.2, one env in one process) is measured the same way in a subprocess of that
interpreter, and the vector-32 speed-up over it is printed.

    python benchmarks/env_throughput.py [--seconds 2] [--ids ID ...] [--memory-gym-python /tmp/mgvenv/bin/python]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import gymnasium as gym  # noqa: E402

import envs  # noqa: E402, F401
from envs.core import NativeEnv  # noqa: E402

ACTION_BANK = 4096

REFERENCE_SCRIPT = """
import os, sys, time
os.environ["SDL_VIDEODRIVER"] = "dummy"
import gymnasium as gym, numpy as np, memory_gym
env_id, seconds = sys.argv[1], float(sys.argv[2])
env = gym.make(env_id)
env.action_space.seed(0)
actions = [env.action_space.sample() for _ in range(4096)]
env.reset(seed=0)
steps, start, cpu = 0, time.perf_counter(), time.process_time()
while time.perf_counter() - start < seconds:
    for _ in range(256):
        _, _, terminated, truncated, _ = env.step(actions[steps % 4096])
        steps += 1
        if terminated or truncated:
            env.reset()
print(steps / (time.process_time() - cpu))
"""


def memory_gym_ids() -> list[str]:
    """Our registered environment ids (the ProofOfMemory probes are not part of Memory Gym)."""
    ids = []
    for env_id, spec in gym.registry.items():
        entry = spec.entry_point
        if isinstance(entry, type) and issubclass(entry, NativeEnv) and not env_id.startswith("ProofOfMemory"):
            ids.append(env_id)
    return sorted(ids)


def single_env_speed(env_id: str, seconds: float) -> float:
    env = gym.make(env_id)
    env.action_space.seed(0)
    actions = [env.action_space.sample() for _ in range(ACTION_BANK)]
    env.reset(seed=0)
    steps, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for _ in range(256):
            _, _, terminated, truncated, _ = env.step(actions[steps % ACTION_BANK])
            steps += 1
            if terminated or truncated:
                env.reset()
    return steps / (time.process_time() - cpu)


def vector_env_speed(env_id: str, num_envs: int, seconds: float) -> float:
    env = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
    env.action_space.seed(0)
    bank = max(ACTION_BANK // num_envs, 16)
    actions = [env.action_space.sample() for _ in range(bank)]
    env.reset(seed=0)
    batches, start, cpu = 0, time.perf_counter(), time.process_time()
    while time.perf_counter() - start < seconds:
        for _ in range(16):
            env.step(actions[batches % bank])
            batches += 1
    return batches * num_envs / (time.process_time() - cpu)


def reference_speed(python: str, env_id: str, seconds: float) -> float | None:
    cmd = [python, "-c", REFERENCE_SCRIPT, env_id, str(seconds)]
    if hasattr(os, "sched_getaffinity"):
        cmd = ["taskset", "-c", str(min(os.sched_getaffinity(0))), *cmd]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "SDL_VIDEODRIVER": "dummy"})
    if result.returncode != 0:
        print(f"  reference run failed for {env_id}: {result.stderr.strip().splitlines()[-1:]}", file=sys.stderr)
        return None
    return float(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measuring time per configuration")
    parser.add_argument("--ids", nargs="*", help="only these ids (default: every Memory Gym id registered by envs)")
    parser.add_argument("--memory-gym-python", help="interpreter with memory-gym 1.0.2 installed, to measure the reference")
    args = parser.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})

    ids = args.ids or memory_gym_ids()
    header = f"{'env id':<32} {'single':>10} {'vec 32':>10} {'vec 256':>10}"
    if args.memory_gym_python:
        header += f" {'memory-gym':>11} {'vec32 / mg':>10}"
    print("environment steps per CPU second (one core, random actions, resets included)")
    print(header)
    print("-" * len(header))
    for env_id in ids:
        single = single_env_speed(env_id, args.seconds)
        vec32 = vector_env_speed(env_id, 32, args.seconds)
        vec256 = vector_env_speed(env_id, 256, args.seconds)
        row = f"{env_id:<32} {single:>10,.0f} {vec32:>10,.0f} {vec256:>10,.0f}"
        if args.memory_gym_python:
            reference = reference_speed(args.memory_gym_python, env_id, args.seconds)
            row += f" {reference:>11,.0f} {vec32 / reference:>9.1f}x" if reference else f" {'n/a':>11} {'':>10}"
        print(row, flush=True)


if __name__ == "__main__":
    main()
