"""Endless-MysteryPath-v0: an endless invisible path scrolling from left to right.

The path is a chain of 7x7 segments (`path_generation`) laid out left to right, each followed by
a transition cell: segment s covers world columns 8s..8s+7. Three segments exist at reset and
one more is generated (drawing from the env's generator mid-episode) whenever the agent enters
the last one. The camera follows the agent, which is drawn at a fixed screen column; behind it
the last few path tiles it walked are shown. Each new path tile refills the stamina
(`stamina_level` steps); stepping off the path respawns the agent at the very first cell of the
whole path, and the episode ends when the stamina runs out, when the agent falls off behind its
best column, or falls off twice at the same place.

Memory stays bounded however long an episode runs: segments live in a ring of `RING` slots
around the agent. After a respawn the agent walks the old path again, so evicted segments are
regenerated on demand from a second generator replaying the episode's stream from its start
state (segment generation is the only consumer of randomness in this env). What cannot be
regenerated is which tiles already paid their reward: one 56-bit mask per segment.

Observation drawing works per screen column: with the background strip, the past-path tiles
and their borders all aligned to 12-pixel rows, a column of pixels is fully described by a
small code (background kind, border flag, one bit per path row), and the frame is one lookup
into a table of pre-drawn columns; agent, stamina bar and cross are blitted on top. An episode's
first frame depends only on a few parameters and the start row, so it is drawn once per
parameter set.

The per-env work whose shape differs from env to env (the agent's cell lookup and marks, the
fall-off list, the past-path tiles) runs as short loops compiled with numba: as masked array
operations over the batch it cost a few dozen NumPy calls each per step.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numba
import numpy as np

from envs.agent import AgentPainter
from envs.core import BatchedGame
from envs.mystery_path import (
    CROSS,
    CROSS_HALF,
    OBSERVATION_SPACE,
    SCREEN,
    PARAMETERS,
    TILE,
    upscale_image,
)
from envs.path_generation import GRID, Draws, generate_chain
from envs.raster import alpha_blend, rhaz
from envs.sprites import agent_radius, agent_sprites

SEGMENT_COLUMNS = GRID + 1  # the segment's columns plus its transition column
SEGMENT_CELLS = SEGMENT_COLUMNS * GRID
MAX_NODES = GRID * GRID + 1
INITIAL_SEGMENTS = 3
RING = 8
"""Segments kept in memory per env (the agent needs the two before its own and the next one)."""

ICY_COLOUR = (125, 177, 250)
TILE_BORDER_COLOUR = (210, 210, 210)
PAST_PATH_COLOUR = (255, 255, 255)
STAMINA_COLOUR = (0, 255, 0)
STAMINA_EMPTY_COLOUR = (255, 0, 0)
STAMINA_WIDTH = 4
PATH_LAYER_ALPHA = 200
# Discrete actions: no-op, right, up, down (there is no "left"). None moves diagonally, so the
# continuous controller's truncated velocity is `stride = int(agent_speed)` pixels along one axis;
# the facing is east, north or south (-1: kept).
ACTION_DX = np.array([0, 1, 0, 0], dtype=np.int64)
ACTION_DY = np.array([0, 0, -1, 1], dtype=np.int64)
ACTION_ROTATION = np.array([-1, 270, 0, 180], dtype=np.int64)


def _column_table() -> np.ndarray:
    """Every screen column the observation can contain, `(3 * 2 * 128, 84, 3)`, by column code.

    code = background * 256 + border * 128 + rows: background 0 black, 1 icy tile interior,
    2 icy tile border; `rows` has bit r set where row-tile r shows a past-path tile, drawn with
    its border colour over the whole column if `border`.
    """
    table = np.zeros((3, 2, 128, SCREEN, 3), dtype=np.uint8)
    edge = (np.arange(SCREEN) % TILE == 0) | (np.arange(SCREEN) % TILE == TILE - 1)
    table[1] = ICY_COLOUR
    table[1, :, :, edge] = TILE_BORDER_COLOUR
    table[2] = TILE_BORDER_COLOUR
    for rows in range(128):
        for r in range(GRID):
            if rows >> r & 1:
                band = slice(r * TILE, (r + 1) * TILE)
                table[:, 0, rows, band] = PAST_PATH_COLOUR
                table[:, 0, rows, band][:, edge[band]] = TILE_BORDER_COLOUR
                table[:, 1, rows, band] = TILE_BORDER_COLOUR
    return table.reshape(-1, SCREEN, 3)


COLUMN_TABLE = _column_table()


def _background_codes() -> np.ndarray:
    """Column codes of the background, `[shown, scroll % 12, x]`: the icy strip's tiles start at
    x = 12 i + scroll - 12, so a column's place in its tile is (x - scroll) mod 12."""
    local = (np.arange(SCREEN)[None, :] - np.arange(TILE)[:, None]) % TILE
    icy = 256 * (1 + ((local == 0) | (local == TILE - 1)))
    return np.stack([np.zeros_like(icy), icy])


