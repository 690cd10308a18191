"""Env state: a fresh env given a saved state continues bit for bit, and a state that play could not
have produced is refused with the field named, without importing or building anything."""

from __future__ import annotations

import copy
import io
import os
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401
import envs.core
import envs.state
from envs.core import NativeEnv

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools"))
import fuzz_env_state  # noqa: E402

NATIVE_IDS = sorted(
    env_id
    for env_id, spec in gym.registry.items()
    if isinstance(spec.entry_point, type) and issubclass(spec.entry_point, NativeEnv)
    and spec.entry_point.__module__.startswith("envs.")  # the project's ids, not those other tests register
)
NUM_ENVS = 3


def through_file(state):
    """`state` after `torch.save` and `torch.load(weights_only=True)`, as a checkpoint carries it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def played(env_id: str, steps: int = 25, seed: int = 11, **params):
    vec = gym.make_vec(env_id, num_envs=NUM_ENVS, **params)
    vec.reset(seed=seed)
    vec.action_space.seed(0)
    for _ in range(steps):
        vec.step(vec.action_space.sample())
    return vec


def fresh(env_id: str, **params):
    vec = gym.make_vec(env_id, num_envs=NUM_ENVS, **params)
    vec.reset(seed=12345)
    return vec


def saved(env_id: str, steps: int = 25) -> tuple:
    """A played game and its state after a trip through a file."""
    game = played(env_id, steps).unwrapped.game
    return game, through_file(game.get_state())


def assert_same(a, b, where="") -> None:
    """Steps (observations, rewards, flags, infos) or states equal exactly, type for type."""
    assert type(a) is type(b), where
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, np.ndarray) and a.dtype == object:
        assert a.shape == b.shape, where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{k}]")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for k, (x, y) in enumerate(zip(a, b)):
            assert_same(x, y, f"{where}[{k}]")
    elif isinstance(a, np.ndarray):
        assert a.dtype == b.dtype, where
        np.testing.assert_array_equal(a, b, err_msg=where)
    elif isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and torch.equal(a, b), where
    else:
        assert a == b, where


def plain_types(value) -> set[type]:
    if isinstance(value, dict):
        assert all(type(key) is str for key in value)
        return {dict}.union(*(plain_types(v) for v in value.values()))
    if isinstance(value, list):
        return {list}.union(*(plain_types(v) for v in value))
    return {type(value)}


def assert_continue_alike(original, restored, steps: int, debug: bool = True) -> bool:
    """Both vector envs give the same steps (and debug renders) for the same actions; True if an episode ended."""
    ended = False
    games = original.unwrapped.game, restored.unwrapped.game
    for t in range(steps):
        if debug:
            for i in range(NUM_ENVS):
                np.testing.assert_array_equal(games[0].render_debug(i), games[1].render_debug(i), err_msg=f"debug {t} {i}")
        action = original.action_space.sample()
        first, second = original.step(action), restored.step(action)
        assert_same(first, second, f"step {t}")
        ended |= bool(first[2].any())
    return ended


@pytest.mark.parametrize("env_id", NATIVE_IDS)
def test_fresh_env_given_the_state_continues_identically(env_id):
    # Long enough before saving that episodes have ended and the carried values matter.
    original = played(env_id, steps=150)
    state = original.unwrapped.game.get_state()
    assert plain_types(state) <= {dict, list, torch.Tensor, str, int, float, bool, type(None)}
    restored = fresh(env_id)
    restored.unwrapped.game.set_state(through_file(state))
    ended = assert_continue_alike(original, restored, 400)
    assert ended or env_id.startswith("Endless"), "episodes should end and autoreset"


# Parameters of the episodes before the saved one differ from the saved one's: what the earlier
# episodes leave behind (board colour, darkness, drawn agent) must come from the state.
CARRIED_CASES = [
    ("SearingSpotlights-v0", {"hide_chessboard": True}, {"light_dim_off_duration": 0}),
    ("SearingSpotlights-v0", {"black_background": True, "light_dim_off_duration": 0}, {}),
    ("Endless-SearingSpotlights-v0", {"hide_chessboard": True, "black_background": True}, {"light_dim_off_duration": 0}),
    ("MortarMayhem-v0", {"agent_scale": 0.5}, {"agent_scale": 0.25}),
    ("Endless-MortarMayhem-v0", {"agent_scale": 0.5}, {}),
    ("MortarMayhemB-Grid-v0", {}, {}),
]


@pytest.mark.parametrize("env_id, first, standing", CARRIED_CASES)
def test_what_earlier_episodes_leave_behind_is_restored(env_id, first, standing):
    original = gym.make_vec(env_id, num_envs=NUM_ENVS, **standing)
    original.reset(seed=5, options=first)
    original.action_space.seed(1)
    games_ended = np.zeros(NUM_ENVS, dtype=bool)
    for _ in range(2000):
        games_ended |= original.step(original.action_space.sample())[2]
        if games_ended.all():
            break
    assert games_ended.all()
    for _ in range(3):  # save at a few points of the new episodes, right after a reset included
        state = through_file(original.unwrapped.game.get_state())
        restored = fresh(env_id, **standing)
        restored.unwrapped.game.set_state(state)
        assert_continue_alike(original, restored, 30)


def test_a_single_env_continues_identically_and_refuses_to_save_a_finished_episode():
    single = gym.make("MysteryPath-v0")
    single.reset(seed=3)
    single.action_space.seed(0)
    for _ in range(20):
        single.step(single.action_space.sample())
    state = through_file(single.unwrapped.game.get_state())
    other = gym.make("MysteryPath-v0")
    other.reset(seed=99)
    other.unwrapped.game.set_state(state)
    for _ in range(20):
        action = single.action_space.sample()
        assert_same(single.step(action), other.step(action))
    while not single.step(single.action_space.sample())[2]:
        pass
    with pytest.raises(ValueError, match=r"^MysteryPath-v0: env 0 has finished its episode: reset it before saving"):
        single.unwrapped.game.get_state()
    single.reset()
    single.unwrapped.game.get_state()


def test_a_state_holds_no_internal_arrays():
    _, state = saved("SearingSpotlights-v0")
    assert list(state) == ["env_id", "episodes"] and len(state["episodes"]) == NUM_ENVS
    for episode in state["episodes"]:
        assert list(episode) == ["rng", "params", "carried", "actions", "rendered"] and episode["rendered"] == {}
        assert set(episode["carried"]) == set(envs.searing_spotlights.SearingSpotlightsGame.carried)
        assert episode["actions"].dtype == torch.int64 and episode["actions"].shape[1:] == (2,)


def refused(game, state, message: str) -> None:
    before = through_file(game.get_state())
    with pytest.raises(ValueError, match=message):
        game.set_state(state)
    assert_same(through_file(game.get_state()), before)  # unchanged


def test_structure_errors_name_the_field():
    game, state = saved("ProofOfMemory-v0")
    refused(game, {"num_envs": 3, "cue": state}, r"^ProofOfMemory-v0: the saved env state holds no episode histories")
    refused(game, [state], r"holds no episode histories")
    refused(game, state | {"extra": 1}, r"field 'extra' is not a field of this state")
    smaller = gym.make_vec("ProofOfMemory-v0", num_envs=2)
    smaller.reset(seed=0)
    refused(smaller.unwrapped.game, state, r"field 'episodes' has 3 items, expected a list with one per env \(2\)")
    other = fresh("ProofOfMemoryImage-v0").unwrapped.game
    refused(other, state, r"field 'env_id' is 'ProofOfMemory-v0': the state of another environment")
    missing = copy.deepcopy(state)
    del missing["episodes"][1]["params"]
    refused(game, missing, r"field 'episodes\[1\]\.params' is missing")


def zero_stride(length: int, *shape: int) -> torch.Tensor:
    """A tensor of `length` rows that stores one element (a file can hold such a view)."""
    return torch.zeros(1, dtype=torch.int64).expand(length, *shape)


MM, MP, SS = "Endless-MortarMayhem-v0", "Endless-MysteryPath-v0", "SearingSpotlights-v0"
RAW_BYTE_0X7F = torch.tensor(127, dtype=torch.uint8).view(torch.bool)
LEAVES = {
    # Generator state: a PCG64's words, any value in their width.
    "rng_word_too_wide": ("ProofOfMemory-v0", ("rng", "state"), 2**128, r"'episodes\[0\]\.rng\.state' is 3402.*expected an integer in \[0, 2\*\*128\)"),
    "rng_word_negative": ("ProofOfMemory-v0", ("rng", "inc"), -1, r"'episodes\[0\]\.rng\.inc' is -1"),
    "rng_flag_bool": ("ProofOfMemory-v0", ("rng", "has_uint32"), True, r"'episodes\[0\]\.rng\.has_uint32' has type bool, expected int"),
    "rng_other_generator": ("ProofOfMemory-v0", ("rng", "bit_generator"), "MT19937", r"'episodes\[0\]\.rng\.bit_generator' is not a field"),
    # Reset parameters: what reset(options=...) accepts.
    "param_named_like_code": (SS, ("params", "__class__"), "os.system", r"'episodes\[0\]\.params\.__class__' is not a reset parameter"),
    "param_out_of_range": (SS, ("params", "agent_scale"), 5.0, r"'episodes\[0\]\.params' holds invalid .*agent_scale"),
    "param_nested_list": (MM, ("params", "command_show_duration"), [[3]], r"'episodes\[0\]\.params\.command_show_duration' must be a bool"),
    # Actions: the action space, int64, at most MAX_EPISODE_STEPS of them.
    "action_too_large": (MP, ("actions",), torch.tensor([0, 5, 9]), r"'episodes\[0\]\.actions' holds an action outside the action space Discrete\(4\)"),
    "action_negative": (MP, ("actions",), torch.tensor([0, -1]), r"holds an action outside"),
    "action_shape": (SS, ("actions",), torch.zeros((4, 3), dtype=torch.int64), r"'episodes\[0\]\.actions' has shape \(4, 3\), expected \(any, 2\)"),
    "action_dtype": (MP, ("actions",), torch.zeros(4, dtype=torch.float32), r"has dtype torch.float32, expected int64"),
    "actions_a_list": (MP, ("actions",), [0, 1], r"'episodes\[0\]\.actions' has type list, expected a tensor of int64"),
    # Carried values: pixels anything, the rest what play produces.
    "drawn_x_off_screen": (MM, ("carried", "drawn_x"), torch.tensor(10**12), r"'episodes\[0\]\.carried\.drawn_x' must hold integers in \[-84, 168\)"),
    "drawn_scale_nan": (MM, ("carried", "drawn_scale"), torch.tensor(float("nan"), dtype=torch.float64), r"drawn_scale' must hold a number in \(0, 2\]"),
    "drawn_live_raw_byte": (MM, ("carried", "drawn_live"), RAW_BYTE_0X7F, r"drawn_live' must hold booleans stored as 0 or 1"),
    "shown_cx_negative": (SS, ("carried", "shown_cx"), torch.tensor(-1), r"shown_cx' must hold integers in \[0, 84\)"),
    "codes_shape": (SS, ("carried", "codes"), torch.zeros((84, 84), dtype=torch.uint8), r"carried\.codes' has shape \(84, 84\), expected \(84, 84, 3\)"),
    "debug_pos_beyond_list": (MM, ("rendered", "debug_pos"), torch.tensor(10**6), r"'episodes\[0\]\.rendered\.debug_pos' must hold integers in \[0, show_len = \d+\]"),
    # The attacks that reached memory when internal arrays were saved: those fields exist no more, and the
    # values they aimed at can only arrive as checked parameters, actions or carried values.
    "fall_count_negative": (MP, ("fall_count",), torch.tensor(-5), r"'episodes\[0\]\.fall_count' is not a field of this state"),
    "cx_at_ring_node_0": (MP, ("cx",), torch.tensor(-(2**40)), r"'episodes\[0\]\.cx' is not a field"),
    "last_end_row_50": (MP, ("last_end_row",), torch.tensor(50), r"'episodes\[0\]\.last_end_row' is not a field"),
    "current_node_10e12": (MP, ("current_node",), torch.tensor(10**12), r"'episodes\[0\]\.current_node' is not a field"),
    "num_segments_10e12": (MP, ("actions",), zero_stride(10**12), r"has shape \(1000000000000,\), expected \(any,\) \(any: at most 1,048,576\)"),
    "rotation_540": (SS, ("carried", "shown_rotation"), torch.tensor(540), r"shown_rotation' must hold one of \[0, 45, 90"),
    "rotation_1080_endless": ("Endless-SearingSpotlights-v0", ("carried", "shown_rotation"), torch.tensor(1080), r"must hold one of"),
    "drawn_rotation_540": (MM, ("carried", "drawn_rotation"), torch.tensor(540), r"'episodes\[0\]\.carried\.drawn_rotation' must hold one of \[0, 45"),
    "exit_open_raw_byte": (SS, ("carried", "stepped"), RAW_BYTE_0X7F, r"'episodes\[0\]\.carried\.stepped' must hold booleans stored as 0 or 1"),
    "exit_open_not_saved": (SS, ("carried", "exit_open"), torch.tensor(True), r"'episodes\[0\]\.carried\.exit_open' is not a field of this state"),
    "spotlight_radius_3000": (SS, ("params", "spot_max_radius"), 3000.0, r"'episodes\[0\]\.params' holds invalid .*spot_max_radius"),
    "atlas_3000_registrations": (SS, ("atlas",), [["agent", 0.25]] * 3000, r"'episodes\[0\]\.atlas' is not a field"),
    "grow_axis_zero_stride": (MM, ("actions",), zero_stride(2 * 10**8, 2), r"has shape \(200000000, 2\), expected \(any, 2\)"),
    "last_action_5": (SS, ("actions",), torch.tensor([[5, 0]]), r"holds an action outside the action space MultiDiscrete"),
    "blue_kind_99": (SS, ("carried", "blue_kind"), torch.tensor(99), r"'episodes\[0\]\.carried\.blue_kind' must hold one of \[0, 1, 2, 3\]"),
}


@pytest.mark.parametrize("env_id, keys, value, message", LEAVES.values(), ids=LEAVES.keys())
def test_a_tampered_leaf_is_refused_with_its_path(env_id, keys, value, message):
    game, state = saved(env_id)
    holder = state["episodes"][0]
    for key in keys[:-1]:
        holder = holder[key]
    holder[keys[-1]] = value
    refused(game, state, message)


def test_pixels_may_hold_any_value():
    game, state = saved("SearingSpotlights-v0", steps=60)
    state["episodes"][1]["carried"]["codes"] = torch.full((84, 84, 3), 200, dtype=torch.uint8)
    game.set_state(state)
    game.play(np.zeros((NUM_ENVS, 2), dtype=np.int64))


def test_actions_that_end_the_episode_before_the_last_one_are_refused():
    game, state = saved("MysteryPath-Grid-v0")
    # Walking into the first wall ends nothing in Mystery Path Grid; a time limit does.
    state["episodes"][2]["actions"] = torch.zeros(10_000, dtype=torch.int64)
    refused(game, state, r"'episodes\[2\]\.actions' ends the episode at step \d+ of 10000: a saved episode is still running")


def test_many_long_histories_replay_in_one_batch():
    """Envs with histories of different lengths all end on the saved step (the shortest one starts last)."""
    original = played("SearingSpotlights-v0", steps=0)
    game = original.unwrapped.game
    lengths = [len(e["actions"]) for e in through_file(game.get_state())["episodes"]]
    assert lengths == [0, 0, 0]
    original.action_space.seed(3)
    for _ in range(150):
        original.step(original.action_space.sample())
    state = through_file(game.get_state())
    assert len({len(e["actions"]) for e in state["episodes"]}) == NUM_ENVS
    restored = fresh("SearingSpotlights-v0")
    restored.unwrapped.game.set_state(state)
    assert_continue_alike(original, restored, 50)


def test_a_memory_error_while_restoring_is_one_line(monkeypatch):
    game, state = saved("ProofOfMemory-v0")

    def no_memory(*args, **kwargs):
        raise MemoryError

    monkeypatch.setattr(envs.state, "_replay", no_memory)
    refused(game, state, r"^ProofOfMemory-v0: not enough memory to restore the saved env state$")


class Sentinel:
    """Stands for any class a tampered state could name; records whether it was ever built."""

    built = 0

    def __new__(cls, *args, **kwargs):
        Sentinel.built += 1
        return super().__new__(cls)


def test_names_in_a_state_are_never_imported_or_built(monkeypatch):
    monkeypatch.setattr(envs.core, "Sentinel", Sentinel, raising=False)
    monkeypatch.setattr(np.random, "Sentinel", Sentinel, raising=False)
    game, state = saved("SearingSpotlights-v0")
    named = {"__object__": "envs.core:Sentinel", "attrs": {"path": "victim.txt"}}
    module = "envs.core:importlib.import_module" if "xml.dom.minidom" in sys.modules else "xml.dom.minidom:Node"
    tamperings = [
        lambda s: s.__setitem__("__object__", "envs.core:Sentinel"),
        lambda s: s["episodes"].__setitem__(0, named),
        lambda s: s["episodes"][0].__setitem__("rng", {"bit_generator": "Sentinel"}),
        lambda s: s["episodes"][0]["params"].__setitem__("agent_scale", named),
        lambda s: s["episodes"][0]["carried"].__setitem__("codes", {"__object__": module, "attrs": {}}),
        lambda s: s["episodes"][0].__setitem__("actions", named),
    ]
    modules = set(sys.modules)
    for tamper in tamperings:
        tampered = copy.deepcopy(state)
        tamper(tampered)
        with pytest.raises(ValueError, match=r"^SearingSpotlights-v0: env state field '"):
            game.set_state(through_file(tampered))
    assert Sentinel.built == 0
    assert set(sys.modules) == modules


def test_fuzzed_checkpoints_play_or_are_refused_in_one_line():
    """A few cases of `tools/fuzz_env_state.py` (its command line runs many): each resumes a mutated env
    state in a subprocess under a memory limit and a timeout."""
    games = ["Endless-MortarMayhem-v0", "Endless-MysteryPath-v0", "SearingSpotlights-v0"]
    report = fuzz_env_state.fuzz(games, per_game=4, workers=2, seed=3)
    assert len(report["cases"]) == 12
    failed = [case for case in report["cases"] if case["outcome"] not in ("played", "refused")]
    assert not failed
    refusals = [case["detail"] for case in report["cases"] if case["outcome"] == "refused"]
    assert all("env state" in line for line in refusals), refusals
