"""Learning benchmark: train a grid of configurations x environments x seeds and compare how they learn.

A configuration is one of our scripts (with its preset for the env and/or a named flag set), the published
CleanRL PPO-TrXL run from its own virtual environment, or any command template. Each (configuration, env,
seed) is one run: one subprocess of the script, started in its own folder
`{out}/{name}/runs/{configuration}__{env}__{seed}/`, so that the script's `runs/{run_name}/` TensorBoard
folder lands there (never in the user's ./runs), beside `log.txt` (stdout and stderr) and `run.json`
(command, exit code, wall time). The runs go to a local pool of processes (`--executor local`; workers x
threads never exceed the cores) or through submitit to Slurm, one job per run (`--executor slurm`;
`--executor debug` runs the same jobs one after another in this process, without a cluster).

When all runs are done, `{out}/{name}/` gets `command.txt` (the exact command), `results.md` / `.csv` /
`.json` (one row per env and configuration: final and best return, mean +- standard error across seeds,
environment steps, wall time, steps per second; a failed run is listed with the last error line of its log)
and learning curves through plot.py, against environment steps and against wall time. The return is the
held-out evaluation (`eval/return_mean`) where every run of a row logged it, else (or with `--source training`)
the mean return of the last 100 training episodes, one statistic for every command (`charts/episodic_return_last100`;
the published script's `episode/r_mean`, the same mean, is read as such).

    python benchmarks/learning.py --name pom --env-ids ProofOfMemory-v0 --scripts ppo_trxl ppo_gru --presets probe \\
        --seeds 1 2 3 --total-timesteps 50000 --flags="--no-cuda"
    python benchmarks/learning.py --name mmgrid-vs-reference --env-ids MortarMayhem-Grid-v0 --seeds 1 2 \\
        --total-timesteps 2000000 --reference-python /tmp/ref-venv/bin/python --reference-script /tmp/ref/ppo_trxl.py
    python benchmarks/learning.py --name mm-paper --env-ids MortarMayhem-v0 --seeds 1 2 3 4 5 \\
        --total-timesteps 163840000 --executor slurm --slurm-partition gpu --slurm-gpus-per-task 1 --slurm-time 2880
    python benchmarks/learning.py --name mm-paper --report-only      # rebuild the table and plots
    python benchmarks/learning.py --name mm-all --report-only --combine mm-seed1 mm-seed2   # grids run apart, one table
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
import plot  # noqa: E402

# Our scripts take the grid's values as these flags (the preset, when there is one, comes first).
# Reset parameters are passed only when the grid gives some (else the preset's env_kwargs stay in force).
OURS = "{python} {script} --env-id {env_id} --seed {seed} --total-timesteps {total_timesteps} --exp-name {label}"
# The published CleanRL script spells its flags with underscores and takes no reset parameters.
REFERENCE = "{python} {script} --env_id {env_id} --seed {seed} --total_timesteps {total_timesteps} --exp_name {label}"
# Placeholders every command template must use, so that each run gets the grid's env, seed and budget.
REQUIRED = ("{env_id}", "{seed}", "{total_timesteps}")
# The training return of every row is one statistic: the mean return of the last 100 training episodes, as
# each run logged it (our scripts: charts/episodic_return_last100; the published PPO-TrXL: episode/r_mean, the
# mean over its deque of the last 100 episodes, read as ours). A command template must log one of the two.
TAG_ALIASES = {"episode/r_mean": "charts/episodic_return_last100"}
EVAL_TAG, TRAIN_TAG = "eval/return_mean", "charts/episodic_return_last100"
# A log's error line: the last one that says what went wrong (tyro ends its message with a help hint).
ERROR_WORDS = re.compile(r"error|exception|unrecognized|invalid|not found|no such|killed|cancelled", re.IGNORECASE)


@dataclass
class RunSpec:
    config: str  # the configuration's label: one table row and one curve per env
    env: str  # the env's label: its id and reset parameters
    seed: int
    command: list[str]
    folder: str  # absolute; the subprocess's working directory
    threads: int  # OMP_NUM_THREADS of the subprocess


# ---------------------------------------------------------------------------------------------
# One run (a local worker or a Slurm job executes this)
# ---------------------------------------------------------------------------------------------
def run_one(spec: RunSpec) -> dict:
    """Run one training subprocess in its folder and record how it went; never raises, so one failure
    cannot stop the grid."""
    os.makedirs(spec.folder, exist_ok=True)
    env = {**os.environ, "OMP_NUM_THREADS": str(spec.threads), "MKL_NUM_THREADS": str(spec.threads)}
    start = time.time()
    with open(os.path.join(spec.folder, "log.txt"), "w") as log:
        try:
            returncode = subprocess.run(spec.command, cwd=spec.folder, env=env, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT).returncode
        except OSError as error:  # e.g. the interpreter of a command template does not exist
            log.write(f"error: cannot start {spec.command[0]}: {error}\n")
            returncode = 127
    record = {"command": shlex.join(spec.command), "returncode": returncode, "start_time": start,
              "wall_time_s": time.time() - start, "host": socket.gethostname(), "threads": spec.threads}
    write_json(os.path.join(spec.folder, "run.json"), record)
    return record


def write_json(path: str, data) -> None:
    """Strict JSON: a NaN (no value, e.g. the return of a failed row) is written as null."""
    def strict(value):
        if isinstance(value, float) and math.isnan(value):
            return None
        if isinstance(value, dict):
            return {k: strict(v) for k, v in value.items()}
        return [strict(v) for v in value] if isinstance(value, list) else value

    with open(path, "w") as f:
        json.dump(strict(data), f, indent=2, allow_nan=False)
        f.write("\n")


# ---------------------------------------------------------------------------------------------
# The grid
# ---------------------------------------------------------------------------------------------
def parse_env(text: str) -> tuple[str, dict]:
    """`ID` or `ID=JSON` (reset parameters), e.g. 'MortarMayhem-v0={"command_count": 5}'."""
    env_id, _, params = text.partition("=")
    try:
        kwargs = json.loads(params) if params else {}
    except json.JSONDecodeError as error:
        raise SystemExit(f"error: reset parameters of {env_id} are not valid JSON ({error}): {params}")
    if not env_id or not isinstance(kwargs, dict):
        raise SystemExit(f"error: --env-ids takes ID or ID=JSON-object, got {text!r}")
    return env_id, kwargs


def env_label(env_id: str, kwargs: dict) -> str:
    return env_id + ("[" + ",".join(f"{k}={v}" for k, v in kwargs.items()) + "]" if kwargs else "")


def file_name(label: str) -> str:
    """A label as a safe file or folder name."""
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", label)


def fill(template: list[str], values: dict[str, str]) -> list[str]:
    """Replace the known {placeholders} in each word; other braces (JSON in flags) are left alone."""
    out = []
    for word in template:
        for name, value in values.items():
            word = word.replace("{" + name + "}", value)
        out.append(word)
    return out


def split(text: str, what: str) -> list[str]:
    """Shell words of a flag string, or a one-line error that names the option."""
    try:
        return shlex.split(text)
    except ValueError as error:
        raise SystemExit(f"error: {what} is not a valid shell command line ({error}): {text!r}")


def configurations(options) -> list[tuple[str, list[str], str | None, bool]]:
    """(label, command template words, script name whose preset applies, takes reset parameters) per configuration."""
    configs = []
    variants = [v.partition("=")[::2] for v in options.variants] or [("", "")]
    for script in options.scripts:
        path = script if script.endswith(".py") else os.path.join(ROOT, f"{script}.py")
        if not os.path.isfile(path):
            raise SystemExit(f"error: script {script} not found (give a name such as ppo_trxl or a path to a .py file)")
        name = os.path.basename(path)[: -len(".py")]
        for variant, flags in variants:
            label = f"{name}-{variant}" if variant else name
            words = fill(shlex.split(OURS), {"python": options.python, "script": os.path.abspath(path)})
            configs.append((label, words + split(options.flags, "--flags") + split(flags, f"--variants {variant}"), name, True))
    if options.reference_script or options.reference_python:
        if not (options.reference_script and options.reference_python):
            raise SystemExit("error: the reference needs both --reference-python and --reference-script")
        for path in (options.reference_python, options.reference_script):
            if not os.path.isfile(path):
                raise SystemExit(f"error: {path} not found (set up the reference as benchmarks/README.md describes)")
        words = fill(shlex.split(REFERENCE), {"python": options.reference_python, "script": os.path.abspath(options.reference_script)})
        configs.append(("reference", words + split(options.reference_flags, "--reference-flags"), None, False))
    for entry in options.command:
        label, _, template = entry.partition("=")
        missing = [p for p in REQUIRED if p not in template]
        if not label or missing:
            raise SystemExit(f"error: --command takes LABEL=TEMPLATE using {', '.join(REQUIRED)} (missing: "
                             f"{', '.join(missing) or 'the label'}), got {entry!r}")
        words = fill(split(template, f"--command {label}"), {"python": options.python, "root": ROOT})
        configs.append((label, words, None, "{env_kwargs}" in template))
    labels = [label for label, *_ in configs]
    if not configs:
        raise SystemExit("error: nothing to run: give --scripts, --reference-script or --command")
    if len(set(labels)) < len(labels):
        raise SystemExit(f"error: configuration labels must differ, got {', '.join(labels)}")
    return configs


def build_grid(options, folder: str) -> list[RunSpec]:
    """Every (env, configuration, seed), in that order; threads are set once the executor is known."""
    specs, configs = [], configurations(options)
    for env_text in options.env_ids:
        env_id, kwargs = parse_env(env_text)
        env = env_label(env_id, kwargs)
        for label, template, preset_script, takes_kwargs in configs:
            if kwargs and not takes_kwargs:
                raise SystemExit(f"error: configuration {label} takes no reset parameters, so it cannot run {env}")
            words = list(template)
            preset = os.path.join(ROOT, "configs", options.presets, preset_script or "", f"{env_id}.toml")
            if preset_script and options.presets and os.path.isfile(preset):
                words[2:2] = ["--config", preset]  # after `python script.py`: flags given later override it
            if preset_script and kwargs:
                words[2:2] = ["--env-kwargs", "{env_kwargs}"]
            for seed in options.seeds:
                values = {"env_id": env_id, "env_kwargs": json.dumps(kwargs), "seed": str(seed),
                          "total_timesteps": str(options.total_timesteps), "label": label}
                run_folder = os.path.join(folder, "runs", file_name(f"{label}__{env}__{seed}"))
                specs.append(RunSpec(label, env, seed, fill(words, values), run_folder, threads=1))
    if len({spec.folder for spec in specs}) < len(specs):
        raise SystemExit("error: the grid names a run twice: give each seed and each env once")
    return specs


def available_cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def local_workers(options, num_runs: int) -> tuple[int, int]:
    """Workers and threads per run such that workers x threads never exceeds the cores."""
    cores = available_cores()
    workers = options.workers or max(1, min(num_runs, cores // (options.threads or 1)))
    threads = options.threads or max(1, cores // workers)
    if workers * threads > cores:
        raise SystemExit(f"error: --workers {workers} x --threads {threads} = {workers * threads} exceeds the "
                         f"{cores} available cores; lower one of them")
    return workers, threads


# ---------------------------------------------------------------------------------------------
# Executors
# ---------------------------------------------------------------------------------------------
def describe(spec: RunSpec, record: dict) -> str:
    status = "ok" if record["returncode"] == 0 else f"failed (exit code {record['returncode']})"
    return f"{spec.config} {spec.env} seed {spec.seed}: {status} in {record['wall_time_s']:.1f} s"


def run_local(specs: list[RunSpec], workers: int) -> None:
    with ThreadPoolExecutor(workers) as pool:  # each worker thread waits on one subprocess
        futures = {pool.submit(run_one, spec): spec for spec in specs}
        for done, future in enumerate(as_completed(futures), 1):
            print(f"[{done}/{len(specs)}] {describe(futures[future], future.result())}", flush=True)


def run_submitit(specs: list[RunSpec], options, folder: str, cluster: str) -> None:
    """One submitit job per run (a Slurm job array); waits for all of them."""
    import submitit

    executor = submitit.AutoExecutor(folder=os.path.join(folder, "submitit"), cluster=cluster)
    executor.update_parameters(
        name=f"learning-{options.name}", timeout_min=options.slurm_time, cpus_per_task=options.slurm_cpus_per_task,
        gpus_per_node=options.slurm_gpus_per_task or None, tasks_per_node=1, mem_gb=options.slurm_mem_gb,
        slurm_partition=options.slurm_partition, slurm_array_parallelism=options.slurm_array_parallelism,
        slurm_setup=options.slurm_setup, slurm_additional_parameters=options.slurm_additional,
    )
    with executor.batch():
        jobs = [executor.submit(run_one, spec) for spec in specs]
    print(f"submitted {len(jobs)} job(s) to {cluster}: {', '.join(job.job_id for job in jobs[:5])}{' ...' if len(jobs) > 5 else ''}", flush=True)
    for done, (job, spec) in enumerate(zip(jobs, specs), 1):
        try:
            record = job.result()
        except Exception as error:  # the job itself died (time limit, node failure, cancelled)
            lines = [line for line in str(error).splitlines() if line.strip()] or [type(error).__name__]
            record = {"command": shlex.join(spec.command), "returncode": None, "start_time": None,
                      "wall_time_s": None, "host": None, "threads": spec.threads,
                      "error": f"job {job.job_id} failed: {lines[-1]}"}
            os.makedirs(spec.folder, exist_ok=True)
            write_json(os.path.join(spec.folder, "run.json"), record)
        print(f"[{done}/{len(specs)}] {describe(spec, record)}", flush=True)


# ---------------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------------
def error_line(folder: str, record: dict | None) -> str:
    """The line that says why a run failed: the job's error, else the last error line of its log."""
    if record and record.get("error"):
        return record["error"]
    try:
        with open(os.path.join(folder, "log.txt"), errors="replace") as f:
            # Strip the box drawing of tyro's messages; keep lines that still say something.
            lines = [line.strip(" \t│╭╮╰╯─") for line in f.read().splitlines()]
    except OSError:
        return "no log.txt"
    lines = [line for line in lines if re.search(r"\w", line)]
    errors = [line for line in lines if ERROR_WORDS.search(line)]
    return (errors or lines or ["empty log"])[-1]


