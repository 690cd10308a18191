"""Searing Spotlights: golden replays against memory-gym 1.0.2, API, batching, rules, parameters."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the ids)
from envs.raster import alpha_blend, disk_offsets
from envs.searing_spotlights import SpawnSampler, _darken
from envs.spotlights import CLEAR, DARK, RING, Spotlights, clear_mask
from tests.envs.golden import fixture_files, replay
from tools.golden_format import load_fixture
from tools.golden_scenarios.searing_spotlights import dodging_action

SS, ESS = "SearingSpotlights-v0", "Endless-SearingSpotlights-v0"
IDS = [SS, ESS]
FIXTURES = fixture_files("searing_spotlights")


def test_every_id_has_golden_fixtures():
    recorded = {load_fixture(path)["env_id"] for path in FIXTURES}
    assert recorded == set(IDS)


@pytest.mark.parametrize("path", FIXTURES, ids=[path.name.removesuffix(".json.gz") for path in FIXTURES])
def test_golden_trajectory_replays_identically(path):
    assert replay(load_fixture(path)) > 0


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("render_mode", ["rgb_array", "debug_rgb_array"])
def test_check_env_passes(env_id, render_mode):
    check_env(gym.make(env_id, render_mode=render_mode).unwrapped)


@pytest.mark.parametrize("env_id", IDS)
def test_spaces_attributes_and_render_modes(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    obs, info = env.reset(seed=0)
    assert env.observation_space == gym.spaces.Box(0, 255, (84, 84, 3), np.uint8)
    assert env.action_space == gym.spaces.MultiDiscrete([3, 3])
    assert env.observation_space.contains(obs)
    np.testing.assert_array_equal(env.render(), obs.transpose(1, 0, 2))
    endless = env_id == ESS
    assert env.unwrapped.has_ground_truth_info is endless
    assert hasattr(env.unwrapped, "ground_truth_space") is endless
    assert ("ground_truth" in info) is endless
    if endless:
        assert env.unwrapped.ground_truth_space == gym.spaces.Box(0, 1, (4,), np.float32)
        game = env.unwrapped.game
        where = np.array([game.cx[0], game.cy[0], game.coin_x[0, 0], game.coin_y[0, 0]])
        np.testing.assert_array_equal(info["ground_truth"], where / 84)
    debug = gym.make(env_id, render_mode="debug_rgb_array")
    debug.reset(seed=0)
    debug.step(np.array([2, 1]))
    picture = debug.render()
    assert picture.shape == (336, 336, 3) and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture, picture[::4, ::4].repeat(4, axis=0).repeat(4, axis=1))


@pytest.mark.parametrize("env_id", IDS)
def test_vector_env_matches_single_envs_across_autoresets(env_id):
    num_envs, steps = 3, 260
    options = {"agent_health": 2, "max_steps": 120} if env_id == ESS else {"agent_health": 2}
    vector = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **options)
    singles = [gym.make(env_id, **options) for _ in range(num_envs)]
    # The first episodes run with other parameters than the standing ones autoresets use.
    first = {"agent_visible": True, "black_background": True, "light_dim_off_duration": 2}
    obs, _ = vector.reset(seed=7, options=first)
    for i, env in enumerate(singles):
        np.testing.assert_array_equal(env.reset(seed=7 + i, options=first)[0], obs[i])
    actions = np.random.default_rng(0).integers(0, 3, (steps, num_envs, 2))
    endings = 0
    for t in range(steps):
        obs, rewards, terminated, truncated, infos = vector.step(actions[t])
        assert not truncated.any()
        for i, env in enumerate(singles):
            single_obs, reward, done, _, info = env.step(actions[t, i])
            assert reward == rewards[i] and done == terminated[i], (t, i)
            if done:
                endings += 1
                np.testing.assert_array_equal(infos["final_obs"][i], single_obs)
                final = infos["final_info"]
                for key, value in info.items():
                    np.testing.assert_array_equal(final[key][i], value)
                single_obs, info = env.reset()
            np.testing.assert_array_equal(obs[i], single_obs, err_msg=f"step {t} env {i}")
            if env_id == ESS:
                np.testing.assert_array_equal(infos["ground_truth"][i], info["ground_truth"])
    assert endings >= num_envs


@pytest.mark.parametrize("ringed", [False, True])
def test_darkening_blends_each_code_for_every_value_and_alpha(ringed):
    # Frame = alpha (256 frames), column = value, row = code; channels carry the same value. Exhaustive:
    # the blend is computed in float32 and must floor to the integer alpha blend everywhere.
    alpha = np.arange(256)
    codes = np.array([DARK, CLEAR, RING] if ringed else [DARK, CLEAR], dtype=np.uint8)
    values = np.broadcast_to(np.arange(256, dtype=np.uint8)[:, None, None], (256, len(codes), 3))
    buf = np.ascontiguousarray(np.broadcast_to(values, (256, *values.shape)))
    code_layer = np.ascontiguousarray(np.broadcast_to(codes[None, None, :, None], buf.shape))
    for frame, code, a in zip(buf, code_layer, alpha):
        _darken(frame.reshape(-1), code.reshape(-1), a, ringed)
    per_alpha = alpha[:, None, None, None]
    np.testing.assert_array_equal(buf[:, :, 0], alpha_blend(values[None, :, 0], 0, per_alpha[:, :, 0]))
    np.testing.assert_array_equal(buf[:, :, 1], np.broadcast_to(values[:, 1], buf[:, :, 1].shape))
    if ringed:
        np.testing.assert_array_equal(buf[:, :, 2], alpha_blend(values[None, :, 2], 255, per_alpha[:, :, 0]))


def test_clear_mask_is_the_union_of_the_visited_disks_clipped_to_the_screen():
    rng = np.random.default_rng(0)
    cx, cy = rng.integers(-30, 115, (6, 5)), rng.integers(-30, 115, (6, 5))
    radius, visited = rng.integers(0, 15, (6, 5)), rng.random((6, 5)) < 0.7
    expected = np.zeros((6, 84, 84, 3), dtype=np.uint8)
    for env, k in zip(*np.nonzero(visited)):
        dx, dy = disk_offsets(int(radius[env, k]))
        x, y = cx[env, k] + dx, cy[env, k] + dy
        keep = (x >= 0) & (x < 84) & (y >= 0) & (y < 84)
        expected[env, x[keep], y[keep]] = 1
    np.testing.assert_array_equal(clear_mask(cx, cy, radius, visited), expected)


def test_spotlight_after_a_removed_one_is_skipped_for_that_step():
    spots = Spotlights(1, slots=2)
    for speed in (0.6, 0.1, 0.1):
        spots.add(0, 5, speed, [0.0] * 6)
    np.testing.assert_array_equal(spots.visit(), [[True, True, True, False]])
    spots.move(spots.visit())
    spots.move(spots.visit())  # the first spot reaches t = 1 and is marked done
    assert spots.done[0, 0]
    visited = spots.visit()  # removes it, which skips the second spot
    np.testing.assert_array_equal(visited[0, :3], [False, False, True])
    assert not spots.active[0, 0]
    before = spots.t[0, 1]
    spots.move(visited)
    assert spots.t[0, 1] == before and spots.t[0, 2] == pytest.approx(0.3)
    np.testing.assert_array_equal(spots.visit()[0, :3], [False, True, True])


def _spot_positions(game, i):
    """Where each live spot will be drawn next step (its curve at the current t)."""
    s = game.spots
    live = s.active[i] & ~s.done[i]
    t = s.t[i]
    qx, qy = s.p1x[i] * (1 - t) + s.p2x[i] * t, s.p1y[i] * (1 - t) + s.p2y[i] * t
    x, y = s.p0x[i] * (1 - t) + qx * t, s.p0y[i] * (1 - t) + qy * t
    return x[live], y[live], s.radius[i][live]


def dodge(game, i=0):
    """Walk to the nearest coin (then the exit), keeping clear of the spotlights' next positions."""
    x, y = int(game.cx[i]), int(game.cy[i])
    coins = np.flatnonzero(game.coin_on[i])
    if len(coins):
        k = coins[np.argmin((game.coin_x[i, coins] - x) ** 2 + (game.coin_y[i, coins] - y) ** 2)]
        target = int(game.coin_x[i, k]), int(game.coin_y[i, k])
    else:
        target = int(game.exit_x[i]), int(game.exit_y[i])
    return dodging_action(x, y, target, zip(*_spot_positions(game, i)))


