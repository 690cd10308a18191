"""The values each reset parameter accepts, declared once per family as a table of `Param`s.

`BatchedGame.check_params` checks every value against its game's table before the game's
own cross-parameter rules (e.g. a minimum not above its maximum), so a wrong value is refused
at once with a `ValueError` naming the parameter and what it accepts. The bounds keep every
accepted value cheap to reset and step with and far from integer overflow; where memory-gym
1.0.2 behaves sensibly they include everything it does.
"""

from __future__ import annotations

import reprlib
from dataclasses import dataclass
from fractions import Fraction
from numbers import Integral, Real
from typing import Any

import numpy as np

STEPS = 10**9
"""Bound of step counts and durations: longer than any episode, far from int64 overflow when summed."""
REWARD = 10**6
"""Bound of a reward's magnitude (episode returns stay finite)."""

_repr = reprlib.Repr()
_repr.maxlist = _repr.maxtuple = 8
_repr.maxlong = _repr.maxother = 40


@dataclass(frozen=True)
class Param:
    """A bool, an integer, a real number or a list of integers; numbers within [low, high]."""

    kind: str
    low: Real | None = None
    high: Real | None = None
    open_low: bool = False
    open_high: bool = False
    may_be_empty: bool = False

    def describe(self) -> str:
        if self.kind == "bool":
            return "a bool"
        opening, closing = "(" if self.open_low else "[", ")" if self.open_high else "]"
        interval = f"{opening}{_number(self.low)}, {_number(self.high)}{closing}"
        return {
            "int": f"an integer in {interval}",
            "real": f"a number in {interval}",
            "int list": f"a {'' if self.may_be_empty else 'non-empty '}list of integers in {interval}",
        }[self.kind]

    def accepts(self, value: Any) -> bool:
        if self.kind == "bool":
            return isinstance(value, (bool, np.bool_))
        if self.kind == "int list":
            if not isinstance(value, (list, tuple, np.ndarray)) or np.ndim(value) != 1:
                return False
            return (self.may_be_empty or len(value) > 0) and all(_is_int(v) and self._within(v) for v in value)
        number = _is_int(value) if self.kind == "int" else isinstance(value, Real) and not isinstance(value, bool)
        # Comparisons refuse NaN and infinities, and work for integers of any size.
        return number and self._within(value)

    def _within(self, value: Any) -> bool:
        above = value > self.low if self.open_low else value >= self.low
        below = value < self.high if self.open_high else value <= self.high
        return bool(above and below)

    def check(self, env_id: str, name: str, value: Any) -> None:
        if not self.accepts(value):
            raise ValueError(f"{env_id}: reset parameter {name!r} must be {self.describe()}, got {_repr.repr(value)}")


def boolean() -> Param:
    return Param("bool")


def integer(low: int, high: int) -> Param:
    return Param("int", low, high)


def real(low: Real, high: Real, open_low: bool = False, open_high: bool = False) -> Param:
    return Param("real", low, high, open_low, open_high)


def int_list(low: int, high: int, may_be_empty: bool = False) -> Param:
    """A list of integers (tuples and 1-D arrays too), e.g. the choices drawn from once per episode."""
    return Param("int list", low, high, may_be_empty=may_be_empty)


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, (bool, np.bool_))


def _number(value: Real) -> str:
    if isinstance(value, Fraction) and value.denominator != 1:
        return str(value)
    if isinstance(value, Integral):
        return f"{value:_}"
    return f"{value:g}"
