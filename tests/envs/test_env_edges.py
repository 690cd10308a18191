"""The environments' hard edges: returned values stay as returned, actions outside the action space,
reset parameters outside their declared ranges, num_envs, stepping before reset."""

from __future__ import annotations

import copy
import re
import signal
import time
from contextlib import contextmanager

import gymnasium as gym
import numpy as np
import pytest

import envs  # noqa: F401  (registers the ids)
from envs.parameters import Param
from tools.reset_parameter_docs import OUT as DOCS_PAGE
from tools.reset_parameter_docs import markdown, native_ids

IDS = native_ids()
# Parameters that end episodes within a few random steps, so that a short run autoresets.
MORTAR_SHORT = {"command_count": [1], "explosion_delay": [1], "explosion_duration": [1]}
SHOWN_SHORT = {**MORTAR_SHORT, "command_show_duration": [1], "command_show_delay": [0]}
SHORT_EPISODES = {
    "ProofOfMemory-v0": {},
    "ProofOfMemoryImage-v0": {},
    "MortarMayhem-v0": SHOWN_SHORT,
    "MortarMayhem-Grid-v0": SHOWN_SHORT,
    "MortarMayhemB-v0": MORTAR_SHORT,
    "MortarMayhemB-Grid-v0": MORTAR_SHORT,
}  # every other id: max_steps 4
# Parameters whose ranges are tied to a partner's (min <= max): set together at a bound.
PARTNERS = {
    "min_delay": "max_delay",
    "max_delay": "min_delay",
    "spot_min_radius": "spot_max_radius",
    "spot_max_radius": "spot_min_radius",
    "spot_min_speed": "spot_max_speed",
    "spot_max_speed": "spot_min_speed",
}


def game_cls(env_id: str):
    return gym.registry[env_id].entry_point.game_cls


def assert_same(returned, kept, where: str) -> None:
    """`returned` (as it is now) equals `kept` (a deep copy taken when it was returned)."""
    if isinstance(kept, tuple):
        for k, (a, b) in enumerate(zip(returned, kept, strict=True)):
            assert_same(a, b, f"{where}[{k}]")
    elif isinstance(kept, dict):
        assert returned.keys() == kept.keys(), where
        for key in kept:
            assert_same(returned[key], kept[key], f"{where}[{key!r}]")
    elif isinstance(kept, np.ndarray) and kept.dtype == object:
        for k, (a, b) in enumerate(zip(returned.ravel(), kept.ravel())):
            assert_same(a, b, f"{where}[{k}]")
    elif isinstance(kept, np.ndarray):
        np.testing.assert_array_equal(returned, kept, err_msg=where)
    else:
        assert returned == kept or (returned != returned and kept != kept), where


@pytest.mark.parametrize("env_id", IDS)
def test_returned_observations_and_infos_never_change(env_id):
    returned = []  # (what, value as returned, deep copy taken at once)

    def keep(what, value):
        returned.append((what, value, copy.deepcopy(value)))

    single = gym.make(env_id, **SHORT_EPISODES.get(env_id, {"max_steps": 4}))
    single.action_space.seed(0)
    keep("single reset", single.reset(seed=0))
    single_ends = 0
    for t in range(12):
        obs, _, terminated, _, info = single.step(single.action_space.sample())
        keep(f"single step {t}", (obs, info))
        if terminated:
            single_ends += 1
            keep(f"single reset after step {t}", single.reset())

    # The vector env hands out its screens uncopied: no later step, autoreset, reset or restored
    # state may write to one it returned.
    vector = gym.make_vec(env_id, num_envs=3, **SHORT_EPISODES.get(env_id, {"max_steps": 4}))
    vector.action_space.seed(0)
    keep("vector reset", vector.reset(seed=0))
    vector_ends = 0
    state = None
    for t in range(12):
        obs, _, terminated, _, info = vector.step(vector.action_space.sample())
        keep(f"vector step {t}", (obs, info))
        vector_ends += int(terminated.sum())
        if t == 5:
            keep("vector reset after step 5", vector.reset())
        if state is None and not terminated.any():
            state = vector.unwrapped.game.get_state()
    vector.unwrapped.game.set_state(state)
    keep("vector step after a restored state", vector.step(vector.action_space.sample())[0])

    assert single_ends > 0 and vector_ends > 0, "the run must include ends (and the vector env's autoresets)"
    for what, value, kept in returned:
        assert_same(value, kept, what)


