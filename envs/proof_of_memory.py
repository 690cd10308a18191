"""ProofOfMemory: the smallest task that cannot be solved without memory.

At the first step the observation shows a cue (one of `num_cues` values). Then come `delay`
blank steps (drawn per episode from `[min_delay, max_delay]`, so counting is no help), and at the
last step the observation raises a query flag: the action chosen there earns reward 1 if it
names the cue and 0 otherwise, and the episode ends. A memoryless agent can do no better than
guessing (expected return 1 / num_cues); an agent that remembers the cue earns 1.

`ProofOfMemory-v0` observes a vector `[cue one-hot..., query flag]`;
`ProofOfMemoryImage-v0` observes an 84x84x3 uint8 image in the Memory Gym `obs[x, y, c]`
layout: the cue as a coloured square at step 0, the query flag as a white bar.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from envs.core import BatchedGame
from envs.parameters import STEPS, integer

SCREEN = 84
# One colour and one square position per cue, so the cue is told apart by colour and place.
CUE_COLOURS = np.array([[255, 64, 64], [64, 255, 64], [64, 128, 255], [255, 255, 64]], dtype=np.uint8)
MAX_CUES = len(CUE_COLOURS)


class ProofOfMemoryGame(BatchedGame):
    env_id = "ProofOfMemory-v0"
    num_cues = 2
    observation_space = gym.spaces.Box(0.0, 1.0, (num_cues + 1,), np.float32)
    action_space = gym.spaces.Discrete(num_cues)
    defaults = {"min_delay": 1, "max_delay": 4}
    parameters = {"min_delay": integer(0, STEPS), "max_delay": integer(0, STEPS)}
    render_fps = 4
    def __init__(self, num_envs: int):
        super().__init__(num_envs)
        self.cue = np.zeros(num_envs, dtype=np.int64)
        self.delay = np.zeros(num_envs, dtype=np.int64)
        self.t = np.zeros(num_envs, dtype=np.int64)
        self.episode_return = np.zeros(num_envs)

    def check_combinations(self, params: dict[str, Any]) -> None:
        if params["min_delay"] > params["max_delay"]:
            raise ValueError(
                f"{self.env_id}: min_delay ({params['min_delay']}) must not exceed max_delay ({params['max_delay']})"
            )

    def reset_envs(self, idx: np.ndarray, params: dict[str, Any]) -> None:
        for i in idx:
            rng = self.rngs[i]
            self.cue[i] = rng.integers(0, self.num_cues)
            self.delay[i] = rng.integers(params["min_delay"], params["max_delay"] + 1)
        self.t[idx] = 0
        self.episode_return[idx] = 0.0

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        actions = np.asarray(actions).reshape(self.num_envs)
        at_query = self.t == self.delay + 1
        rewards = (at_query & (actions == self.cue)).astype(np.float64)
        self.t += 1
        self.episode_return += rewards
        return rewards, at_query

    # The observation after a step describes the step about to be taken.
    def _cue_visible(self) -> np.ndarray:
        return self.t == 0

    def _query_visible(self) -> np.ndarray:
        return self.t == self.delay + 1

    def observe(self) -> np.ndarray:
        obs = np.zeros((self.num_envs, self.num_cues + 1), dtype=np.float32)
        shown = self._cue_visible()
        obs[shown, self.cue[shown]] = 1.0
        obs[:, -1] = self._query_visible()
        return obs

    def image(self) -> np.ndarray:
        """The cue and query flag drawn as an image of every env, `(num_envs, x, y, c)`."""
        obs = np.zeros((self.num_envs, SCREEN, SCREEN, 3), dtype=np.uint8)
        for cue in range(self.num_cues):
            shown = self._cue_visible() & (self.cue == cue)
            x0 = 8 + 20 * cue
            obs[shown, x0 : x0 + 16, 24:40] = CUE_COLOURS[cue]
        obs[self._query_visible(), 8:76, 66:74] = 255
        return obs

    def render_rgb(self, i: int) -> np.ndarray:
        return np.ascontiguousarray(self.image()[i].transpose(1, 0, 2))

    def episode_info(self, i: int) -> dict[str, Any]:
        return {
            "reward": float(self.episode_return[i]),
            "length": int(self.t[i]),
            "success": float(self.episode_return[i] > 0),
        }


class ProofOfMemoryImageGame(ProofOfMemoryGame):
    env_id = "ProofOfMemoryImage-v0"
    observation_space = gym.spaces.Box(0, 255, (SCREEN, SCREEN, 3), np.uint8)

    def observe(self) -> np.ndarray:
        return self.image()