BACKGROUND_CODES = _background_codes()


def _stamina_table() -> np.ndarray:
    """The stamina bar column for each red height 0..84, `(85, 84, 3)`."""
    table = np.empty((SCREEN + 1, SCREEN, 3), dtype=np.uint8)
    table[:] = STAMINA_COLOUR
    for height in range(SCREEN + 1):
        table[height, :height] = STAMINA_EMPTY_COLOUR
    return table


STAMINA_TABLE = _stamina_table()


_FIRST_FRAMES: dict[tuple, np.ndarray] = {}
"""Episodes' first observations by (show_background, show_stamina, agent scale, agent column)."""


@numba.njit(cache=True)
def _visit_cells(
    tx,
    ty,
    segment,
    ring_node,
    ring_columns,
    ring_rows,
    ring_length,
    reward_marks,
    stamina_marks,
    current_segment,
    current_node,
    ground_truth,
    on,
    progress,
    refill,
):
    """Look up each env's cell (`tx`, `ty`) in its `segment`: `on` the path, `progress` (first visit
    in the episode: a reward), `refill` (first visit since the last fall: the stamina refills); an
    agent on the path makes its cell the current node, and the ground truth follows a new node."""
    for env in range(len(tx)):
        slot = segment[env] % RING
        node = -1
        if 0 <= ty[env] < GRID:
            local = (tx[env] - segment[env] * SEGMENT_COLUMNS) * GRID + ty[env]
            node = ring_node[env, slot, local]
        on[env] = node >= 0
        if node < 0:
            progress[env] = refill[env] = False
            continue
        bit = np.uint64(1) << np.uint64(local)
        progress[env] = reward_marks[env, segment[env]] & bit == 0
        reward_marks[env, segment[env]] |= bit
        refill[env] = stamina_marks[env, slot] & bit == 0
        stamina_marks[env, slot] |= bit
        if segment[env] != current_segment[env] or node != current_node[env]:
            current_segment[env], current_node[env] = segment[env], node
            _point_ground_truth(env, segment[env], node, ring_columns, ring_rows, ring_length, ground_truth)


@numba.njit(cache=True)
def _record_fall_cells(fell, tx, ty, max_x, fall_cells, fall_count, done):
    """`done` where a fall is behind `max_x` or at a listed cell; other falls add their cell to the list."""
    for env in range(len(fell)):
        if not fell[env]:
            continue
        if tx[env] < max_x[env]:
            done[env] = True
            continue
        count = fall_count[env]
        for k in range(count):
            if fall_cells[env, k, 0] == tx[env] and fall_cells[env, k, 1] == ty[env]:
                done[env] = True
                break
        if not done[env]:
            fall_cells[env, count, 0], fall_cells[env, count, 1] = tx[env], ty[env]
            fall_count[env] = count + 1


@numba.njit(cache=True)
def _reset_ground_truth(envs, ring_columns, ring_rows, ring_length, ground_truth):
    """The ground truth of envs `envs` at the first node of their path."""
    for env in envs:
        _point_ground_truth(env, 0, 0, ring_columns, ring_rows, ring_length, ground_truth)


