"""Env state: a fresh env given a saved state continues bit for bit, and a state that does not match
the game's declaration is refused with the field named, without importing or building anything."""

from __future__ import annotations

import copy
import io
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import envs  # noqa: F401
import envs.core
from envs.core import NativeEnv

NATIVE_IDS = sorted(
    env_id
    for env_id, spec in gym.registry.items()
    if isinstance(spec.entry_point, type) and issubclass(spec.entry_point, NativeEnv)
)
NUM_ENVS = 3


def through_file(state):
    """`state` after `torch.save` and `torch.load(weights_only=True)`, as a checkpoint carries it."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def played(env_id: str, steps: int = 25, seed: int = 11):
    vec = gym.make_vec(env_id, num_envs=NUM_ENVS)
    vec.reset(seed=seed)
    vec.action_space.seed(0)
    for _ in range(steps):
        vec.step(vec.action_space.sample())
    return vec


def fresh(env_id: str):
    vec = gym.make_vec(env_id, num_envs=NUM_ENVS)
    vec.reset(seed=12345)
    return vec


def saved(env_id: str) -> tuple:
    """A played game and its state after a trip through a file."""
    game = played(env_id).unwrapped.game
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


@pytest.mark.parametrize("env_id", NATIVE_IDS)
def test_fresh_env_given_the_state_continues_identically(env_id):
    original = played(env_id)
    state = original.unwrapped.game.get_state()
    assert plain_types(state) <= {dict, list, torch.Tensor, str, int, float, bool, type(None)}
    restored = fresh(env_id)
    restored.unwrapped.game.set_state(through_file(state))
    ended = False
    for _ in range(600):
        action = original.action_space.sample()
        first, second = original.step(action), restored.step(action)
        assert_same(first, second)
        ended |= bool(first[2].any())
    assert ended or env_id.startswith("Endless"), "episodes should end and autoreset"


@pytest.mark.parametrize("env_id", NATIVE_IDS)
def test_every_attribute_of_a_game_is_declared(env_id):
    game = played(env_id, steps=3).unwrapped.game
    assert set(vars(game)) == set(game.state_fields)


def refused(game, state, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        game.set_state(state)


def test_wrong_dtype_is_refused_with_the_field_named():
    game, state = saved("MortarMayhem-v0")
    state["fields"]["cx"] = state["fields"]["cx"].to(torch.float32)
    refused(game, state, r"^MortarMayhem-v0: env state field 'cx' has dtype float32, expected int64$")


def test_wrong_dtype_inside_an_object_is_refused_with_its_path():
    game, state = saved("SearingSpotlights-v0")
    state["fields"]["spots"]["t"] = state["fields"]["spots"]["t"].to(torch.float32)
    refused(game, state, r"field 'spots\.t' has dtype float32, expected float64")


def test_wrong_shape_is_refused():
    game, state = saved("MysteryPath-v0")
    state["fields"]["screens"] = state["fields"]["screens"][:, :80]
    refused(game, state, r"field 'screens' has shape \(3, 80, 84, 3\), expected \(3, 84, 84, 3\)")


def test_a_growing_capacity_is_accepted_but_must_agree_within_its_group():
    game, state = saved("SearingSpotlights-v0")
    spots = state["fields"]["spots"]
    for name in ("active", "done", "radius", "t", "speed", "p0x", "p0y", "p1x", "p1y", "p2x", "p2y"):
        spots[name] = torch.cat([spots[name], torch.zeros_like(spots[name])], dim=1)
    game.set_state(copy.deepcopy(state))
    assert game.spots.active.shape == (NUM_ENVS, 32)
    spots["t"] = spots["t"][:, :16]
    refused(game, state, r"field 'spots\.t' has 16 slots, but 'spots\.active' has 32")


def test_missing_and_extra_fields_are_refused():
    game, state = saved("ProofOfMemory-v0")
    missing = copy.deepcopy(state)
    del missing["fields"]["delay"]
    refused(game, missing, r"field 'delay' is missing")
    state["fields"]["bonus"] = torch.zeros(NUM_ENVS)
    refused(game, state, r"field 'bonus' is not a field of this environment's state")


def test_a_state_without_declared_fields_is_refused():
    game, state = saved("ProofOfMemory-v0")
    old_format = {"num_envs": 3, "cue": {"__array__": state["fields"]["cue"]}}
    refused(game, old_format, r"^ProofOfMemory-v0: the saved env state has no declared fields")
    refused(game, [state], r"has no declared fields")


def test_a_state_for_another_number_of_envs_or_another_game_is_refused():
    game, state = saved("ProofOfMemory-v0")
    smaller = gym.make_vec("ProofOfMemory-v0", num_envs=2)
    smaller.reset(seed=0)
    refused(smaller.unwrapped.game, state, r"field 'rngs' has 3 items, expected one per env \(2\)")
    other = fresh("ProofOfMemoryImage-v0").unwrapped.game
    refused(other, state, r"field 'env_id' is 'ProofOfMemory-v0': the state of another environment")


@pytest.mark.parametrize("name", ["MT19937", "os.system", "__import__", "Generator"])
def test_a_bit_generator_outside_the_allow_list_is_refused(name):
    game, state = saved("ProofOfMemory-v0")
    state["fields"]["rngs"][1]["bit_generator"] = name
    refused(game, state, rf"field 'rngs\[1\]\.bit_generator' is '{name}', allowed: PCG64$")


LEAVES = [
    ("Endless-MysteryPath-v0", ("replay_rngs", 0, "bit_generator"), "Philox", r"'replay_rngs\[0\]\.bit_generator' is"),
    ("Endless-MysteryPath-v0", ("episode_start_state", 2, "state", "inc"), -1, r"'episode_start_state\[2\]\.state\.inc'"),
    ("ProofOfMemory-v0", ("rngs", 0, "state", "state"), 2**128, r"'rngs\[0\]\.state\.state' is 3402"),
    ("ProofOfMemory-v0", ("rngs", 0, "state", "key"), 1, r"'rngs\[0\]\.state\.key' is not a field"),
    ("ProofOfMemory-v0", ("rngs", 0, "has_uint32"), True, r"'rngs\[0\]\.has_uint32' has type bool, expected int"),
    ("MysteryPath-v0", ("paths", 1, 0), [3, 7], r"'paths\[1\]\[0\]\[1\]' is 7, expected a value in \[0, 6\]"),
    ("MysteryPath-v0", ("walls", 0, 4), 1, r"'walls\[0\]\[4\]' has type int, expected bool"),
    ("SearingSpotlights-v0", ("params", 0, "__class__"), "os.system", r"'params\[0\]\.__class__' is not a reset"),
    ("SearingSpotlights-v0", ("params", 1, "agent_scale"), 5.0, r"'params\[1\]' holds invalid .*agent_scale"),
    ("SearingSpotlights-v0", ("atlas", 3), ["os.system", 0.25], r"'atlas\[3\]' must be \[kind, scale\]"),
    ("SearingSpotlights-v0", ("atlas", 3), ["agent", 40.0], r"'atlas\[3\]\[1\]' is 40.0, not a scale allowed"),
    ("SearingSpotlights-v0", ("p", "agent_sprite"), torch.zeros(NUM_ENVS, dtype=torch.int64), r"'p\.agent_sprite'"),
    ("Endless-MortarMayhem-v0", ("commands",), torch.zeros((NUM_ENVS, 0), dtype=torch.int64), r"expected \(3, any\)"),
]


@pytest.mark.parametrize("env_id, keys, value, message", LEAVES, ids=[".".join(map(str, leaf[1])) for leaf in LEAVES])
def test_a_tampered_leaf_is_refused_with_its_path(env_id, keys, value, message):
    game, state = saved(env_id)
    holder = state["fields"]
    for key in keys[:-1]:
        holder = holder[key]
    if isinstance(holder, list) and keys[-1] == len(holder):
        holder.append(value)
    else:
        holder[keys[-1]] = value
    refused(game, state, message)


def test_a_refused_state_leaves_the_game_unchanged():
    game, state = saved("MortarMayhem-v0")
    before = through_file(game.get_state())
    other = through_file(fresh("MortarMayhem-v0").unwrapped.game.get_state())
    other["fields"]["single_scale"] = "0.25"  # checked after every array field
    refused(game, other, r"field 'single_scale' has type str, expected float or None")
    assert_same(through_file(game.get_state()), before)


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
        lambda s: s.__setitem__("spots", named),
        lambda s: s.__setitem__("cx", named),
        lambda s: s["params"].__setitem__(0, named),
        lambda s: s["rngs"].__setitem__(0, {"__rng__": {"bit_generator": "Sentinel"}}),
        lambda s: s["rngs"][0].__setitem__("bit_generator", "Sentinel"),
        lambda s: s["atlas"].__setitem__(1, {"__object__": module, "attrs": {}}),
        lambda s: s["spots"].__setitem__("active", {"__object__": module, "attrs": {}}),
    ]
    modules = set(sys.modules)
    for tamper in tamperings:
        tampered = copy.deepcopy(state)
        tamper(tampered["fields"])
        with pytest.raises(ValueError, match=r"^SearingSpotlights-v0: env state field '"):
            game.set_state(through_file(tampered))
    assert Sentinel.built == 0
    assert set(sys.modules) == modules
