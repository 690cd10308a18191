"""The return of a uniformly random policy on every Memory Gym id and on the presets' settings.

A learning curve means little without the level that no learning reaches: `plot.py` draws these
figures as a "random policy" line wherever the runs' env id and `--env-kwargs` match a row. For each
setting, a native vector env of `--episodes` envs plays uniformly random actions (seeded) until each
env's first episode has ended.

    python benchmarks/random_policy.py [--episodes 200] [--out benchmarks/results/random-policy]
    python benchmarks/random_policy.py --settings 'MortarMayhem-Grid-v0={"command_count": [3]}' --out /tmp/random
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shlex
import sys
import time
import tomllib

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("OMP_NUM_THREADS", "1")

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

import envs  # noqa: E402,F401
from envs.core import NativeEnv  # noqa: E402


def settings() -> list[tuple[str, str]]:
    """(env id, env_kwargs as canonical JSON): every native id with its defaults, then every preset's setting."""
    ids = sorted(env_id for env_id, spec in gym.registry.items()
                 if isinstance(spec.entry_point, type) and issubclass(spec.entry_point, NativeEnv)
                 and spec.entry_point.__module__.startswith("envs."))
    found = [(env_id, "{}") for env_id in ids]
    for path in sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*", "*.toml"))):
        with open(path, "rb") as f:
            preset = tomllib.load(f)
        setting = (preset.get("env_id", "MortarMayhem-Grid-v0"), canonical(preset.get("env_kwargs", "{}")))
        if setting[0] in ids and setting not in found:
            found.append(setting)
    return found


def canonical(env_kwargs: str) -> str:
    """One spelling of a JSON object of reset parameters (sorted keys), to match runs against rows."""
    return json.dumps(json.loads(env_kwargs), sort_keys=True)


def play(env_id: str, env_kwargs: str, episodes: int, seed: int = 0) -> dict:
    """Mean and standard error of the return, length and numeric end-of-episode info of random play: the
    first episode of each of `episodes` envs, so that long episodes count as often as short ones."""
    vector = gym.make_vec(env_id, num_envs=episodes, **json.loads(env_kwargs))
    vector.action_space.seed(seed)
    vector.reset(seed=seed)
    running, length, finished = np.zeros(episodes), np.zeros(episodes, dtype=np.int64), {}
    while len(finished) < episodes:
        _, reward, terminated, truncated, info = vector.step(vector.action_space.sample())
        running += reward
        length += 1
        for i in np.flatnonzero(terminated | truncated):
            if i in finished:
                continue
            finished[i] = {"return": float(running[i]), "length": int(length[i])}
            for key, value in info.get("final_info", {}).items():
                if not key.startswith("_") and key not in ("reward", "length") and np.ndim(value[i]) == 0 and np.isfinite(value[i]):
                    finished[i][key] = float(value[i])
    vector.close()
    summary = {"env_id": env_id, "env_kwargs": env_kwargs, "episodes": len(finished)}
    for key in sorted({k for e in finished.values() for k in e}):
        values = np.array([e[key] for e in finished.values() if key in e])
        summary[f"{key}_mean"] = float(values.mean())
        summary[f"{key}_se"] = float(values.std(ddof=1) / np.sqrt(len(values)))
    return summary


def chosen_setting(text: str) -> tuple[str, str]:
    """One `--settings` item, ID=JSON, as (env id, canonical env_kwargs); refused in one line unless the env
    accepts it."""
    env_id, _, env_kwargs = text.partition("=")
    if env_id not in gym.registry:
        raise SystemExit(f"error: unknown env id {env_id!r} in --settings; give ID=JSON, e.g. 'MortarMayhem-Grid-v0={{}}'")
    try:
        kwargs = json.loads(env_kwargs or "{}")
    except json.JSONDecodeError as error:
        raise SystemExit(f"error: the reset parameters of {env_id} in --settings are not JSON ({error})")
    if not isinstance(kwargs, dict):
        raise SystemExit(f"error: the reset parameters of {env_id} in --settings must be a JSON object, got {env_kwargs}")
    try:  # the env checks its own reset parameters
        gym.make_vec(env_id, num_envs=1, **kwargs).close()
    except (ValueError, TypeError) as error:
        raise SystemExit(f"error: --settings {text}: {error}")
    return env_id, canonical(json.dumps(kwargs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=200, help="episodes per setting (default: 200)")
    parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results", "random-policy"),
                        help="the results folder (default: benchmarks/results/random-policy)")
    parser.add_argument("--settings", nargs="+", metavar="ID=JSON", default=[],
                        help="only these settings, each an id with its reset parameters (default: every native id and "
                             "every preset's setting)")
    options = parser.parse_args()
    chosen = [chosen_setting(text) for text in options.settings] or settings()
    os.makedirs(options.out, exist_ok=True)
    rows, lines = [], ["| env | env_kwargs | episodes | return | success | length |", "|---|---|---:|---:|---:|---:|"]
    for env_id, env_kwargs in chosen:
        start = time.time()
        row = play(env_id, env_kwargs, options.episodes)
        rows.append(row)
        success = f"{row['success_mean']:.3f} ± {row['success_se']:.3f}" if "success_mean" in row else "-"
        lines.append(f"| {env_id} | `{env_kwargs}` | {row['episodes']} | {row['return_mean']:.3f} ± {row['return_se']:.3f} "
                     f"| {success} | {row['length_mean']:.1f} |")
        print(lines[-1], f"({time.time() - start:.0f} s)", flush=True)
    with open(os.path.join(options.out, "results.json"), "w") as f:
        json.dump({"episodes_per_setting": options.episodes, "settings": rows}, f, indent=1)
    with open(os.path.join(options.out, "results.md"), "w") as f:
        f.write("Return of a uniformly random policy (mean ± standard error over episodes).\n\n" + "\n".join(lines) + "\n")
    with open(os.path.join(options.out, "command.txt"), "w") as f:
        f.write(f"cd {os.getcwd()}\n{shlex.join([sys.executable, *sys.argv])}\n")


if __name__ == "__main__":
    main()
