"""Mortar Mayhem: memorise a sequence of movement commands, then execute it tile by tile.

The arena is a grid of tiles. Commands (right, down, ..., left_up, stay) are shown one at a time
while the agent is frozen; then the agent has `explosion_delay` steps to reach the tile the next
command leads to, after which every other tile turns red for `explosion_duration` steps and the
agent must stay on the target. Missing a target ends the episode.

Five ids, one implementation (`MortarMayhemGame`) configured by class attributes:

* `MortarMayhem-v0`: continuous movement, commands shown on screen;
* `MortarMayhem-Grid-v0`: grid movement (turn / forward);
* `MortarMayhemB-v0`, `MortarMayhemB-Grid-v0`: no show phase, commands given as a one-hot vector;
* `Endless-MortarMayhem-v0`: a 6x6 torus; after every sequence one command is appended, shown,
  and the whole sequence must be executed again.

All per-step state lives in `(num_envs,)` arrays; the arena of each env is the index of one of
the prebuilt arena layers, changed when its tiles change colour. Episode layouts are drawn per
env in Python, each from one block of generator outputs (`Draws`), and stored by one table
assignment.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any

import gymnasium as gym
import numpy as np

from envs.agent import AgentPainter, continuous_step, grid_step, wrap_step
from envs.core import BatchedGame
from envs.parameters import REWARD, STEPS, boolean, int_list, integer, real
from envs.state import Flags, LikeParam, OneOf, Span, UpTo
from envs.raster import Sprite, SpriteSheet, blit, disk_offsets, offsets_mask, upscale
from envs.sprites import COMMAND_SPRITES, agent_radius, agent_sprites, tile

SCREEN = 84
TILE = 14
GRID_SCALE = 0.25
"""Agent scale of the grid variants (their `agent_scale` parameter is accepted but ignored)."""
COMMAND_AT = 31
"""Top-left screen position of every command sprite, including the larger diagonal ones."""

# The command table, in the order `allowed_commands` truncates it.
COMMAND_NAMES = ("right", "down", "left", "up", "stay", "right_down", "right_up", "left_down", "left_up")
COMMAND_DX = np.array([1, 0, -1, 0, 0, 1, 1, -1, -1], dtype=np.int64)
COMMAND_DY = np.array([0, 1, 0, -1, 0, 1, -1, 1, -1], dtype=np.int64)
_DX, _DY = tuple(COMMAND_DX.tolist()), tuple(COMMAND_DY.tolist())
ONE_HOT_SLOT = np.array([1, 4, 2, 3, 0, 5, 6, 7, 8], dtype=np.int64)
"""Slot of each command in the MM-B vector observation (stay, right, left, up, down, diagonals)."""
PAD = len(COMMAND_NAMES)
"""Fills command lists up to a common width; it encodes as nine zeros in the vector observation."""
_ONE_HOT = np.zeros((PAD + 1, 9), dtype=np.float32)
_ONE_HOT[np.arange(PAD), ONE_HOT_SLOT] = 1.0
MAX_VECTOR_COMMANDS = 20
MAX_COMMANDS = 1000
"""Most commands in a sequence (a perfect 1000-command episode lasts about 27,000 steps)."""

BLUE, BLUE_BORDER = (21, 43, 77), (29, 60, 107)
RED, RED_BORDER = (81, 18, 26), (112, 24, 36)
TARGET_RING = (0, 255, 0)
DEBUG_SCALE = 4

_COMMANDS = SpriteSheet([COMMAND_SPRITES[name] for name in COMMAND_NAMES])
_BLUE_TILE = tile(TILE, BLUE, BLUE_BORDER)
_RED_TILE = tile(TILE, RED, RED_BORDER)


def arena_origin(size: int) -> int:
    """Screen position of the arena's top-left corner (the arena is centred)."""
    return SCREEN // 2 - TILE * size // 2


def _arena_layer(size: int, tile_sprite: Sprite) -> np.ndarray:
    """A black screen with a `size` x `size` arena of one tile look, `[x, y, c]`."""
    layer = np.zeros((SCREEN, SCREEN, 3), dtype=np.uint8)
    origin = arena_origin(size)
    for i in range(size):
        for j in range(size):
            blit(layer, tile_sprite, origin + TILE * i, origin + TILE * j)
    return layer


# Index by arena size (2..6): all tiles blue, all tiles red.
_BLUE_ARENAS = np.stack([_arena_layer(size, _BLUE_TILE) for size in range(7)])
_RED_ARENAS = np.stack([_arena_layer(size, _RED_TILE) for size in range(7)])


