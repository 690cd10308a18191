"""Golden scenarios for the Searing Spotlights family (recorded by `tools/record_golden.py`).

Policies either play randomly or read the reference env's state (agent rect, coins, exit,
spotlight curves) to walk to the next coin, then to the exit, while stepping around the
spotlights' next positions; replays use the recorded actions only.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from golden_format import Episode, Scenario  # noqa: E402

SS, ESS = "SearingSpotlights-v0", "Endless-SearingSpotlights-v0"
# (horizontal, vertical) action -> pixel step at the default speed (diagonals move 2 px per axis).
MOVES = [
    ((h, v), (dx * (2 if dx and dy else 3), dy * (2 if dx and dy else 3)))
    for h, dx in ((0, 0), (1, -1), (2, 1))
    for v, dy in ((0, 0), (1, -1), (2, 1))
]


def random_pair(env, rng, obs, t):
    return rng.integers(0, 3, 2)


def _spot_next(spot) -> tuple[float, float]:
    """Where a spot will be drawn next step (its position at the current t)."""
    t = spot.t
    qx = spot.target_location.x * (1 - t) + spot.offset_location.x * t
    qy = spot.target_location.y * (1 - t) + spot.offset_location.y * t
    return spot.spawn_location.x * (1 - t) + qx * t, spot.spawn_location.y * (1 - t) + qy * t


def _target(env) -> tuple[int, int] | None:
    coins = getattr(env, "coins", None)
    if coins is None:  # endless: one coin
        return tuple(int(v) for v in env.coin.location)
    if coins:
        x, y = env.agent.rect.center
        nearest = min(coins, key=lambda c: (c.location[0] - x) ** 2 + (c.location[1] - y) ** 2)
        return tuple(int(v) for v in nearest.location)
    if env.reset_params["use_exit"]:
        return tuple(int(v) for v in env.exit.location)
    return None


def dodging_action(x: int, y: int, target: tuple[int, int], spots) -> np.ndarray:
    """The move from (x, y) that best heads for `target` while keeping clear of `spots`,
    an iterable of (x, y, radius) next positions. Shared by the recorder and the tests."""
    spots = list(spots)  # read once per candidate move
    best, best_cost = (0, 0), math.inf
    for action, (dx, dy) in MOVES:
        nx, ny = min(max(x + dx, 6), 78), min(max(y + dy, 10), 78)
        cost = math.hypot(target[0] - nx, target[1] - ny)
        for sx, sy, radius in spots:
            cost += 100 * max(0.0, radius + 6 + 4 - math.hypot(sx - nx, sy - ny))
        if cost < best_cost:
            best, best_cost = action, cost
    return np.array(best)


def dodge(env, rng, obs, t):
    """Head for the nearest coin (then the exit), avoiding the spotlights' next positions."""
    x, y = env.agent.rect.center
    spots = [(*_spot_next(s), s.radius) for s in env.spotlights if not s.done]
    return dodging_action(x, y, _target(env) or (x, y), spots)


def noisy(policy, p_random):
    def act(env, rng, obs, t):
        return random_pair(env, rng, obs, t) if rng.random() < p_random else policy(env, rng, obs, t)

    return act


# Non-default reset parameters, covering every visibility flag combination and the knobs.
FINITE_OPTIONS = [
    {"agent_visible": True, "num_coins": [2, 3]},
    {"coins_visible": True, "num_coins": [2, 3], "hide_chessboard": True},
    {"exit_visible": True, "agent_visible": True, "light_dim_off_duration": 0},
    {"coins_visible": True, "exit_visible": True, "agent_visible": True, "num_coins": [3], "sample_agent_position": False},
    {"coins_visible": True, "exit_visible": True, "light_dim_off_duration": 3, "light_threshold": 100},
    {"exit_visible": True, "show_last_action": False, "num_coins": [0]},
    {"coins_visible": True, "agent_visible": True, "show_last_positive_reward": False, "spot_damage": 2.0, "agent_health": 7},
    {"black_background": True, "num_coins": [4, 5]},
    {"black_background": True, "visual_feedback": False, "spot_min_radius": 2, "spot_max_radius": 25},
    {
        "initial_spawns": 8, "spot_min_speed": 0.02, "spot_max_speed": 0.03, "num_spawns": 50,
        "initial_spawn_interval": 3, "spawn_interval_threshold": 2, "max_steps": 300,
    },
    {
        "coin_scale": 0.6, "agent_scale": 0.4, "agent_speed": 2.5, "reward_inside_spotlight": -0.1,
        "reward_outside_spotlight": 0.01, "reward_death": -1.0, "reward_coin": 0.3, "reward_exit": 2.0,
    },
]  # fmt: skip
ENDLESS_OPTIONS = [
    {"agent_visible": True, "coins_visible": True},
    {"black_background": True, "coin_show_duration": 0},
    {"hide_chessboard": True, "light_dim_off_duration": 0, "sample_agent_position": False},
    {
        "show_last_positive_reward": False, "steps_per_coin": 40, "spawn_interval": 7,
        "spot_min_speed": 0.02, "spot_max_speed": 0.05,
    },
    {"agent_health": 3, "max_steps": 50, "light_threshold": 50, "light_dim_off_duration": 4},
    {"coin_scale": 0.7, "agent_scale": 0.5, "reward_coin": 1.5, "reward_outside_spotlight": 0.001, "reward_death": -2.0},
]  # fmt: skip


