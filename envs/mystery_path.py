"""Mystery Path: walk an invisible path across a 7x7 grid, remembering where you fell off.

`MysteryPath-v0` (continuous agent, MultiDiscrete([3, 3])) and `MysteryPath-Grid-v0` (grid agent,
Discrete(4)). Each episode generates one path from a random border cell to the opposite border
(`path_generation`). By default the observation shows only the agent on black: stepping off the
path shows a red cross, and at the next step the agent is put back on the start tile (that step's
action is ignored). Reaching the goal tile ends the episode with `reward_goal`; each first visit of
a path tile other than start and goal earns `reward_path_progress`; the episode also ends after
`max_steps` steps.

State lives in arrays over the batch; the step and the drawing are array code, the path is
generated per env at reset. The parameter table shared with `endless_mystery_path` lives here too.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from envs.agent import AgentPainter, continuous_step, grid_step
from envs.core import BatchedGame
from envs.parameters import REWARD, STEPS, boolean, int_list, integer, real
from envs.path_generation import GRID, Draws, generate_segment
from envs.raster import SpriteSheet
from envs.sprites import FALLOFF_CROSS, agent_radius

SCREEN = 84
TILE = SCREEN // GRID  # 12 px
OBSERVATION_SPACE = gym.spaces.Box(0, 255, (SCREEN, SCREEN, 3), np.uint8)
DEBUG_SCALE = 4
ORIGIN_COLOUR = (0, 0, 255)
GOAL_COLOUR = (0, 255, 0)
PATH_COLOUR = (255, 255, 255)
WALL_COLOUR = (255, 0, 0)
CROSS = SpriteSheet([FALLOFF_CROSS])
CROSS_HALF = FALLOFF_CROSS.size[0] // 2


# ---- reset parameters ----------------------------------------------------------------------

# The accepted values of every Mystery Path reset parameter (each id uses those it has).
PARAMETERS = {
    "max_steps": integer(-STEPS, STEPS),
    "agent_scale": real(0, 2, open_low=True),
    "agent_speed": real(0, SCREEN),
    "cardinal_origin_choice": int_list(0, 3),
    "show_origin": boolean(),
    "show_goal": boolean(),
    "show_past_path": boolean(),
    "show_background": boolean(),
    "show_stamina": boolean(),
    "visual_feedback": boolean(),
    # In tiles; beyond the past path's reach (two segments, 16 columns) larger values change nothing.
    "camera_offset_scale": real(-100, 100),
    "stamina_level": integer(1, STEPS),
    "reward_goal": real(-REWARD, REWARD),
    "reward_fall_off": real(-REWARD, REWARD),
    "reward_path_progress": real(-REWARD, REWARD),
    "reward_step": real(-REWARD, REWARD),
}


# ---- the finite game -----------------------------------------------------------------------


def draw_start_and_end(draws: Draws, origins: list[int]) -> tuple[tuple[int, int], tuple[int, int]]:
    """Pick the side the path starts from, then the start and end cells on opposite borders."""
    origin = origins[draws.below(len(origins))]
    a = draws.below(GRID)
    b = draws.below(GRID)
    edge = GRID - 1
    return {
        0: ((0, a), (edge, b)),  # west -> east
        1: ((edge, a), (0, b)),  # east -> west
        2: ((a, 0), (b, edge)),  # north -> south
        3: ((a, edge), (b, 0)),  # south -> north
    }[origin]


def generate_layout(rng: np.random.Generator, origins: list[int]) -> tuple[list[tuple[int, int]], list[bool]]:
    """One episode's path (cells from start to end) and walls, drawing from `rng` like the reference."""
    with Draws(rng) as draws:
        start, end = draw_start_and_end(draws, origins)
        path, wall = generate_segment(draws, start, end)
    return path, wall


