"""Saving and restoring a game's state: a declared schema per game, restored into the live game.

Each `BatchedGame` declares `state_fields`: for every attribute, a field spec that says what is
saved and how it is checked. `save_state` turns the game into plain nested data (dicts with str
keys, lists, CPU tensors, Python scalars, strings: what `torch.load(weights_only=True)` reads).
`restore_state` walks the declaration, the saved data and the live game together. It checks
every leaf first (tensor dtype and shape against the live attribute, scalar types and ranges,
bit-generator states field by field for a generator type of a fixed allow-list, reset
parameters with the game's own `check_params`) and only then assigns the values into the game's
existing attributes and objects. Keys read from the data are compared with the declaration,
never looked up, so nothing in a file can name a class, module or attribute to call or build.
`Derived` fields (caches, sprite sheets, constants of `num_envs`) are not saved: they are kept,
or recomputed by the game's own code. A state is restored into a game reset with the same
parameters: shapes that follow the parameters are compared with its current attributes.
"""

from __future__ import annotations

from functools import cache
from typing import Any, Callable

import numpy as np

_MISSING = object()

_BIT_GENERATORS = {"PCG64": np.random.PCG64}
"""The bit generators a saved state may hold (the one `reset(seed=...)` creates), by state name."""

_STATE_WORDS = {"PCG64": {"state": 128, "inc": 128}}
"""Per allowed bit generator: the integers of its `state["state"]` dict and their width in bits."""

_PARAM_VALUE_TYPES = (bool, int, float)


def state_error(env_id: str, path: str, problem: str) -> ValueError:
    """The error for a saved state refused at field `path` (dotted attributes, `[i]` list items)."""
    return ValueError(f"{env_id}: env state field '{path}' {problem}")


class Context:
    """What checking a state needs besides the data: the live game, for its id, size and parameters."""

    def __init__(self, game: Any):
        self.game = game
        self.env_id = game.env_id
        self.num_envs = game.num_envs

    def refuse(self, path: str, problem: str) -> ValueError:
        return state_error(self.env_id, path, problem)


def _put(holder: Any, key: Any, value: Any) -> None:
    if isinstance(holder, (list, dict)):
        holder[key] = value
    else:
        setattr(holder, key, value)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _shown(key: Any) -> str:
    """A key read from a file, shortened for an error message."""
    text = key if isinstance(key, str) else repr(key)
    return text if len(text) <= 60 else text[:57] + "..."


def _check_keys(data: Any, expected: list[str], path: str, ctx: Context, what: str = "field") -> None:
    if type(data) is not dict:
        raise ctx.refuse(path or "<root>", f"has type {type(data).__name__}, expected a dict")
    for key in data:
        if key not in expected:
            raise ctx.refuse(_join(path, _shown(key)), f"is not a {what} of this environment's state")
    for key in expected:
        if key not in data:
            raise ctx.refuse(_join(path, key), "is missing")


class Field:
    """How one attribute is saved, checked and put back."""

    saved = True

    def save(self, value: Any) -> Any:
        raise NotImplementedError

    def load(self, data: Any, live: Any, path: str, ctx: Context) -> Any:
        """The checked value of `data` (raises `ValueError` naming `path`); changes nothing."""
        raise NotImplementedError

    def assign(self, holder: Any, key: Any, live: Any, value: Any, ctx: Context) -> None:
        """Put a checked value into `holder` (an object, list or dict) at `key`."""
        _put(holder, key, value)