def _seed_sweep(env_id: str, short: str) -> Scenario:
    """Short random episodes over a dozen more seeds (layouts, spotlight curves, spawns)."""
    episodes = [Episode(seed=seed, policy=random_pair, max_steps=80) for seed in range(10, 22)]
    return Scenario(name=f"{short}_seeds", env_id=env_id, episodes=episodes, frames=[(5, 60)], policy_seed=5)


def _options_scenarios(env_id: str, options: list[dict], short: str) -> list[Scenario]:
    scenarios = []
    for index, opts in enumerate(options):
        policy = noisy(dodge, 0.3) if index % 2 else random_pair
        scenarios.append(
            Scenario(
                name=f"{short}_options{index}",
                env_id=env_id,
                episodes=[
                    Episode(seed=100 + index, policy=policy, options=opts, max_steps=300, steps_after_done=5),
                    Episode(seed=None, policy=policy, options=opts, max_steps=120),
                ],
                frames=[(0, 0), (0, 3), (0, 30)],
                policy_seed=index,
            )
        )
    return scenarios


def _changing_options(env_id: str, short: str) -> Scenario:
    """Options that change between episodes of one instance: the board fills and the darkness
    layer persist (a reset frame with `light_dim_off_duration=0` shows the last episode's holes)."""
    plan = [
        (0, {}),
        (None, {"light_dim_off_duration": 0}),
        (1, {"black_background": True}),
        (None, {}),
        (2, {"hide_chessboard": True}),
        (None, {"agent_visible": True}),
    ]
    episodes = [Episode(seed=seed, policy=random_pair, options=opts, max_steps=90) for seed, opts in plan]
    frames = [(1, 0), (3, 0), (5, 0)]
    return Scenario(name=f"{short}_changing_options", env_id=env_id, episodes=episodes, frames=frames, policy_seed=6)


SCENARIOS = [
    Scenario(
        name="SearingSpotlights_random",
        env_id=SS,
        episodes=[
            Episode(seed=0, policy=random_pair, steps_after_done=30),
            Episode(seed=None, policy=random_pair),
            Episode(seed=1, policy=random_pair),
            Episode(seed=2, policy=random_pair, max_steps=300, steps_after_done=20),
        ],
        frames=[(0, 0), (0, 1), (0, 7), (0, 40), (1, 0)],
        policy_seed=1,
    ),
    Scenario(
        name="SearingSpotlights_dodge",
        env_id=SS,
        episodes=[Episode(seed=seed, policy=dodge, steps_after_done=3) for seed in (3, 4, 5, 6, 7)]
        + [Episode(seed=8, policy=dodge, options={"num_coins": [3, 4]}, steps_after_done=3)],
        frames=[(0, 20)],
        policy_seed=2,
    ),
    _seed_sweep(SS, "SearingSpotlights"),
    _changing_options(SS, "SearingSpotlights"),
    *_options_scenarios(SS, FINITE_OPTIONS, "SearingSpotlights"),
    Scenario(
        name="Endless-SearingSpotlights_random",
        env_id=ESS,
        episodes=[
            Episode(seed=0, policy=random_pair, steps_after_done=30),
            Episode(seed=None, policy=random_pair),
            Episode(seed=1, policy=random_pair, max_steps=300),
        ],
        frames=[(0, 0), (0, 1), (0, 7), (0, 40), (1, 0)],
        policy_seed=3,
    ),
    Scenario(
        name="Endless-SearingSpotlights_dodge",
        env_id=ESS,
        episodes=[
            Episode(seed=5, policy=dodge, max_steps=1500, steps_after_done=3),
            Episode(seed=6, policy=noisy(dodge, 0.2), max_steps=600),
        ],
        frames=[(0, 50), (0, 900)],
        policy_seed=4,
    ),
    _seed_sweep(ESS, "Endless-SearingSpotlights"),
    _changing_options(ESS, "Endless-SearingSpotlights"),
    *_options_scenarios(ESS, ENDLESS_OPTIONS, "Endless-SearingSpotlights"),
]
