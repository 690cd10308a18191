"""Mystery Path generation: one 7x7 path segment from a randomised A*, bit-exact with Memory Gym.

`generate_segment(draws, start, end)` places the random walls and searches a path exactly as
the reference does (same random draws in the same order, including its quirks: the first open
node cheaper than `open[0]` wins, not the cheapest; re-parenting keeps the old cost; a Euclidean
heuristic; border walls picked from a list that is not re-filtered; random interior walls only
in columns/rows 1..4).

`Draws` hands out the bounded integers a `numpy.random.Generator` (PCG64) would, but reads the
generator's raw output in bulk and computes the bounded values itself (numpy's Lemire rejection
sampler on 32-bit words), then leaves the generator in exactly the state the equivalent
`Generator.integers` calls would have left it. A segment needs about a hundred draws; calling
`Generator.integers` for each would cost more than the search itself.
"""

from __future__ import annotations

import math

import numpy as np

GRID = 7
"""Cells per side of one segment."""

_MASK32 = (1 << 32) - 1
_MASK128 = (1 << 128) - 1
_PCG_MULTIPLIER = 0x2360ED051FC65DA44385DF649FCCF645
_RAW_CHUNK = 64
_WALL_BELOW = 33 << 32


class _LcgJumps:
    """`A_k = M^k` and `G_k = 1 + M + ... + M^(k-1)` mod 2^128, so k LCG steps are `A_k s + G_k inc`."""

    def __init__(self):
        self.power = [1]
        self.series = [0]

    def advance(self, state: int, increment: int, steps: int) -> int:
        while len(self.power) <= steps:
            self.series.append((self.series[-1] + self.power[-1]) & _MASK128)
            self.power.append((self.power[-1] * _PCG_MULTIPLIER) & _MASK128)
        return (self.power[steps] * state + self.series[steps] * increment) & _MASK128


_JUMPS = _LcgJumps()


class Draws:
    """Bounded integers drawn from a PCG64 `Generator` exactly as `Generator.integers` draws them.

    Use as a context manager: the generator is consumed in bulk while the block runs and left,
    on exit, in the state that one `rng.integers(0, n)` call per `draws.below(n)` would leave.
    """

    def __init__(self, rng: np.random.Generator):
        self._bitgen = rng.bit_generator
        if not isinstance(self._bitgen, np.random.PCG64):
            raise TypeError("path generation replays numpy's PCG64 stream; got " + type(self._bitgen).__name__)

    def __enter__(self) -> Draws:
        state = self._bitgen.state
        self._start = state["state"]["state"]
        self._increment = state["state"]["inc"]
        self._uinteger = state["uinteger"]
        # A buffered upper half-word from an earlier 32-bit draw is handed out first.
        self._buffered = int(state["has_uint32"])
        self.words: list[int] = [state["uinteger"]] if self._buffered else []
        """The 32-bit words in the order the sampler consumes them; `pos` is the next unused one."""
        self.pos = 0
        return self

    def refill(self) -> None:
        """Append the words of the next 64-bit outputs (low half first, as numpy hands them out)."""
        self.words.extend(self._bitgen.random_raw(_RAW_CHUNK).view(np.uint32).tolist())

    def below(self, n: int) -> int:
        """A uniform integer in [0, n) (numpy's Lemire sampler on 32-bit words; n < 2**32)."""
        if n <= 1:
            return 0  # numpy returns the lower bound of an empty range without drawing
        if self.pos >= len(self.words):
            self.refill()
        product = self.words[self.pos] * n
        self.pos += 1
        if product & _MASK32 < n:
            threshold = ((1 << 32) - n) % n
            while product & _MASK32 < threshold:
                if self.pos >= len(self.words):
                    self.refill()
                product = self.words[self.pos] * n
                self.pos += 1
        return product >> 32

    def __exit__(self, *exc) -> None:
        consumed = self.pos - self._buffered  # words taken from fresh 64-bit outputs
        if consumed < 0:  # only the buffered word was there, and it was not used
            consumed, has_uint32 = 0, 1
        else:
            has_uint32 = consumed % 2
        outputs = (consumed + 1) // 2
        uinteger = self.words[self._buffered + 2 * outputs - 1] if outputs else self._uinteger
        self._bitgen.state = {
            "bit_generator": "PCG64",
            "state": {"state": _JUMPS.advance(self._start, self._increment, outputs), "inc": self._increment},
            "has_uint32": has_uint32,
            "uinteger": uinteger,
        }


def _cell(x: int, y: int) -> int:
    return x * GRID + y


# Neighbour lists in the reference's order: 4-neighbours (+x, -x, +y, -y), then diagonals
# (+1,+1), (-1,-1), (+1,-1), (-1,+1); cells outside the grid are left out.
def _neighbours(steps: tuple[tuple[int, int], ...]) -> tuple[tuple[int, ...], ...]:
    table = []
    for x in range(GRID):
        for y in range(GRID):
            inside = [(x + dx, y + dy) for dx, dy in steps if 0 <= x + dx < GRID and 0 <= y + dy < GRID]
            table.append(tuple(_cell(*cell) for cell in inside))
    return tuple(table)