def test_scripted_policy_on_our_state_wins_most_finite_episodes():
    env = gym.make(SS)
    wins = 0
    for seed in range(10):
        env.reset(seed=seed, options={"num_coins": [2]})
        for _ in range(256):
            _, _, done, _, info = env.step(dodge(env.unwrapped.game))
            if done:
                wins += info["success"]
                assert info["coins_collected"] == 1.0 or not info["success"]
                break
    assert wins >= 7


def test_scripted_policy_on_our_state_collects_ten_coins_in_the_endless_game():
    env = gym.make(ESS)
    env.reset(seed=3)
    for _ in range(3000):
        _, _, done, _, info = env.step(dodge(env.unwrapped.game))
        if done:
            break
    assert env.unwrapped.game.coins_collected[0] >= 10


def test_use_exit_false_wins_once_the_coins_are_collected():
    env = gym.make(SS, use_exit=False, coins_visible=True)
    env.reset(seed=1)
    for _ in range(256):
        _, reward, done, _, info = env.step(dodge(env.unwrapped.game))
        if done:
            break
    assert info["success"] == 1 and info["coins_collected"] == 1.0 and reward == 0.25
    picture = gym.make(SS, use_exit=False, render_mode="debug_rgb_array")
    picture.reset(seed=0)
    assert picture.render().shape == (336, 336, 3)


