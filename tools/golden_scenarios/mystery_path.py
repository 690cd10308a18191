"""Golden scenarios for the Mystery Path family (recorded by `tools/record_golden.py`).

Policies read the reference env's state (its path nodes, the agent's rect or grid index) to follow
the path, to step off it on purpose, or play randomly; replays use the recorded actions only.

Run directly with the reference venv to record the path-generation fixture (1,000 seeds):

    SDL_VIDEODRIVER=dummy /tmp/mgvenv/bin/python tools/golden_scenarios/mystery_path.py
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from golden_format import FIXTURES, Episode, Scenario  # noqa: E402

def random_pair(env, rng, obs, t):
    return rng.integers(0, 3, 2)


def random_turn(env, rng, obs, t):
    return int(rng.integers(0, 4))


def _next_cell(env) -> tuple[int, int] | None:
    """The path cell after the one under the agent (finite envs: the path list runs goal -> start)."""
    cells = [(n.x, n.y) for n in env.mystery_path.path]
    here = tuple(int(v) for v in env.normalized_agent_position)
    if here not in cells:
        return None
    index = cells.index(here)
    return cells[index - 1] if index > 0 else None


def follow_pair(env, rng, obs, t):
    """Step towards the next path tile (the agent stays inside path tiles all the way)."""
    target = _next_cell(env)
    if target is None:
        return np.array([0, 0])
    x, y = (int(v) for v in env.normalized_agent_position)
    if target[0] != x:
        return np.array([2 if target[0] > x else 1, 0])
    return np.array([0, 2 if target[1] > y else 1])


def follow_turn(env, rng, obs, t):
    """Turn to face the next path cell, then step forward."""
    target = _next_cell(env)
    if target is None:
        return 0
    x, y = env.agent.grid_position
    facing = 270 if target[0] > x else 90 if target[0] < x else 0 if target[1] < y else 180
    if env.agent.rotation == facing:
        return 3
    return 1 if (facing - env.agent.rotation) % 360 == 90 else 2


def follow_endless(env, rng, obs, t):
    """Endless: right / up / down towards the node after the current one (no-op if it lies west)."""
    node, nxt = env.current_node, env.current_node.next_node
    if nxt.x > node.x:
        return 1
    if nxt.y != node.y:
        return 2 if nxt.y < node.y else 3
    return 0


def random_endless(env, rng, obs, t):
    return int(rng.integers(0, 4))


def noisy(policy, random_policy, p_random):
    def act(env, rng, obs, t):
        return random_policy(env, rng, obs, t) if rng.random() < p_random else policy(env, rng, obs, t)

    return act


def endless_with_frontier_falls(every: int):
    """Follow the endless path, and every `every` steps step off it sideways at the frontier (survivable)."""

    def act(env, rng, obs, t):
        tx, ty = (int(v) for v in env.normalized_agent_position)
        if t % every == every - 1 and tx >= env.max_x_reached and not env.is_off_path:
            cells = {(n.x, n.y) for segment in env.endless_path.path for n in segment}
            for action, cell in ((2, (tx, ty - 1)), (3, (tx, ty + 1))):
                if cell not in cells:
                    return action
        return follow_endless(env, rng, obs, t)

    return act


def idle(env, rng, obs, t):
    return 0 if isinstance(env.action_space.sample(), (int, np.integer)) else np.array([0, 0])


def _finite(env_id: str, grid: bool, variants: list[dict]) -> list[Scenario]:
    random_policy = random_turn if grid else random_pair
    follow = follow_turn if grid else follow_pair
    short = env_id.replace("-v0", "")
    scenarios = [
        Scenario(
            name=f"{short}_random",
            env_id=env_id,
            episodes=[
                Episode(seed=0, policy=random_policy, steps_after_done=20),
                Episode(seed=None, policy=random_policy, max_steps=200),
                Episode(seed=1, policy=random_policy, max_steps=150),
                Episode(seed=12345, policy=random_policy, max_steps=150),
            ],
            frames=[(0, 0), (0, 1), (0, 40), (1, 0)],
            policy_seed=1,
        ),
        Scenario(
            name=f"{short}_follow",
            env_id=env_id,
            episodes=[
                Episode(seed=3, policy=follow, steps_after_done=5),
                Episode(seed=None, policy=noisy(follow, random_policy, 0.05), steps_after_done=3),
                Episode(seed=None, policy=noisy(follow, random_policy, 0.1)),
                Episode(seed=7, policy=noisy(follow, random_policy, 0.03)),
                Episode(seed=8, policy=follow),
                Episode(seed=9, policy=noisy(follow, random_policy, 0.05)),
            ],
            frames=[(0, 5), (0, 12), (2, 0)],
            policy_seed=2,
        ),
    ]
    for index, options in enumerate(variants):
        scenarios.append(
            Scenario(
                name=f"{short}_options{index}",
                env_id=env_id,
                episodes=[
                    Episode(seed=20 + index, policy=noisy(follow, random_policy, 0.08), options=options, max_steps=300),
                    Episode(seed=None, policy=follow, options=options, max_steps=300, steps_after_done=4),
                    Episode(seed=None, policy=random_policy, options=options, max_steps=150),
                    Episode(seed=40 + index, policy=noisy(follow, random_policy, 0.15), options=options, max_steps=300),
                ],
                frames=[(0, 0), (0, 7), (1, 3)],
                policy_seed=100 + index,
            )
        )
    return scenarios


_CONTINUOUS = [
    {
        "show_origin": True,
        "show_goal": True,
        "cardinal_origin_choice": [2],
        "reward_goal": 2.5,
        "reward_path_progress": 0.25,
        "reward_step": -0.01,
        "max_steps": 180,
    },
    {
        "cardinal_origin_choice": [1, 3],
        "visual_feedback": False,
        "show_goal": True,
        "agent_scale": 0.3,
        "agent_speed": 4.0,
        "reward_fall_off": -0.5,
    },
    {"agent_speed": 2.5, "show_origin": True, "cardinal_origin_choice": [0, 3, 3], "max_steps": 400},
    {"agent_scale": 0.5, "show_goal": True, "max_steps": 60},
]
_GRID = [
    {
        "show_origin": True,
        "show_goal": True,
        "cardinal_origin_choice": [0],
        "reward_path_progress": 0.2,
        "reward_fall_off": -0.1,
        "max_steps": 60,
    },
    {"visual_feedback": False, "agent_scale": 0.5, "cardinal_origin_choice": [3, 1], "reward_goal": 5.0, "reward_step": -0.05},
]


def _endless() -> list[Scenario]:
    env_id = "Endless-MysteryPath-v0"
    follow = follow_endless
    scenarios = [
        Scenario(
            name="Endless-MysteryPath_random",
            env_id=env_id,
            episodes=[
                Episode(seed=0, policy=random_endless, steps_after_done=25),
                *[Episode(seed=None, policy=random_endless) for _ in range(8)],
                Episode(seed=1, policy=idle, steps_after_done=5),
                Episode(seed=12345, policy=random_endless),
            ],
            frames=[(0, 0), (0, 1), (0, 5), (1, 0)],
            policy_seed=1,
        ),
        Scenario(
            name="Endless-MysteryPath_follow",
            env_id=env_id,
            episodes=[
                Episode(seed=3, policy=follow, max_steps=700),
                Episode(seed=None, policy=noisy(follow, random_endless, 0.02), max_steps=600, steps_after_done=10),
                Episode(seed=5, policy=endless_with_frontier_falls(97), max_steps=1600),
                Episode(seed=None, policy=noisy(follow, random_endless, 0.05), max_steps=600),
            ],
            frames=[(0, 30), (0, 250), (2, 400)],
            policy_seed=2,
        ),
        Scenario(
            # Paths with a westward step (segment 0 for seeds 811 and 1548, segment 1 for 156): the
            # follower gets stuck there (there is no "left") and the ground truth keeps its value.
            name="Endless-MysteryPath_westward",
            env_id=env_id,
            episodes=[
                Episode(seed=811, policy=follow, max_steps=300, steps_after_done=5),
                Episode(seed=1548, policy=follow, max_steps=300),
                Episode(seed=156, policy=follow, max_steps=300),
            ],
            frames=[(0, 20)],
            policy_seed=3,
        ),
    ]
    variants = [
        {"show_background": True, "show_stamina": True, "camera_offset_scale": 2.3, "stamina_level": 30, "reward_path_progress": 0.2},
        {"show_background": True, "camera_offset_scale": 0.0, "agent_speed": 2.5, "reward_fall_off": -1.0, "max_steps": 300},
        {"show_past_path": False, "show_stamina": True, "visual_feedback": False, "stamina_level": 8, "reward_step": -0.01},
        {"camera_offset_scale": 7.5, "show_background": True, "show_origin": True, "agent_scale": 0.3},
        {"camera_offset_scale": 5.5, "show_stamina": True, "agent_speed": 4.0, "max_steps": 250},
        {"camera_offset_scale": -1.0, "show_background": True, "stamina_level": 12},
    ]
    for index, options in enumerate(variants):
        scenarios.append(
            Scenario(
                name=f"Endless-MysteryPath_options{index}",
                env_id=env_id,
                episodes=[
                    Episode(seed=20 + index, policy=noisy(follow, random_endless, 0.03), options=options, max_steps=400),
                    Episode(seed=None, policy=endless_with_frontier_falls(41), options=options, max_steps=400),
                    Episode(seed=None, policy=random_endless, options=options, max_steps=200, steps_after_done=8),
                ],
                frames=[(0, 0), (0, 9), (1, 60)],
                policy_seed=100 + index,
            )
        )
    return scenarios


SCENARIOS = [
    *_finite("MysteryPath-v0", False, _CONTINUOUS),
    *_finite("MysteryPath-Grid-v0", True, _GRID),
    *_endless(),
]


def record_paths(num_seeds: int = 1000) -> Path:
    """Path, walls and the next two draws after `MysteryPath-v0.reset(seed=s)`, for s < num_seeds."""
    import gymnasium as gym
    import memory_gym  # noqa: F401

    env = gym.make("MysteryPath-v0").unwrapped
    ends = np.zeros((num_seeds, 2, 2), dtype=np.int8)
    cells = np.full((num_seeds, 49, 2), -1, dtype=np.int8)
    walls = np.zeros(num_seeds, dtype=np.uint64)
    after = np.zeros((num_seeds, 2), dtype=np.uint64)
    for seed in range(num_seeds):
        env.reset(seed=seed)
        ends[seed] = [env.start, env.end]
        path = [(n.x, n.y) for n in reversed(env.mystery_path.path)]
        cells[seed, : len(path)] = path
        walls[seed] = sum(1 << (n.x * 7 + n.y) for n in env.mystery_path.wall_nodes)
        after[seed] = env.np_random.integers(0, 2**32, 2)
    env.close()
    path = FIXTURES / "mystery_path" / "paths.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, start_end=ends, cells=cells, walls=walls, draws_after=after)
    return path


if __name__ == "__main__":
    print(record_paths())
