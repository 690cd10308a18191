"""How long restoring an env state takes: a checkpoint holds each env's current episode as its actions,
and resuming replays them, all envs in one batch, so the time follows the longest episode.

Plays `--num-envs` envs with random actions for each length, saves the state, restores it into a fresh
vector env, and prints a table: the longest saved episode, the time to play the steps and the time to
restore, in CPU seconds of this process (other load on a shared machine barely moves them). Endless
Searing Spotlights without spot damage and without a coin deadline never ends, which gives long endless
episodes from random play; the other ids are measured at the lengths random play reaches.

    python benchmarks/replay_time.py                      # about 2 minutes on one core
    python benchmarks/replay_time.py --lengths 1000 20000 --ids Endless-SearingSpotlights-v0
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import gymnasium as gym
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs  # noqa: E402,F401

LONG = {"Endless-SearingSpotlights-v0": {"spot_damage": 0.0, "steps_per_coin": 10**9}}
"""Reset parameters under which random play never ends an episode."""


def measure(env_id: str, steps: int, num_envs: int, params: dict) -> dict:
    vec = gym.make_vec(env_id, num_envs=num_envs, **params)
    vec.reset(seed=1)
    vec.action_space.seed(1)
    actions = [vec.action_space.sample() for _ in range(steps)]
    started = time.process_time()
    for action in actions:
        vec.step(action)
    play = time.process_time() - started
    buffer = io.BytesIO()
    torch.save(vec.unwrapped.game.get_state(), buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)
    longest = max(len(episode["actions"]) for episode in state["episodes"])
    fresh = gym.make_vec(env_id, num_envs=num_envs, **params)
    fresh.reset(seed=2)
    started = time.process_time()
    fresh.unwrapped.game.set_state(state)
    restore = time.process_time() - started
    return {"played": steps, "longest": longest, "play_s": play, "restore_s": restore, "bytes": buffer.getbuffer().nbytes}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ids", nargs="+", default=["Endless-SearingSpotlights-v0", "Endless-MortarMayhem-v0",
                                                      "Endless-MysteryPath-v0", "MortarMayhem-Grid-v0", "MysteryPath-v0",
                                                      "SearingSpotlights-v0"])  # fmt: skip
    parser.add_argument("--lengths", nargs="+", type=int, default=[1000, 10000], help="batched steps played before saving")
    parser.add_argument("--num-envs", type=int, default=32)
    args = parser.parse_args()
    print(f"{args.num_envs} envs, random actions, CPU seconds of one process\n")
    print("| env id | parameters | steps played | longest saved episode | play (CPU s) | restore (CPU s) | restore / play of the longest | state size (MB) |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for env_id in args.ids:
        params = LONG.get(env_id, {})
        lengths = args.lengths if params else args.lengths[:1]
        for steps in lengths:
            r = measure(env_id, steps, args.num_envs, params)
            per_step = r["play_s"] / r["played"]
            ratio = r["restore_s"] / max(per_step * r["longest"], 1e-9)
            shown = ", ".join(f"{k}={v}" for k, v in params.items()) or "defaults"
            print(f"| {env_id} | {shown} | {r['played']:,} | {r['longest']:,} | {r['play_s']:.1f} | {r['restore_s']:.2f} "
                  f"| {ratio:.2f} | {r['bytes'] / 1e6:.2f} |", flush=True)


if __name__ == "__main__":
    main()