def bad_actions(space: gym.Space) -> list:
    if isinstance(space, gym.spaces.Discrete):
        return [int(space.n), -1, 1.7, float("nan"), None, "a", [0], np.array([0, 1])]
    return [[3, 0], [0, -1], [1.0, 1.0], [float("nan"), 0], [1], 5, None, "ab", [[0, 0]]]


def bad_batches(space: gym.Space, num_envs: int) -> list:
    good = np.zeros((num_envs, *space.shape), dtype=np.int64)
    too_high = good.copy()
    too_high[1] = space.n if isinstance(space, gym.spaces.Discrete) else [0, 3]
    negative = good.copy()
    negative[2] = -1
    return [too_high, negative, good.astype(np.float64), good[:-1], np.zeros((num_envs, 3), dtype=np.int64), None]


@pytest.mark.parametrize("env_id", IDS)
def test_actions_outside_the_action_space_raise_value_error(env_id):
    single = gym.make(env_id).unwrapped
    single.reset(seed=0)
    for action in bad_actions(single.action_space):
        with pytest.raises(ValueError, match="action space") as error:
            single.step(action)
        assert str(error.value).count(env_id) == 1, str(error.value)
    vector = gym.make_vec(env_id, num_envs=4)
    vector.reset(seed=0)
    for actions in bad_batches(vector.single_action_space, 4):
        with pytest.raises(ValueError, match="action space"):
            vector.step(actions)
    # Valid actions of any integer dtype still step.
    single.step(np.asarray(single.action_space.sample()).astype(np.uint8))
    vector.step(vector.action_space.sample().astype(np.int32))


def invalid_values(param: Param, default) -> list:
    """Values outside `param`: wrong kinds, just past each bound, huge and non-finite numbers."""
    if param.kind == "bool":
        return ["yes", 1, None]
    outside = [param.low - 1, param.high + 1]
    outside += [param.low] if param.open_low else []
    outside += [param.high] if param.open_high else []
    if param.kind == "int list":
        values = [[int(v)] for v in outside if float(v).is_integer()] + [[1.5], default[0], "abc", [[1]]]
        return values + ([] if param.may_be_empty else [[]])
    values = [*outside, 10**100, -(10**100), 2**64, 1e300, float("nan"), float("inf"), "3", None]
    return values + ([1.5] if param.kind == "int" else [])


@pytest.mark.parametrize("env_id", IDS)
def test_every_parameter_refuses_values_outside_its_declared_range(env_id):
    cls = game_cls(env_id)
    for name, default in cls.defaults.items():
        param = cls.parameters[name]
        assert param.accepts(default), f"{env_id}: the default of {name} lies outside its range"
        for value in invalid_values(param, default):
            with pytest.raises(ValueError, match=re.escape(f"'{name}' must be {param.describe()}, got")) as error:
                gym.make(env_id, **{name: value})
            assert str(error.value).count(env_id) == 1, str(error.value)


@pytest.mark.parametrize("env_id", IDS)
def test_every_parameter_accepts_its_closed_bounds(env_id):
    cls = game_cls(env_id)
    for name in cls.defaults:
        param = cls.parameters[name]
        if param.kind == "bool":
            continue
        for bound, is_open in ((param.low, param.open_low), (param.high, param.open_high)):
            if not is_open:
                value = [int(bound)] if param.kind == "int list" else bound
                params = {name: value} | ({PARTNERS[name]: value} if name in PARTNERS else {})
                env = gym.make(env_id, **params)
                assert env.unwrapped.params[name] == value


def test_paired_parameters_must_fit_together():
    with pytest.raises(ValueError, match="min_delay"):
        gym.make("ProofOfMemory-v0", min_delay=5, max_delay=2)
    with pytest.raises(ValueError, match="spot_max_speed"):
        gym.make("SearingSpotlights-v0", spot_min_speed=0.5, spot_max_speed=0.1)
    with pytest.raises(ValueError, match="spot_max_radius"):
        gym.make("Endless-SearingSpotlights-v0", spot_min_radius=20, spot_max_radius=19.5)


