"""Every GPU figure the project needs, in one command that fits a short loan of one GPU (`--budget`, 8 minutes).

Each part runs in a process of its own, stopped (with everything it started) when the budget is spent, and
writes its rows as it finishes them; `device_check.json` and `device_check.md` in `--out` are rewritten after
each part. So a hang, a crash or a loan that ends early loses at most the part in flight, never what was
measured before it. The parts, in order:

1. consistency: per script and precision, the largest gap between the log-probabilities and values
   stored while acting and those the update recomputes (paper agents, before any optimizer step);
2. syncs: per script, what one rollout step sends to the device and reads back, and the synchronisations
   CUDA's sync debug mode reports per step (the actions' copy to the host is the one expected);
3. throughput: per script and precision, training steps per second end to end, of the rollout alone
   and of the update alone, and peak memory, with the paper's agents on the paper's 32 x 512 rollout
   of Mortar Mayhem Grid (each run in its own process, the first iteration a warm-up);
4. memory: peak GPU memory of TrXL on Endless Mortar Mayhem (window 256, 32 x 512);
5. ranks: two data-parallel ranks under torchrun, where the machine has two GPUs;
6. compiled: per script under `--compile` (float32; acting replays CUDA graphs), the consistency gap
   and the throughput, with the first iteration's seconds, compilation included (at most 150 s: TrXL first);
7. learning: the paper's Mortar Mayhem Grid TrXL run for what is left of the budget (at most 3 minutes),
   return against steps; it is stopped by SIGTERM and writes its checkpoint, as a pre-empted job would.

`--smoke` runs the same code on the CPU at tiny sizes (the tests do): about a minute, and as much again to compile.

    python benchmarks/device_check.py --out benchmarks/results/device-check
    python benchmarks/device_check.py --smoke --out /tmp/device-check
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from types import SimpleNamespace

import numba
import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import plot  # noqa: E402
import ppo_gru  # noqa: E402
import ppo_mamba  # noqa: E402
import ppo_trxl  # noqa: E402
import precision_ratio  # noqa: E402
import train_throughput  # noqa: E402

SCRIPTS = {"ppo_trxl": ppo_trxl, "ppo_gru": ppo_gru, "ppo_mamba": ppo_mamba}
PRECISIONS = ("float32", "bfloat16")
PARTS = ("consistency", "syncs", "throughput", "memory", "ranks", "compiled", "learning")


def preset(script: str, env_id: str) -> str:
    return os.path.join(ROOT, "configs", "paper", script, f"{env_id}.toml")


# What each part runs: the paper's sizes on a GPU, tiny ones with --smoke (same code paths). The budget: a part
# starts only with `least` seconds left and takes at most its `caps` seconds; learning runs for what is left,
# less `learn_margin` (starting, the last iteration and its checkpoint), from `learn_least` to `learn_seconds`;
# a part stopped at the end of the budget gets SIGTERM, then SIGKILL after `grace` seconds.
FULL = SimpleNamespace(
    env_id="MortarMayhem-Grid-v0", num_envs=32, num_steps=512, iterations=3, model={"ppo_trxl": [], "ppo_gru": [], "ppo_mamba": []},
    consistency=dict(num_envs=8, num_steps=64, rollouts=2), memory_env="Endless-MortarMayhem-v0",
    least=20, caps={"compiled": 150}, learn_seconds=180, learn_least=45, learn_margin=45, grace=15,
)
SMOKE = SimpleNamespace(
    env_id="MortarMayhem-Grid-v0", num_envs=2, num_steps=16, iterations=2,
    model={
        "ppo_trxl": ["--trxl-dim", "16", "--trxl-num-heads", "2", "--trxl-num-layers", "1", "--trxl-memory-length", "4"],
        "ppo_gru": ["--rnn-hidden-size", "8", "--embed-dim", "8", "--hidden-dim", "8"],
        "ppo_mamba": ["--embed-dim", "8", "--hidden-dim", "8", "--mamba-head-dim", "8", "--mamba-state-size", "4",
                      "--mamba-chunk-size", "8"],
    },
    consistency=dict(num_envs=2, num_steps=16, rollouts=2), memory_env="Endless-MortarMayhem-v0",
    least=1, caps={}, learn_seconds=15, learn_least=5, learn_margin=20, grace=5,
)


# ---------------------------------------------------------------------------------------------
# The parts: each yields its rows as it finishes them
# ---------------------------------------------------------------------------------------------
def consistency(sizes, device: torch.device):
    for name, script in SCRIPTS.items():
        for precision in PRECISIONS:
            flags = ["--config", preset(name, sizes.env_id), "--precision", precision, *sizes.model[name],
                     "--num-envs", str(sizes.consistency["num_envs"]), "--num-steps", str(sizes.consistency["num_steps"]),
                     "--num-minibatches", "2", *([] if device.type == "cuda" else ["--no-cuda"])]  # fmt: skip
            args = script.parse_args(flags)
            gaps = precision_ratio.measure(script, args, None, sizes.consistency["rollouts"], device)
            yield {"script": name, "precision": precision, "max_logprob_gap": gaps["max"],
                   "max_value_gap": gaps["value"], "samples": gaps["samples"]}  # fmt: skip


def syncs(sizes, device: torch.device):
    for name, script in SCRIPTS.items():
        flags = ["--config", preset(name, sizes.env_id), *sizes.model[name], "--num-envs", str(sizes.consistency["num_envs"]),
                 "--num-steps", str(sizes.consistency["num_steps"]), *([] if device.type == "cuda" else ["--no-cuda"])]
        yield {"script": name, **precision_ratio.rollout_crossings(script, script.parse_args(flags), device)}


def throughput(sizes, extra: list[str], nproc: int = 1, pairs=None):
    """Per (script, precision) of `pairs` (default: every one), a few iterations in a process of its own."""
    for name, precision in pairs or [(name, precision) for name in SCRIPTS for precision in PRECISIONS]:
        flags = ["--config", preset(name, sizes.env_id), *sizes.model[name], *extra]
        options = SimpleNamespace(env_id=sizes.env_id, num_envs=sizes.num_envs, num_steps=sizes.num_steps,
                                  iterations=sizes.iterations, extra=" ".join(flags))  # fmt: skip
        result = train_throughput.measure(options, name, nproc, f"--precision {precision}")
        yield {"script": name, "precision": precision, "ranks": nproc, **result}


def compiled(sizes, device: torch.device, extra: list[str], names):
    for name in names:
        script = SCRIPTS[name]
        flags = ["--config", preset(name, sizes.env_id), "--precision", "float32", "--compile", *sizes.model[name],
                 "--num-envs", str(sizes.consistency["num_envs"]), "--num-steps", str(sizes.consistency["num_steps"]),
                 "--num-minibatches", "2", *([] if device.type == "cuda" else ["--no-cuda"])]  # fmt: skip
        torch._dynamo.reset()
        gaps = precision_ratio.measure(script, script.parse_args(flags), None, sizes.consistency["rollouts"], device)
        speed = next(throughput(sizes, extra + ["--compile"], pairs=[(name, "float32")]))
        yield {**speed, "max_logprob_gap": gaps["max"], "max_value_gap": gaps["value"]}


def memory(sizes, extra: list[str]):
    flags = ["--config", preset("ppo_trxl", sizes.memory_env), "--trxl-memory-length", "256", *sizes.model["ppo_trxl"], *extra]
    options = SimpleNamespace(env_id=sizes.memory_env, num_envs=sizes.num_envs, num_steps=sizes.num_steps,
                              iterations=2, extra=" ".join(flags))  # fmt: skip
    yield {"env_id": sizes.memory_env, "window": 256, **train_throughput.measure(options, "ppo_trxl", 1, "")}


def learning(sizes, extra: list[str], seconds: float):
    """Train the paper's TrXL for `seconds`, stop it as a pre-empted job, read its curve."""
    with tempfile.TemporaryDirectory(prefix="device-check-") as folder:
        command = [sys.executable, os.path.join(ROOT, "ppo_trxl.py"), "--config", preset("ppo_trxl", sizes.env_id),
                   "--num-envs", str(sizes.num_envs), "--num-steps", str(sizes.num_steps), *sizes.model["ppo_trxl"], *extra]  # fmt: skip
        log = os.path.join(folder, "output.txt")  # a file, not a pipe: nothing reads a pipe while it trains
        with open(log, "w") as out:
            process = subprocess.Popen(command, cwd=folder, stdout=out, stderr=subprocess.STDOUT)
        time.sleep(seconds)
        process.send_signal(signal.SIGTERM)  # finishes the iteration, writes a checkpoint, exits
        process.wait(timeout=600)
        with open(log, errors="replace") as f:
            output = f.read()
        runs = glob.glob(os.path.join(folder, "runs", "*"))
        curve = []
        if runs:
            steps, values = plot.load_run(runs[0]).scalars.get("charts/episodic_return", ((), ()))
            curve = [{"step": int(step), "return": float(value)} for step, value in zip(steps, values)]
        yield {"seconds": round(seconds), "exit": process.returncode, "curve": curve,
               "checkpoint": bool(runs and os.path.exists(os.path.join(runs[0], "checkpoint.pt"))),
               "output_tail": output[-1500:]}  # fmt: skip


