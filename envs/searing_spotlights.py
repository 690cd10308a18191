"""Searing Spotlights: `SearingSpotlights-v0` and `Endless-SearingSpotlights-v0`, natively batched.

The lights dim out over the first steps; afterwards the agent sees only what the moving
spotlights uncover, and every step a spotlight touches it costs health. In the finite game it
must collect the coins and then reach the exit within 256 steps; in the endless game a single
coin respawns whenever it is collected, spotlights keep coming, and the episode ends on death
or after 160 steps without a coin.

Behaviour (rendering, RNG order, rules and the reference's quirks) follows memory-gym 1.0.2;
see the README section "Searing Spotlights" for the quirks and the cases handled differently.

Per-env state lives in arrays; the spotlight lists in `envs.spotlights.Spotlights`. A frame is
the background, the entities drawn under the darkness, the darkness (alpha-blended, cut open
by the spotlights), then the entities shown above it and the top bar, in the reference's order.
One numba kernel draws the frames, each whole (background, sprites, darkness, bar) before the
next, so that a frame stays in the cache: with NumPy alone, the many small array calls per step
cost more than the pixels themselves.
"""

from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from numbers import Integral, Real
from typing import Any

import gymnasium as gym
import numba
import numpy as np

from envs.agent import continuous_step
from envs.core import BatchedGame
from envs.parameters import REWARD, STEPS, boolean, int_list, integer, real
from envs.raster import Sprite, disk_offsets, ring_offsets
from envs.spotlights import DARK, RING, SCREEN, Spotlights, clear_mask, create_spot, ringed_codes
from envs.state import Flags, LikeParam, OneOf, Pixels, Span
from envs.sprites import EXIT_CLOSED, EXIT_OPEN, agent_radius, agent_sprites

SCALE = 0.25
TILE = int(50 * SCALE)
BAR_HEIGHT = int(16 * SCALE)
HALF, QUARTER = SCREEN // 2, SCREEN // 4
WALKABLE = (0, BAR_HEIGHT, SCREEN, SCREEN - BAR_HEIGHT)  # left, top, width, height
EDGE = int(30 * SCALE)  # coins and the exit keep this distance from the screen border
ROTATIONS = (0, 45, 90, 135, 180, 225, 270, 315)

