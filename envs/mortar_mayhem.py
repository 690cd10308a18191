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

All per-step state lives in `(num_envs,)` arrays; the arena layer of each env is cached and
rebuilt only when its tiles change colour.
"""

from __future__ import annotations

from functools import lru_cache
from numbers import Integral, Real
from typing import Any

import gymnasium as gym
import numpy as np

from envs.agent import AgentPainter, continuous_step, grid_step, wrap_step
from envs.core import BatchedGame
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
ONE_HOT_SLOT = np.array([1, 4, 2, 3, 0, 5, 6, 7, 8], dtype=np.int64)
"""Slot of each command in the MM-B vector observation (stay, right, left, up, down, diagonals)."""
MAX_VECTOR_COMMANDS = 20

BLUE, BLUE_BORDER = (21, 43, 77), (29, 60, 107)
RED, RED_BORDER = (81, 18, 26), (112, 24, 36)
TARGET_RING = (0, 255, 0)
DEBUG_SCALE = 4

_COMMANDS = SpriteSheet([COMMAND_SPRITES[name] for name in COMMAND_NAMES])
_BLUE_TILE = tile(TILE, BLUE, BLUE_BORDER)
_BLUE_TILES = SpriteSheet([_BLUE_TILE])
_RED_TILE = tile(TILE, RED, RED_BORDER)


def arena_origin(size) -> np.ndarray:
    """Screen position of the arena's top-left corner (the arena is centred)."""
    return SCREEN // 2 - (TILE * np.asarray(size)) // 2


def _arena_layer(size: int, tile_sprite: Sprite) -> np.ndarray:
    """A black screen with a `size` x `size` arena of one tile look, `[x, y, c]`."""
    layer = np.zeros((SCREEN, SCREEN, 3), dtype=np.uint8)
    origin = int(arena_origin(size))
    for i in range(size):
        for j in range(size):
            blit(layer, tile_sprite, origin + TILE * i, origin + TILE * j)
    return layer