class Array(Field):
    """A NumPy array saved as a tensor: the live attribute's dtype (or one of `dtypes`) and shape.

    `grow` names an axis whose size is a capacity the game enlarges as needed (any size >= 1);
    arrays of one `group` in an object share that size.
    """

    def __init__(self, grow: int | None = None, group: str | None = None, dtypes: tuple[type, ...] | None = None):
        self.grow, self.group = grow, group
        self.dtypes = None if dtypes is None else tuple(np.dtype(d) for d in dtypes)

    def save(self, value: np.ndarray) -> Any:
        import torch

        return torch.from_numpy(np.array(value, copy=True, order="C"))

    def load(self, data: Any, live: Any, path: str, ctx: Context) -> np.ndarray:
        import torch

        if not isinstance(live, np.ndarray):
            raise ctx.refuse(path, "has no array to restore into: reset the env before restoring its state")
        dtypes = self.dtypes or (live.dtype,)
        expected = " or ".join(str(d) for d in dtypes)
        if type(data) is not torch.Tensor:
            raise ctx.refuse(path, f"has type {type(data).__name__}, expected a tensor of {expected}")
        if data.layout != torch.strided or data.device.type != "cpu" or data.requires_grad:
            raise ctx.refuse(path, "must be a plain CPU tensor")
        dtype = _numpy_dtypes().get(data.dtype)
        if dtype not in dtypes:
            raise ctx.refuse(path, f"has dtype {data.dtype if dtype is None else dtype}, expected {expected}")
        shape = tuple(data.shape)
        want = ["any" if axis == self.grow else str(size) for axis, size in enumerate(live.shape)]
        fits = [size >= 1 if w == "any" else str(size) == w for size, w in zip(shape, want)]
        if len(shape) != live.ndim or not all(fits):
            raise ctx.refuse(path, f"has shape {shape}, expected ({', '.join(want)}{',' if len(want) == 1 else ''})")
        return data.numpy().copy()


class Value(Field):
    """A Python scalar of one of `types` (exactly: a bool is no int), optionally within [low, high]."""

    def __init__(self, *types: type | None, low: float | None = None, high: float | None = None):
        self.types = tuple(type(None) if t is None else t for t in types)
        self.low, self.high = low, high

    def save(self, value: Any) -> Any:
        return value

    def load(self, data: Any, live: Any, path: str, ctx: Context) -> Any:
        if type(data) not in self.types:
            names = " or ".join("None" if t is type(None) else t.__name__ for t in self.types)
            raise ctx.refuse(path, f"has type {type(data).__name__}, expected {names}")
        if data is not None and not (
            (self.low is None or data >= self.low) and (self.high is None or data <= self.high)
        ):
            raise ctx.refuse(path, f"is {data!r}, expected a value in [{self.low}, {self.high}]")
        return data


class TupleOf(Field):
    """A tuple of fixed length, saved as a list."""

    def __init__(self, *items: Field):
        self.items = items

    def save(self, value: tuple) -> list:
        return [item.save(v) for item, v in zip(self.items, value)]

    def load(self, data: Any, live: Any, path: str, ctx: Context) -> tuple:
        if type(data) is not list or len(data) != len(self.items):
            raise ctx.refuse(path, f"must be a list of {len(self.items)} items")
        return tuple(item.load(d, _MISSING, f"{path}[{k}]", ctx) for k, (item, d) in enumerate(zip(self.items, data)))


class ListOf(Field):
    """A list of `item`s: one per env (`per_env`), or of any length."""

    def __init__(self, item: Field, per_env: bool = False):
        self.item, self.per_env = item, per_env

    def save(self, value: list) -> list:
        return [self.item.save(v) for v in value]

    def load(self, data: Any, live: Any, path: str, ctx: Context) -> list:
        if type(data) is not list:
            raise ctx.refuse(path, f"has type {type(data).__name__}, expected a list")
        if self.per_env and len(data) != ctx.num_envs:
            raise ctx.refuse(path, f"has {len(data)} items, expected one per env ({ctx.num_envs})")
        lives = live if isinstance(live, list) and len(live) == len(data) else [_MISSING] * len(data)
        return [self.item.load(d, v, f"{path}[{k}]", ctx) for k, (d, v) in enumerate(zip(data, lives))]

    def assign(self, holder: Any, key: Any, live: Any, value: list, ctx: Context) -> None:
        target = live if isinstance(live, list) and len(live) == len(value) else [None] * len(value)
        for k, v in enumerate(value):
            self.item.assign(target, k, target[k], v, ctx)
        if target is not live:
            _put(holder, key, target)


