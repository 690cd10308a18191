"""The probe environments: API conformance, batching contract and the memory requirement itself."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401

IDS = ["ProofOfMemory-v0", "ProofOfMemoryImage-v0"]


@pytest.mark.parametrize("env_id", IDS)
def test_check_env_passes(env_id):
    check_env(gym.make(env_id, render_mode="rgb_array").unwrapped)


@pytest.mark.parametrize("env_id", IDS)
def test_vector_env_equals_single_envs_seeded_s_plus_i(env_id):
    n, seed = 4, 7
    vec = gym.make_vec(env_id, num_envs=n, max_delay=3)
    singles = [gym.make(env_id, max_delay=3) for _ in range(n)]
    obs, _ = vec.reset(seed=seed)
    single_obs = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(40):
        np.testing.assert_array_equal(obs, np.stack(single_obs))
        actions = rng.integers(0, 2, n)
        obs, rewards, terminated, _, info = vec.step(actions)
        for i, env in enumerate(singles):
            o, r, term, _, single_info = env.step(actions[i])
            assert r == rewards[i] and term == terminated[i]
            if term:
                ends += 1
                np.testing.assert_array_equal(info["final_obs"][i], o)
                assert info["final_info"]["success"][i] == single_info["success"]
                o, _ = env.reset()  # a single env continues its generator, as the vector env does
            single_obs[i] = o
    assert ends > 10


def test_reward_requires_remembering_the_cue():
    env = gym.make("ProofOfMemory-v0", min_delay=2, max_delay=5)
    for seed in range(20):
        obs, _ = env.reset(seed=seed)
        cue = int(np.argmax(obs[:2]))
        assert obs[:2].sum() == 1 and obs[2] == 0
        done = False
        while not done:
            # Blank steps show no cue; the query step shows only the flag.
            obs, reward, done, _, info = env.step(cue)
            if not done:
                assert obs[:2].sum() == 0
        assert reward == 1.0 and info["success"] == 1.0 and 4 <= info["length"] <= 7
    obs, _ = env.reset(seed=0)
    cue = int(np.argmax(obs[:2]))
    done = False
    while not done:
        obs, reward, done, _, info = env.step(1 - cue)
    assert reward == 0.0 and info["success"] == 0.0


@pytest.mark.parametrize(
    "params, name",
    [({"max_delay": -2}, "max_delay"), ({"min_delay": 1.5}, "min_delay"), ({"min_delay": 5, "max_delay": 2}, "min_delay"), ({"delay": 3}, "delay")],
)
def test_invalid_parameters_raise_value_error_naming_them(params, name):
    with pytest.raises(ValueError, match=name):
        gym.make("ProofOfMemory-v0", **params)
    env = gym.make("ProofOfMemory-v0")
    with pytest.raises(ValueError, match=name):
        env.reset(options=params)
