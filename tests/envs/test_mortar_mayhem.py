"""Mortar Mayhem: golden replays against memory-gym 1.0.2, API conformance, batching, rules."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the ids)
from envs.mortar_mayhem import COMMAND_DX, COMMAND_DY, TILE, Draws
from envs.raster import SpriteSheet, alpha_blend, blit, disk_offsets, rhaz, rotate_vector
from envs.sprites import agent_sprites
from tests.envs.golden import fixture_files, replay
from tools.golden_format import load_fixture

IDS = ["MortarMayhem-v0", "MortarMayhem-Grid-v0", "MortarMayhemB-v0", "MortarMayhemB-Grid-v0", "Endless-MortarMayhem-v0"]
FINITE_IDS = IDS[:4]
GRID_IDS = {"MortarMayhem-Grid-v0", "MortarMayhemB-Grid-v0"}
FIXTURES = fixture_files("mortar_mayhem")


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
    assert env.observation_space.contains(obs)
    visual = obs["visual_observation"] if isinstance(obs, dict) else obs
    np.testing.assert_array_equal(env.render(), visual.transpose(1, 0, 2))
    assert env.action_space == (gym.spaces.Discrete(4) if env_id in GRID_IDS else gym.spaces.MultiDiscrete([3, 3]))
    endless = env_id.startswith("Endless")
    assert env.unwrapped.has_ground_truth_info is endless
    assert hasattr(env.unwrapped, "ground_truth_space") is endless
    assert ("ground_truth" in info) is endless
    debug = gym.make(env_id, render_mode="debug_rgb_array")
    debug.reset(seed=0)
    picture = debug.render()
    assert picture.shape == (336, 336, 3) and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture, picture[::4, ::4].repeat(4, axis=0).repeat(4, axis=1))


# ---- a scripted perfect player, reading our env's state ----------------------------------


def perfect_action(game, env_id: str, target=None):
    """Walk (or turn and step) into the target tile, keeping 2 px away from its edges."""
    tx, ty = target or (int(game.target_x[0]), int(game.target_y[0]))
    if env_id in GRID_IDS:
        x, y, rotation = int(game.cell_x[0]), int(game.cell_y[0]), int(game.rotation[0])
        if (x, y) == (tx, ty):
            return 0
        facing = 270 if tx > x else 90 if tx < x else 0 if ty < y else 180
        if rotation == facing:
            return 3
        return 1 if (facing - rotation) % 360 == 90 else 2
    origin = int(game.origin[0])
    action = []
    for centre, target in ((int(game.cx[0]), tx), (int(game.cy[0]), ty)):
        low, high = origin + TILE * target + 2, origin + TILE * target + TILE - 3
        delta = low - centre if centre < low else high - centre if centre > high else 0
        if game.endless and abs(delta) > 42:  # shorter across the seam of the torus
            delta -= int(np.sign(delta)) * 90
        action.append(0 if delta == 0 else 2 if delta > 0 else 1)
    return np.array(action)


def play_perfectly(env, env_id: str, max_steps: int):
    rewards, info = [], {}
    for _ in range(max_steps):
        _, reward, terminated, truncated, info = env.step(perfect_action(env.unwrapped.game, env_id))
        rewards.append(reward)
        assert not truncated
        if terminated:
            break
    return rewards, info


@pytest.mark.parametrize(("env_id", "length"), zip(FINITE_IDS, [274, 118, 235, 79]))
@pytest.mark.parametrize("seed", [0, 1])
def test_perfect_policy_succeeds_in_the_shortest_possible_episode(env_id, length, seed):
    env = gym.make(env_id)
    env.reset(seed=seed)
    rewards, info = play_perfectly(env, env_id, 1000)
    assert len(rewards) == length
    assert info["success"] == 1 and info["commands_completed"] == 1.0
    assert info["reward"] == pytest.approx(1.0) and sum(rewards) == pytest.approx(1.0)
    assert info["length"] == length


def test_endless_perfect_policy_clears_long_sequences_on_the_default_timeline():
    env = gym.make("Endless-MortarMayhem-v0", max_steps=1200)
    env.reset(seed=5)
    rewards, info = play_perfectly(env, "Endless-MortarMayhem-v0", 1200)
    assert info["length"] == 1200
    assert info["commands_completed"] >= 20
    checks = [t + 1 for t, reward in enumerate(rewards) if reward > 0][:7]
    assert checks == [22, 50, 74, 102, 126, 150, 178]
    assert info["max_command_sequence"] == int(env.unwrapped.game.num_commands[0]) - 1


@pytest.mark.parametrize("env_id", ["MortarMayhemB-v0", "MortarMayhem-Grid-v0"])
def test_failing_the_last_command_still_reports_success(env_id):
    env = gym.make(env_id)
    env.reset(seed=3, options={"command_count": [3], "reward_command_failure": -0.5, "reward_episode_success": 2.0})
    game = env.unwrapped.game
    size = int(game.arena_size[0])
    for _ in range(300):
        target = None
        if game.current[0] == game.num_commands[0] - 1 and not game.tiles_on[0]:
            # Walk to a neighbour of the last target instead.
            tx, ty = int(game.target_x[0]), int(game.target_y[0])
            target = (tx + 1 if tx + 1 < size else tx - 1, ty)
        _, reward, terminated, _, info = env.step(perfect_action(game, env_id, target))
        if terminated:
            break
    assert terminated
    assert reward == -0.5  # the bonus is overwritten by the failure reward
    assert info["success"] == 1 and info["commands_completed"] == 1.0
    assert info["reward"] == pytest.approx(0.1 + 0.1 - 0.5)


# ---- batching ------------------------------------------------------------------------------


def _assert_same(ours, theirs, what: str):
    if isinstance(theirs, dict):
        for key in theirs:
            _assert_same(ours[key], theirs[key], f"{what}[{key}]")
    else:
        np.testing.assert_array_equal(ours, theirs, err_msg=what)


def _row(batched, i: int):
    """Env i of a batched observation (an array, or a dict of arrays)."""
    return {key: value[i] for key, value in batched.items()} if isinstance(batched, dict) else batched[i]


@pytest.mark.parametrize("env_id", IDS)
def test_vector_env_equals_single_envs_seeded_consecutively(env_id):
    _compare_vector_with_singles(env_id, options=None)


# First episodes with other options than the standing ones: agents of two scales on screen at
# once, and command counts and phase lengths drawn from lists.
OPTIONS = {
    "MortarMayhem-v0": {"agent_scale": 0.35, "command_count": [2, 4], "command_show_duration": [1, 2], "explosion_delay": [5, 7]},
    "MortarMayhem-Grid-v0": {"arena_size": 3, "command_count": [3, 5], "command_show_delay": [0, 2], "explosion_duration": [1, 3]},
    "MortarMayhemB-v0": {"agent_scale": 0.3, "arena_size": 4, "command_count": [1, 3, 6], "explosion_delay": [6, 9]},
    "MortarMayhemB-Grid-v0": {"arena_size": 2, "command_count": [2, 7], "explosion_delay": [3, 4]},
    "Endless-MortarMayhem-v0": {"agent_scale": 0.4, "initial_command_count": 3, "command_show_duration": [2, 3], "explosion_delay": [5, 8]},
}


@pytest.mark.parametrize("env_id", IDS)
def test_vector_env_equals_single_envs_after_reset_options(env_id):
    _compare_vector_with_singles(env_id, options=OPTIONS[env_id])


def _compare_vector_with_singles(env_id: str, options):
    num_envs, seed, steps = 3, 11, 160
    vector = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point")
    singles = [gym.make(env_id) for _ in range(num_envs)]
    vector_obs, vector_info = vector.reset(seed=seed, options=options)
    single_obs = [env.reset(seed=seed + i, options=options) for i, env in enumerate(singles)]
    rng = np.random.default_rng(0)
    episodes_ended = 0
    for i, (obs, info) in enumerate(single_obs):
        _assert_same(_row(vector_obs, i), obs, "reset obs")
        for key, value in info.items():
            _assert_same(vector_info[key][i], value, f"reset info {key}")
    for t in range(steps):
        actions = rng.integers(0, 4, num_envs) if env_id in GRID_IDS else rng.integers(0, 3, (num_envs, 2))
        vector_obs, rewards, terminated, truncated, infos = vector.step(actions)
        assert not truncated.any()
        for i, env in enumerate(singles):
            obs, reward, done, _, info = env.step(actions[i])
            where = f"step {t} env {i}"
            assert rewards[i] == reward and terminated[i] == done, where
            if done:
                episodes_ended += 1
                _assert_same(_row(infos["final_obs"], i), obs, f"{where} final obs")
                for key, value in info.items():
                    assert infos["final_info"][f"_{key}"][i], f"{where} final info {key} missing"
                    _assert_same(infos["final_info"][key][i], value, f"{where} final info {key}")
                obs, info = env.reset()
            for key, value in info.items():
                _assert_same(infos[key][i], value, f"{where} info {key}")
            _assert_same(_row(vector_obs, i), obs, f"{where} obs")
    assert episodes_ended >= num_envs


# ---- parameters ----------------------------------------------------------------------------

INVALID = [
    ("MortarMayhem-v0", {"arena_size": 7}, "arena_size"),
    ("MortarMayhem-v0", {"arena_size": 1}, "arena_size"),
    ("MortarMayhem-v0", {"allowed_commands": 3}, "allowed_commands"),
    ("MortarMayhem-v0", {"allowed_commands": 10}, "allowed_commands"),
    ("MortarMayhem-v0", {"command_count": [0]}, "command_count"),
    ("MortarMayhem-v0", {"command_count": []}, "command_count"),
    ("MortarMayhem-v0", {"command_count": 10}, "command_count"),
    ("MortarMayhem-v0", {"command_show_duration": [0], "command_show_delay": [0]}, "command_show_duration"),
    ("MortarMayhem-v0", {"explosion_delay": [-1]}, "explosion_delay"),
    ("MortarMayhem-v0", {"explosion_duration": [2.5]}, "explosion_duration"),
    ("MortarMayhem-v0", {"visual_feedback": "yes"}, "visual_feedback"),
    ("MortarMayhem-v0", {"agent_scale": 0}, "agent_scale"),
    ("MortarMayhem-v0", {"agent_speed": float("nan")}, "agent_speed"),
    ("MortarMayhem-v0", {"reward_command_success": "high"}, "reward_command_success"),
    ("MortarMayhem-v0", {"colour": 1}, "colour"),
    ("MortarMayhem-Grid-v0", {"agent_speed": 3.0}, "agent_speed"),
    ("MortarMayhemB-v0", {"command_count": [5, 21]}, "command_count"),
    ("MortarMayhemB-v0", {"command_show_duration": [3]}, "command_show_duration"),
    ("MortarMayhemB-Grid-v0", {"arena_size": 0}, "arena_size"),
    ("Endless-MortarMayhem-v0", {"initial_command_count": 0}, "initial_command_count"),
    ("Endless-MortarMayhem-v0", {"arena_size": 5}, "arena_size"),
    ("Endless-MortarMayhem-v0", {"max_steps": 1.5}, "max_steps"),
]


@pytest.mark.parametrize(("env_id", "params", "name"), INVALID)
def test_invalid_parameters_raise_value_error_naming_them(env_id, params, name):
    with pytest.raises(ValueError, match=name):
        gym.make(env_id, **params)
    env = gym.make(env_id)
    with pytest.raises(ValueError, match=name):
        env.reset(seed=0, options=params)


def test_degenerate_explosion_periods_behave_like_one():
    def checks(options):
        env = gym.make("MortarMayhemB-Grid-v0")
        env.reset(seed=4, options=options)
        game = env.unwrapped.game
        flags = []
        for _ in range(12):
            env.step(0)
            flags.append(bool(game.tiles_on[0]))
        return flags

    assert checks({"explosion_duration": [0], "explosion_delay": [0]}) == checks(
        {"explosion_duration": [1], "explosion_delay": [1]}
    )


def test_constructor_parameters_persist_and_options_apply_to_one_reset():
    env = gym.make("MortarMayhem-v0", arena_size=3)
    env.reset(seed=0)
    assert env.unwrapped.game.arena_size[0] == 3
    env.reset(options={"arena_size": 6})
    assert env.unwrapped.game.arena_size[0] == 6
    env.reset()
    assert env.unwrapped.game.arena_size[0] == 3


def test_commands_keep_the_target_inside_the_arena():
    env = gym.make("MortarMayhem-v0", arena_size=2, command_count=[20])
    for seed in range(20):
        env.reset(seed=seed)
        game = env.unwrapped.game
        x, y = int(game.target_x[0]), int(game.target_y[0])
        for command in game.commands[0, 1 : game.num_commands[0]]:
            x, y = x + COMMAND_DX[command], y + COMMAND_DY[command]
            assert 0 <= x < 2 and 0 <= y < 2


def test_draws_consume_the_generator_like_separate_integers_calls():
    # Bounds near 2**32 reject up to a quarter of the outputs, so the rejection path runs often.
    bounds = [1, 2, 3, 4, 9, 25, 36, 3 * 2**30, 2**31 + 1, 2**32 - 1]
    for seed in range(30):
        expected_rng, rng = np.random.default_rng(seed), np.random.default_rng(seed)
        if seed % 2:  # start with half of a 64-bit output kept in the generator
            assert expected_rng.integers(0, 5) == rng.integers(0, 5)
        ks = [bounds[i] for i in np.random.default_rng(100 + seed).integers(0, len(bounds), 40)]
        expected = [int(expected_rng.integers(0, k)) for k in ks]
        draws = Draws(rng)
        draws.ahead(sum(k > 1 for k in ks[:20]))
        got = [draws.below(k) for k in ks[:20]]
        draws.ahead(sum(k > 1 for k in ks[20:]))
        got += [draws.below(k) for k in ks[20:]]
        assert got == expected
        assert _live_state(rng) == _live_state(expected_rng)


def _live_state(rng: np.random.Generator) -> dict:
    """A PCG64 state without its kept 32-bit half when it has none (a stale value never read)."""
    state = dict(rng.bit_generator.state)
    if not state["has_uint32"]:
        del state["uinteger"]
    return state


# ---- shared drawing primitives the family is built on --------------------------------------


@pytest.mark.parametrize(("radius", "widths"), [(1, [2, 2]), (3, [2, 4, 6, 6, 4, 2]), (6, [4, 6, 8, 10, 12, 12, 12, 12, 10, 8, 6, 4])])
def test_disk_rows_follow_the_midpoint_scan(radius, widths):
    dx, dy = disk_offsets(radius)
    assert [int((dy == row).sum()) for row in range(-radius, radius)] == widths
    assert dx.min() == -radius and dx.max() == radius - 1
    assert len(disk_offsets(0)[0]) == 0


def test_alpha_blend_truncates_toward_zero():
    dst = np.array([100, 0, 10, 200], dtype=np.uint8)
    out = alpha_blend(dst, np.array([0, 255, 0, 255]), np.array([128, 1, 255, 300]))
    assert out.tolist() == [50, 1, 0, 255]


def test_rounding_and_quarter_turns_are_exact():
    assert [rhaz(v) for v in (10.5, 11.5, -0.5, -2.5, 2.4)] == [11, 12, -1, -3, 2]
    assert rotate_vector(-4.0, -4.0, 90) == (4.0, -4.0)
    assert rotate_vector(3.0, 1.0, 360) == (3.0, 1.0)


def test_batched_sprite_blit_clips_like_a_single_blit():
    sprites = list(agent_sprites(0.25))
    sheet = SpriteSheet(sprites)
    rng = np.random.default_rng(0)
    n = 16
    screens = rng.integers(0, 255, (n, 84, 84, 3)).astype(np.uint8)
    expected = screens.copy()
    index = rng.integers(0, len(sprites), n)
    x, y = rng.integers(-30, 90, n), rng.integers(-30, 90, n)
    for i in range(n):
        blit(expected[i], sprites[index[i]], x[i], y[i])
    sheet.blit(screens, np.arange(n), index, x, y)
    np.testing.assert_array_equal(screens, expected)
