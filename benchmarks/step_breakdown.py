"""Where a native vector env's step goes: the whole `step` beside what its face adds to the game's own
step (the action check, the observations, the info arrays, the episode record kept for checkpoints),
in microseconds of CPU time per step of `--num-envs` envs with random actions; and what one env's new
episode costs (a `reset` of all envs, per env). The observation column was the copy of every screen
until the vector envs handed their screens out; it is now what handing them out costs.

    python benchmarks/step_breakdown.py [--ids ID ...] [--num-envs 32] [--steps 3000]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs  # noqa: E402,F401

IDS = ["MortarMayhem-Grid-v0", "MortarMayhem-v0", "Endless-MortarMayhem-v0", "MysteryPath-v0", "Endless-MysteryPath-v0",
       "SearingSpotlights-v0", "Endless-SearingSpotlights-v0"]  # fmt: skip


def per_step(call, actions) -> float:
    """Microseconds of CPU time per call of `call(action)`."""
    started = time.process_time()
    for action in actions:
        call(action)
    return (time.process_time() - started) / len(actions) * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", nargs="+", default=IDS)
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3000)
    options = parser.parse_args()
    print(f"microseconds of CPU time per step of {options.num_envs} envs (one core, random actions, resets included)\n")
    print("| env id | step | action check | observation copy | info arrays | episode record | reset, per env |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for env_id in options.ids:
        vec = gym.make_vec(env_id, num_envs=options.num_envs)
        vec.reset(seed=0)
        vec.action_space.seed(0)
        actions = [vec.action_space.sample() for _ in range(options.steps)]
        face, log = vec.unwrapped, vec.unwrapped.game.log
        running = np.zeros(options.num_envs, dtype=bool)
        step = per_step(vec.step, actions)
        check = per_step(face._checked_actions, actions)
        copy = per_step(lambda _: face._observation(), actions)
        infos = per_step(lambda _: face._every_step_info(), actions)
        record = per_step(lambda action: log.stepped(action, running), actions)
        reset = per_step(lambda _: vec.reset(), range(max(options.steps // 100, 1))) / options.num_envs
        print(f"| {env_id} | {step:.1f} | {check:.1f} | {copy:.1f} | {infos:.1f} | {record:.1f} | {reset:.1f} |", flush=True)


if __name__ == "__main__":
    main()
