"""Memory Gym ids with the reset parameters of our quick presets, for the published PPO-TrXL.

The published script creates its envs with `gym.make(env_id)` and passes no reset parameters. Imported in
the reference's own virtual environment (memory-gym 1.0.2, gymnasium 0.29; never by this project), this
module registers `Quick-<id>` for every id of `configs/quick/ppo_trxl/`: memory-gym's env whose every
reset uses the preset's `env_kwargs`, so both implementations train on the same game:

    python ppo_trxl.py --env-id reference_envs:Quick-MortarMayhem-Grid-v0 ...   (with benchmarks/ on PYTHONPATH)
"""

import json
import os
import tomllib

import gymnasium as gym
import memory_gym  # noqa: F401  (registers memory-gym's ids)

PRESETS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "configs", "quick", "ppo_trxl")


class ResetWith(gym.Wrapper):
    """Every reset uses these reset parameters (options given to a reset call are added on top)."""

    def __init__(self, env: gym.Env, options: dict):
        super().__init__(env)
        self.options = options

    def reset(self, *, seed=None, options=None):
        return self.env.reset(seed=seed, options={**self.options, **(options or {})})


def make(base_id: str, options: dict, render_mode: str | None = None) -> gym.Env:
    return ResetWith(gym.make(base_id, render_mode=render_mode), options)


for name in sorted(os.listdir(PRESETS)):
    with open(os.path.join(PRESETS, name), "rb") as f:
        preset = tomllib.load(f)
    gym.register(f"Quick-{preset['env_id']}", entry_point=make,
                 kwargs={"base_id": preset["env_id"], "options": json.loads(preset.get("env_kwargs", "{}"))})