@numba.njit(cache=True)
def _point_ground_truth(env, segment, node, ring_columns, ring_rows, ring_length, ground_truth):
    """One-hot [east, north, south] from the env's `node` to the next; a westward step keeps the old one."""
    slot = segment % RING
    if node >= ring_length[env, slot] - 1:
        dx, dy = 1, 0  # after a segment's transition cell comes the next segment's start, one column east
    else:
        dx = ring_columns[env, slot, node + 1] - ring_columns[env, slot, node]
        dy = ring_rows[env, slot, node + 1] - ring_rows[env, slot, node]
    axis = 0 if dx == 1 else 1 if dy == -1 else 2 if dy == 1 else -1
    if axis >= 0:
        ground_truth[env] = 0
        ground_truth[env, axis] = 1


@numba.njit(cache=True)
def _draw_past_path(
    codes, tx, depth, show_past_path, segment, node, ring_length, ring_columns, ring_rows, camera_x
):
    """OR each env's past-path tiles into its column codes (`EndlessMysteryPathGame._past_path_codes`).

    The tiles shown are the current node's predecessors, newest first (its own segment, then the
    previous one), up to and including the first one at or left of column `tx - 1 - depth`. An
    env's tiles differ in number and clipping, which makes this a short loop per env rather than
    a few dozen masked array operations over all of them.
    """
    for env in range(len(codes)):
        newest = tx[env] - 1
        past_x = max(0, newest - depth[env])
        if not show_past_path[env] or newest < 0 or newest < past_x:
            continue
        own_slot = segment[env] % RING
        prev_slot = (segment[env] - 1) % RING
        prev_length = ring_length[env, prev_slot] if segment[env] > 0 else 0
        for back in range(node[env] - 1, -prev_length - 1, -1):
            slot, position = (own_slot, back) if back >= 0 else (prev_slot, back + prev_length)
            column = ring_columns[env, slot, position]
            x0 = int(np.trunc(column * TILE - camera_x[env]))
            left, right = max(x0, 0), min(x0 + TILE - 1, SCREEN - 1)
            if left <= right:
                for x in range(left, right + 1):
                    codes[env, x] |= 1 << ring_rows[env, slot, position]
                # The outline sits on the unclipped tile's edges, but a tile showing at most 2
                # columns is filled with the outline colour (the reference fills an outline
                # wider than its rect).
                narrow = right - left < 2
                if narrow or x0 >= 0:
                    codes[env, left] |= 128
                if narrow or x0 + TILE - 1 < SCREEN:
                    codes[env, right] |= 128
            if column <= past_x:
                break