# Index by arena size (2..6): all tiles blue, all tiles red.
_BLUE_ARENAS = np.stack([_arena_layer(size, _BLUE_TILE) for size in range(7)])
_RED_ARENAS = np.stack([_arena_layer(size, _RED_TILE) for size in range(7)])
_RING = offsets_mask(*disk_offsets(TILE // 2), TILE, TILE // 2) & ~offsets_mask(*disk_offsets(TILE // 2 - 2), TILE, TILE // 2)


def _is_int(value: Any) -> bool:
    return isinstance(value, Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
    return isinstance(value, Real) and not isinstance(value, bool) and np.isfinite(value)


def _int_list(env_id: str, name: str, value: Any, minimum: int) -> None:
    if not isinstance(value, (list, tuple, np.ndarray)) or len(value) == 0:
        raise ValueError(f"{env_id}: {name} must be a non-empty list of integers, got {value!r}")
    if not all(_is_int(v) and v >= minimum for v in value):
        raise ValueError(f"{env_id}: every value of {name} must be an integer >= {minimum}, got {value!r}")


@lru_cache(maxsize=None)
def _valid_commands(size: int, allowed: int) -> tuple[tuple[int, ...], ...]:
    """For each cell `x * size + y`: the first-`allowed` commands that keep it inside the arena."""
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


def _pick(rng: np.random.Generator, values) -> int:
    """`rng.choice(values)`, drawn the same way but without building an array.

    A choice among one value draws nothing from the generator, so the call is skipped.
    """
    if len(values) == 1:
        return int(values[0])
    return int(values[int(rng.integers(0, len(values)))])


def draw_layout(rng: np.random.Generator, params: dict[str, Any], size: int, offset: bool, endless: bool, show: bool):
    """One episode's random layout, drawn in the reference's order.

    Returns `(cell_x, cell_y, offset_x, offset_y, show_duration, show_delay, explosion_duration,
    explosion_delay, commands)`; parameters a variant lacks come back as 0.
    """
    spawn = int(rng.integers(0, size * size))
    cell_x, cell_y = spawn // size, spawn % size
    offset_x = offset_y = 0
    if offset:
        offset_x, offset_y = (int(v) for v in rng.integers(-2, 2, 2))
    allowed = int(params["allowed_commands"])
    if endless:
        commands = [int(c) for c in rng.integers(0, allowed, int(params["initial_command_count"]))]
    else:
        # Each command is drawn among those that keep the simulated position in the arena.
        valid = _valid_commands(size, allowed)
        commands = []
        x, y = cell_x, cell_y
        for _ in range(_pick(rng, params["command_count"])):
            command = _pick(rng, valid[x * size + y])
            commands.append(command)
            x, y = x + int(COMMAND_DX[command]), y + int(COMMAND_DY[command])
    duration = delay = 0
    if show:
        duration = _pick(rng, params["command_show_duration"])
        delay = _pick(rng, params["command_show_delay"])
    stay = _pick(rng, params["explosion_duration"])
    reach = _pick(rng, params["explosion_delay"])
    return cell_x, cell_y, offset_x, offset_y, duration, delay, stay, reach, commands


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

    def __init__(self, num_envs: int):
        super().__init__(num_envs)
        n = num_envs
        self.all_envs = np.arange(n)
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
        # Rendering: cached arena layer per env and the screens.
        self.arena = np.zeros((n, SCREEN, SCREEN, 3), dtype=np.uint8)
        self.screen = np.zeros((n, SCREEN, SCREEN, 3), dtype=np.uint8)
        self.painter = AgentPainter()

    # ---- parameters ------------------------------------------------------------------------
    def check_params(self, params: dict[str, Any]) -> None:
        env_id = self.env_id
        if "agent_scale" in params and not (_is_real(params["agent_scale"]) and params["agent_scale"] > 0):
            raise ValueError(f"{env_id}: agent_scale must be a finite real number > 0, got {params['agent_scale']!r}")
        if "agent_speed" in params and not _is_real(params["agent_speed"]):
            raise ValueError(f"{env_id}: agent_speed must be a finite real number, got {params['agent_speed']!r}")
        if "arena_size" in params and not (_is_int(params["arena_size"]) and 2 <= params["arena_size"] <= 6):
            raise ValueError(f"{env_id}: arena_size must be an integer in 2..6, got {params['arena_size']!r}")
        if not (_is_int(params["allowed_commands"]) and 4 <= params["allowed_commands"] <= 9):
            raise ValueError(f"{env_id}: allowed_commands must be an integer in 4..9, got {params['allowed_commands']!r}")
        if self.endless:
            count = params["initial_command_count"]
            if not (_is_int(count) and count >= 1):
                raise ValueError(f"{env_id}: initial_command_count must be an integer >= 1, got {count!r}")
            if not _is_int(params["max_steps"]):
                raise ValueError(f"{env_id}: max_steps must be an integer, got {params['max_steps']!r}")
        else:
            _int_list(env_id, "command_count", params["command_count"], 1)
            if self.vector_commands and max(params["command_count"]) > MAX_VECTOR_COMMANDS:
                raise ValueError(
                    f"{env_id}: command_count allows at most {MAX_VECTOR_COMMANDS} commands, got {params['command_count']!r}"
                )
        if self.show_commands:
            _int_list(env_id, "command_show_duration", params["command_show_duration"], 0)
            _int_list(env_id, "command_show_delay", params["command_show_delay"], 0)
            if 0 in params["command_show_duration"] and 0 in params["command_show_delay"]:
                raise ValueError(
                    f"{env_id}: command_show_duration and command_show_delay can both be 0, which shows "
                    f"nothing: {params['command_show_duration']!r}, {params['command_show_delay']!r}"
                )
        _int_list(env_id, "explosion_duration", params["explosion_duration"], 0)
        _int_list(env_id, "explosion_delay", params["explosion_delay"], 0)
        if not isinstance(params["visual_feedback"], (bool, np.bool_)):
            raise ValueError(f"{env_id}: visual_feedback must be a bool, got {params['visual_feedback']!r}")
        for name in ("reward_command_failure", "reward_command_success", "reward_episode_success"):
            if name in params and not _is_real(params[name]):
                raise ValueError(f"{env_id}: {name} must be a finite real number, got {params[name]!r}")

    # ---- reset -----------------------------------------------------------------------------
    def reset_envs(self, idx: np.ndarray, params: dict[str, Any]) -> None:
        idx = np.asarray(idx)
        # The sprite on screen stays the one of the previous episode until the next step.
        live = idx[self.drawn_live[idx]]
        self.drawn_x[live], self.drawn_y[live] = self._agent_centre(live)
        self.drawn_live[idx] = False

        size = 6 if self.endless else int(params["arena_size"])
        scale = GRID_SCALE if self.grid else float(params["agent_scale"])
        self.arena_size[idx] = size
        self.origin[idx] = arena_origin(size)
        self.allowed[idx] = params["allowed_commands"]
        self.visual_feedback[idx] = bool(params["visual_feedback"])
        self.reward_success[idx] = params["reward_command_success"]
        self.reward_failure[idx] = params["reward_command_failure"]
        self.reward_episode[idx] = params.get("reward_episode_success", 0.0)
        self.speed[idx] = params.get("agent_speed", 0.0)
        self.scale[idx] = scale
        self.radius[idx] = agent_radius(scale)
        self.max_steps[idx] = params.get("max_steps", -1)
        layouts = [draw_layout(self.rngs[i], params, size, self.spawn_offset, self.endless, self.show_commands) for i in idx]
        cell_x, cell_y, offset_x, offset_y, duration, delay, stay, reach = np.array([layout[:8] for layout in layouts]).T
        origin = arena_origin(size)
        self.cell_x[idx], self.cell_y[idx] = cell_x, cell_y
        self.cx[idx] = origin + TILE * cell_x + TILE // 2 + offset_x
        self.cy[idx] = origin + TILE * cell_y + TILE // 2 + offset_y
        counts = np.array([len(layout[8]) for layout in layouts])
        self._reserve_commands(int(counts.max()))
        for i, layout in zip(idx, layouts):
            self.commands[i, : len(layout[8])] = layout[8]
        self.num_commands[idx] = counts
        first = self.commands[idx, 0]
        self.target_x[idx] = (cell_x + COMMAND_DX[first]) % size
        self.target_y[idx] = (cell_y + COMMAND_DY[first]) % size
        self._update_ground_truth(idx)
        self.show_duration[idx] = duration
        self.show_period[idx] = duration + delay
        self.show_len[idx] = counts * (duration + delay) if self.show_commands else 0
        self.show_pos[idx] = 0
        self.show_first[idx] = 0
        self.debug_pos[idx] = 0
        # A period of 0 behaves like 1 (the reference's `x % 0` is 0).
        self.stay_steps[idx] = np.maximum(stay, 1)
        self.reach_steps[idx] = np.maximum(reach, 1)
        if self.vector_commands:
            self.vector[idx] = 0.0
            for i in idx:
                count = int(self.num_commands[i])
                self.vector[i, 9 * np.arange(count) + ONE_HOT_SLOT[self.commands[i, :count]]] = 1.0
        self.current[idx] = 0
        self.command_steps[idx] = 0
        self.verify_steps[idx] = 0
        self.tiles_on[idx] = False
        self.success[idx] = 0
        self.completed_total[idx] = 0
        self.t[idx] = 0
        self.episode_return[idx] = 0.0
        self.rotation[idx] = 0
        self.arena[idx] = _BLUE_ARENAS[size]
        # The reset frame: the fresh agent facing up, and the first command entry.
        command = self._pop_command(idx) if self.show_commands else np.full(len(idx), -1)
        self._draw(idx, self.rotation[idx], *self._agent_centre(idx), self.scale[idx], command)

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
        showing = self.show_pos < self.show_len
        command = np.full(n, -1, dtype=np.int64)
        if showing.any():
            shown = np.flatnonzero(showing)
            command[shown] = self._pop_command(shown)
        moving = ~showing
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
            self.drawn_rotation = np.where(moving, self.rotation, 0)
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
        self._draw(self.all_envs, self.drawn_rotation, cx, cy, self.drawn_scale, command)
        return rewards, done

    def _move(self, moving: np.ndarray, actions: np.ndarray) -> None:
        if self.grid:
            x, y, rotation = grid_step(self.cell_x, self.cell_y, self.rotation, actions, self.arena_size)
            self.cell_x = np.where(moving, x, self.cell_x)
            self.cell_y = np.where(moving, y, self.cell_y)
        else:
            if self.endless:
                bounds = (0, 0, SCREEN, SCREEN)
                cx, cy, rotation = wrap_step(self.cx, self.cy, self.rotation, actions, self.speed, self.radius, bounds)
            else:
                side = TILE * self.arena_size
                bounds = (self.origin, self.origin, side, side)
                cx, cy, rotation = continuous_step(self.cx, self.cy, self.rotation, actions, self.speed, self.radius, bounds)
            self.cx = np.where(moving, cx, self.cx)
            self.cy = np.where(moving, cy, self.cy)
        self.rotation = np.where(moving, rotation, self.rotation)

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
        for i in finished:
            new = self.rngs[i].integers(0, int(self.allowed[i]), 1)
            count = int(self.num_commands[i])
            self._reserve_commands(count + 1)
            self.commands[i, count] = new[0]
            self.num_commands[i] = count + 1
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
        if not on:
            self.arena[recolour] = _BLUE_ARENAS[size]
            return
        self.arena[recolour] = _RED_ARENAS[size]
        origin = self.origin[recolour]
        _BLUE_TILES.blit(
            self.arena,
            recolour,
            np.zeros(len(recolour), dtype=np.int64),
            origin + TILE * self.target_x[recolour],
            origin + TILE * self.target_y[recolour],
        )

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
    def _draw(self, idx, rotation, cx, cy, scale, command) -> None:
        if len(idx) == self.num_envs:
            self.screen[...] = self.arena
        else:
            self.screen[idx] = self.arena[idx]
        self.painter.draw(self.screen, idx, cx, cy, rotation, scale)
        with_command = command >= 0
        if with_command.any():
            at = np.full(int(with_command.sum()), COMMAND_AT)
            _COMMANDS.blit(self.screen, idx[with_command], command[with_command], at, at)

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
        image = self.arena[i].copy()
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