def part_rows(name: str, smoke: bool, learn_seconds: float):
    """The generator of part `name`'s rows, at the sizes `smoke` picks."""
    sizes = SMOKE if smoke else FULL
    device = torch.device("cuda" if torch.cuda.is_available() and not smoke else "cpu")
    extra = [] if device.type == "cuda" else ["--no-cuda"]
    timed = extra + ["--eval-interval", "0"]
    # The smoke check runs each script and each precision once, a pair of ranks on the CPU, and compiles TrXL
    # only (tens of seconds a script): the code paths, not figures.
    return {
        "consistency": lambda: consistency(sizes, device),
        "syncs": lambda: syncs(sizes, device),
        "throughput": lambda: throughput(sizes, timed, pairs=[("ppo_trxl", "bfloat16"), ("ppo_gru", "float32"),
                                                               ("ppo_mamba", "bfloat16")] if smoke else None),
        "memory": lambda: memory(sizes, timed),
        "ranks": lambda: throughput(sizes, timed, 2, [(script, "float32") for script in (["ppo_gru"] if smoke else SCRIPTS)]),
        "compiled": lambda: compiled(sizes, device, timed, ["ppo_trxl"] if smoke else list(SCRIPTS)),
        "learning": lambda: learning(sizes, extra, learn_seconds),
    }[name]()