@contextmanager
def deadline(seconds: int):
    """Fail instead of hanging when a call runs past `seconds` (a huge value that is not refused)."""

    def expire(signum, frame):
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


# Values that hung, grew without bound, overflowed or were silently accepted before they had ranges.
HUGE_OR_NONSENSICAL = [
    ("SearingSpotlights-v0", "initial_spawns", 10**9),
    ("Endless-SearingSpotlights-v0", "initial_spawns", 10**9),
    ("Endless-MortarMayhem-v0", "initial_command_count", 10**9),
    ("MortarMayhem-v0", "command_count", [10**9]),
    ("MortarMayhem-v0", "agent_speed", 1e300),
    ("SearingSpotlights-v0", "agent_speed", 2**64),
    ("Endless-MysteryPath-v0", "stamina_level", 2**64),
    ("MortarMayhem-v0", "agent_speed", -3.0),
    ("SearingSpotlights-v0", "agent_speed", -3.0),
    ("MysteryPath-v0", "agent_speed", -3.0),
    ("Endless-SearingSpotlights-v0", "spawn_interval", -50),
    ("Endless-SearingSpotlights-v0", "steps_per_coin", -1),
    ("Endless-SearingSpotlights-v0", "coin_show_duration", -6),
    ("SearingSpotlights-v0", "light_threshold", -1),
    ("SearingSpotlights-v0", "spot_max_radius", 1e9),
    ("MortarMayhem-v0", "agent_scale", 1e6),
    ("ProofOfMemory-v0", "max_delay", 10**18),
]


@pytest.mark.parametrize(("env_id", "name", "value"), HUGE_OR_NONSENSICAL)
def test_huge_or_nonsensical_values_are_refused_within_a_second(env_id, name, value):
    for make in (lambda: gym.make(env_id), lambda: gym.make_vec(env_id, num_envs=4)):
        env = make()
        start = time.perf_counter()
        with deadline(10), pytest.raises(ValueError, match=name):
            env.reset(seed=0, options={name: value})
        assert time.perf_counter() - start < 1.0


def test_list_parameters_say_they_want_a_list():
    with pytest.raises(ValueError, match=r"'explosion_delay' must be a non-empty list of integers in \[0, .*got 18$"):
        gym.make("MortarMayhem-v0", explosion_delay=18)


def test_errors_name_the_env_id_once():
    with pytest.raises(ValueError) as error:
        gym.make("ProofOfMemory-v0", delay=3)
    assert str(error.value).count("ProofOfMemory-v0") == 1
    import ppo_trxl
    import run_utils

    with pytest.raises(SystemExit) as stop:
        run_utils.make_envs(ppo_trxl.Args(env_id="ProofOfMemory-v0", env_kwargs='{"delay": 3}'), 2)
    assert str(stop.value).startswith("error: ProofOfMemory-v0: unknown reset parameter")
    assert str(stop.value).count("ProofOfMemory-v0") == 1


@pytest.mark.parametrize("num_envs", [0, -1, 2.5, "3", True])
def test_num_envs_must_be_a_positive_integer(num_envs):
    with pytest.raises(ValueError, match=f"MortarMayhem-v0: num_envs must be an integer >= 1, got {num_envs!r}"):
        gym.make_vec("MortarMayhem-v0", num_envs=num_envs)


@pytest.mark.parametrize("env_id", IDS)
def test_stepping_before_reset_raises_reset_needed(env_id):
    single = gym.make(env_id)
    vector = gym.make_vec(env_id, num_envs=2)
    with pytest.raises(gym.error.ResetNeeded):
        single.step(single.action_space.sample())
    with pytest.raises(gym.error.ResetNeeded, match=f"{env_id}: call reset"):
        single.unwrapped.step(single.action_space.sample())
    with pytest.raises(gym.error.ResetNeeded, match=f"{env_id}: call reset"):
        vector.step(vector.action_space.sample())
    vector.reset(seed=0)
    vector.step(vector.action_space.sample())


def test_reset_parameter_page_matches_the_tables():
    with open(DOCS_PAGE) as f:
        assert f.read() == markdown(), "run: python tools/reset_parameter_docs.py"
