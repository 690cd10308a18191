"""Saving and restoring a native vector env's full state continues it bit for bit (exact resume)."""

from __future__ import annotations

import io

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401
from envs.core import NativeEnv

NATIVE_IDS = sorted(
    env_id
    for env_id, spec in gym.registry.items()
    if isinstance(spec.entry_point, type) and issubclass(spec.entry_point, NativeEnv)
)


def flat(obs) -> np.ndarray:
    return np.concatenate([np.ravel(obs[k]) for k in sorted(obs)]) if isinstance(obs, dict) else obs.copy()


@pytest.mark.parametrize("env_id", NATIVE_IDS)
def test_restored_state_continues_identically(env_id):
    envs_ = gym.make_vec(env_id, num_envs=3)
    envs_.reset(seed=11)
    envs_.action_space.seed(0)
    for _ in range(25):
        envs_.step(envs_.action_space.sample())
    buffer = io.BytesIO()
    torch.save(envs_.unwrapped.game.get_state(), buffer)
    actions = [envs_.action_space.sample() for _ in range(600)]

    def play():
        trace = []
        for action in actions:
            obs, reward, terminated, _, _ = envs_.step(action)
            trace.append((flat(obs), reward.copy(), terminated.copy()))
        return trace

    first = play()
    buffer.seek(0)
    envs_.unwrapped.game.set_state(torch.load(buffer, weights_only=True))
    second = play()
    for (o1, r1, t1), (o2, r2, t2) in zip(first, second):
        np.testing.assert_array_equal(o1, o2)
        np.testing.assert_array_equal(r1, r2)
        np.testing.assert_array_equal(t1, t2)
    assert any(t.any() for _, _, t in first) or env_id.startswith("Endless"), "episodes should end and autoreset"
