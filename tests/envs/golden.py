"""Replay golden fixtures (recorded from memory-gym 1.0.2) through our environments.

`replay(fixture)` plays the recorded actions through a single env made with `gym.make`, episode
after episode on one instance exactly as recorded, and fails at the first step that differs,
saying what differs. Frames stored in full are compared pixel for pixel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np

import envs  # noqa: F401  (registers our ids)
from tools.golden_format import FIXTURES, decode_image, obs_hash


def fixture_files(family: str) -> list[Path]:
    return sorted((FIXTURES / family).glob("*.json.gz"))


def _same(ours: Any, theirs: Any) -> bool:
    """Exact equality of JSON-like values, treating 0 and 0.0 alike (the reference mixes them)."""
    if isinstance(theirs, dict):
        return isinstance(ours, dict) and ours.keys() == theirs.keys() and all(_same(ours[k], theirs[k]) for k in theirs)
    if isinstance(theirs, list):
        ours = np.asarray(ours).tolist() if isinstance(ours, np.ndarray) else ours
        return isinstance(ours, list) and len(ours) == len(theirs) and all(map(_same, ours, theirs))
    if isinstance(ours, np.ndarray):
        ours = ours.tolist()
    if isinstance(ours, np.generic):
        ours = ours.item()
    if isinstance(theirs, float) and theirs != theirs:  # NaN (e.g. 0 / 0 coins) equals only NaN
        return isinstance(ours, float) and ours != ours
    return ours == theirs


def _pixels_differing(ours: np.ndarray, theirs: np.ndarray) -> str:
    if ours.shape != theirs.shape:
        return f"shape {ours.shape} != {theirs.shape}"
    differing = np.any(ours != theirs, axis=-1)
    where = np.argwhere(differing)
    return f"{int(differing.sum())} pixels differ (first at {where[0].tolist() if len(where) else None})"


def replay(fixture: dict[str, Any]) -> int:
    """Replay `fixture`; raise AssertionError at the first difference. Returns the steps compared."""
    label = f"{fixture['family']}/{fixture['name']} ({fixture['env_id']})"
    env = gym.make(fixture["env_id"], render_mode="debug_rgb_array")
    frames = {(f["episode"], f["step"]): f for f in fixture["frames"]}
    compared = 0

    def check(where: str, what: str, ours: Any, theirs: Any) -> None:
        assert _same(ours, theirs), f"{label}: {where}: {what} differs: ours {ours!r}, reference {theirs!r}"

    def observe(episode: int, steps: int, obs: Any, recorded_debug: str | None, where: str) -> None:
        frame = frames.get((episode, steps))
        if not (fixture["render_debug"] or frame):
            return
        debug = env.render()
        if frame:
            visual = obs["visual_observation"] if isinstance(obs, dict) else obs
            for kind, image in (("obs", visual), ("debug", debug)):
                reference = decode_image(frame[kind])
                assert np.array_equal(image, reference), (
                    f"{label}: {where}: full {kind} frame: {_pixels_differing(image, reference)}"
                )
        if fixture["render_debug"]:
            check(where, "debug render hash", obs_hash(debug), recorded_debug)

    for e, episode in enumerate(fixture["episodes"]):
        kwargs = {"options": episode["options"]}
        if episode["seed"] is not None:
            kwargs["seed"] = episode["seed"]
        obs, info = env.reset(**kwargs)
        where = f"episode {e} reset"
        check(where, "observation hash", obs_hash(obs), episode["reset"]["obs"])
        check(where, "info", info, episode["reset"]["info"])
        observe(e, 0, obs, episode["reset"]["debug"], where)
        steps = episode["steps"]
        for t, action in enumerate(steps["action"]):
            obs, reward, terminated, truncated, info = env.step(np.asarray(action))
            where = f"episode {e} step {t + 1} (action {action})"
            check(where, "observation hash", obs_hash(obs), steps["obs"][t])
            check(where, "reward", reward, steps["reward"][t])
            check(where, "terminated", terminated, steps["terminated"][t])
            check(where, "truncated", truncated, steps["truncated"][t])
            check(where, "info", info, steps["info"][t])
            observe(e, t + 1, obs, steps["debug"][t], where)
            compared += 1
    env.close()
    return compared
