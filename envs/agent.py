"""The agent over a batch of envs: the three movement controllers and the sprite drawing.

State is plain arrays: integer centres `cx, cy`, rotation in degrees (a multiple of 45), and for
the grid controller integer cell indices. Each controller is a pure function from state and the
batch of actions to the new state, identical to the reference step for step:

* `continuous_step`: `[horizontal, vertical]` actions, velocity truncated to whole pixels,
  optional clamping to a boundary rectangle;
* `wrap_step`: the same steering without truncation, the centre rounded half away from zero and
  wrapped around a boundary rectangle (a torus);
* `grid_step`: Discrete(4) actions (no-op, turn left, turn right, forward) on an n x n grid.

`AgentPainter` draws each env's agent sprite (chosen by rotation, drawn at any agent scale).
"""

from __future__ import annotations

import math

import numpy as np

from envs.raster import SpriteSheet, rhaz
from envs.sprites import agent_sprites

# Rotation per (horizontal, vertical) input, indexed [h, v]; -1 keeps the current rotation.
# h: 0 none, 1 left, 2 right; v: 0 none, 1 up, 2 down. Vertical input overrides the horizontal
# facing, and both together face the diagonal.
_ROTATION = np.array(
    [
        [-1, 0, 180],
        [90, 45, 135],
        [270, 315, 225],
    ],
    dtype=np.int64,
)
_DIRECTION = np.array([0, -1, 1], dtype=np.int64)


def steer(actions: np.ndarray, rotation: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Direction signs (dx, dy) in {-1, 0, 1} and the new rotation for `[h, v]` actions `(n, 2)`."""
    h, v = actions[:, 0], actions[:, 1]
    facing = _ROTATION[h, v]
    return _DIRECTION[h], _DIRECTION[v], np.where(facing < 0, rotation, facing)


def velocity_components(speed) -> tuple[np.ndarray, np.ndarray]:
    """Per-axis speed of a straight and of a diagonal move (the normalised input times `speed`)."""
    speed = np.asarray(speed, dtype=np.float64)
    return speed * 1.0, speed * (1.0 / math.sqrt(2.0))


def _velocity(dx: np.ndarray, dy: np.ndarray, speed) -> tuple[np.ndarray, np.ndarray]:
    straight, diagonal = velocity_components(speed)
    per_axis = np.where((dx != 0) & (dy != 0), diagonal, straight)
    return dx * per_axis, dy * per_axis


def continuous_step(cx, cy, rotation, actions, speed, radius=None, bounds=None):
    """One step of the continuous controller; returns new (cx, cy, rotation).

    The velocity is truncated to whole pixels per axis (so moving in opposite directions is
    symmetric). `bounds = (left, top, width, height)` (scalars or per-env arrays) clamps the
    centre to `[left + radius, left + width - radius]` and likewise vertically.
    """
    dx, dy, rotation = steer(actions, rotation)
    vx, vy = _velocity(dx, dy, speed)
    cx = cx + np.trunc(vx).astype(np.int64)
    cy = cy + np.trunc(vy).astype(np.int64)
    if bounds is not None:
        left, top, width, height = bounds
        cx = np.maximum(np.minimum(cx, left + width - radius), left + radius)
        cy = np.maximum(np.minimum(cy, top + height - radius), top + radius)
    return cx, cy, rotation


def wrap_step(cx, cy, rotation, actions, speed, radius, bounds):
    """One step of the screen-wrap controller; returns new (cx, cy, rotation).

    The float velocity is added and the centre rounded half away from zero; a centre beyond an
    edge of `bounds = (left, top, width, height)` by more than `radius / 2` reappears that far
    beyond the opposite edge.
    """
    dx, dy, rotation = steer(actions, rotation)
    vx, vy = _velocity(dx, dy, speed)
    left, top, width, height = bounds
    margin = np.asarray(radius) * 0.5
    cx = _wrap(rhaz(cx + vx), left, left + width, margin)
    cy = _wrap(rhaz(cy + vy), top, top + height, margin)
    return cx, cy, rotation


def _wrap(c: np.ndarray, low, high, margin) -> np.ndarray:
    c = np.where(c > high + margin, rhaz(low - margin), c)
    return np.where(c < low - margin, rhaz(high + margin), c)


# Cell step per facing (rotation // 90): north, west, south, east.
_FORWARD_I = np.array([0, -1, 0, 1], dtype=np.int64)
_FORWARD_J = np.array([-1, 0, 1, 0], dtype=np.int64)
_TURN = np.array([0, 90, -90, 0], dtype=np.int64)


def grid_step(i, j, rotation, actions, size):
    """One step of the grid controller on a `size` x `size` grid; returns new (i, j, rotation).

    Action 1 turns counter-clockwise (+90), 2 clockwise (-90), 3 moves one cell forward unless
    that leaves the grid, 0 does nothing. Rotation 0 faces north (up).
    """
    rotation = (rotation + _TURN[actions]) % 360
    facing = rotation // 90
    forward = actions == 3
    ti = i + _FORWARD_I[facing]
    tj = j + _FORWARD_J[facing]
    move = forward & (ti >= 0) & (ti < size) & (tj >= 0) & (tj < size)
    return np.where(move, ti, i), np.where(move, tj, j), rotation


class AgentPainter:
    """Draws every env's agent sprite from its centre, rotation and agent scale.

    Sprites of each scale are packed once; drawing is one batched blit per distinct scale
    present in the batch (normally one).
    """

    def __init__(self):
        self._sheets: dict[float, tuple[SpriteSheet, int]] = {}

    def sheet(self, scale: float) -> tuple[SpriteSheet, int]:
        """The packed sprites of `scale` and their (square) size."""
        scale = float(scale)
        if scale not in self._sheets:
            sprites = agent_sprites(scale)
            self._sheets[scale] = (SpriteSheet(list(sprites)), sprites[0].size[0])
        return self._sheets[scale]

    def draw(self, screens, env, cx, cy, rotation, scale) -> None:
        """Draw the agents of envs `env` (centres `cx, cy`, rotations, per-env `scale`), clipped."""
        env, rotation, cx, cy = np.asarray(env), np.asarray(rotation), np.asarray(cx), np.asarray(cy)
        scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), env.shape)
        if len(env) == 0:
            return
        first = scale[0]
        groups = [(first, slice(None))] if (scale == first).all() else [(v, scale == v) for v in np.unique(scale)]
        for value, pick in groups:
            sheet, size = self.sheet(value)
            sheet.blit(screens, env[pick], rotation[pick] // 45, cx[pick] - size // 2, cy[pick] - size // 2)
