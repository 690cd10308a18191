"""Saving and restoring a game's state as the history of each env's current episode.

A game records, per env, what its current episode started from: the state of the env's random
generator, the episode's reset parameters and the few values memory-gym carries from one episode
into the next (`BatchedGame.carried`: the last drawn pose, the darkness layer, the board colour),
then every action since. That record is the saved state; no internal array is ever saved.

Restoring checks the record like play checks its input: the generator is a PCG64 (any of its states
is valid), the parameters pass the game's `check_params`, the actions its action check, each carried
value its declared `Carry` check (pixels may hold anything; positions, rotations, scales and
kinds only what play produces), and sizes stay within what play can reach. The history is then
replayed through the game's own `new_episodes` and `play` in a fresh game, which replaces the
live game's attributes only once every episode has replayed to its end without finishing. Every
value a file holds thus reaches the game through the checked public path of play, nothing in a file
can name a class, module or attribute, and a refused state leaves the game unchanged.
"""

from __future__ import annotations

from functools import cache
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from envs.core import BatchedGame

MAX_EPISODE_STEPS = 1 << 20
"""Longest episode a saved state may hold per env. Replaying one takes about 8 CPU minutes with 32 envs
of Searing Spotlights (benchmarks/results/replay-time); a longer episode cannot be resumed."""

_STATE_WORDS = {"state": 128, "inc": 128}
"""The integers of a PCG64 state and their width in bits."""

_PARAM_VALUE_TYPES = (bool, int, float)


def _refuse(env_id: str, path: str, problem: str) -> ValueError:
    return ValueError(f"{env_id}: env state field '{path}' {problem}")


def _shown(key: Any) -> str:
    """A key read from a file, shortened for an error message."""
    text = key if isinstance(key, str) else repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


def _keys(env_id: str, data: Any, expected: list[str], path: str, what: str = "field") -> None:
    """`data` is a dict with exactly the str keys `expected`."""
    if type(data) is not dict:
        raise _refuse(env_id, path or "<root>", f"has type {type(data).__name__}, expected a dict")
    for key in data:
        if key not in expected:
            raise _refuse(env_id, f"{path}.{_shown(key)}" if path else _shown(key), f"is not a {what} of this state")
    for key in expected:
        if key not in data:
            raise _refuse(env_id, f"{path}.{key}" if path else key, "is missing")


def _int(env_id: str, value: Any, path: str, bits: int) -> int:
    if type(value) is not int:
        raise _refuse(env_id, path, f"has type {type(value).__name__}, expected int")
    if not 0 <= value < 2**bits:
        raise _refuse(env_id, path, f"is {value}, expected an integer in [0, 2**{bits})")
    return value


# ---------------------------------------------------------------------------------------------
# Checks of the values carried across episodes
# ---------------------------------------------------------------------------------------------
class Carry:
    """What a value that memory-gym carries into the next episode may hold, per env row."""

    def check(self, rows: np.ndarray, game: BatchedGame, i: int) -> str | None:
        """None when every value of env `i`'s `rows` is allowed, else what is allowed."""
        return None


class Pixels(Carry):
    """Colours or darkness codes: any value draws some picture."""


class Flags(Carry):
    """Booleans, each stored as 0 or 1."""

    def check(self, rows, game, i):
        return None if (rows.view(np.uint8) <= 1).all() else "booleans stored as 0 or 1"


class OneOf(Carry):
    """Integers from a fixed set (rotations, kinds of board)."""

    def __init__(self, values):
        self.values = np.array(sorted(values), dtype=np.int64)

    def check(self, rows, game, i):
        return None if np.isin(rows, self.values).all() else f"one of {self.values.tolist()}"


class Span(Carry):
    """Integers in [low, high): positions on or just beside the screen."""

    def __init__(self, low: int, high: int):
        self.low, self.high = low, high

    def check(self, rows, game, i):
        return None if ((rows >= self.low) & (rows < self.high)).all() else f"integers in [{self.low}, {self.high})"


