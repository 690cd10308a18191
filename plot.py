"""Learning curves and a final-results table from the TensorBoard runs of `ppo_trxl.py`, `ppo_gru.py` and
`ppo_mamba.py`.

Every training run writes its event files to `runs/{env_id}__{exp_name}__{seed}__{unix_time}/`. This
script groups the runs it is given by (env_id, exp_name) -- the experiment name is the algorithm -- and,
with `--group-by`, by settings read from each run's `args.json` (e.g. `--group-by precision`); it treats
the runs of a group as repetitions over seeds and warns when they differ in other settings. It writes

* one PNG per environment, `{out}/{env_id}__{tag}.png`: one line per algorithm, the mean over seeds of
  a scalar (default `charts/episodic_return_last100`, the return the training console prints) against
  environment steps, shaded by the standard error (or, with `--spread minmax`, the range) across seeds;
  "one seed" where there is no spread to show. Seeds are linearly interpolated onto a common step grid
  that spans the steps all of them logged, so runs logged at different steps average correctly. With a
  return tag, the held-out evaluation (`eval/return_mean`) is drawn beside each curve where the runs have
  it, and a random policy's return where benchmarks/results/random-policy/ holds the env's setting. The
  y-axis includes 0. An env whose figure cannot be drawn gets none, and an earlier one is removed;
* a markdown table, `{out}/results.md` (also printed), with one row per (env, algorithm), naming the
  reset parameters where they are not the env's defaults: mean +-
  standard error across seeds of each run's last `eval/*_mean` values (return, length and the env's
  numeric end-of-episode info such as success), the number of seeds and the final step. Runs without
  `eval/` scalars fall back to their last training-episode statistics (`charts/episodic_return`,
  `charts/episodic_length`, `episode/*`), and the table's source column says so.

Usage:
    python plot.py runs/*                                  # episodic return, plots/ and plots/results.md
    python plot.py "runs/MortarMayhem*" --tag eval/return_mean
    python plot.py runs --tag episode/success --spread minmax --smooth 0.6 --out figures
    python plot.py runs/*ppo_gru* runs/*ppo_trxl* --table results.md

A path may be a run directory, a glob pattern (quoted or expanded by the shell) or a directory that
holds run directories, such as `runs`.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import re
import sys
from collections import defaultdict
from dataclasses import dataclass, field

import matplotlib

matplotlib.use("Agg")  # no display needed; must precede the pyplot import
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.ticker import EngFormatter  # noqa: E402
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402

DEFAULT_TAG = "charts/episodic_return_last100"  # the return the training console prints
# What the y-axis shows, in words, for the tags a reader meets first.
TAG_NAMES = {
    "charts/episodic_return_last100": "training return (mean of the last 100 episodes)",
    "charts/episodic_return": "training return (episodes that ended in each iteration)",
    "eval/return_mean": "held-out return (mean over the evaluation episodes)",
}
RETURN_TAGS = tuple(TAG_NAMES)
EVAL_RETURN = "eval/return_mean"
# The return of a random policy per (env id, env_kwargs), written by benchmarks/random_policy.py.
RANDOM_POLICY = os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks", "results", "random-policy", "results.json")
# Run directories are named {env_id}__{exp_name}__{seed}__{unix_time} by the training scripts.
# A suffix -2, -3, ... marks runs that started in the same second.
RUN_NAME = re.compile(r"^(?P<env_id>.+?)__(?P<exp_name>.+)__(?P<seed>-?\d+)__(?P<time>\d+)(-\d+)?$")
# Settings that differ between the seeds of one experiment without making it another experiment.
NOT_SETTINGS = {"seed", "run_name", "config", "resume", "track", "wandb_project_name", "wandb_entity", "capture_video",
                "save_model", "checkpoint_interval", "checkpoint_minutes", "cuda", "total_timesteps", "num_iterations"}
# Where the table reads its final values: the evaluation scalars, else the training-episode statistics.
EVAL_PREFIX, EVAL_SUFFIX = "eval/", "_mean"
TRAINING_TAGS = {"return": "charts/episodic_return", "length": "charts/episodic_length"}
TRAINING_INFO_PREFIX = "episode/"


class PlotError(Exception):
    """A problem with the inputs, reported to the user without a traceback."""


@dataclass
class Run:
    path: str
    env_id: str
    exp_name: str
    seed: int
    scalars: dict[str, tuple[np.ndarray, np.ndarray]]  # tag -> (steps, values), sorted by step
    settings: dict = field(default_factory=dict)  # the run's args.json, where the script wrote one

    @property
    def group(self) -> tuple[str, str]:
        return self.env_id, self.exp_name


# ---------------------------------------------------------------------------------------------
# Finding and reading runs
# ---------------------------------------------------------------------------------------------
def find_run_dirs(patterns: list[str]) -> list[str]:
    """Expand paths and glob patterns into run directories (a directory of runs stands for its runs)."""
    found = []
    for pattern in patterns:
        for path in sorted(glob.glob(pattern)) or ([pattern] if os.path.exists(pattern) else []):
            if not os.path.isdir(path):
                continue
            if RUN_NAME.match(os.path.basename(os.path.normpath(path))):
                found.append(path)
            else:
                found += [
                    os.path.join(path, name)
                    for name in sorted(os.listdir(path))
                    if RUN_NAME.match(name) and os.path.isdir(os.path.join(path, name))
                ]
    unique = list(dict.fromkeys(os.path.normpath(p) for p in found))
    if not unique:
        raise PlotError(
            f"no runs matched {' '.join(patterns)!s}: expected directories named "
            "{env_id}__{exp_name}__{seed}__{unix_time} (as written to runs/ by the training scripts)"
        )
    return unique


def has_event_files(path: str) -> bool:
    return any(name.startswith("events.out.tfevents") for name in os.listdir(path))


def load_run(path: str, start_time: float | None = None) -> Run:
    """Read every scalar of a run; repeated steps keep the last value, non-finite values are dropped.

    With `start_time` (a unix time), each scalar is keyed by the wall-clock seconds since then instead of
    by its environment step, so curves can be drawn against wall time."""
    match = RUN_NAME.match(os.path.basename(path))
    accumulator = EventAccumulator(path, size_guidance={"scalars": 0})  # 0: keep every point
    accumulator.Reload()
    scalars = {}
    for tag in accumulator.Tags()["scalars"]:
        events = accumulator.Scalars(tag)
        if start_time is None:
            by_step = {event.step: event.value for event in events}
        else:
            by_step = {event.wall_time - start_time: event.value for event in events}
        steps = np.array(sorted(by_step), dtype=np.float64)
        values = np.array([by_step[s] for s in sorted(by_step)], dtype=np.float64)
        finite = np.isfinite(values)
        if finite.any():
            scalars[tag] = (steps[finite], values[finite])
    settings = {}
    if os.path.isfile(os.path.join(path, "args.json")):
        with open(os.path.join(path, "args.json")) as f:
            settings = json.load(f)
    return Run(path, match["env_id"], match["exp_name"], int(match["seed"]), scalars, settings)


def load_runs(run_dirs: list[str]) -> list[Run]:
    with_events = [path for path in run_dirs if has_event_files(path)]
    if not with_events:
        raise PlotError(f"no TensorBoard event files (events.out.tfevents.*) in {', '.join(run_dirs)}")
    for path in sorted(set(run_dirs) - set(with_events)):
        warn(f"skipping {path}: no event files")
    runs = [load_run(path) for path in with_events]
    if not any(run.scalars for run in runs):
        raise PlotError(f"the event files in {', '.join(with_events)} hold no scalars")
    return runs


def group_runs(runs: list[Run], group_by: list[str] = ()) -> dict[tuple[str, str], list[Run]]:
    """Runs of one (env_id, exp_name) and the same values of the `group_by` settings are seeds of one
    experiment; a warning names the settings that still differ inside a group and how to separate them."""
    groups = defaultdict(list)
    for run in sorted(runs, key=lambda r: (r.env_id, r.exp_name, r.seed, r.path)):
        label = " ".join([run.exp_name, *(f"{key}={run.settings.get(key, '?')}" for key in group_by)])
        groups[(run.env_id, label)].append(run)
    for (env_id, label), members in groups.items():
        seeds = [run.seed for run in members]
        repeated = sorted({s for s in seeds if seeds.count(s) > 1})
        if repeated:
            warn(f"{env_id} / {label}: seed(s) {repeated} appear in several runs; each run counts as one repetition")
        keys = sorted({key for run in members for key in run.settings} - NOT_SETTINGS - set(group_by))
        differing = [key for key in keys if len({json.dumps(run.settings.get(key)) for run in members}) > 1]
        if differing:
            warn(f"{env_id} / {label}: its runs differ in {', '.join(differing)} but are averaged as seeds; "
                 f"separate them with --group-by {','.join(differing)}")
    return dict(groups)


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr)


def env_kwargs(runs: list[Run]) -> str | None:
    """The reset parameters the runs share, as canonical JSON ('{}': the env's defaults); None if they differ
    or a run has no readable args.json."""
    found = set()
    for run in runs:
        try:
            found.add(json.dumps(json.loads(run.settings.get("env_kwargs", "{}")), sort_keys=True))
        except (TypeError, ValueError):
            return None
    return found.pop() if len(found) == 1 else None


def random_policy_return(env_id: str, kwargs: str | None, path: str = RANDOM_POLICY) -> float | None:
    """The random policy's mean return for an env id and its reset parameters, where it was measured."""
    if kwargs is None or not os.path.isfile(path):
        return None
    try:
        with open(path) as f:
            rows = json.load(f)["settings"]
        for row in rows:
            if row["env_id"] == env_id and row["env_kwargs"] == kwargs and isinstance(row["return_mean"], (int, float)):
                return float(row["return_mean"])
    except (ValueError, KeyError, TypeError):
        warn(f"{path} is not a table of random-policy returns; no random-policy line")
    return None


# ---------------------------------------------------------------------------------------------
# Learning curves
# ---------------------------------------------------------------------------------------------
def smooth(values: np.ndarray, weight: float) -> np.ndarray:
    """TensorBoard-style exponential moving average, debiased at the start (weight 0: unchanged)."""
    if weight <= 0:
        return values
    out, last = np.empty_like(values), 0.0
    for i, value in enumerate(values):
        last = weight * last + (1 - weight) * value
        out[i] = last / (1 - weight ** (i + 1))
    return out


def aggregate(curves: list[tuple[np.ndarray, np.ndarray]], spread: str):
    """Interpolate the seeds' curves onto the union of their steps within the range all of them cover.

    Returns (steps, mean, lower, upper), or None when the curves share no step range."""
    start = max(steps[0] for steps, _ in curves)
    end = min(steps[-1] for steps, _ in curves)
    if start > end:
        return None
    grid = np.unique(np.concatenate([steps for steps, _ in curves]))
    grid = grid[(grid >= start) & (grid <= end)]
    ys = np.stack([np.interp(grid, steps, values) for steps, values in curves])
    mean = ys.mean(axis=0)
    if spread == "minmax":
        return grid, mean, ys.min(axis=0), ys.max(axis=0)
    se = ys.std(axis=0, ddof=1) / np.sqrt(len(ys)) if len(ys) > 1 else np.zeros_like(mean)
    return grid, mean, mean - se, mean + se


def plot_env(
    env_id: str, groups: dict[str, list[Run]], tag: str, spread: str, smoothing: float, path: str, xlabel: str = "environment steps"
) -> bool:
    """Draw one learning-curve figure for an env; returns False when no algorithm logged the tag.

    With a return tag, each algorithm's held-out evaluation is drawn beside its curve where its runs have one,
    and the random policy's return where benchmarks/results/random-policy/ holds the env's setting. The
    y-axis starts at 0 (or below, where values are negative), so that noise does not look like collapse."""
    fig, ax = plt.subplots(figsize=(8, 5))
    drawn, seeds, lows, highs, evaluated = 0, set(), [0.0], [0.0], False
    evaluate = tag in RETURN_TAGS and tag != EVAL_RETURN
    for exp_name, runs in groups.items():
        curves = [(run.scalars[tag][0], smooth(run.scalars[tag][1], smoothing)) for run in runs if tag in run.scalars]
        if len(curves) < len(runs):
            warn(f"{env_id} / {exp_name}: {len(runs) - len(curves)} of {len(runs)} runs did not log {tag}")
        if not curves:
            continue
        result = aggregate(curves, spread)
        if result is None:
            warn(f"{env_id} / {exp_name}: the seeds' {tag} curves share no step range; not plotted")
            continue
        steps, mean, lower, upper = result
        longest = max(s[-1] for s, _ in curves)
        if steps[-1] < longest:
            warn(f"{env_id} / {exp_name}: curve cut at step {steps[-1]:,.0f}, the last step all seeds reached (longest run: {longest:,.0f})")
        label = f"{exp_name} ({'one seed' if len(curves) == 1 else f'{len(curves)} seeds'})"
        (line,) = ax.plot(steps, mean, label=label, marker="o" if len(steps) == 1 else None)
        if len(curves) > 1:
            ax.fill_between(steps, lower, upper, color=line.get_color(), alpha=0.2, linewidth=0)
        seeds.add(len(curves))
        lows.append(float(np.min(lower)))
        highs.append(float(np.max(upper)))
        evaluations = [run.scalars[EVAL_RETURN] for run in runs if EVAL_RETURN in run.scalars] if evaluate else []
        if evaluations and (result := aggregate(evaluations, spread)) is not None:
            steps, mean, lower, upper = result
            ax.plot(steps, mean, linestyle="--", marker="o", markersize=4, color=line.get_color(),
                    label=f"{exp_name}: held-out evaluation ({'one seed' if len(evaluations) == 1 else f'{len(evaluations)} seeds'})")
            if len(evaluations) > 1:
                ax.fill_between(steps, lower, upper, color=line.get_color(), alpha=0.1, linewidth=0)
            lows.append(float(np.min(lower)))
            highs.append(float(np.max(upper)))
            evaluated = True
        drawn += 1
    if drawn:
        if tag in RETURN_TAGS:
            members = [run for runs in groups.values() for run in runs]
            reference = random_policy_return(env_id, env_kwargs(members))
            if reference is not None:
                ax.axhline(reference, color="gray", linestyle=":", label=f"random policy ({reference:.3f})")
                highs.append(reference)
        top, bottom = max(highs), min(lows)
        ax.set_ylim(bottom - 0.05 * (top - bottom or 1), top + 0.05 * (top - bottom or 1))
        if seeds == {1}:
            statistic = "one seed per curve"
        else:
            band = "standard error" if spread == "se" else "min / max"
            statistic = f"mean over seeds, shaded: {band} across seeds"
        smoothed = f", EMA smoothing {smoothing:g}" if smoothing > 0 else ""
        ax.set_title(f"{env_id}: {tag}\n{statistic}{smoothed}", fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(TAG_NAMES.get(tag, tag) + ("\ndashed: held-out evaluation (eval/return_mean)" if evaluated else ""))
        ax.xaxis.set_major_formatter(EngFormatter(sep=""))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=9)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
    plt.close(fig)
    return drawn > 0


# ---------------------------------------------------------------------------------------------
# Final-results table
# ---------------------------------------------------------------------------------------------
def final_values(run: Run, source: str) -> tuple[dict[str, float], float]:
    """The last value of each metric (return, length, info keys) of a run, and the step of its last return."""
    if source == "eval":
        tags = {tag[len(EVAL_PREFIX) : -len(EVAL_SUFFIX)]: tag for tag in run.scalars if tag.startswith(EVAL_PREFIX) and tag.endswith(EVAL_SUFFIX)}
    else:
        tags = {name: tag for name, tag in TRAINING_TAGS.items() if tag in run.scalars}
        tags |= {tag[len(TRAINING_INFO_PREFIX) :]: tag for tag in run.scalars if tag.startswith(TRAINING_INFO_PREFIX)}
    values = {name: float(run.scalars[tag][1][-1]) for name, tag in tags.items()}
    step_tag = tags.get("return") or next(iter(tags.values()), None)
    return values, (float(run.scalars[step_tag][0][-1]) if step_tag else float("nan"))


def mean_se(values: list[float]) -> str:
    if not values:
        return "-"
    mean = float(np.mean(values))
    if len(values) == 1:
        return f"{mean:.3f}"
    return f"{mean:.3f} ± {float(np.std(values, ddof=1)) / np.sqrt(len(values)):.3f}"


def results_table(groups: dict[tuple[str, str], list[Run]]) -> str:
    rows = []
    for (env_id, exp_name), runs in groups.items():
        eval_runs = [run for run in runs if f"{EVAL_PREFIX}return{EVAL_SUFFIX}" in run.scalars]
        if eval_runs:
            source, used = "eval", eval_runs
            if len(eval_runs) < len(runs):
                warn(f"{env_id} / {exp_name}: {len(runs) - len(eval_runs)} run(s) without eval/ scalars left out of the table")
        else:
            source, used = "training episodes (no eval/ scalars)", [run for run in runs if TRAINING_TAGS["return"] in run.scalars]
        if not used:
            warn(f"{env_id} / {exp_name}: no eval/ scalars and no finished training episode; not in the table")
            continue
        finals = [final_values(run, "eval" if source == "eval" else "training") for run in used]
        kwargs = env_kwargs(used)
        setting = "the env's defaults" if kwargs == "{}" else "differ between runs" if kwargs is None else f"`{kwargs}`"
        rows.append((env_id, exp_name, setting, len(used), [step for _, step in finals], source, [values for values, _ in finals]))

    # Columns: return, length, then every info key any row has (alphabetical).
    keys = sorted({key for *_, per_run in rows for values in per_run for key in values} - {"return", "length"})
    columns = ["return", "length", *keys]
    lines = [
        "| env | reset parameters | algorithm | seeds | final step | source | " + " | ".join(columns) + " |",
        "|---|---|---|---:|---:|---|" + "---:|" * len(columns),
    ]
    for env_id, exp_name, setting, n, steps, source, per_run in rows:
        low, high = min(steps), max(steps)
        step = f"{low:,.0f}" if low == high else f"{low:,.0f}–{high:,.0f}"
        cells = [mean_se([values[key] for values in per_run if key in values]) for key in columns]
        lines.append(f"| {env_id} | {setting} | {exp_name} | {n} | {step} | {source} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Learning-curve PNGs (one per env) and a final-results markdown table from TensorBoard runs.",
        epilog="Example: python plot.py 'runs/*' --tag eval/return_mean",
    )
    parser.add_argument("paths", nargs="+", help="run directories, glob patterns, or directories holding runs (e.g. runs)")
    parser.add_argument("--tag", default=DEFAULT_TAG, help=f"scalar to plot (default: {DEFAULT_TAG})")
    parser.add_argument("--spread", choices=["se", "minmax"], default="se", help="shaded band: standard error across seeds (default) or min / max")
    parser.add_argument("--smooth", type=float, default=0.0, help="EMA weight in [0, 1) applied to each seed before averaging (default: 0, none)")
    parser.add_argument("--out", default="plots", help="directory for the PNGs and the table (default: plots)")
    parser.add_argument("--table", default=None, help="path of the markdown table (default: {out}/results.md)")
    parser.add_argument("--group-by", default="", help="comma-separated settings (args of the runs, e.g. precision,init_lr) "
                        "that separate runs of one env and algorithm into experiments (default: none)")
    return parser


def run(args: argparse.Namespace) -> list[str]:
    """Write the figures and the table; returns the paths written."""
    runs = load_runs(find_run_dirs(args.paths))
    if args.tag == DEFAULT_TAG and not any(DEFAULT_TAG in r.scalars for r in runs):
        args.tag = "charts/episodic_return"  # runs written before the last-100 mean was logged
        warn(f"no run logged {DEFAULT_TAG}; plotting {args.tag}")
    if not any(args.tag in r.scalars for r in runs):
        available = sorted({tag for r in runs for tag in r.scalars})
        raise PlotError(f"no run logged the tag {args.tag!r}; tags found: {', '.join(available)}")
    groups = group_runs(runs, [key.strip().replace("-", "_") for key in args.group_by.split(",") if key.strip()])

    os.makedirs(args.out, exist_ok=True)
    written = []
    by_env = defaultdict(dict)
    for (env_id, exp_name), members in groups.items():
        by_env[env_id][exp_name] = members
    for env_id, env_groups in by_env.items():
        path = os.path.join(args.out, f"{env_id}__{args.tag.replace('/', '_')}.png")
        if plot_env(env_id, env_groups, args.tag, args.spread, args.smooth, path):
            written.append(path)
        elif os.path.exists(path):
            os.remove(path)  # a figure of earlier runs would pass for one of these
            warn(f"{env_id}: no curve of {args.tag} to draw; removed {path}, which showed earlier runs")
        else:
            warn(f"{env_id}: no curve of {args.tag} to draw; no figure")

    table = results_table(groups)
    table_path = args.table or os.path.join(args.out, "results.md")
    if os.path.dirname(table_path):
        os.makedirs(os.path.dirname(table_path), exist_ok=True)
    with open(table_path, "w") as f:
        f.write(table)
    written.append(table_path)
    print(table)
    return written


def main(argv: list[str] | None = None) -> list[str]:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not 0 <= args.smooth < 1:
        parser.error(f"--smooth must be in [0, 1), got {args.smooth}")
    try:
        written = run(args)
    except PlotError as error:
        parser.error(str(error))  # prints usage and the message, exits with status 2
    print("wrote " + ", ".join(written))
    return written


if __name__ == "__main__":
    main()
