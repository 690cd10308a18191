"""The spotlights of Searing Spotlights over a batch of envs, and the darkness layer they cut.

A spotlight is a disk that sweeps across the screen along a quadratic Bezier curve whose three
control points lie on a circle just outside the screen. Each env holds an ordered list of them,
kept here in padded slot arrays `(num_envs, slots)`: slot order is list order, a removed spot
leaves a hole (an inactive slot), holes are squeezed out when an env runs out of slots, and the
slot count doubles when an env needs more live spots than there are slots.

The reference walks its list once per step and removes a finished spot while iterating, so the
spot right after a removed one is skipped for that step (not drawn, not hit-tested, not moved);
`Spotlights.visit` reproduces that.

The darkness layer is one code per pixel and channel, `(num_envs, x, y, 3)` uint8: `DARK`
(black), `CLEAR` (inside a spot) or `RING` (the white outline spots get in black-background
mode); the channel copies let it multiply a frame directly. `clear_mask` fills it with a
compiled loop (numba), one run of rows per disk column.
"""

from __future__ import annotations

import math

import numba
import numpy as np

from envs.raster import disk_offsets, ring_offsets, rotate_vector

SCREEN = 84
DARK, CLEAR, RING = 0, 1, 2
# Spots start and end on this circle plus their radius, so they enter and leave unseen.
_SPAWN_CIRCLE = math.sqrt(math.pow(SCREEN, 2) + math.pow(SCREEN, 2)) / 2
_CENTRE = SCREEN // 2


def create_spot(rng: np.random.Generator, min_radius, max_radius, min_speed, max_speed):
    """Draw one spotlight (five draws, reference order); returns (radius, speed, 6 control coordinates)."""
    radius = int(rng.integers(min_radius, max_radius + 1))
    speed = float(rng.uniform(min_speed, max_speed))
    start = int(rng.integers(0, 360))
    target = start + 180 + int(rng.integers(-45, 45))
    offset = target + int(rng.integers(-135, 135))
    distance = _SPAWN_CIRCLE + radius
    points = []
    for angle in (start, target, offset):
        x, y = rotate_vector(distance, 0.0, angle)
        points += [_CENTRE + x, _CENTRE + y]
    return radius, speed, points