class LikeParam(Carry):
    """Values the reset parameter `name` accepts (or one of `also`), e.g. an agent scale."""

    def __init__(self, name: str, also: tuple = ()):
        self.name, self.also = name, also

    def check(self, rows, game, i):
        param = game.parameters[self.name]
        if all(v in self.also or param.accepts(v) for v in rows.ravel().tolist()):
            return None
        return f"{param.describe()}, as the reset parameter {self.name!r}"


class UpTo(Carry):
    """Integers in [0, the env's value of the attribute `name`] (checked after the replay)."""

    def __init__(self, name: str):
        self.name = name

    def check(self, rows, game, i):
        high = int(getattr(game, self.name)[i])
        return None if ((rows >= 0) & (rows <= high)).all() else f"integers in [0, {self.name} = {high}]"


# ---------------------------------------------------------------------------------------------
# Recording while playing
# ---------------------------------------------------------------------------------------------
class EpisodeLog:
    """Per env: the generator state, parameters and carried values its current episode started
    from, and the actions since (one growing table for all envs, trimmed of finished episodes)."""

    def __init__(self, num_envs: int, action_shape: tuple[int, ...]):
        self.start_rng: list[dict | None] = [None] * num_envs
        self.params: list[dict | None] = [None] * num_envs
        self.carried: list[dict[str, np.ndarray]] = [{} for _ in range(num_envs)]
        self.actions = np.zeros((64, num_envs, *action_shape), dtype=np.int64)  # (capacity, envs, ...)
        self.begin = np.zeros(num_envs, dtype=np.int64)  # row of `actions` where each episode began
        self.t = 0  # rows written
        self.ended = np.zeros(num_envs, dtype=bool)  # terminated and not reset since (a single env)

    def started(self, game: BatchedGame, idx: np.ndarray, params: dict[str, Any]) -> None:
        for i in idx.tolist():
            self.start_rng[i] = game.rngs[i].bit_generator.state
            self.params[i] = params
            self.carried[i] = {name: np.array(getattr(game, name)[i]) for name in game.carried}
        self.begin[idx] = self.t
        self.ended[idx] = False

    def stepped(self, actions: np.ndarray, terminated: np.ndarray) -> None:
        if self.t == len(self.actions):
            first = int(self.begin.min())  # rows before it belong to finished episodes
            if first >= len(self.actions) // 2:
                self.actions[: self.t - first] = self.actions[first : self.t]
                self.begin -= first
                self.t -= first
            else:
                self.actions = np.concatenate([self.actions, np.zeros_like(self.actions)])
        self.actions[self.t] = actions
        self.t += 1
        self.ended |= terminated

    def episode_actions(self, i: int) -> np.ndarray:
        return self.actions[self.begin[i] : self.t, i]


# ---------------------------------------------------------------------------------------------
# Saving
# ---------------------------------------------------------------------------------------------
def save_state(game: BatchedGame) -> dict[str, Any]:
    """Per env: the PCG64 state, reset parameters and carried values its episode started from, its
    actions since and its `rendered` values, as plain values and CPU tensors (what
    `torch.load(weights_only=True)` reads)."""
    import torch

    log = game.log
    if any(state is None for state in log.start_rng):
        raise ValueError(f"{game.env_id}: reset the env before saving its state")
    if log.ended.any():
        ended = int(np.flatnonzero(log.ended)[0])
        raise ValueError(f"{game.env_id}: env {ended} has finished its episode: reset it before saving its state")
    episodes = []
    for i in range(game.num_envs):
        rng = log.start_rng[i]
        episodes.append({
            "rng": {word: int(rng["state"][word]) for word in _STATE_WORDS}
            | {"has_uint32": int(rng["has_uint32"]), "uinteger": int(rng["uinteger"])},
            "params": {name: _plain(value) for name, value in log.params[i].items()},
            "carried": {name: torch.from_numpy(row.copy()) for name, row in log.carried[i].items()},
            "actions": torch.from_numpy(log.episode_actions(i).copy()),
            "rendered": {name: torch.from_numpy(np.array(getattr(game, name)[i])) for name in game.rendered},
        })  # fmt: skip
    return {"env_id": game.env_id, "episodes": episodes}


