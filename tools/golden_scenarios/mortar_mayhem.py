"""Golden scenarios for the Mortar Mayhem family (recorded by `tools/record_golden.py`).

Policies read the reference env's state (`_target_pos`, the agent's rect or grid index) to play
perfectly, to fail on purpose, or play randomly; replays use the recorded actions only.
"""

from __future__ import annotations

import numpy as np
from golden_format import Episode, Scenario


def random_pair(env, rng, obs, t):
    return rng.integers(0, 3, 2)


def random_turn(env, rng, obs, t):
    return int(rng.integers(0, 4))


def _axis_action(delta: int) -> int:
    return 2 if delta > 1 else 1 if delta < -1 else 0


def perfect_pair(env, rng, obs, t):
    """Walk towards the target tile centre (through the seam on the endless torus)."""
    origin = env.arena.rect[0]
    tile = env.arena.tile_dim
    target = [origin + tile * p + tile // 2 for p in env._target_pos]
    centre = env.agent.rect.center
    delta = [int(target[k] - centre[k]) for k in range(2)]
    if env.arena.rect.width >= 84:  # the endless arena wraps around
        delta = [((d + 42) % 84) - 42 for d in delta]
    return np.array([_axis_action(delta[0]), _axis_action(delta[1])])


def perfect_turn(env, rng, obs, t):
    """Turn to face the target cell, then step forward; wait on the target."""
    x, y = env.agent.grid_position
    tx, ty = env._target_pos
    if (x, y) == (tx, ty):
        return 0
    facing = 270 if tx > x else 90 if tx < x else 0 if ty < y else 180
    if env.agent.rotation == facing:
        return 3
    return 1 if (facing - env.agent.rotation) % 360 == 90 else 2


def noisy(policy, random_policy, p_random):
    def act(env, rng, obs, t):
        return random_policy(env, rng, obs, t) if rng.random() < p_random else policy(env, rng, obs, t)

    return act


def fail_at(policy, random_policy, command):
    """Play perfectly until `command` (0-based) is the current one, then at random."""

    def act(env, rng, obs, t):
        last = command if command >= 0 else env.num_commands + command
        return random_policy(env, rng, obs, t) if env._current_command >= last else policy(env, rng, obs, t)

    return act


def _family(env_id: str, grid: bool, show: bool, endless: bool, variants: list[dict]) -> list[Scenario]:
    random_policy = random_turn if grid else random_pair
    perfect = perfect_turn if grid else perfect_pair
    short = env_id.replace("-v0", "")
    first_exec = 0 if not show else (40 if not endless else 4)
    scenarios = [
        Scenario(
            name=f"{short}_random",
            env_id=env_id,
            episodes=[
                Episode(seed=0, policy=random_policy, steps_after_done=30),
                Episode(seed=None, policy=random_policy),
                Episode(seed=1, policy=random_policy),
                Episode(seed=None, policy=random_policy),
                Episode(seed=2, policy=random_policy),
                Episode(seed=12345, policy=random_policy),
            ],
            frames=[(0, 0), (0, 1), (0, first_exec + 2), (1, 0)],
            policy_seed=1,
        ),
        Scenario(
            name=f"{short}_perfect",
            env_id=env_id,
            episodes=[
                Episode(seed=3, policy=perfect, max_steps=400 if endless else 2000),
                Episode(seed=None, policy=noisy(perfect, random_policy, 0.05), max_steps=300),
                Episode(seed=None, policy=fail_at(perfect, random_policy, -1), max_steps=300, steps_after_done=40),
                Episode(seed=7, policy=fail_at(perfect, random_policy, 2), max_steps=300),
            ],
            frames=[(0, 5), (0, 60), (2, 0)],
            policy_seed=2,
        ),
    ]
    scenarios.append(
        Scenario(
            name=f"{short}_seeds",
            env_id=env_id,
            episodes=[
                Episode(seed=seed, policy=noisy(perfect, random_policy, 0.15 if seed % 2 else 0.6), max_steps=300)
                for seed in range(100, 112)
            ],
            render_debug=False,
            policy_seed=3,
        )
    )
    for index, options in enumerate(variants):
        scenarios.append(
            Scenario(
                name=f"{short}_options{index}",
                env_id=env_id,
                episodes=[
                    Episode(seed=10 + index, policy=noisy(perfect, random_policy, 0.1), options=options, max_steps=300),
                    Episode(seed=None, policy=perfect, options=options, max_steps=300),
                    Episode(seed=None, policy=random_policy, options=options, max_steps=300, steps_after_done=10),
                ],
                frames=[(0, 0), (1, 3)],
                policy_seed=100 + index,
            )
        )
    return scenarios


_CONTINUOUS = [
    {"arena_size": 3, "allowed_commands": 4, "command_count": [3, 5], "agent_speed": 2.5, "agent_scale": 0.3},
    {
        "arena_size": 6,
        "command_count": [4],
        "explosion_duration": [3, 4],
        "explosion_delay": [10, 12],
        "visual_feedback": False,
        "reward_command_success": 0.25,
        "reward_command_failure": -0.5,
        "reward_episode_success": 2.0,
        "agent_speed": 4.7,
        "agent_scale": 0.4,
    },
    {"arena_size": 2, "allowed_commands": 6, "command_count": [6], "explosion_duration": [0], "explosion_delay": [0]},
]
_SHOW = [
    {"command_show_duration": [1, 2], "command_show_delay": [0, 2], "command_count": [4], "arena_size": 4},
    {"command_show_duration": [2], "command_show_delay": [0], "command_count": [3], "allowed_commands": 9},
]
_GRID = [
    {"arena_size": 3, "allowed_commands": 9, "command_count": [4, 6], "agent_scale": 0.5},
    {
        "arena_size": 6,
        "command_count": [5],
        "explosion_duration": [1, 3],
        "explosion_delay": [4, 8],
        "visual_feedback": False,
        "reward_command_success": 0.3,
        "reward_command_failure": -1.0,
        "reward_episode_success": 1.5,
    },
    {"allowed_commands": 4, "command_count": [2], "explosion_duration": [0], "explosion_delay": [0]},
]
_ENDLESS = [
    {"max_steps": 150, "allowed_commands": 5, "agent_speed": 2.5, "agent_scale": 0.3},
    {
        "initial_command_count": 3,
        "command_show_duration": [1, 2],
        "command_show_delay": [0, 1],
        "explosion_duration": [3],
        "explosion_delay": [14, 20],
        "visual_feedback": False,
        "reward_command_success": 0.2,
        "reward_command_failure": -0.3,
        "max_steps": 250,
    },
    {"command_show_duration": [2], "command_show_delay": [0], "explosion_duration": [0], "explosion_delay": [0], "max_steps": 120},
]


def _changing_options(env_id: str, grid: bool, first: dict, second: dict) -> Scenario:
    """Episodes whose options differ: the sprite drawn before a reset outlives it (stale sprite quirks)."""
    random_policy = random_turn if grid else random_pair
    perfect = perfect_turn if grid else perfect_pair
    return Scenario(
        name=f"{env_id.replace('-v0', '')}_changing_options",
        env_id=env_id,
        episodes=[
            Episode(seed=21, policy=noisy(perfect, random_policy, 0.3), options=first, max_steps=120),
            Episode(seed=None, policy=random_policy, options=second, max_steps=120),
            Episode(seed=22, policy=perfect, options=first, max_steps=120),
            Episode(seed=None, policy=noisy(perfect, random_policy, 0.2), options={}, max_steps=120),
        ],
        frames=[(1, 0), (1, 1), (1, 2), (2, 1), (3, 1)],
        policy_seed=7,
    )


SCENARIOS = [
    _changing_options("MortarMayhem-v0", False, {"arena_size": 6, "agent_scale": 0.4}, {"arena_size": 2, "agent_scale": 0.2}),
    _changing_options("MortarMayhem-Grid-v0", True, {"arena_size": 6}, {"arena_size": 3}),
    _changing_options("MortarMayhemB-v0", False, {"arena_size": 6, "agent_scale": 0.45}, {"arena_size": 3}),
    _changing_options("MortarMayhemB-Grid-v0", True, {"arena_size": 2}, {"arena_size": 6}),
    _changing_options("Endless-MortarMayhem-v0", False, {"agent_scale": 0.4, "max_steps": 100}, {"agent_scale": 0.25}),
    *_family("MortarMayhem-v0", grid=False, show=True, endless=False, variants=_CONTINUOUS + _SHOW),
    *_family("MortarMayhem-Grid-v0", grid=True, show=True, endless=False, variants=_GRID + _SHOW[:1]),
    *_family("MortarMayhemB-v0", grid=False, show=False, endless=False, variants=_CONTINUOUS),
    *_family("MortarMayhemB-Grid-v0", grid=True, show=False, endless=False, variants=_GRID),
    *_family("Endless-MortarMayhem-v0", grid=False, show=True, endless=True, variants=_ENDLESS),
]
