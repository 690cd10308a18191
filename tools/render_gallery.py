"""Render every environment for the README: the agent's view (x4) beside the ground truth.

    python tools/render_gallery.py            # writes docs/images/<env-id>.png
"""

from __future__ import annotations

import os
import sys

import gymnasium as gym
import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import envs  # noqa: E402,F401
from envs.core import NativeEnv  # noqa: E402

OUT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "images")
# Steps into the episode at which each family shows what matters (a command, the path, spotlights).
STEPS = {"MortarMayhem": 2, "MortarMayhemB": 25, "MysteryPath": 6, "SearingSpotlights": 40, "ProofOfMemory": 0}


def picture(env_id: str, seed: int = 3) -> np.ndarray:
    env = gym.make(env_id, render_mode="rgb_array")
    debug = gym.make(env_id, render_mode="debug_rgb_array")
    for e in (env, debug):
        e.reset(seed=seed)
        e.action_space.seed(seed)
    family = env_id.removeprefix("Endless-").split("-")[0]
    for _ in range(STEPS.get(family, 5)):
        action = env.action_space.sample()
        for e in (env, debug):
            e.step(action)
    view, truth = env.render(), debug.render()
    view = view.repeat(truth.shape[0] // view.shape[0], axis=0).repeat(truth.shape[1] // view.shape[1], axis=1)
    gap = np.full((truth.shape[0], 8, 3), 255, np.uint8)
    return np.concatenate([view, gap, truth], axis=1)


def main() -> None:
    os.makedirs(OUT, exist_ok=True)
    ids = sorted(i for i, s in gym.registry.items() if isinstance(s.entry_point, type) and issubclass(s.entry_point, NativeEnv))
    for env_id in ids:
        path = os.path.join(OUT, f"{env_id}.png")
        Image.fromarray(picture(env_id)).save(path, optimize=True)
        print(path)


if __name__ == "__main__":
    main()