class Optional(Field):
    """`None` or an `item`."""

    def __init__(self, item: Field):
        self.item = item

    def save(self, value: Any) -> Any:
        return None if value is None else self.item.save(value)

    def load(self, data: Any, live: Any, path: str, ctx: Context) -> Any:
        return None if data is None else self.item.load(data, live, path, ctx)

    def assign(self, holder: Any, key: Any, live: Any, value: Any, ctx: Context) -> None:
        if value is None:
            _put(holder, key, None)
        else:
            self.item.assign(holder, key, live, value, ctx)


class BitState(Field):
    """A bit generator's `state` dict, for a generator type of the allow-list, checked field by field."""

    def save(self, value: dict) -> dict:
        return {
            "bit_generator": value["bit_generator"],
            "state": {name: int(word) for name, word in value["state"].items()},
            "has_uint32": int(value["has_uint32"]),
            "uinteger": int(value["uinteger"]),
        }

    def load(self, data: Any, live: Any, path: str, ctx: Context) -> dict:
        _check_keys(data, ["bit_generator", "state", "has_uint32", "uinteger"], path, ctx)
        name = data["bit_generator"]
        if type(name) is not str or name not in _BIT_GENERATORS:
            raise ctx.refuse(f"{path}.bit_generator", f"is {_shown(name)!r}, allowed: {', '.join(_BIT_GENERATORS)}")
        words = _STATE_WORDS[name]
        _check_keys(data["state"], list(words), f"{path}.state", ctx)
        state = {
            word: Value(int, low=0, high=2**bits - 1).load(data["state"][word], None, f"{path}.state.{word}", ctx)
            for word, bits in words.items()
        }
        has_uint32 = Value(int, low=0, high=1).load(data["has_uint32"], None, f"{path}.has_uint32", ctx)
        uinteger = Value(int, low=0, high=2**32 - 1).load(data["uinteger"], None, f"{path}.uinteger", ctx)
        return {"bit_generator": name, "state": state, "has_uint32": has_uint32, "uinteger": uinteger}


class Rng(Field):
    """A `numpy.random.Generator` (or None before the first reset): its bit generator's state is
    restored into the live generator (a new one of the allowed type where there is none)."""

    def save(self, value: np.random.Generator | None) -> dict | None:
        return None if value is None else BitState().save(value.bit_generator.state)

    def load(self, data: Any, live: Any, path: str, ctx: Context) -> dict | None:
        return None if data is None else BitState().load(data, live, path, ctx)

    def assign(self, holder: Any, key: Any, live: Any, value: dict | None, ctx: Context) -> None:
        if value is None:
            _put(holder, key, None)
            return
        kind = _BIT_GENERATORS[value["bit_generator"]]
        if not (isinstance(live, np.random.Generator) and type(live.bit_generator) is kind):
            live = np.random.Generator(kind())
            _put(holder, key, live)
        live.bit_generator.state = value


class Params(Field):
    """One dict of reset parameters: the game's parameter names, plain values, valid for the game."""

    def save(self, value: dict) -> dict:
        return {name: _plain(v) for name, v in value.items()}

    def load(self, data: Any, live: Any, path: str, ctx: Context) -> dict:
        _check_keys(data, list(ctx.game.defaults), path, ctx, what="reset parameter")
        for name, value in data.items():
            items = value if type(value) is list else [value]
            if not all(type(v) in _PARAM_VALUE_TYPES for v in items):
                raise ctx.refuse(_join(path, name), "must be a bool, int, float or a list of them")
        try:
            ctx.game.check_params(dict(data))
        except ValueError as error:
            raise ctx.refuse(path, f"holds invalid parameters ({error})") from None
        return dict(data)


