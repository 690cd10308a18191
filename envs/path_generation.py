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

The walls and the search of one segment are a small sequential program (about a hundred draws
and forty node expansions) that no array operation batches, and the endless env runs three of
them at every reset (`generate_chain`: a row of segments, each starting where the previous one
ends). It is compiled with numba (`_segment`, `_chain`) as a pure function of the words and the
read position, so running out of words just means refilling and running it again.
"""

from __future__ import annotations

import math

import numba
import numpy as np

GRID = 7
"""Cells per side of one segment."""

_MASK32 = (1 << 32) - 1
_MASK128 = (1 << 128) - 1
_PCG_MULTIPLIER = 0x2360ED051FC65DA44385DF649FCCF645
_RAW_CHUNK = 128


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
        self.words = np.array([state["uinteger"]] if self._buffered else [], dtype=np.uint32)
        """The 32-bit words in the order the sampler consumes them; `pos` is the next unused one."""
        self.pos = 0
        return self

    def refill(self) -> None:
        """Append the words of the next 64-bit outputs (low half first, as numpy hands them out)."""
        self.words = np.concatenate([self.words, self._bitgen.random_raw(_RAW_CHUNK).view(np.uint32)])

    def below(self, n: int) -> int:
        """A uniform integer in [0, n) (numpy's Lemire sampler on 32-bit words; n < 2**32)."""
        if n <= 1:
            return 0  # numpy returns the lower bound of an empty range without drawing
        while True:
            if self.pos >= len(self.words):
                self.refill()
            value, pos = _below(self.words, self.pos, n)
            if pos >= 0:
                self.pos = pos
                return value
            self.refill()

    def __exit__(self, *exc) -> None:
        consumed = self.pos - self._buffered  # words taken from fresh 64-bit outputs
        if consumed < 0:  # only the buffered word was there, and it was not used
            consumed, has_uint32 = 0, 1
        else:
            has_uint32 = consumed % 2
        outputs = (consumed + 1) // 2
        uinteger = int(self.words[self._buffered + 2 * outputs - 1]) if outputs else self._uinteger
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
def _neighbours(steps: tuple[tuple[int, int], ...]) -> list[list[int]]:
    table = []
    for x in range(GRID):
        for y in range(GRID):
            inside = [(x + dx, y + dy) for dx, dy in steps if 0 <= x + dx < GRID and 0 <= y + dy < GRID]
            table.append([_cell(*cell) for cell in inside])
    return table


def _bits(cells) -> int:
    return sum(1 << cell for cell in set(cells))


_CELLS = GRID * GRID
_FOUR = _neighbours(((1, 0), (-1, 0), (0, 1), (0, -1)))
_NEIGHBOURS = np.array([cells + [-1] * (4 - len(cells)) for cells in _FOUR], dtype=np.int64)
"""The 4-neighbours of each cell in the reference's order, padded with -1."""
_DIAGONALS = _neighbours(((1, 1), (-1, -1), (1, -1), (-1, 1)))
_AROUND = np.array([_bits(_FOUR[cell] + _DIAGONALS[cell]) for cell in range(_CELLS)], dtype=np.int64)
"""Bit mask of the 8 cells around each cell."""
_CROSS = np.array([_bits((cell, *_FOUR[cell])) for cell in range(_CELLS)], dtype=np.int64)
"""Bit mask of each cell and its 4-neighbours."""
_INTERIOR = np.array([_cell(x, y) for x in range(1, GRID - 2) for y in range(1, GRID - 2)], dtype=np.int64)
_BORDER = np.array(
    [_cell(x, y) for x in range(GRID) for y in range(GRID) if x in (0, GRID - 1) or y in (0, GRID - 1)],
    dtype=np.int64,
)
_HEURISTICS = np.array(
    [
        [math.sqrt((x - ex) ** 2 + (y - ey) ** 2) for x in range(GRID) for y in range(GRID)]
        for ex in range(GRID)
        for ey in range(GRID)
    ]
)
"""`_HEURISTICS[end, cell]`: the Euclidean distance between two cells."""
_OUT_OF_WORDS = -1
_NO_PATH = -2


def generate_segment(
    draws: Draws, start: tuple[int, int], end: tuple[int, int]
) -> tuple[list[tuple[int, int]], list[bool]]:
    """Walls and path of one segment; returns (path cells from start to end, wall flag per cell x*7+y)."""
    wall = np.zeros(_CELLS, dtype=np.bool_)
    path = np.zeros(_CELLS, dtype=np.int64)
    while True:
        if len(draws.words) - draws.pos < 2 * _RAW_CHUNK:
            draws.refill()
        pos, length = _segment(draws.words, draws.pos, _cell(*start), _cell(*end), wall, path)
        if pos >= 0:
            break
        if pos == _NO_PATH:
            raise RuntimeError("no path between the segment's start and end")
        draws.refill()
    draws.pos = pos
    return [divmod(cell, GRID) for cell in path[:length].tolist()], wall.tolist()


def generate_chain(draws: Draws, start_row: int | None, count: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`count` segments in a row, each from column 0 to column 6 (the endless path's pieces).

    Each segment draws its end row `below(7)` and then its walls and path; the first one draws
    its start row before that unless `start_row` is given, the others start on the previous end
    row. Returns (path cells x*7+y of segment k in `cells[k, :lengths[k]]`, lengths, end rows);
    `cells` has one spare entry after the longest possible path (the endless path's transition cell).
    """
    cells = np.zeros((count, _CELLS + 1), dtype=np.int64)
    lengths = np.zeros(count, dtype=np.int64)
    end_rows = np.zeros(count, dtype=np.int64)
    while True:
        if len(draws.words) - draws.pos < 2 * _RAW_CHUNK * count:
            draws.refill()
        pos = _chain(draws.words, draws.pos, -1 if start_row is None else start_row, cells, lengths, end_rows)
        if pos >= 0:
            break
        if pos == _NO_PATH:
            raise RuntimeError("no path between a segment's start and end")
        draws.refill()
    draws.pos = pos
    return cells, lengths, end_rows


@numba.njit(cache=True)
def _chain(
    words: np.ndarray, pos: int, start_row: int, cells: np.ndarray, lengths: np.ndarray, end_rows: np.ndarray
) -> int:
    """`generate_chain` from `words[pos:]` (start_row -1: drawn); returns the next position or
    `_segment`'s error code."""
    wall = np.zeros(_CELLS, dtype=np.bool_)
    for k in range(len(cells)):
        if start_row < 0:
            start_row, pos = _below(words, pos, GRID)
            if pos < 0:
                return _OUT_OF_WORDS
        end_row, pos = _below(words, pos, GRID)
        if pos < 0:
            return _OUT_OF_WORDS
        pos, lengths[k] = _segment(words, pos, start_row, (GRID - 1) * GRID + end_row, wall, cells[k])
        if pos < 0:
            return pos
        end_rows[k] = end_row
        start_row = end_row
    return pos


@numba.njit(cache=True)
def _below(words: np.ndarray, pos: int, n: int) -> tuple[int, int]:
    """`Draws.below(n)` for n >= 2 from `words[pos:]`: (value, next position), position -1 if the words ran out."""
    while True:
        if pos >= len(words):
            return 0, _OUT_OF_WORDS
        product = np.int64(words[pos]) * n  # < 2**64: the product of two 32-bit values
        pos += 1
        low = product & _MASK32
        # Lemire: reject only low halves below (2**32 - n) % n, checked only when below n.
        if low >= n or low >= ((1 << 32) - n) % n:
            return product >> 32, pos


@numba.njit(cache=True)
def _segment(
    words: np.ndarray, pos: int, first: int, last: int, wall: np.ndarray, path: np.ndarray
) -> tuple[int, int]:
    """Walls and path of one segment from `words[pos:]`, written into `wall` and `path`.

    Returns (next position, path length), or (-1, 0) if the words ran out (nothing consumed:
    refill and call again with a cleared `wall`), or (-2, 0) if no path exists.
    """
    wall[:] = False
    walls = 0  # the same as a bit mask
    # Interior walls: one draw `below(100) < 33` per cell of columns/rows 1..4, in column-major order.
    for cell in _INTERIOR:
        value, pos = _below(words, pos, 100)
        if pos < 0:
            return _OUT_OF_WORDS, 0
        if value < 33:
            wall[cell] = True
            walls |= 1 << cell
    # `below(2)` is the word's top bit (a power of two is never rejected).
    if pos >= len(words):
        return _OUT_OF_WORDS, 0
    border_walls = 8 if words[pos] >> 31 else 4
    pos += 1
    # Border walls are popped from a candidate list that is not re-filtered after each pick.
    excluded = _CROSS[first] | _CROSS[last]
    candidates = np.empty(len(_BORDER), dtype=np.int64)
    count = 0
    for cell in _BORDER:
        if not (excluded >> cell) & 1 and not walls & _AROUND[cell]:
            candidates[count] = cell
            count += 1
    for _ in range(border_walls):
        if count == 0:
            break
        pick = 0  # below(1) is 0 without a draw
        if count > 1:
            pick, pos = _below(words, pos, count)
            if pos < 0:
                return _OUT_OF_WORDS, 0
        wall[candidates[pick]] = True
        count -= 1
        for index in range(pick, count):
            candidates[index] = candidates[index + 1]
    return _search(words, pos, first, last, wall, path)


@numba.njit(cache=True)
def _search(
    words: np.ndarray, pos: int, first: int, last: int, wall: np.ndarray, path: np.ndarray
) -> tuple[int, int]:
    """The reference's randomised A*: random step costs 1..8, quirks included (see `_segment`'s returns)."""
    blocked = wall.copy()  # walls and closed nodes
    in_open = np.zeros(_CELLS, dtype=np.bool_)
    cost = np.zeros(_CELLS, dtype=np.int64)
    parent = np.full(_CELLS, -1, dtype=np.int64)
    # A node enters the open list at most once (it is closed for good when it leaves).
    open_nodes = np.empty(_CELLS, dtype=np.int64)
    open_scores = np.empty(_CELLS, dtype=np.float64)
    open_nodes[0], open_scores[0], size = first, 0.0, 1
    in_open[first] = True
    while size > 0:
        # The first node cheaper than open[0] wins (not the cheapest one).
        pick = 0
        for index in range(size):
            if open_scores[index] < open_scores[0]:
                pick = index
                break
        current = open_nodes[pick]
        if current == last:
            length = 1
            node = current
            while parent[node] >= 0:
                node = parent[node]
                length += 1
            node = current
            for index in range(length - 1, -1, -1):
                path[index] = node
                node = parent[node]
            return pos, length
        size -= 1
        for index in range(pick, size):
            open_nodes[index] = open_nodes[index + 1]
            open_scores[index] = open_scores[index + 1]
        in_open[current] = False
        blocked[current] = True
        base = cost[current] + 1
        for neighbour in _NEIGHBOURS[current]:
            if neighbour < 0:
                break
            if blocked[neighbour]:
                continue
            # A step cost 1..8: `below(8)` is the word's top 3 bits (a power of two is never rejected).
            if pos >= len(words):
                return _OUT_OF_WORDS, 0
            tentative = base + np.int64(words[pos] >> 29)
            pos += 1
            if in_open[neighbour]:
                # Re-parenting keeps the neighbour's old cost, so its score stays the same too.
                if tentative < cost[neighbour]:
                    parent[neighbour] = current
            else:
                cost[neighbour] = tentative
                parent[neighbour] = current
                open_nodes[size] = neighbour
                open_scores[size] = tentative + _HEURISTICS[last, neighbour]
                size += 1
                in_open[neighbour] = True
    return _NO_PATH, 0