@pytest.mark.parametrize("num_coins", [[], [0]])
def test_no_coins_opens_the_exit_at_once_and_reports_nan_fraction(num_coins):
    env = gym.make(SS, num_coins=num_coins, agent_health=1)
    env.reset(seed=4)
    assert not env.unwrapped.game.coin_on.any()
    for _ in range(256):
        _, _, done, _, info = env.step(np.array([0, 0]))
        if done:
            break
    assert env.unwrapped.game.exit_open[0]
    assert math.isnan(info["coins_collected"])


def test_endless_without_action_cells_keeps_the_bar_black_there():
    env = gym.make(ESS, show_last_action=False, show_last_positive_reward=False)
    obs, _ = env.reset(seed=0)
    for _ in range(3):
        obs, *_ = env.step(np.array([1, 2]))
    np.testing.assert_array_equal(obs[42:, :4], 0)
    np.testing.assert_array_equal(obs[:42, :4], np.broadcast_to([0, 255, 0], (42, 4, 3)))


def test_action_cells_show_the_previous_action():
    env = gym.make(SS)
    env.reset(seed=0)
    obs, *_ = env.step(np.array([1, 2]))
    np.testing.assert_array_equal(obs[42:57, 0], np.broadcast_to([120, 120, 120], (15, 3)))
    np.testing.assert_array_equal(obs[57:67, 0], np.broadcast_to([50, 50, 50], (10, 3)))
    np.testing.assert_array_equal(obs[67:84, 0], np.broadcast_to([120, 120, 120], (17, 3)))
    obs, *_ = env.step(np.array([0, 0]))
    np.testing.assert_array_equal(obs[42:57, 0], np.broadcast_to([116, 1, 113], (15, 3)))
    np.testing.assert_array_equal(obs[67:84, 0], np.broadcast_to([255, 94, 14], (17, 3)))


@pytest.mark.parametrize(
    "env_id, name, value",
    [
        (SS, "num_coins", 1),
        (SS, "num_coins", [1, -1]),
        (SS, "use_exit", "yes"),
        (SS, "exit_scale", 0.75),
        (SS, "spot_max_radius", 3.0),
        (SS, "spot_min_speed", -0.1),
        (SS, "agent_health", 0),
        (SS, "light_dim_off_duration", -1),
        (SS, "num_spawns", 2.5),
        (SS, "steps_per_coin", 10),
        (ESS, "coin_enabled", False),
        (ESS, "coin_scale", 1.5),
        (ESS, "agent_scale", 1.0),
        (ESS, "spawn_interval", float("nan")),
        (ESS, "initial_spawns", -2),
        (ESS, "num_coins", [1]),
    ],
)
def test_invalid_parameters_raise_value_error_naming_them(env_id, name, value):
    with pytest.raises(ValueError, match=name):
        gym.make(env_id, **{name: value})
    env = gym.make(env_id)
    with pytest.raises(ValueError, match=name):
        env.reset(seed=0, options={name: value})


def test_spawn_blocking_marks_every_cell_of_the_disk_and_no_other():
    # The sampler blocks within the disk's bounding square only; it must match the disk over the
    # whole screen, for centres inside, on the border and off the screen (whose squares clip).
    ys, xs = np.mgrid[:84, :84]
    draws = np.random.default_rng(7)
    for _ in range(300):
        sampler, expected = SpawnSampler(draws), np.zeros((84, 84), dtype=bool)
        for _ in range(3):
            x, y = (int(v) for v in draws.integers(-60, 150, 2))
            radius = int(draws.choice([1, 2, 21, 28, 60]))
            sampler.block(x, y, radius)
            expected |= (xs - x) ** 2 + (ys - y) ** 2 < radius * radius
        assert (sampler.blocked == expected).all(), (x, y, radius)