def load_training_run(folder: str, start_time: float | None = None) -> plot.Run | None:
    """The TensorBoard run the script wrote under `{folder}/runs/`, with the reference's tags renamed to ours."""
    try:
        paths = [path for path in plot.find_run_dirs([os.path.join(folder, "runs")]) if plot.has_event_files(path)]
    except plot.PlotError:
        return None
    if not paths:
        return None
    run = plot.load_run(paths[-1], start_time)
    for alias, tag in TAG_ALIASES.items():
        if alias in run.scalars and tag not in run.scalars:
            run.scalars[tag] = run.scalars.pop(alias)
    return run


def collect(specs: list[RunSpec]) -> list[dict]:
    """One record per run: status, the exit code, wall time, steps and its return curves."""
    results = []
    for spec in specs:
        record = None
        if os.path.isfile(path := os.path.join(spec.folder, "run.json")):
            with open(path) as f:
                record = json.load(f)
        result = {"config": spec.config, "env": spec.env, "seed": spec.seed, "folder": spec.folder,
                  "command": shlex.join(spec.command), "returncode": record and record["returncode"],
                  "wall_time_s": record and record["wall_time_s"],
                  "start_time": record and record["start_time"], "run": None, "error": ""}
        run = load_training_run(spec.folder) if record and record["returncode"] == 0 else None
        if record is None:
            result["status"], result["error"] = "missing", "no run.json: still running, or its job was lost"
        elif record["returncode"] != 0:
            result["status"], result["error"] = "failed", error_line(spec.folder, record)
        elif run is None or TRAIN_TAG not in run.scalars and EVAL_TAG not in run.scalars:
            result["status"], result["error"] = "no data", "finished, but logged no episode return"
        else:
            result["status"], result["run"] = "ok", run
            result["steps"] = max(steps[-1] for steps, _ in run.scalars.values())
        results.append(result)
    return results