def _bits(cells) -> int:
    return sum(1 << cell for cell in set(cells))


_NEIGHBOURS = _neighbours(((1, 0), (-1, 0), (0, 1), (0, -1)))
_DIAGONALS = _neighbours(((1, 1), (-1, -1), (1, -1), (-1, 1)))
_AROUND = tuple(_bits(_NEIGHBOURS[cell] + _DIAGONALS[cell]) for cell in range(GRID * GRID))
"""Bit mask of the 8 cells around each cell."""
_CROSS = tuple(_bits((cell, *_NEIGHBOURS[cell])) for cell in range(GRID * GRID))
"""Bit mask of each cell and its 4-neighbours."""
_INTERIOR = tuple(_cell(x, y) for x in range(1, GRID - 2) for y in range(1, GRID - 2))
_BORDER = tuple(_cell(x, y) for x in range(GRID) for y in range(GRID) if x in (0, GRID - 1) or y in (0, GRID - 1))
_HEURISTICS: dict[int, tuple[float, ...]] = {
    _cell(ex, ey): tuple(math.sqrt((x - ex) ** 2 + (y - ey) ** 2) for x in range(GRID) for y in range(GRID))
    for ex in range(GRID)
    for ey in range(GRID)
}


def generate_segment(
    draws: Draws, start: tuple[int, int], end: tuple[int, int]
) -> tuple[list[tuple[int, int]], list[bool]]:
    """Walls and path of one segment; returns (path cells from start to end, wall flag per cell x*7+y)."""
    wall = [False] * (GRID * GRID)
    walls = 0  # the same as a bit mask
    # Interior walls: one draw `below(100) < 33` per cell of columns/rows 1..4, in column-major order,
    # inlined (a method call per draw would cost a third of the segment). For n = 100 the sampler
    # rejects exactly the words whose product has a low half below (2**32 - 100) % 100 = 96, and
    # `below(100) < 33` is `product < 33 << 32`.
    words, pos = draws.words, draws.pos
    for cell in _INTERIOR:
        if pos >= len(words):
            draws.refill()
        product = words[pos] * 100
        pos += 1
        while product & _MASK32 < 96:
            if pos >= len(words):
                draws.refill()
            product = words[pos] * 100
            pos += 1
        if product < _WALL_BELOW:
            wall[cell] = True
            walls |= 1 << cell
    # `below(2)` is the word's top bit (a power of two is never rejected).
    if pos >= len(words):
        draws.refill()
    border_walls = (4, 8)[words[pos] >> 31]
    draws.pos = pos + 1

    first, last = _cell(*start), _cell(*end)
    excluded = _CROSS[first] | _CROSS[last]
    candidates = [cell for cell in _BORDER if not (excluded >> cell) & 1 and not walls & _AROUND[cell]]
    for _ in range(border_walls):
        if candidates:
            wall[candidates.pop(draws.below(len(candidates)))] = True

    return _search(draws, first, last, wall), wall


def _search(draws: Draws, first: int, last: int, wall: list[bool]) -> list[tuple[int, int]]:
    """The reference's randomised A*: random step costs 1..8, quirks included."""
    heuristic = _HEURISTICS[last]
    blocked = wall.copy()  # walls and closed nodes
    in_open = [False] * (GRID * GRID)
    cost = [0] * (GRID * GRID)
    parent = [-1] * (GRID * GRID)
    open_nodes, open_scores = [first], [0.0]
    in_open[first] = True
    words, pos = draws.words, draws.pos
    limit = len(words) - 4
    while open_nodes:
        # The first node cheaper than open[0] wins (not the cheapest one).
        best = open_scores[0]
        pick = 0
        for index, score in enumerate(open_scores):
            if score < best:
                pick = index
                break
        current = open_nodes[pick]
        if current == last:
            draws.pos = pos
            path = [current]
            while parent[path[-1]] >= 0:
                path.append(parent[path[-1]])
            return [divmod(cell, GRID) for cell in reversed(path)]
        del open_nodes[pick]
        del open_scores[pick]
        in_open[current] = False
        blocked[current] = True
        if pos > limit:
            draws.refill()
            limit = len(words) - 4
        base = cost[current] + 1
        for neighbour in _NEIGHBOURS[current]:
            if blocked[neighbour]:
                continue
            # A step cost 1..8: `below(8)` is the word's top 3 bits (a power of two is never rejected).
            tentative = base + (words[pos] >> 29)
            pos += 1
            if in_open[neighbour]:
                # Re-parenting keeps the neighbour's old cost, so its score stays the same too.
                if tentative < cost[neighbour]:
                    parent[neighbour] = current
            else:
                cost[neighbour] = tentative
                parent[neighbour] = current
                open_nodes.append(neighbour)
                open_scores.append(tentative + heuristic[neighbour])
                in_open[neighbour] = True
    raise RuntimeError("no path between the segment's start and end")