def _plain(value: Any) -> Any:
    """A parameter value as Python data (NumPy scalars and arrays, tuples -> numbers and lists)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple, list)):
        return [_plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------
# Restoring: check everything, then replay in a fresh game
# ---------------------------------------------------------------------------------------------
def restore_state(game: BatchedGame, state: Any) -> None:
    """Replay a `save_state` result into `game`; refused with one `ValueError` naming the field, the game
    left unchanged, when a value is not what play could have produced."""
    try:
        episodes = _checked(game, state)
        replayed = _replay(type(game)(game.num_envs), episodes)
    except MemoryError:
        raise ValueError(f"{game.env_id}: not enough memory to restore the saved env state") from None
    vars(game).clear()
    vars(game).update(vars(replayed))


def _checked(game: BatchedGame, state: Any) -> list[dict[str, Any]]:
    env_id = game.env_id
    if type(state) is not dict or "episodes" not in state:
        raise ValueError(f"{env_id}: the saved env state holds no episode histories (written by an older version?)")
    _keys(env_id, state, ["env_id", "episodes"], "")
    if state["env_id"] != env_id:
        raise _refuse(env_id, "env_id", f"is {_shown(state['env_id'])!r}: the state of another environment")
    episodes = state["episodes"]
    if type(episodes) is not list or len(episodes) != game.num_envs:
        count = f"{len(episodes)} items" if type(episodes) is list else f"type {type(episodes).__name__}"
        raise _refuse(env_id, "episodes", f"has {count}, expected a list with one per env ({game.num_envs})")
    return [_checked_episode(game, data, i) for i, data in enumerate(episodes)]


def _checked_episode(game: BatchedGame, data: Any, i: int) -> dict[str, Any]:
    env_id, path = game.env_id, f"episodes[{i}]"
    _keys(env_id, data, ["rng", "params", "carried", "actions", "rendered"], path)
    rng = data["rng"]
    _keys(env_id, rng, [*_STATE_WORDS, "has_uint32", "uinteger"], f"{path}.rng")
    words = {word: _int(env_id, rng[word], f"{path}.rng.{word}", bits) for word, bits in _STATE_WORDS.items()}
    has_uint32 = _int(env_id, rng["has_uint32"], f"{path}.rng.has_uint32", 1)
    uinteger = _int(env_id, rng["uinteger"], f"{path}.rng.uinteger", 32)
    bit_state = {"bit_generator": "PCG64", "state": words, "has_uint32": has_uint32, "uinteger": uinteger}

    params = data["params"]
    _keys(env_id, params, list(game.defaults), f"{path}.params", what="reset parameter")
    for name, value in params.items():
        items = value if type(value) is list else [value]
        if not all(type(v) in _PARAM_VALUE_TYPES for v in items):
            raise _refuse(env_id, f"{path}.params.{name}", "must be a bool, int, float or a list of them")
    try:
        game.check_params(dict(params))
    except ValueError as error:
        raise _refuse(env_id, f"{path}.params", f"holds invalid parameters ({error})") from None

    carried = _rows(game, data["carried"], game.carried, f"{path}.carried")
    for name, carry in game.carried.items():
        _allowed(game, carry, carried[name], i, f"{path}.carried.{name}")
    rendered = _rows(game, data["rendered"], game.rendered, f"{path}.rendered")  # checked after the replay

    space = game.action_space
    actions = _array(env_id, data["actions"], np.dtype(np.int64), (None, *space.shape), f"{path}.actions")
    try:
        if len(actions):
            game.checked_actions(actions)
    except ValueError:
        raise _refuse(env_id, f"{path}.actions", f"holds an action outside the action space {space}") from None
    return {"rng": bit_state, "params": dict(params), "carried": carried, "rendered": rendered, "actions": actions}


def _rows(game: BatchedGame, data: Any, declared: dict[str, Carry], path: str) -> dict[str, np.ndarray]:
    """One env's rows of the `declared` arrays, with the live arrays' dtypes and row shapes."""
    _keys(game.env_id, data, list(declared), path)
    rows = {}
    for name in declared:
        live = getattr(game, name)
        rows[name] = _array(game.env_id, data[name], live.dtype, live.shape[1:], f"{path}.{name}")
    return rows


def _allowed(game: BatchedGame, carry: Carry, rows: np.ndarray, i: int, path: str) -> None:
    allowed = carry.check(rows, game, i)
    if allowed is not None:
        raise _refuse(game.env_id, path, f"must hold {allowed}")


def _array(env_id: str, data: Any, dtype: np.dtype, shape: tuple, path: str) -> np.ndarray:
    """A plain CPU tensor of `dtype` and `shape` (None: any length up to `MAX_EPISODE_STEPS`) as a
    new array; the size is checked before anything is copied."""
    import torch

    want = "(" + ", ".join("any" if size is None else str(size) for size in shape) + ("," if len(shape) == 1 else "") + ")"
    if type(data) is not torch.Tensor:
        raise _refuse(env_id, path, f"has type {type(data).__name__}, expected a tensor of {dtype}")
    if data.layout != torch.strided or data.device.type != "cpu" or data.requires_grad:
        raise _refuse(env_id, path, "must be a plain CPU tensor")
    if _numpy_dtypes().get(data.dtype) != dtype:
        raise _refuse(env_id, path, f"has dtype {data.dtype}, expected {dtype}")
    got = tuple(data.shape)
    fits = len(got) == len(shape) and all(
        size == want_size if want_size is not None else size <= MAX_EPISODE_STEPS for size, want_size in zip(got, shape)
    )
    if not fits:
        limit = f" (any: at most {MAX_EPISODE_STEPS:,})" if None in shape else ""
        raise _refuse(env_id, path, f"has shape {got}, expected {want}{limit}")
    return data.numpy().copy()


def _replay(game: BatchedGame, episodes: list[dict[str, Any]]) -> BatchedGame:
    """`game` (new) brought to the end of each env's saved episode by playing it again.

    All envs play in one batch, each history ending on the last step: an env with a shorter
    history starts later, and until then plays a stand-in episode (seed 0, the first action).
    """
    lengths = np.array([len(e["actions"]) for e in episodes])
    longest = int(lengths.max(initial=0))
    starts = longest - lengths
    stand_in = np.broadcast_to(np.asarray(game.action_space.start, dtype=np.int64), game.action_space.shape)
    game.rngs = [np.random.Generator(np.random.PCG64(0)) for _ in episodes]
    for i, episode in enumerate(episodes):
        if starts[i] > 0:
            game.new_episodes(np.array([i]), episode["params"])
    actions = np.empty((game.num_envs, *game.action_space.shape), dtype=np.int64)
    for t in range(longest + 1):
        for i in np.flatnonzero(starts == t).tolist():
            game.rngs[i].bit_generator.state = episodes[i]["rng"]
            game.new_episodes(np.array([i]), episodes[i]["params"], episodes[i]["carried"])
        if t == longest:
            break
        playing = starts <= t
        for i in range(game.num_envs):
            actions[i] = episodes[i]["actions"][t - starts[i]] if playing[i] else stand_in
        _, terminated = game.play(actions)
        if (terminated & playing).any():
            i = int(np.flatnonzero(terminated & playing)[0])
            step = t - int(starts[i]) + 1
            raise _refuse(
                game.env_id, f"episodes[{i}].actions",
                f"ends the episode at step {step} of {lengths[i]}: a saved episode is still running",
            )  # fmt: skip
        for i in np.flatnonzero(terminated).tolist():  # stand-ins start over until their env's turn
            game.new_episodes(np.array([i]), episodes[i]["params"])
    for i, episode in enumerate(episodes):
        for name, carry in game.rendered.items():
            _allowed(game, carry, episode["rendered"][name], i, f"episodes[{i}].rendered.{name}")
            getattr(game, name)[i] = episode["rendered"][name]
    return game


@cache
def _numpy_dtypes() -> dict[Any, np.dtype]:
    """torch dtype -> NumPy dtype of the tensors a state holds (built on first use: importing `envs`
    does not import torch)."""
    import torch

    kinds = (bool, "uint8", "int8", "int16", "int32", "int64", "float16", "float32", "float64")
    return {torch.from_numpy(np.zeros(0, kind)).dtype: np.dtype(kind) for kind in kinds}