def mean_and_se(values: list[float]) -> tuple[float, float]:
    if not values:
        return float("nan"), float("nan")
    se = float(np.std(values, ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return float(np.mean(values)), se


def summarise(results: list[dict], source: str) -> list[dict]:
    """One row per (env, configuration), in grid order."""
    rows = []
    for key in dict.fromkeys((r["env"], r["config"]) for r in results):
        members = [r for r in results if (r["env"], r["config"]) == key]
        ok = [r for r in members if r["status"] == "ok"]
        # Evaluation returns only when every run has them: a row never mixes the two sources.
        tag = EVAL_TAG if source == "auto" and ok and all(EVAL_TAG in r["run"].scalars for r in ok) else TRAIN_TAG
        curves = [r["run"].scalars[tag][1] for r in ok if tag in r["run"].scalars]
        final, best = mean_and_se([float(c[-1]) for c in curves]), mean_and_se([float(c.max()) for c in curves])
        problems = [f"seed {r['seed']} {r['status']}" + (f" (exit code {r['returncode']})" if r["status"] == "failed" else "")
                    + f": {r['error']}" for r in members if r["status"] != "ok"]
        rows.append({
            "env": key[0], "config": key[1], "seeds_ok": len(curves), "seeds": len(members),
            "source": ("eval" if tag == EVAL_TAG else "training") if curves else "-",
            "final_mean": final[0], "final_se": final[1], "best_mean": best[0], "best_se": best[1],
            "steps": float(np.mean([r["steps"] for r in ok])) if ok else float("nan"),
            "wall_time_s": float(np.mean([r["wall_time_s"] for r in ok])) if ok else float("nan"),
            # End to end (start-up and evaluations included), so every command family is measured alike.
            "sps": float(np.mean([r["steps"] / r["wall_time_s"] for r in ok])) if ok else float("nan"),
            "status": "ok" if not problems else "; ".join(problems),
        })
    return rows


def cell(mean: float, se: float, seeds: int) -> str:
    if math.isnan(mean):
        return "-"
    return f"{mean:.3f}" if seeds < 2 else f"{mean:.3f} ± {se:.3f}"


def markdown(rows: list[dict], command: str) -> str:
    lines = [
        f"Command: `{command}`", "",
        "Return: the last (final) and the highest (best) value of each run, mean ± standard error across seeds; "
        "source eval = held-out evaluation, training = the mean return of the last 100 training episodes (as each "
        "run logged it). SPS: steps / wall time, end to end.", "",
        "| env | configuration | seeds | source | final return | best return | steps | wall time (s) | SPS | status |",
        "|---|---|---:|---|---:|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        number = lambda value, fmt: "-" if math.isnan(value) else format(value, fmt)
        cells = [row["env"], row["config"], f"{row['seeds_ok']}/{row['seeds']}", row["source"],
                 cell(row["final_mean"], row["final_se"], row["seeds_ok"]), cell(row["best_mean"], row["best_se"], row["seeds_ok"]),
                 number(row["steps"], ",.0f"), number(row["wall_time_s"], ".1f"), number(row["sps"], ",.0f"), row["status"]]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines) + "\n"


def plot_curves(results: list[dict], folder: str) -> list[str]:
    """Per env and return tag: one PNG against environment steps, one against wall time (plot.py draws them)."""
    written = []
    ok = [r for r in results if r["status"] == "ok"]
    for env in dict.fromkeys(r["env"] for r in ok):
        members = [r for r in ok if r["env"] == env]
        for tag in (TRAIN_TAG, EVAL_TAG):
            if not any(tag in r["run"].scalars for r in members):
                continue
            by_steps, by_time = {}, {}
            for r in members:
                by_steps.setdefault(r["config"], []).append(r["run"])
                by_time.setdefault(r["config"], []).append(load_training_run(r["folder"], r["start_time"]))
            base = os.path.join(folder, f"{file_name(env)}__{tag.replace('/', '_')}")
            for groups, path, xlabel in ((by_steps, f"{base}.png", "environment steps"),
                                         (by_time, f"{base}__wall_time.png", "wall time (s)")):
                if plot.plot_env(env, groups, tag, "se", 0.0, path, xlabel=xlabel):
                    written.append(path)
                elif os.path.exists(path):
                    os.remove(path)  # from an earlier report: it would pass for one of these runs
    return written


def report(specs: list[RunSpec], folder: str, command: str, source: str) -> list[str]:
    results = collect(specs)
    rows = summarise(results, source)
    table = markdown(rows, command)
    with open(os.path.join(folder, "results.md"), "w") as f:
        f.write(table)
    with open(os.path.join(folder, "results.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    runs = [{k: v for k, v in r.items() if k != "run"} for r in results]
    write_json(os.path.join(folder, "results.json"), {"command": command, "rows": rows, "runs": runs})
    print("\n" + table)
    return [os.path.join(folder, name) for name in ("results.md", "results.csv", "results.json")] + plot_curves(results, folder)


# ---------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    grid = parser.add_argument_group("the grid")
    grid.add_argument("--name", required=True, help="the results folder's name: {out}/{name}/")
    grid.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"), help="where results folders go (default: benchmarks/results)")
    grid.add_argument("--env-ids", nargs="+", default=["ProofOfMemory-v0"],
                      help="environments, each ID or ID=JSON with reset parameters, e.g. 'MortarMayhem-v0={\"command_count\": 5}'")
    grid.add_argument("--seeds", nargs="+", type=int, default=[1, 2, 3], help="seeds: one run per seed of each configuration and env")
    grid.add_argument("--total-timesteps", type=int, help="the environment steps of every run (required unless --report-only)")
    grid.add_argument("--scripts", nargs="*", default=["ppo_trxl"], help="our scripts (names such as ppo_trxl ppo_gru, or paths); none: only the other commands")
    grid.add_argument("--presets", choices=["", "paper", "quick", "probe"], default="",
                      help="pass configs/{presets}/{script}/{env_id}.toml to our scripts where it exists: paper (the "
                      "paper's runs), quick (CPU-scale learning), probe; '' (default): none, so each script takes "
                      "its own defaults, the paper's run of the id where the paper has one")
    grid.add_argument("--flags", default="", help="flags for every run of our scripts, given with '=': --flags='--no-cuda --num-envs 8'")
    grid.add_argument("--variants", nargs="*", default=[], help="flag sets compared side by side, each NAME=FLAGS, e.g. 'bf16=--precision bfloat16'")
    grid.add_argument("--python", default=sys.executable, help="the interpreter of our scripts (default: this one)")
    grid.add_argument("--reference-python", help="the interpreter of the reference's venv, e.g. /tmp/ref-venv/bin/python")
    grid.add_argument("--reference-script", help="the published CleanRL ppo_trxl.py, e.g. /tmp/ref/ppo_trxl.py")
    grid.add_argument("--reference-flags", default="", help="flags for the reference, given with '=': --reference-flags='--no-cuda --num_envs 8'")
    grid.add_argument("--command", action="append", default=[],
                      help="another configuration, LABEL=TEMPLATE, with {env_id} {seed} {total_timesteps} and optionally "
                      "{env_kwargs} {label} {python} {root}; repeatable")
    grid.add_argument("--source", choices=["auto", "training"], default="auto",
                      help="the table's return: auto = held-out evaluation where every run of a row logged it, else "
                      "the mean return of the last 100 training episodes; training = that mean everywhere (compare "
                      "with the reference, which does not evaluate)")
    grid.add_argument("--report-only", action="store_true", help="rebuild the table and plots of an existing results folder")
    grid.add_argument("--combine", nargs="+", metavar="NAME", default=[],
                      help="with --report-only: one table and one set of plots of the runs of these results folders "
                           "(under --out; e.g. seeds run as separate grids), written into a new folder --name")
    run = parser.add_argument_group("where the runs go")
    run.add_argument("--executor", choices=["local", "slurm", "debug"], default="local",
                     help="local: a pool of processes on this machine; slurm: one submitit job per run; debug: submitit's "
                     "in-process executor (the Slurm path, one run after another, no cluster)")
    run.add_argument("--workers", type=int, help="local: runs at the same time (default: as many as the cores allow)")
    run.add_argument("--threads", type=int, help="local: OMP_NUM_THREADS per run (default: cores // workers)")
    run.add_argument("--slurm-partition", help="slurm: the partition")
    run.add_argument("--slurm-time", type=int, default=60, help="slurm: the time limit per run, in minutes (default: 60)")
    run.add_argument("--slurm-gpus-per-task", type=int, default=0, help="slurm: GPUs per run (default: 0)")
    run.add_argument("--slurm-cpus-per-task", type=int, default=4, help="slurm: CPUs per run, also its OMP_NUM_THREADS (default: 4)")
    run.add_argument("--slurm-mem-gb", type=float, help="slurm: memory per run in GB (default: the cluster's)")
    run.add_argument("--slurm-array-parallelism", type=int, default=256, help="slurm: most runs at the same time (default: 256)")
    run.add_argument("--slurm-setup", nargs="*", default=[], help="slurm: shell lines run before each job, e.g. 'source venv/bin/activate'")
    run.add_argument("--slurm-additional", type=json.loads, default={},
                     help="slurm: other sbatch parameters as a JSON object, e.g. '{\"account\": \"rl\", \"constraint\": \"a100\"}'")
    return parser


def combine(folder: str, sources: list[str], command: str) -> None:
    """A new results folder whose grid is the runs of `sources`, in their order; the runs stay where they are."""
    runs, commands = [], []
    for source in sources:
        try:
            with open(os.path.join(source, "grid.json")) as f:
                grid = json.load(f)
        except OSError:
            raise SystemExit(f"error: {source} holds no grid.json: not a results folder of this benchmark")
        commands.append(grid["command"])
        runs += [{**spec, "folder": os.path.join(source, spec["folder"])} for spec in grid["runs"]]
    # A run that never finished in one grid (stopped early, its job lost) gives way to the same run finished in another.
    def key(run: dict) -> tuple:
        return run["config"], run["env"], run["seed"]

    done = [os.path.isfile(os.path.join(run["folder"], "run.json")) for run in runs]
    finished = {key(run) for run, ran in zip(runs, done) if ran}
    runs = [run for run, ran in zip(runs, done) if ran or key(run) not in finished]
    if len({key(run) for run in runs}) < len(runs):
        raise SystemExit("error: the combined folders hold the same configuration, env and seed more than once")
    runs = [{**run, "folder": os.path.relpath(run["folder"], folder)} for run in runs]
    try:
        os.makedirs(folder)
    except FileExistsError:
        raise SystemExit(f"error: {folder} exists; choose another --name for the combined table")
    with open(os.path.join(folder, "command.txt"), "w") as f:
        f.write(f"cd {shlex.quote(os.getcwd())}\n{command}\n\n# the grids it combines:\n" + "\n".join(commands) + "\n")
    write_json(os.path.join(folder, "grid.json"), {"command": " ; ".join([*commands, command]), "runs": runs})


def main(argv: list[str] | None = None) -> list[str]:
    options = build_parser().parse_args(argv)
    folder = os.path.abspath(os.path.join(options.out, options.name))
    if options.combine and not options.report_only:
        raise SystemExit("error: --combine goes with --report-only: it tabulates runs that have finished")
    if options.report_only:
        if options.combine:
            command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]) if argv is None else ["benchmarks/learning.py", *argv])
            combine(folder, [os.path.abspath(os.path.join(options.out, name)) for name in options.combine], command)
        try:
            with open(os.path.join(folder, "grid.json")) as f:
                grid = json.load(f)
        except OSError:
            raise SystemExit(f"error: {folder} holds no grid.json: not a results folder of this benchmark")
        # Run folders are stored relative to the results folder, so a copied folder (e.g. off a cluster) still reads.
        specs = [RunSpec(**{**spec, "folder": os.path.join(folder, spec["folder"])}) for spec in grid["runs"]]
        written = report(specs, folder, grid["command"], options.source)
        print("wrote " + ", ".join(written))
        return written

    if options.total_timesteps is None or options.total_timesteps <= 0:
        raise SystemExit("error: --total-timesteps must be given as a positive number of environment steps")
    if options.workers is not None and options.workers < 1 or options.threads is not None and options.threads < 1:
        raise SystemExit("error: --workers and --threads must be at least 1")
    if options.executor == "slurm" and shutil.which("srun") is None:
        raise SystemExit("error: --executor slurm needs a Slurm cluster (no srun on this machine); use --executor local, "
                         "or debug to try the Slurm path here")
    if not isinstance(options.slurm_additional, dict):
        raise SystemExit("error: --slurm-additional must be a JSON object of sbatch parameters")
    specs = build_grid(options, folder)
    workers, threads = 1, available_cores()  # debug: one run after another, in this process
    if options.executor == "local":
        workers, threads = local_workers(options, len(specs))
    elif options.executor == "slurm":
        threads = options.slurm_cpus_per_task
    for spec in specs:
        spec.threads = threads
    try:
        os.makedirs(folder)  # exclusively: a new grid never mixes with an earlier one
    except FileExistsError:
        raise SystemExit(f"error: {folder} exists; choose another --name, or rebuild its table with --report-only")
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]) if argv is None else ["benchmarks/learning.py", *argv])
    with open(os.path.join(folder, "command.txt"), "w") as f:
        f.write(f"cd {shlex.quote(os.getcwd())}\n{command}\n")
    runs = [{**asdict(spec), "folder": os.path.relpath(spec.folder, folder)} for spec in specs]
    write_json(os.path.join(folder, "grid.json"), {"command": command, "runs": runs})

    where = f"{workers} worker(s) x {threads} thread(s)" if options.executor == "local" else options.executor
    print(f"{len(specs)} run(s) into {folder} ({where})", flush=True)
    if options.executor == "local":
        run_local(specs, workers)
    else:
        run_submitit(specs, options, folder, options.executor)
    written = report(specs, folder, command, options.source)
    print("wrote " + ", ".join(written))
    return written


if __name__ == "__main__":
    main()