def write_part(name: str, smoke: bool, learn_seconds: float, folder: str) -> None:
    """In the part's own process: append each row to `folder`/rows.jsonl as it is measured; a failure to error.txt."""
    threading.Thread(target=stop_when_orphaned, args=(os.getppid(),), daemon=True).start()
    with open(os.path.join(folder, "rows.jsonl"), "a") as rows:
        try:
            for row in part_rows(name, smoke, learn_seconds):
                rows.write(json.dumps(row) + "\n")
                rows.flush()
        except (Exception, SystemExit):
            with open(os.path.join(folder, "error.txt"), "w") as f:
                f.write(traceback.format_exc(limit=3)[-3000:])
            raise SystemExit(1)


def stop_when_orphaned(parent: int) -> None:
    """If the check ends before its part (Ctrl-C, a kill), SIGTERM the part's process group: the part, in a session
    of its own, would otherwise run on, holding the GPU."""
    while os.getppid() == parent:
        time.sleep(0.5)
    os.killpg(0, signal.SIGTERM)


def run_part(name: str, options, sizes, seconds: float, scratch: str, learn_seconds: float = 0) -> dict:
    """Run part `name` in a process of its own and stop it, with every process it started, after `seconds`."""
    folder = os.path.join(scratch, name)
    os.makedirs(folder)
    open(os.path.join(folder, "rows.jsonl"), "w").close()  # there even if the part dies before its first row
    command = [sys.executable, os.path.abspath(__file__), "--out", options.out, "--part", name, "--part-folder", folder,
               "--learn-seconds", str(learn_seconds), *(["--smoke"] if options.smoke else [])]  # fmt: skip
    # Its temporary folders (the training runs' folders) go under `scratch`, which is removed even if it is killed.
    child = subprocess.Popen(command, start_new_session=True, env={**os.environ, "TMPDIR": scratch})
    try:
        child.wait(timeout=seconds)
        stopped = False
    except subprocess.TimeoutExpired:
        # SIGTERM first: a training run finishes its iteration, torchrun stops its ranks (in sessions of their own).
        # The grace bounds the part's own process too: one stuck where a signal handler cannot run is killed.
        os.killpg(child.pid, signal.SIGTERM)
        give_up = time.monotonic() + sizes.grace
        while time.monotonic() < give_up and (child.poll() is None or process_group_alive(child.pid)):
            time.sleep(0.2)
        if process_group_alive(child.pid):
            os.killpg(child.pid, signal.SIGKILL)
        child.wait()
        stopped = True
    with open(os.path.join(folder, "rows.jsonl")) as f:
        rows = [json.loads(line) for line in f if line.endswith("\n")]  # a row cut short by a kill is left out
    part = {"result": rows[0]} if name in ("memory", "learning") and rows else {"rows": rows}
    if stopped:
        part["stopped"] = f"the budget ran out after {seconds:.0f} s"
    elif child.returncode:
        part["error"] = f"exit status {child.returncode}"
        if os.path.exists(error := os.path.join(folder, "error.txt")):
            with open(error) as f:
                part["error"] = f.read()
    return part