class EndlessMysteryPathGame(BatchedGame):
    env_id = "Endless-MysteryPath-v0"
    observation_space = OBSERVATION_SPACE
    action_space = gym.spaces.Discrete(4)
    ground_truth_space = gym.spaces.Box(np.zeros(3, np.float32), np.ones(3, np.float32), (3,), np.float32)
    fresh_observations = ("screens",)
    defaults = {
        "max_steps": -1,
        "agent_scale": 0.25,
        "agent_speed": 3.0,
        "show_origin": False,
        "show_past_path": True,
        "show_background": False,
        "show_stamina": False,
        "visual_feedback": True,
        "camera_offset_scale": 5.0,
        "stamina_level": 20,
        "reward_fall_off": 0.0,
        "reward_path_progress": 0.1,
        "reward_step": 0.0,
    }
    parameters = PARAMETERS
    render_fps = 25

    def __init__(self, num_envs: int):
        super().__init__(num_envs)
        n = num_envs
        self.painter = AgentPainter()
        # Per-episode parameters.
        self.max_steps = np.zeros(n, dtype=np.int64)
        self.scale = np.full(n, 0.25)
        self.radius = np.zeros(n, dtype=np.int64)
        self.stride = np.zeros(n, dtype=np.int64)
        self.show_past_path = np.zeros(n, dtype=bool)
        self.show_background = np.zeros(n, dtype=bool)
        self.show_stamina = np.zeros(n, dtype=bool)
        self.visual_feedback = np.zeros(n, dtype=bool)
        self.camera_offset = np.zeros(n)
        self.depth = np.zeros(n, dtype=np.int64)
        self.stamina_level = np.ones(n, dtype=np.int64)
        self.reward_fall_off = np.zeros(n)
        self.reward_progress = np.zeros(n)
        self.reward_step = np.zeros(n)
        self.agent_draw_x = np.zeros(n, dtype=np.int64)
        self.agent_half = np.zeros(n, dtype=np.int64)
        # Path: a ring of segments (slot = segment % RING) and the reward mask of every segment.
        self.ring_segment = np.full((n, RING), -1, dtype=np.int64)
        self.ring_columns = np.zeros((n, RING, MAX_NODES), dtype=np.int64)
        self.ring_rows = np.zeros((n, RING, MAX_NODES), dtype=np.int64)
        self.ring_length = np.zeros((n, RING), dtype=np.int64)
        self.ring_node = np.full((n, RING, SEGMENT_CELLS), -1, dtype=np.int64)
        """Node index of each cell (local column * 7 + row) of the slot's segment, or -1."""
        self.stamina_marks = np.zeros((n, RING), dtype=np.uint64)
        self.reward_marks = np.zeros((n, 16), dtype=np.uint64)
        self.num_segments = np.zeros(n, dtype=np.int64)
        self.last_end_row = np.zeros(n, dtype=np.int64)
        self.start_row = np.zeros(n, dtype=np.int64)
        # Replaying the episode's stream regenerates evicted segments.
        self.episode_start_state: list[dict | None] = [None] * n
        self.replay_rngs = [np.random.Generator(np.random.PCG64()) for _ in range(n)]
        self.replay_next = np.zeros(n, dtype=np.int64)
        self.replay_end_row = np.zeros(n, dtype=np.int64)
        # Episode state.
        self.rows = np.arange(n)
        self.spawn_x = np.zeros(n, dtype=np.int64)
        self.spawn_y = np.zeros(n, dtype=np.int64)
        self.cx = np.zeros(n, dtype=np.int64)
        self.cy = np.zeros(n, dtype=np.int64)
        self.rotation = np.zeros(n, dtype=np.int64)
        self.tx = np.zeros(n, dtype=np.int64)
        self.ty = np.zeros(n, dtype=np.int64)
        self.camera_x = np.zeros(n)
        self.scroll = np.zeros(n, dtype=np.int64)
        self.current_segment = np.zeros(n, dtype=np.int64)
        self.current_node = np.zeros(n, dtype=np.int64)
        self.off_path = np.zeros(n, dtype=bool)
        self.cross_shown = np.zeros(n, dtype=bool)
        self.cross_x = np.zeros(n, dtype=np.int64)
        self.cross_y = np.zeros(n, dtype=np.int64)
        self.stamina = np.zeros(n, dtype=np.int64)
        self.ensured_segment = np.zeros(n, dtype=np.int64)
        """The agent segment for which the ring was last checked to hold the segments around it."""
        self.max_x = np.zeros(n, dtype=np.int64)
        self.t = np.zeros(n, dtype=np.int64)
        self.num_fails = np.zeros(n, dtype=np.int64)
        self.tiles_visited = np.zeros(n, dtype=np.int64)
        self.episode_return = np.zeros(n)
        self.ground_truth = np.zeros((n, 3), dtype=np.int64)
        # Fall-off cells that can still matter (those in columns >= max_x; older ones are dropped).
        self.fall_cells = np.zeros((n, 8, 2), dtype=np.int64)
        self.fall_count = np.zeros(n, dtype=np.int64)
        self.params_of_all: dict[str, Any] | None = None
        """The parameters every env was last reset with, if they are the same for all."""
        self.screens = np.zeros((n, SCREEN, SCREEN, 3), dtype=np.uint8)

    # ---- path storage ----------------------------------------------------------------------
    def _store_segments(
        self, envs: list[int], indices: list[int], cells: np.ndarray, lengths: np.ndarray, end_rows: np.ndarray
    ) -> None:
        """Put segment `indices[k]` of env `envs[k]` in its ring slot, for every k: its path cells
        `cells[k, :lengths[k]]` (x * 7 + y, as `generate_chain` gives them) and its transition cell.

        One batch of array writes for all of them; no two of them may share an env's slot.
        """
        envs, indices = np.array(envs), np.array(indices)
        slots = indices % RING
        offsets = indices[:, None] * SEGMENT_COLUMNS
        # Entries past a segment's length are never read (reads stop at the length).
        columns, rows = cells // GRID + offsets, cells % GRID
        columns[np.arange(len(envs)), lengths] = offsets[:, 0] + GRID
        rows[np.arange(len(envs)), lengths] = end_rows
        lengths = lengths + 1
        self.ring_segment[envs, slots] = indices
        self.ring_columns[envs, slots] = columns
        self.ring_rows[envs, slots] = rows
        self.ring_length[envs, slots] = lengths
        self.ring_node[envs, slots] = -1
        k, node = np.nonzero(np.arange(MAX_NODES) < lengths[:, None])
        local = (columns[k, node] - offsets[k, 0]) * GRID + rows[k, node]
        self.ring_node[envs[k], slots[k], local] = node
        self.stamina_marks[envs, slots] = 0
        if indices.max() >= self.reward_marks.shape[1]:
            grown = np.zeros((self.num_envs, 2 * self.reward_marks.shape[1]), dtype=np.uint64)
            grown[:, : self.reward_marks.shape[1]] = self.reward_marks
            self.reward_marks = grown

    def _extend_paths(self, envs: np.ndarray, count: int = 1) -> None:
        """Generate the next `count` segments of envs `envs` from their own generators (the reference's
        RNG order)."""
        owners, indices, chains = [], [], []
        for i in envs.tolist():
            first = int(self.num_segments[i])
            with Draws(self.rngs[i]) as draws:
                chain = generate_chain(draws, None if first == 0 else int(self.last_end_row[i]), count)
            chains.append(chain)
            owners += [i] * count
            indices += range(first, first + count)
            self.last_end_row[i] = chain[2][-1]
            self.num_segments[i] = first + count
        self._store_segments(owners, indices, *(np.concatenate(parts) for parts in zip(*chains)))

    def _restore_segments(self, i: int, first: int, last: int) -> None:
        """Regenerate segments `first..last` (all generated once already) by replaying the stream."""
        replay = self.replay_rngs[i]
        if self.replay_next[i] > first:
            replay.bit_generator.state = self.episode_start_state[i]
            self.replay_next[i] = 0
        with Draws(replay) as draws:
            while self.replay_next[i] <= last:
                index = int(self.replay_next[i])
                start_row = None if index == 0 else int(self.replay_end_row[i])
                chain = generate_chain(draws, start_row, 1)
                self._store_segments([i], [index], *chain)
                self.replay_end_row[i] = chain[2][0]
                self.replay_next[i] = index + 1

    def _ensure_segments(self, segment: np.ndarray) -> None:
        """Make sure the segments from two before to one after `segment` (those generated) are in the ring."""
        wanted = segment[:, None] + np.arange(-2, 2)
        wanted_ok = (wanted < 0) | (wanted >= self.num_segments[:, None])
        missing = ~wanted_ok & (self.ring_segment[np.arange(self.num_envs)[:, None], wanted % RING] != wanted)
        for i in np.flatnonzero(missing.any(axis=1)):
            first = int(wanted[i][missing[i]].min())
            self._restore_segments(int(i), first, int(min(segment[i] + 1, self.num_segments[i] - 1)))

    # ---- reset -----------------------------------------------------------------------------
    def reset_envs(self, idx: np.ndarray, params: dict[str, Any]) -> None:
        idx = np.asarray(idx)
        # Autoresets pass the standing parameters again: store them only where they change.
        if params != self.params_of_all:
            self._store_params(idx, params)
            self.params_of_all = dict(params) if len(idx) == self.num_envs else None
        radius = agent_radius(params["agent_scale"])
        self.reward_marks[idx] = 0
        self.ring_segment[idx] = -1
        for i in idx.tolist():
            self.episode_start_state[i] = self.rngs[i].bit_generator.state
        self.replay_next[idx] = np.iinfo(np.int64).max  # the replay starts from the episode's start state
        self.num_segments[idx] = 0
        self._extend_paths(idx, INITIAL_SEGMENTS)
        self.start_row[idx] = self.ring_rows[idx, 0, 0]
        # The very first cell never pays a reward.
        self.reward_marks[idx, 0] = np.left_shift(np.uint64(1), self.start_row[idx].astype(np.uint64))
        self.camera_x[idx] = self.camera_offset[idx]
        self.scroll[idx] = 0
        self.rotation[idx] = 270
        # The first cell's top-left plus the agent radius (its centre only at the default scale).
        spawn_y = self.start_row[idx] * TILE + radius
        self.spawn_x[idx] = self.cx[idx] = radius
        self.spawn_y[idx] = self.cy[idx] = spawn_y
        self.tx[idx], self.ty[idx] = radius // TILE, spawn_y // TILE
        self.current_segment[idx] = 0
        self.current_node[idx] = 0
        _reset_ground_truth(idx, self.ring_columns, self.ring_rows, self.ring_length, self.ground_truth)
        self.off_path[idx] = False
        self.cross_shown[idx] = False
        self.cross_x[idx] = self.cross_y[idx] = CROSS_HALF
        self.stamina[idx] = params["stamina_level"]
        self.ensured_segment[idx] = 0
        self.max_x[idx] = 0
        self.t[idx] = 0
        self.num_fails[idx] = 0
        self.tiles_visited[idx] = 0
        self.episode_return[idx] = 0.0
        self.fall_count[idx] = 0
        self.screens[idx] = self._first_frames(params)[self.start_row[idx]]

    def _first_frames(self, params: dict[str, Any]) -> np.ndarray:
        """The first observation of an episode for each start row, `(7, 84, 84, 3)`.

        At reset no past path shows, the background has not scrolled, the agent faces east at its
        spawn point, the stamina bar is full and no cross shows: the frame depends on a few
        parameters and the start row only, so it is drawn once per parameter set.
        """
        scale = float(params["agent_scale"])
        radius, size = agent_radius(scale), agent_sprites(scale)[0].size[0]
        draw_x = int(radius - size // 2 + TILE * max(0, min(5.5, params["camera_offset_scale"])))
        key = (bool(params["show_background"]), bool(params["show_stamina"]), scale, draw_x)
        frames = _FIRST_FRAMES.get(key)
        if frames is None:
            rows = np.arange(GRID)
            codes = BACKGROUND_CODES[int(key[0]), 0]
            frames = np.ascontiguousarray(np.broadcast_to(COLUMN_TABLE[codes], (GRID, SCREEN, SCREEN, 3)))
            centre_y = rows * TILE + radius
            self.painter.draw(frames, rows, np.full(GRID, draw_x + size // 2), centre_y, np.full(GRID, 270), scale)
            if key[1]:
                frames[:, SCREEN - STAMINA_WIDTH :] = STAMINA_TABLE[0]
            _FIRST_FRAMES[key] = frames
        return frames

    def _store_params(self, idx: np.ndarray, params: dict[str, Any]) -> None:
        scale = params["agent_scale"]
        radius = agent_radius(scale)
        size = agent_sprites(scale)[0].size[0]
        camera_offset = -TILE * max(0, min(5.5, params["camera_offset_scale"]))
        self.max_steps[idx] = params["max_steps"]
        self.scale[idx] = scale
        self.radius[idx] = radius
        self.stride[idx] = int(params["agent_speed"])  # agent_speed >= 0: int() truncates
        self.show_past_path[idx] = params["show_past_path"]
        self.show_background[idx] = params["show_background"]
        self.show_stamina[idx] = params["show_stamina"]
        self.visual_feedback[idx] = params["visual_feedback"]
        self.camera_offset[idx] = camera_offset
        self.depth[idx] = int(params["camera_offset_scale"])
        self.stamina_level[idx] = params["stamina_level"]
        self.reward_fall_off[idx] = params["reward_fall_off"]
        self.reward_progress[idx] = params["reward_path_progress"]
        self.reward_step[idx] = params["reward_step"]
        # The agent is drawn at a fixed screen column: its spawn rectangle's left minus the camera offset.
        self.agent_draw_x[idx] = int(radius - size // 2 - camera_offset)
        self.agent_half[idx] = size // 2

    # ---- step ------------------------------------------------------------------------------
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.num_envs
        off = self.off_path
        # A respawning agent ignores its action and moves from the spawn point.
        actions = np.where(off, 0, np.asarray(actions).reshape(n))
        velocity = ACTION_DX[actions] * self.stride
        self.cx = np.where(off, self.spawn_x, self.cx) + velocity
        self.cy = np.where(off, self.spawn_y, self.cy) + ACTION_DY[actions] * self.stride
        facing = ACTION_ROTATION[actions]
        self.rotation = np.where(facing < 0, self.rotation, facing)
        # The camera follows the agent's x velocity; a respawn puts it back at its offset.
        self.camera_x = np.where(off, self.camera_offset, self.camera_x + velocity)
        scroll = self.scroll - velocity
        self.scroll = np.where(off | (np.abs(scroll) >= TILE), 0, scroll)

        tx, ty = self.cx // TILE, self.cy // TILE
        self.tx, self.ty = tx, ty
        segment = tx // SEGMENT_COLUMNS
        growing = np.flatnonzero(segment > self.num_segments - 2)
        if len(growing):
            self._extend_paths(growing)
        if (segment != self.ensured_segment).any():
            self._ensure_segments(segment)
            self.ensured_segment = segment

        on, progress, refill = np.empty((3, n), dtype=bool)
        path = (self.ring_node, self.ring_columns, self.ring_rows, self.ring_length)
        marks = (self.reward_marks, self.stamina_marks)
        visits = (self.current_segment, self.current_node, self.ground_truth, on, progress, refill)
        _visit_cells(tx, ty, segment, *path, *marks, *visits)

        fell = ~on
        if fell.any():
            done = self._record_falls(fell, tx, ty)
            self.stamina_marks[fell] = 0
            # The cross follows the agent every step but shows only on a fall-off: place it then.
            shown = np.flatnonzero(fell)
            self.cross_x[shown] = rhaz(self.cx[shown] - self.camera_x[shown])
            self.cross_y[shown] = self.cy[shown]
        else:
            done = np.zeros(n, dtype=bool)
        self.stamina = np.where(refill | fell, self.stamina_level, self.stamina)
        self.num_fails += fell
        self.cross_shown = fell & self.visual_feedback
        self.off_path = fell
        self.tiles_visited += progress

        rewards = np.where(progress, self.reward_progress, 0.0)
        rewards = np.where(fell, self.reward_fall_off, rewards) + self.reward_step
        self.stamina -= 1
        self.t += 1
        done |= (self.stamina == 0) | (self.t == self.max_steps)
        self.max_x = np.where(on & (tx > self.max_x), tx, self.max_x)
        self.episode_return += rewards
        self._draw()
        return rewards, done

    def _record_falls(self, fell: np.ndarray, tx: np.ndarray, ty: np.ndarray) -> np.ndarray:
        """Falls behind the best column, or at a cell fallen from before, end the episode; new cells are kept."""
        # Room for one more cell in every env that fell: compact the lists, grow them if still full.
        if (self.fall_count[fell] >= self.fall_cells.shape[1]).any():
            self._compact_falls()
            if (self.fall_count[fell] >= self.fall_cells.shape[1]).any():
                grown = np.zeros((self.num_envs, 2 * self.fall_cells.shape[1], 2), dtype=np.int64)
                grown[:, : self.fall_cells.shape[1]] = self.fall_cells
                self.fall_cells = grown
        done = np.zeros(self.num_envs, dtype=bool)
        _record_fall_cells(fell, tx, ty, self.max_x, self.fall_cells, self.fall_count, done)
        return done

    def _compact_falls(self) -> None:
        """Drop fall-off cells left of max_x: a fall there ends the episode before the list is read."""
        for i in range(self.num_envs):
            cells = self.fall_cells[i, : self.fall_count[i]]
            cells = cells[cells[:, 0] >= self.max_x[i]]
            self.fall_cells[i, : len(cells)] = cells
            self.fall_count[i] = len(cells)

    # ---- drawing ---------------------------------------------------------------------------
    def _past_path_codes(self) -> np.ndarray:
        """Per screen column of every env: border flag * 128 + one bit per row showing a past tile."""
        codes = np.zeros((self.num_envs, SCREEN), dtype=np.int64)
        path = (self.current_segment, self.current_node, self.ring_length, self.ring_columns, self.ring_rows)
        _draw_past_path(codes, self.tx, self.depth, self.show_past_path, *path, self.camera_x)
        return codes

    def _draw(self) -> None:
        """Draw every env."""
        background = BACKGROUND_CODES[self.show_background.astype(np.int64), self.scroll % TILE]
        codes = background + self._past_path_codes()
        np.take(COLUMN_TABLE, codes, axis=0, out=self.screens, mode="clip")
        rows = self.rows
        self._draw_overlays(self.screens, rows, rows, stamina=self.show_stamina, cross=self.visual_feedback)

    def _draw_overlays(self, screens, idx, rows, stamina, cross) -> None:
        """Agent sprite, stamina bar (where `stamina`) and cross (where shown and `cross`)."""
        centre_x = self.agent_draw_x[idx] + self.agent_half[idx]
        self.painter.draw(screens, rows, centre_x, self.cy[idx], self.rotation[idx], self.scale[idx])
        bar = np.flatnonzero(stamina)
        if len(bar):
            # The red part's height: int(84 * (1 - min(stamina, level) / level)) (0 at reset, where
            # the reference takes the max instead: stamina equals the level there).
            level = self.stamina_level[idx[bar]]
            empty = (SCREEN * (1 - np.minimum(self.stamina[idx[bar]], level) / level)).astype(np.int64)
            screens[rows[bar], SCREEN - STAMINA_WIDTH :] = STAMINA_TABLE[np.clip(empty, 0, SCREEN)][:, None]
        shown = np.flatnonzero(self.cross_shown[idx] & cross)
        if len(shown):
            CROSS.blit(
                screens,
                rows[shown],
                np.zeros(len(shown), dtype=np.int64),
                self.cross_x[idx[shown]] - CROSS_HALF,
                self.cross_y[idx[shown]] - CROSS_HALF,
            )

    def observe(self) -> np.ndarray:
        return self.screens

    def step_info(self) -> dict[str, np.ndarray]:
        return {"ground_truth": self.ground_truth}

    def render_debug(self, i: int) -> np.ndarray:
        image = np.zeros((1, SCREEN, SCREEN, 3), dtype=np.uint8)
        if self.show_background[i]:
            image[0] = COLUMN_TABLE[BACKGROUND_CODES[1, self.scroll[i] % TILE]]
        # The whole path as plain white tiles, blended at alpha 200, placed at a truncated offset.
        offset = int(np.trunc(-self.camera_x[i]))
        first_column = -offset // TILE - 1
        occupied = np.zeros((SCREEN // TILE + 3, GRID), dtype=bool)  # world columns from first_column
        segment = int(self.tx[i] // SEGMENT_COLUMNS)
        for index in range(max(segment - 2, 0), min(segment + 2, int(self.num_segments[i]))):
            slot = index % RING
            length = self.ring_length[i, slot]
            columns = self.ring_columns[i, slot, :length] - first_column
            keep = (columns >= 0) & (columns < len(occupied))
            occupied[columns[keep], self.ring_rows[i, slot, :length][keep]] = True
        world_column = (np.arange(SCREEN) - offset) // TILE - first_column
        covered = occupied[world_column][:, np.arange(SCREEN) // TILE]
        image[0][covered] = alpha_blend(image[0][covered], PAST_PATH_COLOUR, PATH_LAYER_ALPHA)
        rows = np.array([0])
        self._draw_overlays(image, np.array([i]), rows, stamina=np.array([True]), cross=np.array([True]))
        return upscale_image(image[0])

    def episode_info(self, i: int) -> dict[str, Any]:
        return {
            "reward": float(self.episode_return[i]),
            "length": int(self.t[i]),
            "num_fails": int(self.num_fails[i]),
            "max_x": int(self.max_x[i]),
            "tiles_visited": int(self.tiles_visited[i]),
        }
