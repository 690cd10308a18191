"""Mystery Path: golden replays against memory-gym 1.0.2, the path generator, API, batching, rules."""

from __future__ import annotations

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import envs  # noqa: F401  (registers the ids)
from envs.endless_mystery_path import RING, SEGMENT_COLUMNS
from envs.mystery_path import TILE, generate_layout
from tests.envs.golden import fixture_files, replay
from tools.golden_format import FIXTURES as FIXTURE_ROOT
from tools.golden_format import load_fixture

IDS = ["MysteryPath-v0", "MysteryPath-Grid-v0", "Endless-MysteryPath-v0"]
FIXTURES = fixture_files("mystery_path")
PATHS = Path(FIXTURE_ROOT) / "mystery_path" / "paths.npz"


def test_every_id_has_golden_fixtures():
    recorded = {load_fixture(path)["env_id"] for path in FIXTURES}
    assert recorded == set(IDS)


@pytest.mark.parametrize("path", FIXTURES, ids=[path.name.removesuffix(".json.gz") for path in FIXTURES])
def test_golden_trajectory_replays_identically(path):
    assert replay(load_fixture(path)) > 0


def test_generator_reproduces_reference_paths_walls_and_rng_state_for_1000_seeds():
    reference = np.load(PATHS)
    for seed in range(len(reference["cells"])):
        rng = np.random.default_rng(seed)
        path, wall = generate_layout(rng, [0, 1, 2, 3])
        cells = reference["cells"][seed]
        expected = [tuple(cell) for cell in cells[cells[:, 0] >= 0].tolist()]
        assert path == expected, f"seed {seed}: path"
        assert [path[0], path[-1]] == [tuple(p) for p in reference["start_end"][seed].tolist()], f"seed {seed}: ends"
        walls = sum(1 << cell for cell, is_wall in enumerate(wall) if is_wall)
        assert walls == int(reference["walls"][seed]), f"seed {seed}: walls"
        assert rng.integers(0, 2**32, 2).tolist() == reference["draws_after"][seed].tolist(), f"seed {seed}: rng state"


@pytest.mark.parametrize("env_id", IDS)
@pytest.mark.parametrize("render_mode", ["rgb_array", "debug_rgb_array"])
def test_check_env_passes(env_id, render_mode):
    check_env(gym.make(env_id, render_mode=render_mode).unwrapped)


@pytest.mark.parametrize("env_id", IDS)
def test_spaces_attributes_and_render_modes(env_id):
    env = gym.make(env_id, render_mode="rgb_array")
    obs, info = env.reset(seed=0)
    assert env.observation_space == gym.spaces.Box(0, 255, (84, 84, 3), np.uint8)
    assert env.observation_space.contains(obs)
    np.testing.assert_array_equal(env.render(), obs.transpose(1, 0, 2))
    continuous = env_id == "MysteryPath-v0"
    assert env.action_space == (gym.spaces.MultiDiscrete([3, 3]) if continuous else gym.spaces.Discrete(4))
    endless = env_id.startswith("Endless")
    assert env.unwrapped.has_ground_truth_info is endless
    assert hasattr(env.unwrapped, "ground_truth_space") is endless
    assert ("ground_truth" in info) is endless
    if endless:
        assert env.unwrapped.ground_truth_space == gym.spaces.Box(0, 1, (3,), np.float32)
        assert info["ground_truth"].sum() == 1
    debug = gym.make(env_id, render_mode="debug_rgb_array")
    debug.reset(seed=0)
    picture = debug.render()
    assert picture.shape == (336, 336, 3) and picture.dtype == np.uint8
    np.testing.assert_array_equal(picture, picture[::4, ::4].repeat(4, axis=0).repeat(4, axis=1))


def test_returned_ground_truth_is_not_changed_by_later_steps():
    env = gym.make("Endless-MysteryPath-v0")
    _, info = env.reset(seed=0)
    game = env.unwrapped.game
    returned, copies = [info["ground_truth"]], [info["ground_truth"].copy()]
    for _ in range(60):
        _, _, _, _, info = env.step(endless_follow_action(game))
        returned.append(info["ground_truth"])
        copies.append(info["ground_truth"].copy())
    assert len({tuple(value) for value in copies}) > 1
    assert all(np.array_equal(a, b) for a, b in zip(returned, copies))