def process_group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    versions = ", ".join(f"{name} {version}" for name, version in report["versions"].items())
    lines = [f"# Device check: {report['device']}", "", f"{versions}; {report['gpus']} GPU(s), "
             f"{'smoke (CPU, tiny sizes)' if report['smoke'] else 'full'}, budget {report['budget_s']:.0f} s", ""]  # fmt: skip
    parts = report["parts"]
    if rows := parts.get("consistency", {}).get("rows"):
        lines += ["## Act / update consistency (largest gap, before any optimizer step)", "",
                  "| script | precision | log-probability | value | samples |", "|---|---|---:|---:|---:|"]  # fmt: skip
        lines += [f"| {r['script']} | {r['precision']} | {r['max_logprob_gap']:.2e} | {r['max_value_gap']:.2e} | {r['samples']:,} |" for r in rows]
        lines.append("")
    for part, title in (("throughput", "Training throughput"), ("ranks", "Two data-parallel ranks")):
        if rows := parts.get(part, {}).get("rows"):
            lines += [f"## {title} ({report['sizes']})", "",
                      "| script | precision | ranks | SPS end to end | rollout SPS | update SPS | peak GPU memory (GiB) | peak RSS (GiB) |",
                      "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
            for r in rows:
                gpu = "-" if r["cuda_gib"] is None else f"{r['cuda_gib']:.2f}"
                lines.append(f"| {r['script']} | {r['precision']} | {r['ranks']} | {r['sps']:,.0f} | {r['rollout_sps']:,.0f} "
                             f"| {r['update_sps']:,.0f} | {gpu} | {r['rss_gib']:.2f} |")  # fmt: skip
            lines.append("")
    if rows := parts.get("syncs", {}).get("rows"):
        lines += ["## What one rollout step sends to the device and reads back", "",
                  "| script | uploads per step | reads per step | synchronisations per step (CUDA's count) |", "|---|---|---:|---:|"]
        for r in rows:
            counted = "-" if r["syncs_per_step"] is None else f"{r['syncs_per_step']:.2f}"
            lines.append(f"| {r['script']} | {r['uploads_per_step']} | {r['reads_per_step']:.2f} | {counted} |")
        lines.append("")
    if result := parts.get("memory", {}).get("result"):
        gpu = "-" if result["cuda_gib"] is None else f"{result['cuda_gib']:.2f} GiB"
        lines += [f"## Peak memory of TrXL on {result['env_id']} (window {result['window']})", "",
                  f"peak GPU memory allocated {gpu}, peak RSS {result['rss_gib']:.2f} GiB, {result['sps']:,.0f} steps/s", ""]  # fmt: skip
    if result := parts.get("learning", {}).get("result"):
        lines += [f"## The paper's Mortar Mayhem Grid TrXL run, first {result['seconds']} s", "",
                  f"exit {result['exit']} after SIGTERM, checkpoint written: {result['checkpoint']}", "",
                  "| step | training return |", "|---:|---:|"]  # fmt: skip
        shown = result["curve"][:: max(1, len(result["curve"]) // 20)]  # about 20 rows; the JSON has every point
        lines += [f"| {p['step']:,} | {p['return']:.3f} |" for p in shown]
        lines.append("")
    if rows := parts.get("compiled", {}).get("rows"):
        lines += [f"## Under --compile, float32 ({report['sizes']}; consistency on a small rollout)", "",
                  "| script | log-probability gap | value gap | SPS end to end | rollout SPS | update SPS "
                  "| first iteration (s), compiling | the same uncompiled (s) | peak GPU memory (GiB) |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
        plain = {(r["script"], r["precision"]): r for r in parts.get("throughput", {}).get("rows", [])}
        for r in rows:
            gpu = "-" if r["cuda_gib"] is None else f"{r['cuda_gib']:.2f}"
            before = plain.get((r["script"], "float32"))
            before = "-" if before is None else f"{before['first_iteration_s']:.1f}"
            lines.append(f"| {r['script']} | {r['max_logprob_gap']:.2e} | {r['max_value_gap']:.2e} | {r['sps']:,.0f} "
                         f"| {r['rollout_sps']:,.0f} | {r['update_sps']:,.0f} | {r['first_iteration_s']:.1f} | {before} | {gpu} |")  # fmt: skip
        lines.append("")
    for name, part in parts.items():
        if "error" in part:
            lines += [f"## {name}: failed", "", "```", part["error"], "```", ""]
        elif "stopped" in part:
            lines += [f"## {name}: stopped, {part['stopped']} (its finished rows are above)", ""]
        elif "skipped" in part:
            lines += [f"## {name}: skipped ({part['skipped']})", ""]
    return "\n".join(lines)


def seconds(text: str) -> float:
    if not (value := float(text)) > 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive number of seconds")
    return value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for device_check.json and device_check.md")
    parser.add_argument("--smoke", action="store_true", help="the same code paths on the CPU at tiny sizes")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="the parts to run, in this order")
    parser.add_argument("--budget", type=seconds, default=480, help="seconds for the whole check (default: 480, "
                        "8 minutes); a part still running when it is spent is stopped, and the parts after it are skipped")
    parser.add_argument("--part", choices=PARTS, help=argparse.SUPPRESS)  # a part's own process (run_part starts it)
    parser.add_argument("--part-folder", help=argparse.SUPPRESS)
    parser.add_argument("--learn-seconds", type=float, default=0, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.part:
        return write_part(options.part, options.smoke, options.learn_seconds, options.part_folder)
    sizes = SMOKE if options.smoke else FULL
    deadline = time.monotonic() + options.budget - sizes.grace  # leaves the time to stop the last part
    cuda = torch.cuda.is_available() and not options.smoke
    if not cuda and not options.smoke:
        raise SystemExit("error: no CUDA device; run with --smoke to check the code paths on the CPU")
    os.makedirs(options.out, exist_ok=True)
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "smoke": options.smoke,
        "versions": {name: module.__version__ for name, module in (("torch", torch), ("numpy", np), ("numba", numba))}
        | {"python": platform.python_version()},
        "gpus": torch.cuda.device_count() if cuda else 0, "budget_s": options.budget,
        "sizes": f"{sizes.env_id}, {sizes.num_envs} envs x {sizes.num_steps} steps", "parts": {},
    }  # fmt: skip
    with tempfile.TemporaryDirectory(prefix="device-check-") as scratch:
        for name in options.parts:
            started = time.monotonic()
            left = deadline - started
            learn = min(sizes.learn_seconds, left - sizes.learn_margin)
            if name == "ranks" and report["gpus"] < 2 and not options.smoke:
                part = {"skipped": "one GPU"}
            elif left < sizes.least or (name == "learning" and learn < sizes.learn_least):
                part = {"skipped": f"the budget had {max(left, 0):.0f} s left, too few to start it"}
            else:
                part = run_part(name, options, sizes, min(left, sizes.caps.get(name, left)), scratch, learn)
            part["seconds"] = round(time.monotonic() - started, 1)
            report["parts"][name] = part
            outcome = next((key for key in ("error", "stopped", "skipped") if key in part), "done")
            print(f"{name}: {outcome.replace('error', 'failed')} in {part['seconds']} s", flush=True)
            with open(os.path.join(options.out, "device_check.json"), "w") as f:
                json.dump(report, f, indent=1)
            with open(os.path.join(options.out, "device_check.md"), "w") as f:
                f.write(markdown(report))
    print(markdown(report))
    finished = lambda part: "error" not in part and "stopped" not in part and part.get("skipped", "one GPU") == "one GPU"
    unfinished = [name for name, part in report["parts"].items() if not finished(part)]
    if unfinished:
        raise SystemExit(f"not finished: {', '.join(unfinished)} (device_check.md says why)")


if __name__ == "__main__":
    main()
