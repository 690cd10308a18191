"""Record golden fixtures from the reference implementation (memory-gym 1.0.2).

Run with the reference venv, from the repository root:

    SDL_VIDEODRIVER=dummy /tmp/mgvenv/bin/python tools/record_golden.py [--family NAME] [--scenario NAME]

Scenario lists live in `tools/golden_scenarios/<family>.py` (a module-level `SCENARIOS` list of
`golden_format.Scenario`); every such module is discovered. Each scenario is played on one env
instance, episode after episode, recording per step the action, observation hash, reward, flags,
info and (optionally) the debug-render hash, plus the full frames it asks for. Fixtures are
written to `tests/envs/fixtures/<family>/<scenario>.json.gz` (format: `golden_format`).
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
from pathlib import Path

import numpy as np

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
TOOLS = Path(__file__).resolve().parent
sys.path.insert(0, str(TOOLS))

from golden_format import Scenario, encode_image, obs_hash, save_fixture, to_jsonable  # noqa: E402


def discover(family: str | None = None) -> dict[str, list[Scenario]]:
    """Family name -> scenarios, one module per family under `golden_scenarios/` (only `family` if given)."""
    families = {}
    for path in sorted((TOOLS / "golden_scenarios").glob("*.py")):
        if path.name.startswith("_") or (family and path.stem != family):
            continue
        spec = importlib.util.spec_from_file_location(f"golden_scenarios.{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        families[path.stem] = module.SCENARIOS
    return families


def record(family: str, scenario: Scenario) -> dict:
    import gymnasium as gym
    import memory_gym  # noqa: F401  (registers the reference ids)

    env = gym.make(scenario.env_id, render_mode="debug_rgb_array")
    policy_rng = np.random.default_rng(scenario.policy_seed)
    wanted = set(scenario.frames)
    episodes, frames = [], []

    def observe(episode_index: int, steps: int, obs) -> str | None:
        """Render the debug picture (once, as its render has side effects), keep frames, return its hash."""
        wanted_frame = (episode_index, steps) in wanted
        if not (scenario.render_debug or wanted_frame):
            return None
        debug = env.render()
        if wanted_frame:
            visual = obs["visual_observation"] if isinstance(obs, dict) else obs
            frames.append({"episode": episode_index, "step": steps, "obs": encode_image(visual), "debug": encode_image(debug)})
        return obs_hash(debug) if scenario.render_debug else None

    for index, episode in enumerate(scenario.episodes):
        kwargs = {"options": dict(episode.options)}
        if episode.seed is not None:
            kwargs["seed"] = episode.seed
        obs, info = env.reset(**kwargs)
        reset = {"obs": obs_hash(obs), "info": to_jsonable(info), "debug": observe(index, 0, obs)}
        steps = {key: [] for key in ("action", "obs", "reward", "terminated", "truncated", "info", "debug")}
        after_done = None
        t = 0
        while t < episode.max_steps and (after_done is None or after_done < episode.steps_after_done):
            action = episode.policy(env.unwrapped, policy_rng, obs, t)
            obs, reward, terminated, truncated, info = env.step(action)
            t += 1
            steps["action"].append(to_jsonable(np.asarray(action)))
            steps["obs"].append(obs_hash(obs))
            steps["reward"].append(to_jsonable(reward))
            steps["terminated"].append(bool(terminated))
            steps["truncated"].append(bool(truncated))
            steps["info"].append(to_jsonable(info))
            steps["debug"].append(observe(index, t, obs))
            if after_done is not None:
                after_done += 1
            elif terminated or truncated:
                after_done = 0
        episodes.append({"seed": episode.seed, "options": to_jsonable(episode.options), "reset": reset, "steps": steps})
    env.close()
    return {
        "family": family,
        "name": scenario.name,
        "env_id": scenario.env_id,
        "render_debug": scenario.render_debug,
        "episodes": episodes,
        "frames": frames,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", help="record only this family (module name under golden_scenarios/)")
    parser.add_argument("--scenario", help="record only the scenario with this name")
    args = parser.parse_args()
    families = discover(args.family)
    if args.family and not families:
        raise SystemExit(f"no scenario module tools/golden_scenarios/{args.family}.py")
    for family, scenarios in families.items():
        for scenario in scenarios:
            if args.scenario and scenario.name != args.scenario:
                continue
            fixture = record(family, scenario)
            path = save_fixture(fixture)
            n_steps = sum(len(e["steps"]["action"]) for e in fixture["episodes"])
            print(f"{family}/{scenario.name}: {len(fixture['episodes'])} episodes, {n_steps} steps -> {path}")


if __name__ == "__main__":
    main()