class MysteryPathGame(BatchedGame):
    env_id = "MysteryPath-v0"
    observation_space = OBSERVATION_SPACE
    action_space = gym.spaces.MultiDiscrete([3, 3])
    fresh_observations = ("screens",)
    defaults = {
        "max_steps": 512,
        "agent_scale": 0.25,
        "agent_speed": 3.0,
        "cardinal_origin_choice": [0, 1, 2, 3],
        "show_origin": False,
        "show_goal": False,
        "visual_feedback": True,
        "reward_goal": 1.0,
        "reward_fall_off": 0.0,
        "reward_path_progress": 0.1,
        "reward_step": 0.0,
    }
    parameters = PARAMETERS
    render_fps = 25
    grid_agent = False


    def __init__(self, num_envs: int):
        super().__init__(num_envs)
        n = num_envs
        self.painter = AgentPainter()
        # Per-episode parameters (vector sub-envs may run episodes with different options).
        self.max_steps = np.zeros(n, dtype=np.int64)
        self.scale = np.full(n, 0.25)
        self.speed = np.zeros(n)
        self.radius = np.zeros(n, dtype=np.int64)
        self.visual_feedback = np.zeros(n, dtype=bool)
        self.reward_goal = np.zeros(n)
        self.reward_fall_off = np.zeros(n)
        self.reward_progress = np.zeros(n)
        self.reward_step = np.zeros(n)
        # Layout: cells are indexed x * 7 + y.
        self.on_path = np.zeros((n, GRID * GRID), dtype=bool)
        self.start_cell = np.zeros(n, dtype=np.int64)
        self.end_cell = np.zeros(n, dtype=np.int64)
        self.paths: list[list[tuple[int, int]]] = [[] for _ in range(n)]
        self.walls: list[list[bool]] = [[] for _ in range(n)]
        self.layer = np.zeros((n, SCREEN, SCREEN, 3), dtype=np.uint8)
        # Episode state.
        self.rewarded = np.zeros((n, GRID * GRID), dtype=bool)
        self.cx = np.zeros(n, dtype=np.int64)
        self.cy = np.zeros(n, dtype=np.int64)
        self.rotation = np.zeros(n, dtype=np.int64)
        self.off_path = np.zeros(n, dtype=bool)
        self.cross_shown = np.zeros(n, dtype=bool)
        self.cross_x = np.zeros(n, dtype=np.int64)
        self.cross_y = np.zeros(n, dtype=np.int64)
        self.t = np.zeros(n, dtype=np.int64)
        self.num_fails = np.zeros(n, dtype=np.int64)
        self.success = np.zeros(n, dtype=np.int64)
        self.episode_return = np.zeros(n)
        self.screens = np.zeros((n, SCREEN, SCREEN, 3), dtype=np.uint8)

    # ---- reset -----------------------------------------------------------------------------
    def reset_envs(self, idx: np.ndarray, params: dict[str, Any]) -> None:
        idx = np.asarray(idx)
        origins = [int(o) for o in params["cardinal_origin_choice"]]
        self.layer[idx] = 0
        self.on_path[idx] = False
        for i in idx:
            path, wall = generate_layout(self.rngs[i], origins)
            self.paths[i], self.walls[i] = path, wall
            cells = [x * GRID + y for x, y in path]
            self.on_path[i, cells] = True
            self.start_cell[i], self.end_cell[i] = cells[0], cells[-1]
            marked = ((params["show_origin"], cells[0], ORIGIN_COLOUR), (params["show_goal"], cells[-1], GOAL_COLOUR))
            for shown, cell, colour in marked:
                if shown:
                    x, y = divmod(cell, GRID)
                    self.layer[i, x * TILE : (x + 1) * TILE, y * TILE : (y + 1) * TILE] = colour
        self._store_params(idx, params)
        self.rewarded[idx] = False
        self.rotation[idx] = 0
        self.cx[idx], self.cy[idx] = self._spawn(idx)
        self.off_path[idx] = False
        self.cross_shown[idx] = False
        self.cross_x[idx] = self.cross_y[idx] = 0
        self.t[idx] = 0
        self.num_fails[idx] = 0
        self.success[idx] = 0
        self.episode_return[idx] = 0.0
        self._draw(idx)

    def _store_params(self, idx: np.ndarray, params: dict[str, Any]) -> None:
        self.max_steps[idx] = params["max_steps"]
        self.scale[idx] = params["agent_scale"]
        self.radius[idx] = agent_radius(params["agent_scale"])
        self.speed[idx] = params.get("agent_speed", 0.0)
        self.visual_feedback[idx] = params["visual_feedback"]
        self.reward_goal[idx] = params["reward_goal"]
        self.reward_fall_off[idx] = params["reward_fall_off"]
        self.reward_progress[idx] = params["reward_path_progress"]
        self.reward_step[idx] = params["reward_step"]

    def _spawn(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The start tile's top-left plus the agent radius (the tile centre only at the default scale)."""
        sx, sy = np.divmod(self.start_cell[idx], GRID)
        return sx * TILE + self.radius[idx], sy * TILE + self.radius[idx]

    # ---- step ------------------------------------------------------------------------------
    def _move(self, actions: np.ndarray, off: np.ndarray) -> None:
        """Move every agent; an agent that fell off last step is put back on the start, action ignored."""
        actions = np.asarray(actions).reshape(self.num_envs, 2)
        actions = np.where(off[:, None], 0, actions)
        spawn_x, spawn_y = self._spawn(np.arange(self.num_envs))
        cx = np.where(off, spawn_x, self.cx)
        cy = np.where(off, spawn_y, self.cy)
        self.cx, self.cy, self.rotation = continuous_step(
            cx, cy, self.rotation, actions, self.speed, self.radius, (0, 0, SCREEN, SCREEN)
        )

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._move(actions, self.off_path)
        tx, ty = self.cx // TILE, self.cy // TILE
        inside = (tx >= 0) & (tx < GRID) & (ty >= 0) & (ty < GRID)
        cell = np.where(inside, tx * GRID + ty, 0)
        rows = np.arange(self.num_envs)
        goal = inside & (cell == self.end_cell)
        on = inside & self.on_path[rows, cell] & ~goal
        progress = on & ~self.rewarded[rows, cell] & (cell != self.start_cell)
        self.rewarded[rows[progress], cell[progress]] = True
        fell = ~goal & ~on

        rewards = np.where(goal, self.reward_goal, 0.0)
        rewards = np.where(progress, self.reward_progress, rewards)
        rewards = np.where(fell, self.reward_fall_off, rewards)
        rewards = rewards + self.reward_step
        self.num_fails += fell
        # On the goal step the cross and the off-path flag keep their previous state.
        self.cross_shown = np.where(goal, self.cross_shown, fell & self.visual_feedback)
        self.off_path = np.where(goal, self.off_path, fell)
        self.cross_x = np.where(goal, self.cross_x, self.cx)
        self.cross_y = np.where(goal, self.cross_y, self.cy)
        self.success = goal.astype(np.int64)
        self.t += 1
        self.episode_return += rewards
        self._draw(rows)
        return rewards, goal | (self.t == self.max_steps)

    # ---- drawing ---------------------------------------------------------------------------
    def _draw(self, idx: np.ndarray) -> None:
        if len(idx) == self.num_envs:
            np.copyto(self.screens, self.layer)
        else:
            self.screens[idx] = self.layer[idx]
        self._draw_agent_and_cross(self.screens, idx)

    def _draw_agent_and_cross(self, screens: np.ndarray, idx: np.ndarray, rows: np.ndarray | None = None) -> None:
        """Agent and (if shown) cross of envs `idx`, drawn onto `screens[rows]` (default: the same rows)."""
        rows = idx if rows is None else rows
        scale = 0.25 if self.grid_agent else self.scale[idx]
        self.painter.draw(screens, rows, self.cx[idx], self.cy[idx], self.rotation[idx], scale)
        shown = self.cross_shown[idx]
        CROSS.blit(
            screens,
            rows[shown],
            np.zeros(int(shown.sum()), dtype=np.int64),
            self.cross_x[idx][shown] - CROSS_HALF,
            self.cross_y[idx][shown] - CROSS_HALF,
        )

    def observe(self) -> np.ndarray:
        return self.screens

    def render_debug(self, i: int) -> np.ndarray:
        image = np.zeros((1, SCREEN, SCREEN, 3), dtype=np.uint8)
        path = self.paths[i]
        for n, (x, y) in enumerate(path):
            colour = ORIGIN_COLOUR if n == 0 else GOAL_COLOUR if n == len(path) - 1 else PATH_COLOUR
            image[0, x * TILE : (x + 1) * TILE, y * TILE : (y + 1) * TILE] = colour
        for cell, is_wall in enumerate(self.walls[i]):
            if is_wall:
                x, y = divmod(cell, GRID)
                image[0, x * TILE : (x + 1) * TILE, y * TILE : (y + 1) * TILE] = WALL_COLOUR
        self._draw_agent_and_cross(image, np.array([i]), np.array([0]))
        return upscale_image(image[0])

    def episode_info(self, i: int) -> dict[str, Any]:
        return {
            "reward": float(self.episode_return[i]),
            "length": int(self.t[i]),
            "success": int(self.success[i]),
            "num_fails": int(self.num_fails[i]),
        }


_PIXEL = np.dtype((np.void, 3))


def upscale_image(screen: np.ndarray) -> np.ndarray:
    """An `[x, y]` screen as the x4 pixel-replicated normal (row-major) debug image."""
    # Pixels as 3-byte items, so both replications are plain gathers.
    height, width = screen.shape[1], screen.shape[0]
    pixels = np.ascontiguousarray(screen.transpose(1, 0, 2)).reshape(height, width * 3).view(_PIXEL)
    pixels = np.take(pixels, np.arange(width * DEBUG_SCALE) // DEBUG_SCALE, axis=1)
    pixels = np.take(pixels, np.arange(height * DEBUG_SCALE) // DEBUG_SCALE, axis=0)
    return pixels.view(np.uint8).reshape(height * DEBUG_SCALE, width * DEBUG_SCALE, 3)


class GridMysteryPathGame(MysteryPathGame):
    """The grid-agent variant: turn left/right, step forward one cell; the agent scale is fixed."""

    env_id = "MysteryPath-Grid-v0"
    action_space = gym.spaces.Discrete(4)
    defaults = {
        key: value
        for key, value in {**MysteryPathGame.defaults, "max_steps": 128, "reward_path_progress": 0.0}.items()
        if key != "agent_speed"
    }
    render_fps = 3
    grid_agent = True

    def _spawn(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        sx, sy = np.divmod(self.start_cell[idx], GRID)
        return sx * TILE + TILE // 2, sy * TILE + TILE // 2

    def _move(self, actions: np.ndarray, off: np.ndarray) -> None:
        actions = np.where(off, 0, np.asarray(actions).reshape(self.num_envs))
        sx, sy = np.divmod(self.start_cell, GRID)
        gx = np.where(off, sx, self.cx // TILE)
        gy = np.where(off, sy, self.cy // TILE)
        gx, gy, self.rotation = grid_step(gx, gy, self.rotation, actions, GRID)
        self.cx, self.cy = gx * TILE + TILE // 2, gy * TILE + TILE // 2