def _plain(value: Any) -> Any:
    """A parameter value as Python data (NumPy scalars and arrays, tuples -> numbers and lists)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (np.ndarray, tuple, list)):
        return [_plain(v) for v in value]
    return value


class DictOf(Field):
    """A dict with str keys, exactly the live dict's, each value an `item`; restored into the live dict."""

    def __init__(self, item: Field):
        self.item = item

    def save(self, value: dict) -> dict:
        return {name: self.item.save(v) for name, v in value.items()}

    def load(self, data: Any, live: Any, path: str, ctx: Context) -> dict:
        if not isinstance(live, dict):
            raise ctx.refuse(path, "has no dict to restore into")
        _check_keys(data, list(live), path, ctx)
        return {name: self.item.load(data[name], live[name], _join(path, name), ctx) for name in live}

    def assign(self, holder: Any, key: Any, live: dict, value: dict, ctx: Context) -> None:
        for name, v in value.items():
            self.item.assign(live, name, live[name], v, ctx)


class Derived(Field):
    """Not saved: kept as it is (a cache valid for any state), or set to `recompute(holder)`."""

    saved = False

    def __init__(self, recompute: Callable[[Any], Any] | None = None):
        self.recompute = recompute

    def assign(self, holder: Any, key: Any, live: Any, value: Any, ctx: Context) -> None:
        if self.recompute is not None:
            _put(holder, key, self.recompute(holder))


class Obj(Field):
    """An object of the game (or the game itself) restored attribute by attribute into the live one."""

    def __init__(self, fields: dict[str, Field]):
        self.fields = fields

    def save(self, value: Any) -> dict:
        return {name: field.save(getattr(value, name)) for name, field in self.fields.items() if field.saved}

    def load(self, data: Any, live: Any, path: str, ctx: Context) -> dict:
        if live is _MISSING or live is None:
            raise ctx.refuse(path, "has no object to restore into")
        saved = [name for name, field in self.fields.items() if field.saved]
        _check_keys(data, saved, path, ctx)
        values = {
            name: self.fields[name].load(data[name], getattr(live, name, _MISSING), _join(path, name), ctx)
            for name in saved
        }
        groups: dict[str, tuple[str, int]] = {}
        for name in saved:
            field = self.fields[name]
            if isinstance(field, Array) and field.group is not None:
                size = values[name].shape[field.grow]
                first, want = groups.setdefault(field.group, (name, size))
                if size != want:
                    other = _join(path, first)
                    raise ctx.refuse(_join(path, name), f"has {size} {field.group}, but '{other}' has {want}")
        return values

    def assign(self, holder: Any, key: Any, live: Any, value: dict, ctx: Context) -> None:
        for name, field in self.fields.items():
            field.assign(live, name, getattr(live, name, None), value.get(name), ctx)


def arrays(*names: str) -> dict[str, Field]:
    """Fields for attributes that are arrays of a fixed shape."""
    return {name: Array() for name in names}


def save_state(game: Any) -> dict[str, Any]:
    """The state of `game` as its declared fields, in plain data and tensors."""
    return {"env_id": game.env_id, "fields": Obj(game.state_fields).save(game)}


def restore_state(game: Any, state: Any) -> None:
    """Check `state` against the game's declaration and its live attributes, then restore it;
    refused with `ValueError` naming the field, the game left unchanged."""
    ctx = Context(game)
    if type(state) is not dict or "fields" not in state:
        raise ValueError(f"{game.env_id}: the saved env state has no declared fields (written by an older version?)")
    _check_keys(state, ["env_id", "fields"], "", ctx)
    if state["env_id"] != game.env_id:
        raise ctx.refuse("env_id", f"is {_shown(state['env_id'])!r}: the state of another environment")
    declaration = Obj(game.state_fields)
    values = declaration.load(state["fields"], game, "", ctx)
    game.check_state(values)
    declaration.assign(None, None, game, values, ctx)


@cache
def _numpy_dtypes() -> dict[Any, np.dtype]:
    """torch dtype -> NumPy dtype of the tensors a state holds (built on first use: importing `envs`
    does not import torch)."""
    import torch

    kinds = (bool, "uint8", "int8", "int16", "int32", "int64", "uint64", "float16", "float32", "float64")
    return {torch.from_numpy(np.zeros(0, kind)).dtype: np.dtype(kind) for kind in kinds}