def test_default_observation_shows_only_the_agent():
    env = gym.make("MysteryPath-v0")
    obs, _ = env.reset(seed=3)
    game = env.unwrapped.game
    lit = np.argwhere(obs.any(axis=-1))
    assert (np.abs(lit[:, 0] - game.cx[0]) <= 14).all() and (np.abs(lit[:, 1] - game.cy[0]) <= 14).all()


# ---- scripted path followers, reading our env's state --------------------------------------


def finite_follow_action(env_id: str, game):
    path = game.paths[0]
    x, y = int(game.cx[0] // TILE), int(game.cy[0] // TILE)
    tx, ty = path[path.index((x, y)) + 1]
    if env_id == "MysteryPath-v0":
        return np.array([2 if tx > x else 1, 0]) if tx != x else np.array([0, 2 if ty > y else 1])
    facing = 270 if tx > x else 90 if tx < x else 0 if ty < y else 180
    rotation = int(game.rotation[0])
    if rotation == facing:
        return 3
    return 1 if (facing - rotation) % 360 == 90 else 2


def endless_next_step(game) -> tuple[int, int]:
    """(dx, dy) from the agent's current path node to the next one."""
    slot = int(game.current_segment[0]) % RING
    node = int(game.current_node[0])
    if node == game.ring_length[0, slot] - 1:
        return 1, 0
    return (
        int(game.ring_columns[0, slot, node + 1] - game.ring_columns[0, slot, node]),
        int(game.ring_rows[0, slot, node + 1] - game.ring_rows[0, slot, node]),
    )


def endless_follow_action(game) -> int:
    dx, dy = endless_next_step(game)
    return 1 if dx > 0 else 2 if dy < 0 else 3 if dy > 0 else 0


@pytest.mark.parametrize("env_id", ["MysteryPath-v0", "MysteryPath-Grid-v0"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_path_follower_reaches_the_goal(env_id, seed):
    env = gym.make(env_id)
    env.reset(seed=seed)
    game = env.unwrapped.game
    path = game.paths[0]
    for t in range(200):
        obs, reward, terminated, _, info = env.step(finite_follow_action(env_id, game))
        if terminated:
            break
    assert terminated and info["success"] == 1 and info["num_fails"] == 0
    progress = game.reward_progress[0] * (len(path) - 2)
    assert info["reward"] == pytest.approx(game.reward_goal[0] + progress)
    assert (int(game.cx[0] // TILE), int(game.cy[0] // TILE)) == path[-1]


def test_endless_follower_walks_200_tiles_with_ground_truth_pointing_the_way():
    env = gym.make("Endless-MysteryPath-v0")
    _, info = env.reset(seed=0)
    game = env.unwrapped.game
    for _ in range(2000):
        dx, dy = endless_next_step(game)
        expected = [1, 0, 0] if dx == 1 else [0, 1, 0] if dy == -1 else [0, 0, 1]
        assert info["ground_truth"].tolist() == expected
        _, reward, terminated, _, info = env.step(endless_follow_action(game))
        assert not terminated
        if game.tiles_visited[0] >= 200:
            break
    assert game.tiles_visited[0] >= 200 and game.num_fails[0] == 0
    assert game.max_x[0] >= 100 and game.num_segments[0] >= game.max_x[0] // SEGMENT_COLUMNS + 2


def off_path_direction(game) -> int | None:
    """Up (2) or down (3), whichever leads from the agent's tile to a tile off the path."""
    tx, ty = int(game.tx[0]), int(game.ty[0])
    segment = tx // SEGMENT_COLUMNS
    local = (tx - segment * SEGMENT_COLUMNS) * 7
    for action, row in ((2, ty - 1), (3, ty + 1)):
        if not 0 <= row < 7 or game.ring_node[0, segment % RING, local + row] < 0:
            return action
    return None


def fall_off_at_the_frontier(env, game) -> bool:
    """Walk up or down off the path from the best column reached so far (survivable once per cell)."""
    action = off_path_direction(game)
    if action is None or game.tx[0] < game.max_x[0] or game.off_path[0]:
        return False
    while not game.off_path[0]:
        _, _, terminated, _, _ = env.step(action)
        assert not terminated
    return True


def _walk_with_frontier_falls(steps: int, fall_every: int):
    """Follow the endless path, stepping off it at a new frontier column about every `fall_every` steps."""
    env = gym.make("Endless-MysteryPath-v0")
    env.reset(seed=5)
    game = env.unwrapped.game
    sizes, last_fall = None, -1
    while game.t[0] < steps:
        if game.t[0] % fall_every >= fall_every - 20 and game.tx[0] > last_fall and fall_off_at_the_frontier(env, game):
            last_fall = int(game.tx[0])
        _, _, terminated, _, _ = env.step(endless_follow_action(game))
        assert not terminated, f"step {game.t[0]}"
        if sizes is None and game.t[0] >= 200:
            sizes = {name: value.shape for name, value in vars(game).items() if isinstance(value, np.ndarray)}
    return game, sizes


def test_endless_10000_step_walk_keeps_state_bounded_and_respawns_rewalk_regenerated_segments():
    game, sizes = _walk_with_frontier_falls(10_000, 1500)
    assert game.num_fails[0] >= 3 and game.num_segments[0] > RING + 3
    for name, shape in sizes.items():
        if name != "reward_marks":
            assert getattr(game, name).shape == shape, name
    # The one per-segment record: 8 bytes of reward marks per generated segment (capacity doubles).
    assert game.reward_marks.shape[1] <= max(16, 2 * game.num_segments[0])


def test_endless_falling_at_the_frontier_respawns_at_the_first_cell_and_refills_stamina_on_it():
    env = gym.make("Endless-MysteryPath-v0")
    env.reset(seed=2)
    game = env.unwrapped.game
    while game.tx[0] < 3 or off_path_direction(game) is None:
        env.step(endless_follow_action(game))
    assert fall_off_at_the_frontier(env, game)
    assert game.cross_shown[0]
    stamina = [int(game.stamina[0])]
    for _ in range(2):
        env.step(1)  # ignored on the respawn step
        stamina.append(int(game.stamina[0]))
    assert game.num_fails[0] == 1 and game.tx[0] == 0 and game.cy[0] == game.start_row[0] * TILE + 6
    # memory-gym 1.0.2 treats the start tile like any unvisited tile after a respawn.
    assert stamina == [19, 19, 18]


# ---- batching --------------------------------------------------------------------------------


@pytest.mark.parametrize("env_id", IDS)
def test_vector_env_equals_single_envs_seeded_consecutively(env_id):
    num_envs, seed, steps = 3, 11, 300
    params = {} if env_id.startswith("Endless") else {"max_steps": 70, "show_goal": True}
    vector = gym.make_vec(env_id, num_envs=num_envs, vectorization_mode="vector_entry_point", **params)
    singles = [gym.make(env_id, **params) for _ in range(num_envs)]
    vector_obs, vector_info = vector.reset(seed=seed)
    for i, env in enumerate(singles):
        obs, info = env.reset(seed=seed + i)
        np.testing.assert_array_equal(vector_obs[i], obs)
        for key, value in info.items():
            np.testing.assert_array_equal(vector_info[key][i], value)
    rng = np.random.default_rng(0)
    episodes_ended = 0
    for t in range(steps):
        if env_id == "MysteryPath-v0":
            actions = rng.integers(0, 3, (num_envs, 2))
        else:
            actions = rng.choice(4, num_envs, p=[0.1, 0.6, 0.15, 0.15] if env_id.startswith("Endless") else None)
        vector_obs, rewards, terminated, truncated, infos = vector.step(actions)
        assert not truncated.any()
        for i, env in enumerate(singles):
            obs, reward, done, _, info = env.step(actions[i])
            where = f"step {t} env {i}"
            assert rewards[i] == reward and terminated[i] == done, where
            if done:
                episodes_ended += 1
                np.testing.assert_array_equal(infos["final_obs"][i], obs, err_msg=where)
                for key, value in info.items():
                    np.testing.assert_array_equal(infos["final_info"][key][i], value, err_msg=f"{where} {key}")
                obs, info = env.reset()
            for key, value in info.items():
                np.testing.assert_array_equal(infos[key][i], value, err_msg=f"{where} {key}")
            np.testing.assert_array_equal(vector_obs[i], obs, err_msg=where)
    assert episodes_ended >= num_envs


# ---- parameters ----------------------------------------------------------------------------

INVALID = [
    ("MysteryPath-v0", {"cardinal_origin_choice": []}, "cardinal_origin_choice"),
    ("MysteryPath-v0", {"cardinal_origin_choice": [4]}, "cardinal_origin_choice"),
    ("MysteryPath-v0", {"cardinal_origin_choice": 1}, "cardinal_origin_choice"),
    ("MysteryPath-v0", {"show_goal": "yes"}, "show_goal"),
    ("MysteryPath-v0", {"agent_scale": 0}, "agent_scale"),
    ("MysteryPath-v0", {"agent_speed": -1.0}, "agent_speed"),
    ("MysteryPath-v0", {"max_steps": 10.5}, "max_steps"),
    ("MysteryPath-v0", {"reward_goal": float("inf")}, "reward_goal"),
    ("MysteryPath-v0", {"path_colour": 1}, "path_colour"),
    ("MysteryPath-Grid-v0", {"agent_speed": 3.0}, "agent_speed"),
    ("MysteryPath-Grid-v0", {"visual_feedback": 1}, "visual_feedback"),
    ("Endless-MysteryPath-v0", {"stamina_level": 0}, "stamina_level"),
    ("Endless-MysteryPath-v0", {"camera_offset_scale": "far"}, "camera_offset_scale"),
    ("Endless-MysteryPath-v0", {"show_past_path": None}, "show_past_path"),
    ("Endless-MysteryPath-v0", {"agent_speed": 100.0}, "agent_speed"),
    ("Endless-MysteryPath-v0", {"reward_path_progress_dense": 1.0}, "reward_path_progress_dense"),
]


@pytest.mark.parametrize(("env_id", "params", "name"), INVALID)
def test_invalid_parameters_raise_value_error_naming_them(env_id, params, name):
    with pytest.raises(ValueError, match=name):
        gym.make(env_id, **params)
    env = gym.make(env_id)
    with pytest.raises(ValueError, match=name):
        env.reset(seed=0, options=params)


def test_constructor_parameters_persist_and_options_apply_to_one_reset():
    env = gym.make("Endless-MysteryPath-v0", stamina_level=7)
    env.reset(seed=0)
    assert env.unwrapped.game.stamina[0] == 7
    env.reset(options={"stamina_level": 30})
    assert env.unwrapped.game.stamina[0] == 30
    env.reset()
    assert env.unwrapped.game.stamina[0] == 7


def test_endless_vector_autoresets_return_to_the_standing_parameters_after_reset_options():
    # reset(options=...) applies to that reset only: episodes started by autoreset use the
    # constructor's parameters again (first frames with and without the icy background).
    envs_ = gym.make_vec("Endless-MysteryPath-v0", num_envs=4, vectorization_mode="vector_entry_point")
    icy = np.array([125, 177, 250], dtype=np.uint8)
    obs, _ = envs_.reset(seed=0, options={"show_background": True, "stamina_level": 3})
    assert (obs == icy).all(axis=-1).any(axis=(1, 2)).all()
    assert (envs_.unwrapped.game.stamina == 3).all()
    for _ in range(3):
        obs, _, terminated, _, _ = envs_.step(np.zeros(4, dtype=np.int64))
    assert terminated.all()  # three no-op steps spend a stamina of 3
    assert not (obs == icy).all(axis=-1).any()
    assert (envs_.unwrapped.game.stamina == 20).all()