class Spotlights:
    """Ordered spotlight lists of `num_envs` envs in padded slot arrays."""

    _FIELDS = ("t", "speed", "p0x", "p0y", "p1x", "p1y", "p2x", "p2y")
    def __init__(self, num_envs: int, slots: int = 16):
        self.num_envs = num_envs
        self.active = np.zeros((num_envs, slots), dtype=bool)
        self.done = np.zeros((num_envs, slots), dtype=bool)
        self.radius = np.zeros((num_envs, slots), dtype=np.int64)
        for name in self._FIELDS:
            setattr(self, name, np.zeros((num_envs, slots)))
        self.used = np.zeros(num_envs, dtype=np.int64)  # slots taken per env, holes included

    @property
    def slots(self) -> int:
        return self.active.shape[1]

    def clear(self, i: int) -> None:
        self.active[i] = False
        self.done[i] = False
        self.used[i] = 0

    def add(self, i: int, radius: int, speed: float, points) -> None:
        """Append a new spot (t = 0) to the end of env `i`'s list."""
        if self.used[i] == self.slots:
            self._squeeze(i)
        if self.used[i] == self.slots:
            self._grow()
        k = self.used[i]
        self.used[i] += 1
        self.active[i, k], self.done[i, k], self.radius[i, k] = True, False, radius
        self.t[i, k], self.speed[i, k] = 0.0, speed
        self.p0x[i, k], self.p0y[i, k], self.p1x[i, k], self.p1y[i, k], self.p2x[i, k], self.p2y[i, k] = points

    def _squeeze(self, i: int) -> None:
        keep = np.flatnonzero(self.active[i])
        for name in ("active", "done", "radius", *self._FIELDS):
            row = getattr(self, name)[i]
            row[: len(keep)] = row[keep]
        self.active[i, len(keep) :] = False
        self.used[i] = len(keep)

    def _grow(self) -> None:
        for name in ("active", "done", "radius", *self._FIELDS):
            old = getattr(self, name)
            setattr(self, name, np.concatenate([old, np.zeros_like(old)], axis=1))

    def visit(self) -> np.ndarray:
        """Remove the finished spots and return which spots are visited this step `(n, slots)`.

        Removing a spot while walking the list skips the one after it (the reference quirk).
        """
        finished = self.active & self.done
        if not finished.any():
            return self.active.copy()
        visited = self.active & ~self.done
        envs = np.flatnonzero(finished.any(axis=1))
        skip = np.zeros(len(envs), dtype=bool)
        for k in range(self.slots):
            live = self.active[envs, k]
            removed = live & ~skip & self.done[envs, k]
            visited[envs[live & skip], k] = False
            self.active[envs[removed], k] = False
            skip = np.where(live, removed, skip)
        return visited

    def move(self, visited: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of every spot at its current t, then advance the visited ones; returns (x, y)."""
        t = self.t
        u = 1 - t
        qx = self.p1x * u + self.p2x * t
        qy = self.p1y * u + self.p2y * t
        x = self.p0x * u + qx * t
        y = self.p0y * u + qy * t
        self.t = np.where(visited, t + self.speed, t)
        ended = visited & (self.t >= 1.0)
        if ended.any():
            self.t[ended] = 1.0
            self.done |= ended
        return x, y


class DiskSpans:
    """Per radius r and disk column j (`x = cx - r + j`): the disk's rows there, `cy + lo .. cy + hi - 1`."""

    def __init__(self):
        self.max_radius = -1

    def ensure(self, max_radius: int) -> None:
        if max_radius <= self.max_radius:
            return
        self.lo = np.zeros((max_radius + 1, 2 * max_radius), dtype=np.int64)
        self.hi = np.zeros_like(self.lo)
        for r in range(1, max_radius + 1):
            dx, dy = disk_offsets(r)
            for j in range(2 * r):
                rows = dy[dx == j - r]
                self.lo[r, j], self.hi[r, j] = rows.min(), rows.max() + 1
                assert self.hi[r, j] - self.lo[r, j] == len(rows), "disk columns are contiguous"
        self.max_radius = max_radius


_SPANS = DiskSpans()


def clear_mask(cx: np.ndarray, cy: np.ndarray, radius: np.ndarray, visited: np.ndarray) -> np.ndarray:
    """The union of the visited disks per env as `(n, x, y, 3)` uint8 0/1 (1 = inside a spot)."""
    codes = np.zeros((cx.shape[0], SCREEN, SCREEN, 3), dtype=np.uint8)
    _SPANS.ensure(int(np.where(visited, radius, 0).max(initial=0)))
    _fill_disks(codes, cx, cy, radius, visited, _SPANS.lo, _SPANS.hi)
    return codes


@numba.njit(cache=True, nogil=True)
def _fill_disks(codes, cx, cy, radius, visited, lo, hi):  # pragma: no cover (compiled)
    """Set the pixels of every visited disk to 1, column by column (a column of a disk is one run of rows)."""
    for env in range(cx.shape[0]):
        for k in range(cx.shape[1]):
            if not visited[env, k]:
                continue
            r = radius[env, k]
            for j in range(2 * r):
                x = cx[env, k] - r + j
                if x < 0 or x >= SCREEN:
                    continue
                top = max(cy[env, k] + lo[r, j], 0)
                bottom = min(cy[env, k] + hi[r, j], SCREEN)
                if top < bottom:  # (a negative bound would count from the end)
                    codes[env, x, top:bottom, :] = 1


class _PaddedOffsets:
    """Disk and ring pixel offsets per radius, padded to one length (`valid` marks real pixels)."""

    def __init__(self):
        self.max_radius = -1

    def ensure(self, max_radius: int) -> None:
        if max_radius <= self.max_radius:
            return
        empty = (np.zeros(0, np.int64),) * 2
        shapes = [(disk_offsets(r), ring_offsets(r)) if r >= 1 else (empty, empty) for r in range(max_radius + 1)]
        self.tables = []
        for part in (0, 1):
            longest = max(max(len(s[part][0]) for s in shapes), 1)
            dx = np.zeros((max_radius + 1, longest), dtype=np.int64)
            dy = np.zeros_like(dx)
            valid = np.zeros(dx.shape, dtype=bool)
            for r, s in enumerate(shapes):
                count = len(s[part][0])
                dx[r, :count], dy[r, :count], valid[r, :count] = s[part][0], s[part][1], True
            self.tables.append((dx, dy, valid))
        self.max_radius = max_radius


_OFFSETS = _PaddedOffsets()


def ringed_codes(cx: np.ndarray, cy: np.ndarray, radius: np.ndarray, visited: np.ndarray) -> np.ndarray:
    """Darkness codes with white spot outlines, painted spot by spot in list order.

    A spot's disk clears pixels and its ring paints them white, so a later spot's disk reopens
    an earlier ring and a later ring covers an earlier disk. Slot k of every env is painted
    together; slots go in list order.
    """
    n, slots = cx.shape
    codes = np.zeros((n, SCREEN, SCREEN, 3), dtype=np.uint8)
    _OFFSETS.ensure(int(np.where(visited, radius, 0).max(initial=0)))
    for k in range(slots):
        envs = np.flatnonzero(visited[:, k])
        if len(envs) == 0:
            continue
        r = radius[envs, k]
        for (dx, dy, valid), code in zip(_OFFSETS.tables, (CLEAR, RING)):
            x = cx[envs, k, None] + dx[r]
            y = cy[envs, k, None] + dy[r]
            keep = valid[r] & (x >= 0) & (x < SCREEN) & (y >= 0) & (y < SCREEN)
            codes[np.broadcast_to(envs[:, None], x.shape)[keep], x[keep], y[keep]] = code
    return codes