def _arena_layers() -> tuple[np.ndarray, np.ndarray]:
    """Every look of the arena: all blue (layer `s` for arena size `s`), then every red arena with
    its blue target tile, and where each size's red layers start.

    The red layer of arena size `s` and target cell `(x, y)` is `layers[start[s] + x * s + y]`.
    """
    layers, start = list(_BLUE_ARENAS), np.zeros(7, dtype=np.int64)
    for size in range(7):
        start[size] = len(layers)
        origin = arena_origin(size)
        for x in range(size):
            for y in range(size):
                layer = _RED_ARENAS[size].copy()
                blit(layer, _BLUE_TILE, origin + TILE * x, origin + TILE * y)
                layers.append(layer)
    return np.stack(layers), start


_LAYERS, _EXPLOSION_START = _arena_layers()
_RING = offsets_mask(*disk_offsets(TILE // 2), TILE, TILE // 2) & ~offsets_mask(*disk_offsets(TILE // 2 - 2), TILE, TILE // 2)


@lru_cache(maxsize=None)
def _valid_commands(size: int, allowed: int) -> tuple[tuple[int, ...], ...]:
    """For each cell `x * size + y`: the first-`allowed` commands that keep it inside the arena.

    With `size >= 2` and `allowed >= 4` every cell has at least two (a horizontal and a vertical
    move), so drawing a command always draws from the generator.
    """
    table = []
    for x in range(size):
        for y in range(size):
            table.append(
                tuple(
                    c
                    for c in range(allowed)
                    if 0 <= x + COMMAND_DX[c] < size and 0 <= y + COMMAND_DY[c] < size
                )
            )
    return tuple(table)


class Draws:
    """`rng.integers(0, k)` draws served from 32-bit generator outputs read ahead in one block.

    For `2 <= k < 2**32`, `Generator.integers(0, k)` (and each element of `integers(low, low + k,
    size)`) turns the next 32-bit output `u` of the bit generator into `(u * k) >> 32`, taking a
    new `u` while the low 32 bits of `u * k` fall below `2**32 % k` (Lemire's method); `k == 1`
    reads nothing. `integers(0, 2**32, m, dtype=np.uint32)` returns the next `m` outputs as they
    are, so one such call plus the rule here consumes the generator exactly like `m` separate
    draws: one NumPy call per episode layout instead of one per random choice. The block must
    never hold outputs that no draw will use, hence `ahead` asks for a count the caller is about
    to draw; the rare rejected outputs are read one at a time when the block runs out.
    """

    def __init__(self, rng: np.random.Generator):
        self.rng = rng
        self.block: list[int] = []
        self.used = 0

    def ahead(self, count: int) -> None:
        """Read ahead for `count` draws (each of `k >= 2`) that the caller is certain to make next."""
        missing = count - (len(self.block) - self.used)
        if missing > 0:
            self.block += _next_outputs(self.rng, missing)

    def below(self, k: int) -> int:
        """The value of `int(rng.integers(0, k))`."""
        if k == 1:
            return 0
        threshold = (1 << 32) % k
        while True:
            if self.used < len(self.block):
                u = self.block[self.used]
                self.used += 1
            else:
                u = int(self.rng.integers(0, 1 << 32, dtype=np.uint32))
            scaled = u * k
            if scaled & 0xFFFFFFFF >= threshold:
                return scaled >> 32

    def pick(self, values) -> int:
        """The value of `rng.choice(values)` (which draws `integers(0, len(values))`)."""
        return int(values[self.below(len(values))])


def _next_outputs(rng: np.random.Generator, count: int) -> list[int]:
    """The next `count` 32-bit outputs of `rng`, consumed from it.

    PCG64 (the generator `reset(seed=...)` creates) serves 32-bit outputs as the low, then the
    high half of each 64-bit output, keeping an unused high half in its state. Splitting 64-bit
    outputs read by `random_raw` is several times cheaper than `integers(..., dtype=np.uint32)`;
    a kept half at the start is read from the state and consumed by a 32-bit draw, and an odd
    last output is drawn by one, so the generator ends in the same state.
    """
    bit_generator = rng.bit_generator
    if type(bit_generator) is not np.random.PCG64:
        return rng.integers(0, 1 << 32, count, dtype=np.uint32).tolist()
    outputs = []
    state = bit_generator.state
    if state["has_uint32"]:
        outputs.append(state["uinteger"])
        rng.random(dtype=np.float32)  # a 32-bit draw: takes the kept half
        count -= 1
    for raw in bit_generator.random_raw(count // 2).tolist():
        outputs += (raw & 0xFFFFFFFF, raw >> 32)
    if count % 2:
        outputs.append(int(rng.integers(0, 1 << 32, dtype=np.uint32)))
    return outputs


_PHASES = ("command_show_duration", "command_show_delay", "explosion_duration", "explosion_delay")
"""The phase-length parameters, each a list one value is drawn from, in the reference's order."""


def draw_layout(rng: np.random.Generator, params: dict[str, Any], size: int, offset: bool, endless: bool, show: bool):
    """One episode's random layout, drawn in the reference's order.

    Returns the row `[cell_x, cell_y, offset_x, offset_y, show_duration, show_delay,
    explosion_duration, explosion_delay, *commands]`; parameters a variant lacks come back as 0.
    """
    phases = [params[name] for name in (_PHASES if show else _PHASES[2:])]
    counts = [params["initial_command_count"]] if endless else params["command_count"]
    # Read ahead for every draw known in advance: spawn, offset, the command count (or the
    # commands themselves when the count is fixed) and the phase lengths that vary.
    varying = sum(len(values) > 1 for values in phases)
    draws = Draws(rng)
    draws.ahead(1 + 2 * offset + (int(counts[0]) if len(counts) == 1 else 1) + varying)
    below = draws.below
    cell_x, cell_y = divmod(below(size * size), size)
    offset_x = offset_y = 0
    if offset:
        offset_x, offset_y = below(4) - 2, below(4) - 2
    allowed = int(params["allowed_commands"])
    count = int(counts[0]) if len(counts) == 1 else draws.pick(counts)
    draws.ahead(count + varying)
    if endless:
        commands = [below(allowed) for _ in range(count)]
    else:
        # Each command is drawn among those that keep the simulated position in the arena.
        valid = _valid_commands(size, allowed)
        commands = []
        x, y = cell_x, cell_y
        for _ in range(count):
            options = valid[x * size + y]
            command = options[below(len(options))]
            commands.append(command)
            x, y = x + _DX[command], y + _DY[command]
    lengths = [int(values[0]) if len(values) == 1 else draws.pick(values) for values in phases]
    if not show:
        lengths = [0, 0, *lengths]
    return [cell_x, cell_y, offset_x, offset_y, *lengths, *commands]


LAYOUT_FIELDS = 8
"""Fields of a `draw_layout` row before its commands."""


# The accepted values of every Mortar Mayhem reset parameter (each id uses those it has).
PARAMETERS = {
    "max_steps": integer(-STEPS, STEPS),
    "agent_scale": real(0, 2, open_low=True),
    "agent_speed": real(0, SCREEN),
    "arena_size": integer(2, 6),
    "allowed_commands": integer(4, 9),
    "command_count": int_list(1, MAX_COMMANDS),
    "initial_command_count": integer(1, MAX_COMMANDS),
    "command_show_duration": int_list(0, STEPS),
    "command_show_delay": int_list(0, STEPS),
    "explosion_duration": int_list(0, STEPS),
    "explosion_delay": int_list(0, STEPS),
    "visual_feedback": boolean(),
    "reward_command_failure": real(-REWARD, REWARD),
    "reward_command_success": real(-REWARD, REWARD),
    "reward_episode_success": real(-REWARD, REWARD),
}


class MortarMayhemGame(BatchedGame):
    """`MortarMayhem-v0`; the other ids change the class attributes below."""

    env_id = "MortarMayhem-v0"
    grid = False
    show_commands = True
    vector_commands = False
    endless = False
    spawn_offset = False
    """Whether the spawn point is jittered by -2..1 px around the tile centre."""
    observation_space = gym.spaces.Box(0, 255, (SCREEN, SCREEN, 3), np.uint8)
    action_space = gym.spaces.MultiDiscrete([3, 3])
    defaults = {
        "agent_scale": 0.25,
        "agent_speed": 3.0,
        "arena_size": 5,
        "allowed_commands": 9,
        "command_count": [10],
        "command_show_duration": [3],
        "command_show_delay": [1],
        "explosion_duration": [6],
        "explosion_delay": [18],
        "visual_feedback": True,
        "reward_command_failure": 0.0,
        "reward_command_success": 0.1,
        "reward_episode_success": 0.0,
    }
    parameters = PARAMETERS

    # The last drawn agent, which the first show phase of an endless episode and the debug render
    # keep showing after a reset.
    carried = {
        "drawn_valid": Flags(),
        "drawn_live": Flags(),
        "drawn_rotation": OneOf(range(0, 360, 45)),
        "drawn_scale": LikeParam("agent_scale", also=(GRID_SCALE,)),
        "drawn_x": Span(-SCREEN, 2 * SCREEN),
        "drawn_y": Span(-SCREEN, 2 * SCREEN),
    }
    rendered = {"debug_pos": UpTo("show_len")}
    fresh_observations = ("screen",)

    def __init__(self, num_envs: int):
        super().__init__(num_envs)
        n = num_envs
        self.all_envs = np.arange(n)
        self.everyone = np.ones(n, dtype=bool)
        # Episode parameters.
        self.arena_size = np.full(n, 5, dtype=np.int64)
        self.origin = np.zeros(n, dtype=np.int64)
        self.allowed = np.zeros(n, dtype=np.int64)
        self.num_commands = np.ones(n, dtype=np.int64)
        self.show_duration = np.ones(n, dtype=np.int64)
        self.show_period = np.ones(n, dtype=np.int64)
        self.stay_steps = np.ones(n, dtype=np.int64)
        self.reach_steps = np.ones(n, dtype=np.int64)
        self.visual_feedback = np.ones(n, dtype=bool)
        self.reward_success = np.zeros(n)
        self.reward_failure = np.zeros(n)
        self.reward_episode = np.zeros(n)
        self.speed = np.zeros(n)
        self.scale = np.full(n, 0.25)
        self.radius = np.zeros(n, dtype=np.int64)
        self.max_steps = np.full(n, -1, dtype=np.int64)
        # Commands: index into the command table, grown as needed.
        self.commands = np.zeros((n, 1), dtype=np.int64)
        self.vector = np.zeros((n, MAX_VECTOR_COMMANDS * 9), dtype=np.float32)
        # Agent: centre and rotation (continuous), or cell (grid); the target cell.
        self.cx = np.zeros(n, dtype=np.int64)
        self.cy = np.zeros(n, dtype=np.int64)
        self.rotation = np.zeros(n, dtype=np.int64)
        self.cell_x = np.zeros(n, dtype=np.int64)
        self.cell_y = np.zeros(n, dtype=np.int64)
        self.target_x = np.zeros(n, dtype=np.int64)
        self.target_y = np.zeros(n, dtype=np.int64)
        self.ground_truth = np.zeros((n, 2))
        # Command logic counters.
        self.current = np.zeros(n, dtype=np.int64)
        self.command_steps = np.zeros(n, dtype=np.int64)
        self.verify_steps = np.zeros(n, dtype=np.int64)
        self.tiles_on = np.zeros(n, dtype=bool)
        self.success = np.zeros(n, dtype=np.int64)
        self.completed_total = np.zeros(n, dtype=np.int64)
        self.t = np.zeros(n, dtype=np.int64)
        self.episode_return = np.zeros(n)
        # Show phase: entry `show_pos` of a list of `show_len` entries; entry k shows command
        # `show_first + k // period` for its first `duration` steps and nothing after.
        self.show_pos = np.zeros(n, dtype=np.int64)
        self.show_len = np.zeros(n, dtype=np.int64)
        self.show_first = np.zeros(n, dtype=np.int64)
        self.debug_pos = np.zeros(n, dtype=np.int64)
        # The sprite last handed to the screen: rotation, scale and centre. It is frozen (not
        # following the agent) from a reset until the next step; `drawn_valid` is False until
        # the first step of a fresh instance.
        self.drawn_valid = np.zeros(n, dtype=bool)
        self.drawn_live = np.zeros(n, dtype=bool)
        self.drawn_rotation = np.zeros(n, dtype=np.int64)
        self.drawn_scale = np.full(n, 0.25)
        self.drawn_x = np.zeros(n, dtype=np.int64)
        self.drawn_y = np.zeros(n, dtype=np.int64)
        # Rendering: each env's arena as a layer of `_LAYERS` (a few distinct layers serve the whole
        # batch, so building the screens reads little memory), and the screens.
        self.layer = np.zeros(n, dtype=np.int64)
        self.screen = np.zeros((n, SCREEN, SCREEN, 3), dtype=np.uint8)
        self.painter = AgentPainter()
        self.single_scale: float | None = 0.25
        """The agent scale of every env and every drawn sprite so far, None once two differ."""

    # ---- parameters ------------------------------------------------------------------------
    def check_combinations(self, params: dict[str, Any]) -> None:
        if self.show_commands and 0 in params["command_show_duration"] and 0 in params["command_show_delay"]:
            raise ValueError(
                f"{self.env_id}: command_show_duration and command_show_delay can both be 0, which shows "
                f"nothing: {params['command_show_duration']!r}, {params['command_show_delay']!r}"
            )

    # ---- reset -----------------------------------------------------------------------------
    def settle(self, idx: np.ndarray) -> None:
        # The sprite on screen stays the one of the previous episode until the next step.
        live = idx[self.drawn_live[idx]]
        self.drawn_x[live], self.drawn_y[live] = self._agent_centre(live)
        self.drawn_live[idx] = False

    def reset_envs(self, idx: np.ndarray, params: dict[str, Any]) -> None:
        idx = np.asarray(idx)
        size = 6 if self.endless else int(params["arena_size"])
        scale = GRID_SCALE if self.grid else float(params["agent_scale"])
        if scale != self.single_scale or (self.drawn_scale[idx] != scale).any():
            self.single_scale = None
        origin = arena_origin(size)
        self.arena_size[idx] = size
        self.origin[idx] = origin
        self.allowed[idx] = params["allowed_commands"]
        self.visual_feedback[idx] = bool(params["visual_feedback"])
        self.reward_success[idx] = params["reward_command_success"]
        self.reward_failure[idx] = params["reward_command_failure"]
        self.reward_episode[idx] = params.get("reward_episode_success", 0.0)
        self.speed[idx] = params.get("agent_speed", 0.0)
        self.scale[idx] = scale
        self.radius[idx] = agent_radius(scale)
        self.max_steps[idx] = params.get("max_steps", -1)

        # All layouts as one integer table; the command lists padded with `PAD` to one width
        # (the vector observation's, if there is one).
        rows = [draw_layout(self.rngs[i], params, size, self.spawn_offset, self.endless, self.show_commands) for i in idx]
        counts = [len(row) - LAYOUT_FIELDS for row in rows]
        width = MAX_VECTOR_COMMANDS if self.vector_commands else max(counts)
        layout = np.array([row + [PAD] * (width - count) for row, count in zip(rows, counts)])
        cell_x, cell_y, offset_x, offset_y, duration, delay, stay, reach = layout[:, :LAYOUT_FIELDS].T
        commands = layout[:, LAYOUT_FIELDS:]
        self._reserve_commands(width)
        self.commands[idx, :width] = commands
        self.num_commands[idx] = counts
        if self.vector_commands:
            self.vector[idx] = _ONE_HOT[commands].reshape(len(idx), -1)
        self.cell_x[idx], self.cell_y[idx] = cell_x, cell_y
        self.cx[idx] = origin + TILE // 2 + TILE * cell_x + offset_x
        self.cy[idx] = origin + TILE // 2 + TILE * cell_y + offset_y
        first = commands[:, 0]
        self.target_x[idx] = (cell_x + COMMAND_DX[first]) % size
        self.target_y[idx] = (cell_y + COMMAND_DY[first]) % size
        if self.endless:
            self._update_ground_truth(idx)
        # A period of 0 behaves like 1 (the reference's `x % 0` is 0).
        self.stay_steps[idx] = np.maximum(stay, 1)
        self.reach_steps[idx] = np.maximum(reach, 1)
        if self.show_commands:
            self.show_duration[idx] = duration
            self.show_period[idx] = duration + delay
            self.show_len[idx] = self.num_commands[idx] * self.show_period[idx]
            self.show_pos[idx] = 0
            self.show_first[idx] = 0
            self.debug_pos[idx] = 0

        self.current[idx] = 0
        self.command_steps[idx] = 0
        self.verify_steps[idx] = 0
        self.tiles_on[idx] = False
        self.success[idx] = 0
        self.completed_total[idx] = 0
        self.t[idx] = 0
        self.episode_return[idx] = 0.0
        self.rotation[idx] = 0
        # The reset frame: the fresh agent facing up, and the first command entry.
        self.layer[idx] = size
        self.screen[idx] = _LAYERS[size]
        command = self._pop_command(idx) if self.show_commands else None
        self._draw_sprites(idx, self.rotation[idx], *self._agent_centre(idx), self.scale[idx], command)

    def _reserve_commands(self, count: int) -> None:
        """Grow the command table to hold `count` commands per env."""
        if count > self.commands.shape[1]:
            grown = np.zeros((self.num_envs, max(count, 2 * self.commands.shape[1])), dtype=np.int64)
            grown[:, : self.commands.shape[1]] = self.commands
            self.commands = grown

    # ---- step ------------------------------------------------------------------------------
    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        n = self.num_envs
        actions = np.asarray(actions, dtype=np.int64).reshape((n,) if self.grid else (n, 2))
        # Agents are frozen while a command is shown; the B variants show none.
        command = None
        if self.show_commands:
            showing = self.show_pos < self.show_len
            moving = ~showing
            if showing.any():
                shown = np.flatnonzero(showing)
                command = np.full(n, -1, dtype=np.int64)
                command[shown] = self._pop_command(shown)
        else:
            moving = self.everyone
        self._move(moving, actions)
        if self.endless:
            # Frozen agents keep whatever sprite was drawn last (the fresh one on a new instance).
            fresh = showing & ~self.drawn_valid
            refresh = moving | fresh
            self.drawn_rotation = np.where(moving, self.rotation, np.where(fresh, 0, self.drawn_rotation))
            self.drawn_scale = np.where(refresh, self.scale, self.drawn_scale)
            self.drawn_live |= refresh
            self.drawn_valid |= refresh
        else:
            # Frozen agents are drawn facing up.
            self.drawn_rotation = np.where(moving, self.rotation, 0) if self.show_commands else self.rotation.copy()
            self.drawn_scale[:] = self.scale
            self.drawn_live[:] = True
            self.drawn_valid[:] = True

        rewards, done = self._command_logic(moving)
        self.t += 1
        if self.endless:
            done |= self.t == self.max_steps
        self.episode_return += rewards

        cx, cy = self._agent_centre(slice(None))
        if self.endless:
            cx = np.where(self.drawn_live, cx, self.drawn_x)
            cy = np.where(self.drawn_live, cy, self.drawn_y)
        np.take(_LAYERS, self.layer, axis=0, out=self.screen, mode="clip")  # indices valid by construction
        self._draw_sprites(self.all_envs, self.drawn_rotation, cx, cy, self.drawn_scale, command)
        return rewards, done

    def _move(self, moving: np.ndarray, actions: np.ndarray) -> None:
        """Move the agents of `moving` (everyone when there is no show phase)."""
        if self.grid:
            x, y, rotation = grid_step(self.cell_x, self.cell_y, self.rotation, actions, self.arena_size)
        elif self.endless:
            bounds = (0, 0, SCREEN, SCREEN)
            x, y, rotation = wrap_step(self.cx, self.cy, self.rotation, actions, self.speed, self.radius, bounds)
        else:
            side = TILE * self.arena_size
            bounds = (self.origin, self.origin, side, side)
            x, y, rotation = continuous_step(self.cx, self.cy, self.rotation, actions, self.speed, self.radius, bounds)
        if self.show_commands:
            old_x, old_y = (self.cell_x, self.cell_y) if self.grid else (self.cx, self.cy)
            x, y, rotation = np.where(moving, x, old_x), np.where(moving, y, old_y), np.where(moving, rotation, self.rotation)
        if self.grid:
            self.cell_x, self.cell_y = x, y
        else:
            self.cx, self.cy = x, y
        self.rotation = rotation

    def _agent_tile(self) -> tuple[np.ndarray, np.ndarray]:
        if self.grid:
            return self.cell_x, self.cell_y
        return (self.cx - self.origin) // TILE, (self.cy - self.origin) // TILE

    def _agent_centre(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.grid:
            half = TILE // 2
            return self.origin[idx] + TILE * self.cell_x[idx] + half, self.origin[idx] + TILE * self.cell_y[idx] + half
        return self.cx[idx], self.cy[idx]

    def _command_logic(self, moving: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Checks, explosions and target advances of the envs whose agent moved this step."""
        tile_x, tile_y = self._agent_tile()
        on_target = (tile_x == self.target_x) & (tile_y == self.target_y)
        rewards = np.zeros(self.num_envs)
        done = np.zeros(self.num_envs, dtype=bool)

        # A check every `reach_steps` steps while the tiles are off.
        check = moving & (self.command_steps % self.reach_steps == 0) & (self.command_steps > 0) & ~self.tiles_on
        if check.any():
            counted = check & (self.current < self.num_commands)
            self.current += counted
            hit = counted & on_target
            rewards += np.where(hit, self.reward_success, 0.0)
            rewards += np.where(counted & ~on_target, self.reward_failure, 0.0)
            done |= counted & ~on_target
            self.completed_total += hit
            self._set_tiles(np.flatnonzero(counted), on=True)
            # All commands processed, even when the last check failed.
            finished = check & (self.current >= self.num_commands)
            self.success = finished.astype(np.int64)
            if self.endless:
                if finished.any():
                    self._append_command(np.flatnonzero(finished))
            else:
                done |= finished
                rewards += np.where(finished, self.reward_episode, 0.0)
            self.command_steps[check] = 1
        else:
            self.success[:] = 0

        # Explosions: stay on the target while the tiles are red, then they turn blue again.
        exploding = moving & self.tiles_on
        if exploding.any():
            over = exploding & (self.verify_steps % self.stay_steps == 0) & (self.verify_steps > 0)
            if over.any():
                self._end_explosion(np.flatnonzero(over))
            burning = exploding & ~over
            failed = burning & ~on_target
            done |= failed
            rewards = np.where(failed, self.reward_failure, rewards)
            self.verify_steps += burning
        self.command_steps += moving & ~exploding
        return rewards, done

    def _end_explosion(self, ended: np.ndarray) -> None:
        self._set_tiles(ended, on=False)
        self.verify_steps[ended] = 0
        advance = ended[self.current[ended] < self.num_commands[ended]]
        command = self.commands[advance, self.current[advance]]
        size = self.arena_size[advance]
        self.target_x[advance] = (self.target_x[advance] + COMMAND_DX[command]) % size
        self.target_y[advance] = (self.target_y[advance] + COMMAND_DY[command]) % size
        self._update_ground_truth(advance)

    def _update_ground_truth(self, idx: np.ndarray) -> None:
        """The target tile / 5 (the endless info's `ground_truth`), kept with the target."""
        self.ground_truth[idx, 0] = self.target_x[idx] / 5.0
        self.ground_truth[idx, 1] = self.target_y[idx] / 5.0

    def _append_command(self, finished: np.ndarray) -> None:
        """Endless: one new command, shown alone, then the whole sequence again."""
        count = self.num_commands[finished]
        self._reserve_commands(int(count.max()) + 1)
        allowed = self.allowed[finished].tolist()
        self.commands[finished, count] = [int(self.rngs[i].integers(0, k)) for i, k in zip(finished.tolist(), allowed)]
        self.num_commands[finished] = count + 1
        self.current[finished] = 0
        self.verify_steps[finished] = 0
        self.show_pos[finished] = 0
        self.show_len[finished] = self.show_period[finished]
        self.show_first[finished] = self.num_commands[finished] - 1
        self.debug_pos[finished] = 0

    def _set_tiles(self, idx: np.ndarray, on: bool) -> None:
        """Turn the tiles of envs `idx` red (all but the target) or blue again."""
        if len(idx) == 0:
            return
        self.tiles_on[idx] = on
        recolour = idx[self.visual_feedback[idx]]
        if len(recolour) == 0:
            return
        size = self.arena_size[recolour]
        if on:
            self.layer[recolour] = _EXPLOSION_START[size] + self.target_x[recolour] * size + self.target_y[recolour]
        else:
            self.layer[recolour] = size

    # ---- show phase ------------------------------------------------------------------------
    def _entry(self, idx: np.ndarray, position: np.ndarray) -> np.ndarray:
        """Command shown by entry `position` of the show list (-1: a blank entry)."""
        period = self.show_period[idx]
        visible = position % period < self.show_duration[idx]
        command = self.commands[idx, self.show_first[idx] + position // period]
        return np.where(visible, command, -1)

    def _pop_command(self, idx: np.ndarray) -> np.ndarray:
        command = self._entry(idx, self.show_pos[idx])
        self.show_pos[idx] += 1
        return command

    # ---- drawing ---------------------------------------------------------------------------
    def _draw_sprites(self, idx, rotation, cx, cy, scale, command) -> None:
        """Draw the agents and the shown commands (-1: none; None: none anywhere) of envs `idx`."""
        if self.single_scale is not None:
            # Every env has had the same agent scale since the start: skip the painter's grouping.
            sheet, size = self.painter.sheet(self.single_scale)
            sheet.blit(self.screen, idx, rotation // 45, cx - size // 2, cy - size // 2)
        else:
            self.painter.draw(self.screen, idx, cx, cy, rotation, scale)
        if command is not None:
            shown = np.flatnonzero(command >= 0)
            if len(shown):
                at = np.full(len(shown), COMMAND_AT)
                _COMMANDS.blit(self.screen, idx[shown], command[shown], at, at)

    def observe(self):
        if self.vector_commands:
            return {"visual_observation": self.screen, "vector_observation": self.vector}
        return self.screen

    def render_debug(self, i: int) -> np.ndarray:
        """Ground truth: arena, the last drawn agent, the command, a green ring on the target; x4.

        Like the reference, a render pops the next entry of its own copy of the show list while
        the real list is not exhausted, so it stays in step only when called after every reset
        and step.
        """
        image = _LAYERS[self.layer[i]].copy()
        if self.drawn_valid[i]:
            rotation, scale = int(self.drawn_rotation[i]), float(self.drawn_scale[i])
            live = self.drawn_live[i]
            cx = int(self._agent_centre(np.array([i]))[0][0]) if live else int(self.drawn_x[i])
            cy = int(self._agent_centre(np.array([i]))[1][0]) if live else int(self.drawn_y[i])
        else:
            rotation, scale = 0, float(self.scale[i])
            cx, cy = (int(v[0]) for v in self._agent_centre(np.array([i])))
        sprite = agent_sprites(scale)[rotation // 45]
        blit(image, sprite, cx - sprite.size[0] // 2, cy - sprite.size[1] // 2)
        if self.show_pos[i] < self.show_len[i] and self.debug_pos[i] < self.show_len[i]:
            command = int(self._entry(np.array([i]), self.debug_pos[i : i + 1])[0])
            self.debug_pos[i] += 1
            if command >= 0:
                blit(image, COMMAND_SPRITES[COMMAND_NAMES[command]], COMMAND_AT, COMMAND_AT)
        origin = int(self.origin[i])
        ring_x = origin + TILE * int(self.target_x[i])
        ring_y = origin + TILE * int(self.target_y[i])
        image[ring_x : ring_x + TILE, ring_y : ring_y + TILE][_RING] = TARGET_RING
        return upscale(image.transpose(1, 0, 2), DEBUG_SCALE)

    # ---- infos -----------------------------------------------------------------------------
    def episode_info(self, i: int) -> dict[str, Any]:
        success = int(self.success[i])
        return {
            "reward": float(self.episode_return[i]),
            "length": int(self.t[i]),
            "success": success,
            "commands_completed": np.float64(self.current[i] - 1 + success) / np.float64(self.num_commands[i]),
        }


class GridMortarMayhemGame(MortarMayhemGame):
    env_id = "MortarMayhem-Grid-v0"
    grid = True
    action_space = gym.spaces.Discrete(4)
    defaults = {
        key: value for key, value in MortarMayhemGame.defaults.items() if key != "agent_speed"
    } | {"allowed_commands": 5, "explosion_duration": [2], "explosion_delay": [6]}
    render_fps = 6


class MortarMayhemBGame(MortarMayhemGame):
    env_id = "MortarMayhemB-v0"
    show_commands = False
    vector_commands = True
    spawn_offset = True
    observation_space = gym.spaces.Dict(
        {
            "visual_observation": gym.spaces.Box(0, 255, (SCREEN, SCREEN, 3), np.uint8),
            "vector_observation": gym.spaces.Box(
                np.zeros(MAX_VECTOR_COMMANDS * 9, dtype=np.float32),
                np.ones(MAX_VECTOR_COMMANDS * 9, dtype=np.float32),
                (MAX_VECTOR_COMMANDS * 9,),
                np.float32,
            ),
        }
    )
    defaults = {
        key: value
        for key, value in MortarMayhemGame.defaults.items()
        if key not in ("command_show_duration", "command_show_delay")
    }
    parameters = PARAMETERS | {"command_count": int_list(1, MAX_VECTOR_COMMANDS)}


class GridMortarMayhemBGame(MortarMayhemBGame):
    env_id = "MortarMayhemB-Grid-v0"
    grid = True
    spawn_offset = False
    action_space = gym.spaces.Discrete(4)
    defaults = {
        key: value for key, value in MortarMayhemBGame.defaults.items() if key != "agent_speed"
    } | {"allowed_commands": 5, "explosion_duration": [2], "explosion_delay": [6]}
    render_fps = 1


class EndlessMortarMayhemGame(MortarMayhemGame):
    env_id = "Endless-MortarMayhem-v0"
    endless = True
    spawn_offset = True
    ground_truth_space = gym.spaces.Box(np.zeros(2, dtype=np.float32), np.ones(2, dtype=np.float32), (2,), np.float32)
    defaults = {
        "max_steps": -1,
        "agent_scale": 0.25,
        "agent_speed": 3.0,
        "allowed_commands": 9,
        "initial_command_count": 1,
        "command_show_duration": [3],
        "command_show_delay": [1],
        "explosion_duration": [6],
        "explosion_delay": [18],
        "visual_feedback": True,
        "reward_command_failure": 0.0,
        "reward_command_success": 0.1,
    }

    def step_info(self) -> dict[str, np.ndarray]:
        return {"ground_truth": self.ground_truth}

    def episode_info(self, i: int) -> dict[str, Any]:
        length = int(self.num_commands[i])
        return {
            "reward": float(self.episode_return[i]),
            "length": int(self.t[i]),
            "commands_completed": int(self.completed_total[i]),
            "max_command_sequence": length - 1 if length > 1 else 0,
        }


GAMES = (MortarMayhemGame, GridMortarMayhemGame, MortarMayhemBGame, GridMortarMayhemBGame, EndlessMortarMayhemGame)