GREY, BAR_GREEN, RED, YELLOW = (50, 50, 50), (0, 255, 0), (255, 0, 0), (255, 255, 0)
ACTION_COLOURS = np.array([(120, 120, 120), (116, 1, 113), (255, 94, 14)], dtype=np.uint8)
COIN_FILL, COIN_RIM = (255, 255, 0), (255, 165, 0)
ACTION_CELLS = ((2 * QUARTER, 3 * QUARTER), (3 * QUARTER, 4 * QUARTER))
REWARD_CELL = (int(QUARTER * 2.75), int(QUARTER * 2.75) + int(QUARTER * 0.5))  # beside the action cells
REWARD_BAR = (2 * QUARTER, 4 * QUARTER)  # without action cells
REWARD_COLOURS = np.array([GREY, YELLOW], dtype=np.uint8)  # previous reward not positive / positive
BAR_COLUMN = np.dtype((np.void, BAR_HEIGHT * 3))
"""One column of the top bar (its `BAR_HEIGHT` pixels) as a single opaque element."""
RED_COLUMN = np.array([RED] * BAR_HEIGHT, dtype=np.uint8).reshape(-1).view(BAR_COLUMN)[0]
# The two action cells for each (horizontal, vertical) action, as one image per combination.
ACTION_CELL_IMAGES = np.concatenate(
    [
        np.broadcast_to(ACTION_COLOURS[np.arange(9) // 3, None, None], (9, QUARTER, BAR_HEIGHT, 3)),
        np.broadcast_to(ACTION_COLOURS[np.arange(9) % 3, None, None], (9, QUARTER, BAR_HEIGHT, 3)),
    ],
    axis=1,
)


def _chessboard(colour) -> np.ndarray:
    x, y = np.meshgrid(np.arange(SCREEN) // TILE, np.arange(SCREEN) // TILE, indexing="ij")
    board = np.empty((SCREEN, SCREEN, 3), dtype=np.uint8)
    board[:] = colour
    board[(x + y) % 2 == 0] = 255
    return board


# Background images by kind: the blue and red boards, and the fills that mutate them for good.
BLUE_BOARD, RED_BOARD, WHITE_FILL, BLACK_FILL = range(4)
BACKGROUNDS = np.stack(
    [
        _chessboard((0, 0, 255)),
        _chessboard((255, 0, 0)),
        np.full((SCREEN, SCREEN, 3), 255, np.uint8),
        np.zeros((SCREEN, SCREEN, 3), np.uint8),
    ]
)


@numba.njit(cache=True, nogil=True)
def _darken(frame, code, a, ringed):  # pragma: no cover (compiled)
    """Blend the darkness (alpha `a`) over one flat frame in place: towards black on `DARK` codes,
    towards white on `RING` codes if `ringed`; `CLEAR` pixels stay.

    At alpha 255 without rings (the usual frame) this is a product with the 0/1 codes. Otherwise a
    value v moves down by `floor(v a / 255)` (towards black) or up by `floor((255 - v) a / 255)`,
    computed in float32 because float32 lanes vectorise where 64-bit integer products do not: the
    product (at most 65025) is exact, and its correctly rounded quotient by 255 floors to the exact
    one, since a quotient that is not whole lies at least 1/255 below the next integer.
    """
    if a == 0:
        return
    if a == 255 and not ringed:
        for i in range(frame.size):
            frame[i] *= code[i]
        return
    ring_code = RING if ringed else -1
    alpha = np.float32(a)
    for i in range(frame.size):
        value, c = np.float32(frame[i]), code[i]
        ring = c == ring_code
        distance = value if c == DARK else (np.float32(255) - value if ring else np.float32(0))
        step = np.floor(distance * alpha / np.float32(255))
        frame[i] = np.uint8(value + step if ring else value - step)


def coin_sprite(scale: float) -> Sprite:
    """A coin: a yellow disk with an orange rim of width `int(2 scale)` (0 = filled orange)."""
    radius, rim = int(10 * scale), int(2 * scale)
    size = max(2 * radius, 1)
    colour = np.zeros((size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=bool)
    dx, dy = disk_offsets(radius)
    mask[dx + radius, dy + radius] = True
    colour[dx + radius, dy + radius] = COIN_RIM if rim == 0 else COIN_FILL
    if rim == 1:
        rx, ry = ring_offsets(radius)
        colour[rx + radius, ry + radius] = COIN_RIM
    return Sprite(colour, mask)


class SpriteAtlas:
    """Every sprite a frame can show, packed so that one kernel draws any mix of them.

    Sprites are registered per kind and scale (`register`) and get consecutive ids. Sprite `s`
    is its `count[s]` opaque pixels: offsets from the entity's centre `dx, dy` and colours,
    in rows padded to the longest sprite.
    """

    def __init__(self):
        self.ids: dict[tuple[str, float], int] = {}
        self._parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def register(self, kind: str, scale: float, sprites: list[Sprite], corner: int) -> int:
        """The id of the first of `sprites` (drawn with their top-left `corner` px up-left of the centre)."""
        key = (kind, float(scale))
        if key not in self.ids:
            self.ids[key] = len(self._parts)
            for sprite in sprites:
                xs, ys = np.nonzero(sprite.mask)
                self._parts.append((xs - corner, ys - corner, sprite.colour[xs, ys]))
            self._pack()
        return self.ids[key]

    def _pack(self) -> None:
        self.count = np.array([len(dx) for dx, _, _ in self._parts])
        longest = max(self.count.max(), 1)
        self.dx = np.zeros((len(self._parts), longest), np.int64)
        self.dy = np.zeros_like(self.dx)
        self.colour = np.zeros((len(self._parts), longest, 3), np.uint8)
        for s, (dx, dy, colour) in enumerate(self._parts):
            self.dx[s, : len(dx)], self.dy[s, : len(dx)], self.colour[s, : len(dx)] = dx, dy, colour


@numba.njit(cache=True, nogil=True)
def _compose_frames(
    frames, backgrounds, kinds, codes, alpha, ringed, bar, sprite, x, y, level, dx, dy, colour, count
):  # pragma: no cover (compiled)
    """Draw each frame whole while it sits in the cache: background `kinds[e]`, its level-0 sprites,
    the darkness (codes, alpha, rings), its level-1 sprites, the top bar, its level-2 sprites.

    Sprite column `j` of frame `e` (an atlas id) is centred at (`x[e, j]`, `y[e, j]`) at `level[e, j]`
    (-1: not drawn); columns go in drawing order. Sprites are clipped to the screen, and background
    kinds and sprite ids clamped to their tables: no value indexes memory unchecked.
    """
    for e in range(frames.shape[0]):
        frame, flat = frames[e], frames[e].reshape(-1)
        background = backgrounds[min(max(kinds[e], 0), len(backgrounds) - 1)].reshape(-1)
        for i in range(flat.size):
            flat[i] = background[i]
        for layer in range(3):
            for j in range(sprite.shape[1]):
                if level[e, j] != layer:
                    continue
                s = min(max(sprite[e, j], 0), count.size - 1)
                for p in range(count[s]):
                    px, py = x[e, j] + dx[s, p], y[e, j] + dy[s, p]
                    if 0 <= px < SCREEN and 0 <= py < SCREEN:
                        for c in range(3):
                            frame[px, py, c] = colour[s, p, c]
            if layer == 0:
                _darken(flat, codes[e].reshape(-1), alpha[e], ringed[e])
            elif layer == 1:
                for px in range(SCREEN):
                    for py in range(BAR_HEIGHT):
                        for c in range(3):
                            frame[px, py, c] = bar[e, px, py, c]


# ---- reset-time helpers (per env, Python) ----------------------------------------------------


@lru_cache(maxsize=None)
def _disk(radius: int) -> np.ndarray:
    """The cells closer than `radius` to the centre of a (2 radius - 1)-square, `[y, x]`."""
    d = np.arange(1 - radius, radius) ** 2
    disk = d[:, None] + d[None, :] < radius * radius
    disk.flags.writeable = False  # shared by every sampler
    return disk


class SpawnSampler:
    """Random free cells of the 84 x 84 screen; each pick blocks a disk around it."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.blocked = np.zeros((SCREEN, SCREEN), dtype=bool)  # [y, x]

    def block(self, x: int, y: int, radius: int = 21) -> None:
        # Only the disk's bounding square, clipped to the screen, can change.
        top, left = y - radius + 1, x - radius + 1
        y0, y1, x0, x1 = max(top, 0), max(y + radius, 0), max(left, 0), max(x + radius, 0)
        window = self.blocked[y0:y1, x0:x1]
        window |= _disk(radius)[y0 - top : y0 - top + window.shape[0], x0 - left : x0 - left + window.shape[1]]

    def sample(self, radius: int = 21) -> tuple[int, int]:
        free = np.flatnonzero(~self.blocked)  # cell ids y * 84 + x, increasing
        if len(free) == 0:
            raise ValueError("no free spawn position left: too many coins (num_coins) for the screen")
        cell = int(free[self.rng.integers(0, len(free))])
        x, y = cell % SCREEN, cell // SCREEN
        self.block(x, y, radius)
        return x, y

    def jittered(self, radius: int) -> tuple[int, int]:
        """A sampled position shifted right/down by 2 or 3 pixels per axis."""
        x, y = self.sample(radius)
        return x + int(self.rng.integers(2, 4)), y + int(self.rng.integers(2, 4))


def _inside_edges(x: int, y: int) -> tuple[int, int]:
    return min(max(x, EDGE), SCREEN - EDGE), min(max(y, EDGE), SCREEN - EDGE)


# ---- reset parameters ------------------------------------------------------------------------

MAX_HEALTH = 10**6
# The accepted values of every Searing Spotlights reset parameter (each id uses those it has).
PARAMETERS = {
    "max_steps": integer(-STEPS, STEPS),
    "steps_per_coin": integer(1, STEPS),
    "initial_spawns": integer(0, 100),
    "num_spawns": integer(0, STEPS),
    "initial_spawn_interval": real(0, STEPS),
    "spawn_interval_threshold": real(0, STEPS),
    "spawn_interval_decay": real(0, 1),
    "spawn_interval": real(0, STEPS),
    "spot_min_radius": real(0, SCREEN),
    "spot_max_radius": real(0, SCREEN),
    "spot_min_speed": real(0, 1),
    "spot_max_speed": real(0, 1),
    "spot_damage": real(0, MAX_HEALTH),
    "visual_feedback": boolean(),
    "black_background": boolean(),
    "hide_chessboard": boolean(),
    "light_dim_off_duration": integer(0, STEPS),
    "light_threshold": integer(0, STEPS),
    "num_coins": int_list(0, 20, may_be_empty=True),
    "coin_scale": real(0, 1, open_high=True),
    "coin_show_duration": real(0, STEPS),
    "coins_visible": boolean(),
    "use_exit": boolean(),
    # Only the sizes whose rasterisation was verified against the reference are offered.
    "exit_scale": real(0.5, 0.5),
    "exit_visible": boolean(),
    "agent_speed": real(0, SCREEN),
    "agent_health": real(0, MAX_HEALTH, open_low=True),
    "agent_scale": real(0, Fraction(2, 3), open_low=True, open_high=True),
    "agent_visible": boolean(),
    "sample_agent_position": boolean(),
    "show_last_action": boolean(),
    "show_last_positive_reward": boolean(),
    "reward_inside_spotlight": real(-REWARD, REWARD),
    "reward_outside_spotlight": real(-REWARD, REWARD),
    "reward_death": real(-REWARD, REWARD),
    "reward_exit": real(-REWARD, REWARD),
    "reward_max_steps": real(-REWARD, REWARD),
    "reward_coin": real(-REWARD, REWARD),
}


def _is_bool(value) -> bool:
    return isinstance(value, (bool, np.bool_))


def _is_int(value) -> bool:
    return isinstance(value, Integral) and not _is_bool(value)


def _require(ok: bool, env_id: str, name: str, what: str, value) -> None:
    if not ok:
        raise ValueError(f"{env_id}: reset parameter {name!r} must be {what}, got {value!r}")


class _SpotlightsGame(BatchedGame):
    """Rules and drawing shared by both Searing Spotlights games."""

    observation_space = gym.spaces.Box(0, 255, (SCREEN, SCREEN, 3), np.uint8)
    action_space = gym.spaces.MultiDiscrete([3, 3])
    endless = False
    parameters = PARAMETERS
    fresh_observations = ("frames",)

    # The darkness layer and the board surfaces are never cleared at a reset; the debug render shows
    # the pose of the last step.
    carried = {
        "codes": Pixels(),
        "blue_kind": OneOf(range(len(BACKGROUNDS))),
        "red_kind": OneOf(range(len(BACKGROUNDS))),
        "stepped": Flags(),
        "shown_cx": Span(0, SCREEN),
        "shown_cy": Span(0, SCREEN),
        "shown_rotation": OneOf(ROTATIONS),
        "shown_scale": LikeParam("agent_scale"),
    }

    def __init__(self, num_envs: int):
        super().__init__(num_envs)
        n = num_envs
        self.params: list[dict[str, Any] | None] = [None] * n
        self.spots = Spotlights(n)
        self.atlas = SpriteAtlas()
        self.atlas.register("exit", 0.5, [EXIT_CLOSED, EXIT_OPEN], 5)  # ids 0 (closed) and 1 (open)
        # Per-env copies of the parameters used in array code.
        self.p: dict[str, np.ndarray] = {}
        self._stored_params: dict[str, Any] | None = None
        self._stored_items: list[tuple[str, Any]] = []
        # Agent.
        self.cx = np.zeros(n, np.int64)
        self.cy = np.zeros(n, np.int64)
        self.rotation = np.zeros(n, np.int64)
        self.health = np.zeros(n)
        # The pose the debug picture shows: the one left by the last step, even across resets.
        self.shown_cx, self.shown_cy = np.zeros(n, np.int64), np.zeros(n, np.int64)
        self.shown_rotation, self.shown_scale = np.zeros(n, np.int64), np.full(n, SCALE)
        self.stepped = np.zeros(n, dtype=bool)
        # Coins: slots per env (as many as the largest coin count drawn so far; endless: one).
        self.coin_x = np.zeros((n, 1), np.int64)
        self.coin_y = np.zeros((n, 1), np.int64)
        self.coin_on = np.zeros((n, 1), dtype=bool)
        self.coins_collected = np.zeros(n, np.int64)
        # Darkness: persistent across resets (the reference never clears it there).
        self.alpha = np.zeros(n, np.int64)
        self.codes = np.zeros((n, SCREEN, SCREEN, 3), dtype=np.uint8)
        self.spawn_timer = np.zeros(n, np.int64)
        # Backgrounds: the kind each persistent board surface has turned into, and which is shown.
        self.blue_kind = np.full(n, BLUE_BOARD)
        self.red_kind = np.full(n, RED_BOARD)
        self.shows_red = np.zeros(n, dtype=bool)
        self.bar = np.zeros((n, SCREEN, BAR_HEIGHT, 3), dtype=np.uint8)
        self.last_action = np.zeros((n, 2), np.int64)
        self.last_reward = np.zeros(n)
        self.t = np.zeros(n, np.int64)
        self.length = np.zeros(n, np.int64)
        self.episode_return = np.zeros(n)
        self.frames = np.zeros((n, SCREEN, SCREEN, 3), dtype=np.uint8)

    # ---- parameters ----------------------------------------------------------------------
    def check_combinations(self, params: dict[str, Any]) -> None:
        env_id = self.env_id
        low, high = params["spot_min_radius"], params["spot_max_radius"]
        whole = f"a number whose integer part is at least that of spot_min_radius ({low})"
        _require(int(low) < int(high + 1), env_id, "spot_max_radius", whole, high)
        low, high = params["spot_min_speed"], params["spot_max_speed"]
        _require(high >= low, env_id, "spot_max_speed", f"a number >= spot_min_speed ({low})", high)

    def _store_params(self, i: int, params: dict[str, Any]) -> None:
        if params is not self._stored_params:
            # Autoresets pass the same dict every time: sort out its numbers once.
            items = [(name, value) for name, value in params.items() if isinstance(value, (np.bool_, Real))]
            items += [("agent_radius", agent_radius(params["agent_scale"])), ("coin_radius", int(10 * params["coin_scale"]))]
            items += [
                ("coin_sprite", self._coin_sprite(params["coin_scale"])),
                ("agent_sprite", self._agent_sprite(params["agent_scale"])),
            ]
            for name, value in items:
                dtype = bool if _is_bool(value) else (np.int64 if _is_int(value) else np.float64)
                if name not in self.p:
                    self.p[name] = np.zeros(self.num_envs, dtype=dtype)
                elif dtype == np.float64 and self.p[name].dtype != np.float64:
                    self.p[name] = self.p[name].astype(np.float64)
            self._stored_params, self._stored_items = params, items
        for name, value in self._stored_items:
            self.p[name][i] = value
        self.params[i] = params

    # ---- reset -----------------------------------------------------------------------------
    def reset_envs(self, idx: np.ndarray, params: dict[str, Any]) -> None:
        idx = np.asarray(idx)
        for i in idx:
            self._reset_one(int(i), params)
        self.frames[idx] = self._compose(idx, self.cx[idx], self.cy[idx], np.zeros(len(idx), np.int64))

    def _reset_one(self, i: int, params: dict[str, Any]) -> None:
        self._store_params(i, params)
        rng = self.rngs[i]
        if params["hide_chessboard"]:
            self.blue_kind[i] = self.red_kind[i] = WHITE_FILL
        sampler = SpawnSampler(rng)
        self.rotation[i] = ROTATIONS[rng.integers(0, len(ROTATIONS))]
        if params["sample_agent_position"]:
            self.cx[i], self.cy[i] = sampler.jittered(28)
        else:
            self.cx[i], self.cy[i] = HALF, HALF
            sampler.block(HALF, HALF)
        self.health[i] = params["agent_health"]
        self.bar[i] = (0, 0, 0) if self.endless else GREY
        self.bar[i, :HALF] = BAR_GREEN
        if params["show_last_action"]:
            self.bar[i, ACTION_CELLS[0][0] : ACTION_CELLS[1][1]] = ACTION_COLOURS[0]
        self.last_action[i] = 0
        self.last_reward[i] = 0.0
        duration = params["light_dim_off_duration"]
        self.alpha[i] = 0 if duration > 0 else np.clip(params["light_threshold"], 0, 255)
        self.spots.clear(i)
        self.spawn_timer[i] = 0
        for _ in range(params["initial_spawns"]):
            self._add_spot(i)
        self.coins_collected[i] = 0
        self._reset_entities(i, params, sampler)
        self.shows_red[i] = False
        if params["black_background"]:
            self.blue_kind[i] = BLACK_FILL
        self.t[i] = 0
        self.length[i] = 0
        self.episode_return[i] = 0.0

    def _reset_entities(self, i: int, params: dict[str, Any], sampler: SpawnSampler) -> None:
        raise NotImplementedError

    def _add_spot(self, i: int) -> None:
        p = self.params[i]
        spot = create_spot(self.rngs[i], p["spot_min_radius"], p["spot_max_radius"], p["spot_min_speed"], p["spot_max_speed"])
        self.spots.add(i, *spot)

    def _set_coin_slots(self, count: int) -> None:
        if count > self.coin_on.shape[1]:
            grow = count - self.coin_on.shape[1]
            for name in ("coin_x", "coin_y", "coin_on"):
                old = getattr(self, name)
                setattr(self, name, np.concatenate([old, np.zeros((self.num_envs, grow), old.dtype)], axis=1))

    # ---- step ------------------------------------------------------------------------------
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.p
        actions = np.asarray(actions, dtype=np.int64).reshape(self.num_envs, 2)
        radius = p["agent_radius"]
        self.cx, self.cy, self.rotation = continuous_step(
            self.cx, self.cy, self.rotation, actions, p["agent_speed"], radius, WALKABLE
        )
        self.shown_cx, self.shown_cy, self.shown_rotation = self.cx.copy(), self.cy.copy(), self.rotation.copy()
        self.shown_scale = p["agent_scale"].copy()
        self.stepped[:] = True
        self._paint_action_cells(actions)
        self._dim_lights()
        reward, dead = self._spotlight_task()
        reward, done = self._entity_tasks(reward, dead)
        self.t += 1
        done |= self.t == p["max_steps"]
        self._paint_reward_cell(reward)
        self._compose(np.arange(self.num_envs), self.cx, self.cy, self.rotation, out=self.frames)
        self.episode_return += reward
        self.length += 1
        return reward, done

    def _paint_action_cells(self, actions: np.ndarray) -> None:
        shown = self.p["show_last_action"]
        previous = self.last_action[:, 0] * 3 + self.last_action[:, 1]  # actions are checked: 0..8
        if shown.all():
            np.take(ACTION_CELL_IMAGES, previous, axis=0, out=self.bar[:, ACTION_CELLS[0][0] :], mode="clip")
            self.last_action = actions.copy()
        else:
            self.bar[shown, ACTION_CELLS[0][0] :] = ACTION_CELL_IMAGES[previous[shown]]
            self.last_action = np.where(shown[:, None], actions, self.last_action)

    def _bar_columns(self) -> np.ndarray:
        """The bar as `(num_envs, SCREEN)` columns, each one opaque element of its pixels (a view)."""
        return self.bar.reshape(self.num_envs, SCREEN, -1).view(BAR_COLUMN)[..., 0]

    def _dim_lights(self) -> None:
        p = self.p
        duration, threshold = p["light_dim_off_duration"], p["light_threshold"]
        dimming = self.alpha <= threshold
        fade = self.alpha + 255 // np.maximum(duration, 1)
        self.alpha = np.where(dimming, np.clip(np.where(duration > 0, fade, threshold), 0, 255), self.alpha)

    def _spawn_due(self) -> np.ndarray:
        raise NotImplementedError

    def _spotlight_task(self) -> tuple[np.ndarray, np.ndarray]:
        p = self.p
        self.spawn_timer += 1
        due = self._spawn_due()
        if due.any():
            for i in np.flatnonzero(due):
                self._add_spot(int(i))
            self.spawn_timer[due] = 0
        spots = self.spots
        visited = spots.visit()
        x, y = spots.move(visited)
        cx, cy = np.trunc(x).astype(np.int64), np.trunc(y).astype(np.int64)
        if p["black_background"].any():
            self.codes = np.where(
                p["black_background"][:, None, None, None],
                ringed_codes(cx, cy, spots.radius, visited & p["black_background"][:, None]),
                clear_mask(cx, cy, spots.radius, visited),
            )
        else:
            self.codes = clear_mask(cx, cy, spots.radius, visited)
        dx, dy = x - self.cx[:, None], y - self.cy[:, None]
        reach = spots.radius + p["agent_radius"][:, None]
        hit = (visited & (np.sqrt(dx * dx + dy * dy) <= reach)).any(axis=1)
        reward = 0.0 + np.where(hit, p["reward_inside_spotlight"], p["reward_outside_spotlight"])
        if hit.any():
            self.health = np.where(hit, self.health - p["spot_damage"], self.health)
            # The health bar turns red from the left as health is lost (it may run past half).
            width = np.trunc(HALF * (1 - self.health / p["agent_health"]))
            red = hit[:, None] & (np.arange(SCREEN) < width[:, None])
            self._bar_columns()[red] = RED_COLUMN  # one bar column as one element: a cheap masked write
        self.shows_red = hit & p["visual_feedback"]
        black = p["black_background"]
        if black.any():
            self.red_kind = np.where(black & self.shows_red, BLACK_FILL, self.red_kind)
            self.blue_kind = np.where(black & ~self.shows_red, BLACK_FILL, self.blue_kind)
        dead = self.health <= 0
        if dead.any():
            reward = np.where(dead, reward + p["reward_death"], reward)
        return reward, dead

    def _entity_tasks(self, reward: np.ndarray, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _coins_reached(self) -> np.ndarray:
        """Which coins the agent touches `(n, coin slots)`."""
        dx = self.coin_x - self.cx[:, None]
        dy = self.coin_y - self.cy[:, None]
        reach = (self.p["coin_radius"] + self.p["agent_radius"])[:, None]
        return self.coin_on & (np.sqrt((dx * dx + dy * dy).astype(np.float64)) <= reach)

    def _paint_reward_cell(self, reward: np.ndarray) -> None:
        shown = self.p["show_last_positive_reward"]
        if shown.any():
            colour = REWARD_COLOURS[(self.last_reward > 0).view(np.int8)]
            narrow = self.p["show_last_action"]
            if shown.all() and narrow.all():
                self.bar[:, REWARD_CELL[0] : REWARD_CELL[1]] = colour[:, None, None]
            else:
                for cells, envs in ((REWARD_CELL, shown & narrow), (REWARD_BAR, shown & ~narrow)):
                    if envs.any():
                        self.bar[envs, cells[0] : cells[1]] = colour[envs, None, None]
            self.last_reward = np.where(shown, reward, self.last_reward)

    # ---- drawing ---------------------------------------------------------------------------
    def _coin_sprite(self, scale: float) -> int:
        return self.atlas.register("coin", scale, [coin_sprite(scale)], int(10 * scale))

    def _agent_sprite(self, scale: float) -> int:
        """The id of the agent facing rotation 0 at `scale`; rotation r is `r // 45` ids further."""
        sprites = agent_sprites(float(scale))
        return self.atlas.register("agent", scale, list(sprites), sprites[0].size[0] // 2)

    # Each `_*_columns` gives an entity's sprites in the envs `sel` as `(m, k)` columns: atlas
    # ids, centres x and y, and whether each is drawn.
    def _coin_columns(self, sel):
        on = self.coin_on[sel]
        return np.broadcast_to(self.p["coin_sprite"][sel, None], on.shape), self.coin_x[sel], self.coin_y[sel], on

    def _exit_columns(self, sel):
        return None

    def _agent_columns(self, cx, cy, rotation, sprite):
        return (sprite + rotation // 45)[:, None], cx[:, None], cy[:, None], np.ones((len(cx), 1), dtype=bool)

    def _compose(self, envs: np.ndarray, cx: np.ndarray, cy: np.ndarray, rotation: np.ndarray, out=None) -> np.ndarray:
        """The observation frames of `envs` (agents at `cx, cy` facing `rotation`), `(m, x, y, c)`, in
        `out` if given."""
        sel = slice(None) if len(envs) == self.num_envs else envs  # every env in order: views, not gathers
        coins_up, exit_up, agent_up = self._above_darkness(sel)
        # Layer of each entity: 0 under the darkness, 1 above it, 2 above the top bar. The
        # reference's insertion order puts the bar after the visible coins, after a visible
        # exit only if coins are visible too, and after a visible agent only if both are.
        both = coins_up & exit_up
        entities = (
            (self._coin_columns(sel), coins_up.astype(np.int64)),
            (self._exit_columns(sel), np.where(exit_up, 2 - both, 0)),
            (self._agent_columns(cx, cy, rotation, self.p["agent_sprite"][sel]), np.where(agent_up, 2 - both, 0)),
        )
        frames = np.empty((len(envs), SCREEN, SCREEN, 3), np.uint8) if out is None else out
        self._draw(frames, sel, entities)
        return frames

    def _draw(self, frames: np.ndarray, sel, entities) -> None:
        """Draw the frames of the envs `sel` with `_compose_frames`; `entities` holds each entity's
        columns (None: none) and its level per env, in drawing order."""
        entities = [(columns, level) for columns, level in entities if columns is not None]
        sprite, x, y = (np.concatenate(parts, axis=1) for parts in zip(*(columns[:3] for columns, _ in entities)))
        level = np.concatenate([np.where(columns[3], level[:, None], -1) for columns, level in entities], axis=1)
        kinds = np.where(self.shows_red[sel], self.red_kind[sel], self.blue_kind[sel])
        darkness = self.codes[sel], self.alpha[sel], self.p["black_background"][sel]
        atlas = self.atlas.dx, self.atlas.dy, self.atlas.colour, self.atlas.count
        _compose_frames(frames, BACKGROUNDS, kinds, *darkness, self.bar[sel], sprite, x, y, level, *atlas)

    def _above_darkness(self, sel) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        raise NotImplementedError

    def observe(self) -> np.ndarray:
        return self.frames

    def render_debug(self, i: int) -> np.ndarray:
        """Everything above the darkness, agent in the pose of the last step, scaled x4."""
        sel = np.array([i])
        if self.stepped[i]:
            pose = self.shown_cx[sel], self.shown_cy[sel], self.shown_rotation[sel]
            sprite = np.array([self._agent_sprite(self.shown_scale[i])])
        else:
            pose = self.cx[sel], self.cy[sel], np.zeros(1, np.int64)
            sprite = self.p["agent_sprite"][sel]
        above = np.ones(1, np.int64)  # level 1: above the darkness, under the bar
        entities = [(self._exit_columns(sel), above), (self._coin_columns(sel), above)]
        entities.append((self._agent_columns(*pose, sprite), above))
        frame = np.empty((1, SCREEN, SCREEN, 3), np.uint8)
        self._draw(frame, sel, entities)
        return np.ascontiguousarray(frame[0].transpose(1, 0, 2).repeat(4, axis=0).repeat(4, axis=1))


class SearingSpotlightsGame(_SpotlightsGame):
    env_id = "SearingSpotlights-v0"
    defaults = {
        "max_steps": 256,
        "initial_spawns": 4,
        "num_spawns": 30,
        "initial_spawn_interval": 30,
        "spawn_interval_threshold": 10,
        "spawn_interval_decay": 0.95,
        "spot_min_radius": 30.0 * SCALE,
        "spot_max_radius": 55.0 * SCALE,
        "spot_min_speed": 0.0025,
        "spot_max_speed": 0.0075,
        "spot_damage": 1.0,
        "visual_feedback": True,
        "black_background": False,
        "hide_chessboard": False,
        "light_dim_off_duration": 6,
        "light_threshold": 255,
        "num_coins": [1],
        "coin_scale": 1.5 * SCALE,
        "coins_visible": False,
        "use_exit": True,
        "exit_scale": 2.0 * SCALE,
        "exit_visible": False,
        "agent_speed": 12.0 * SCALE,
        "agent_health": 5,
        "agent_scale": 1.0 * SCALE,
        "agent_visible": False,
        "sample_agent_position": True,
        "show_last_action": True,
        "show_last_positive_reward": True,
        "reward_inside_spotlight": 0.0,
        "reward_outside_spotlight": 0.0,
        "reward_death": 0.0,
        "reward_exit": 1.0,
        "reward_max_steps": 0.0,
        "reward_coin": 0.25,
    }

    def __init__(self, num_envs: int):
        super().__init__(num_envs)
        self.spawns_left = np.zeros(num_envs, np.int64)
        self.spawn_interval = np.zeros(num_envs, np.int64)
        self.num_coins = np.zeros(num_envs, np.int64)
        self.exit_x = np.zeros(num_envs, np.int64)
        self.exit_y = np.zeros(num_envs, np.int64)
        self.exit_open = np.zeros(num_envs, dtype=bool)
        self.success = np.zeros(num_envs, np.int64)

    def _reset_entities(self, i: int, params: dict[str, Any], sampler: SpawnSampler) -> None:
        rng = self.rngs[i]
        # The reference draws its spawn intervals from a decaying list but always compares
        # with the list's first entry while removing its last: a constant interval.
        self.spawns_left[i] = params["num_spawns"]
        self.spawn_interval[i] = int(params["initial_spawn_interval"] + params["spawn_interval_threshold"])
        choices = list(params["num_coins"])
        count = int(choices[rng.integers(0, len(choices))]) if choices else 0
        self.num_coins[i] = count
        self._set_coin_slots(count)
        self.coin_on[i] = False
        for k in range(count):
            self.coin_x[i, k], self.coin_y[i, k] = _inside_edges(*sampler.jittered(21))
            self.coin_on[i, k] = True
        if params["use_exit"]:
            self.exit_x[i], self.exit_y[i] = _inside_edges(*sampler.jittered(21))
        self.exit_open[i] = False
        self.success[i] = 0

    def _spawn_due(self) -> np.ndarray:
        due = (self.spawns_left > 0) & (self.spawn_timer >= self.spawn_interval)
        self.spawns_left -= due.astype(np.int64)
        return due

    def _entity_tasks(self, reward: np.ndarray, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        # Rewards here are never -0.0, so adding 0.0 for envs without an event changes nothing.
        p = self.p
        reached = self._coins_reached()
        if reached.any():
            if reached.sum(axis=1).max() > 1:
                reached = _collect_in_list_order(reached, self.coin_on)
            collected = reached.sum(axis=1)
            self.coin_on &= ~reached
            self.coins_collected += collected
            coin_reward = np.zeros(self.num_envs)
            for k in range(int(collected.max())):
                coin_reward = np.where(collected > k, coin_reward + p["reward_coin"], coin_reward)
            reward = reward + coin_reward
        coins_done = ~self.coin_on.any(axis=1)
        use_exit = p["use_exit"]
        # Without an exit, collecting every coin (of at least one) wins.
        won = ~dead & coins_done & ~use_exit & (self.num_coins > 0)
        opening = use_exit & coins_done
        if opening.any():
            self.exit_open |= opening
            dx, dy = self.exit_x - self.cx, self.exit_y - self.cy
            exit_reach = 20 / 2 * p["exit_scale"] + p["agent_radius"]
            at_exit = opening & (np.sqrt((dx * dx + dy * dy).astype(np.float64)) <= exit_reach)
            reward = reward + np.where(at_exit, p["reward_exit"], 0.0)
            won |= ~dead & at_exit
        self.success = won.astype(np.int64)
        return reward, dead | won

    def _exit_columns(self, sel):
        # Exit sprite ids: 0 closed, 1 open.
        shown = self.p["use_exit"][sel, None]
        return self.exit_open[sel, None].astype(np.int64), self.exit_x[sel, None], self.exit_y[sel, None], shown

    def _above_darkness(self, sel):
        p = self.p
        return p["coins_visible"][sel], p["exit_visible"][sel] & p["use_exit"][sel], p["agent_visible"][sel]

    def episode_info(self, i: int) -> dict[str, Any]:
        count = int(self.num_coins[i])
        return {
            "reward": float(self.episode_return[i]),
            "length": int(self.length[i]),
            "agent_health": float(self.health[i] / self.p["agent_health"][i]),
            "coins_collected": float(self.coins_collected[i] / count) if count else float("nan"),
            "success": int(self.success[i]),
        }


def _collect_in_list_order(reached: np.ndarray, on: np.ndarray) -> np.ndarray:
    """Coins actually taken when several are in reach: taking one skips the next coin left."""
    taken = np.zeros_like(reached)
    skip = np.zeros(reached.shape[0], dtype=bool)
    for k in range(reached.shape[1]):
        taken[:, k] = reached[:, k] & ~skip
        skip = np.where(on[:, k], taken[:, k], skip)
    return taken


class EndlessSearingSpotlightsGame(_SpotlightsGame):
    env_id = "Endless-SearingSpotlights-v0"
    endless = True
    ground_truth_space = gym.spaces.Box(np.zeros(4, np.float32), np.ones(4, np.float32), (4,), np.float32)
    defaults = {
        "max_steps": -1,
        "steps_per_coin": 160,
        "initial_spawns": 3,
        "spawn_interval": 50,
        "spot_min_radius": 30.0 * SCALE,
        "spot_max_radius": 55.0 * SCALE,
        "spot_min_speed": 0.0025,
        "spot_max_speed": 0.0075,
        "spot_damage": 1.0,
        "visual_feedback": True,
        "black_background": False,
        "hide_chessboard": False,
        "light_dim_off_duration": 6,
        "light_threshold": 255,
        "coin_scale": 1.5 * SCALE,
        "coin_show_duration": 6,
        "coins_visible": False,
        "agent_speed": 12.0 * SCALE,
        "agent_health": 10,
        "agent_scale": 1.0 * SCALE,
        "agent_visible": False,
        "sample_agent_position": True,
        "show_last_action": True,
        "show_last_positive_reward": True,
        "reward_inside_spotlight": 0.0,
        "reward_outside_spotlight": 0.0,
        "reward_death": 0.0,
        "reward_coin": 0.25,
    }

    def __init__(self, num_envs: int):
        super().__init__(num_envs)
        self.coin_t = np.zeros(num_envs, np.int64)

    def _reset_entities(self, i: int, params: dict[str, Any], sampler: SpawnSampler) -> None:
        self.coin_t[i] = 0
        self.coin_on[i] = False
        self._spawn_coin(i, previous=None)

    def _spawn_coin(self, i: int, previous: tuple[int, int] | None) -> None:
        # A fresh sampler: the first coin may land under the agent (collected at step 1).
        sampler = SpawnSampler(self.rngs[i])
        if previous is not None:
            sampler.block(*previous, 28)
        self.coin_x[i, 0], self.coin_y[i, 0] = _inside_edges(*sampler.jittered(28))
        self.coin_on[i, 0] = True

    def _spawn_due(self) -> np.ndarray:
        return self.spawn_timer >= self.p["spawn_interval"]

    def _entity_tasks(self, reward: np.ndarray, dead: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        p = self.p
        reached = self._coins_reached()[:, 0]
        reward = reward + np.where(reached, 0.0 + p["reward_coin"], 0.0)
        self.coins_collected += reached
        self.coin_t = np.where(reached, 0, self.coin_t)
        for i in np.flatnonzero(reached):
            self._spawn_coin(int(i), previous=(int(self.coin_x[i, 0]), int(self.coin_y[i, 0])))
        self.coin_t += 1
        return reward, dead | (self.coin_t == p["steps_per_coin"])

    def _above_darkness(self, sel):
        p = self.p
        shown = p["coins_visible"][sel] | (self.coin_t[sel] < p["coin_show_duration"][sel])
        return shown, np.zeros_like(shown), p["agent_visible"][sel]

    def step_info(self) -> dict[str, np.ndarray]:
        positions = np.stack([self.cx, self.cy, self.coin_x[:, 0], self.coin_y[:, 0]], axis=1)
        return {"ground_truth": positions / SCREEN}

    def episode_info(self, i: int) -> dict[str, Any]:
        return {
            "reward": float(self.episode_return[i]),
            "length": int(self.length[i]),
            "agent_health": float(self.health[i] / self.p["agent_health"][i]),
            "coins_collected": int(self.coins_collected[i]),
        }
