"""Every GPU figure the project needs, in one command that fits a short loan of one GPU (about 7 minutes).

Writes `device_check.json` and `device_check.md` into `--out` as each part finishes, so a loan that ends
early still leaves what was measured. The parts, each kept apart so that one failure loses only itself:

1. consistency: per script and precision, the largest gap between the log-probabilities and values
   stored while acting and those the update recomputes (paper agents, before any optimizer step);
2. throughput: per script and precision, training steps per second end to end, of the rollout alone
   and of the update alone, and peak memory, with the paper's agents on the paper's 32 x 512 rollout
   of Mortar Mayhem Grid (each run in its own process, the first iteration a warm-up);
3. memory: peak GPU memory of TrXL on Endless Mortar Mayhem (window 256, 32 x 512);
   syncs: per script, what one rollout step sends to the device and reads back, and the synchronisations
   CUDA's sync debug mode reports per step (the actions' copy to the host is the one expected);
4. ranks: two data-parallel ranks under torchrun, where the machine has two GPUs;
5. learning: the first minutes of the paper's Mortar Mayhem Grid TrXL run, return against steps
   (the run is stopped by SIGTERM and writes its checkpoint, as a pre-empted job would);
6. compiled: per script under `--compile` (float32; acting replays CUDA graphs), the consistency gap
   and the throughput, with the first iteration's seconds, compilation included (last: a loan that
   ends during compilation loses only this part).

`--smoke` runs the same code on the CPU at tiny sizes (the tests do), in about a minute.

    python benchmarks/device_check.py --out benchmarks/results/device-check
    python benchmarks/device_check.py --smoke --out /tmp/device-check
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from types import SimpleNamespace

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


def preset(script: str, env_id: str) -> str:
    return os.path.join(ROOT, "configs", "paper", script, f"{env_id}.toml")


# What each part runs: the paper's sizes on a GPU, tiny ones with --smoke (same code paths).
FULL = SimpleNamespace(
    env_id="MortarMayhem-Grid-v0", num_envs=32, num_steps=512, iterations=3, model={"ppo_trxl": [], "ppo_gru": [], "ppo_mamba": []},
    consistency=dict(num_envs=8, num_steps=64, rollouts=2), memory_env="Endless-MortarMayhem-v0", learn_seconds=180,
)
SMOKE = SimpleNamespace(
    env_id="MortarMayhem-Grid-v0", num_envs=2, num_steps=16, iterations=2,
    model={
        "ppo_trxl": ["--trxl-dim", "16", "--trxl-num-heads", "2", "--trxl-num-layers", "1", "--trxl-memory-length", "4"],
        "ppo_gru": ["--rnn-hidden-size", "8", "--embed-dim", "8", "--hidden-dim", "8"],
        "ppo_mamba": ["--embed-dim", "8", "--hidden-dim", "8", "--mamba-head-dim", "8", "--mamba-state-size", "4",
                      "--mamba-chunk-size", "8"],
    },
    consistency=dict(num_envs=2, num_steps=16, rollouts=2), memory_env="Endless-MortarMayhem-v0", learn_seconds=15,
)


# ---------------------------------------------------------------------------------------------
# The parts
# ---------------------------------------------------------------------------------------------
def consistency(sizes, device: torch.device) -> list[dict]:
    rows = []
    for name, script in SCRIPTS.items():
        for precision in PRECISIONS:
            flags = ["--config", preset(name, sizes.env_id), "--precision", precision, *sizes.model[name],
                     "--num-envs", str(sizes.consistency["num_envs"]), "--num-steps", str(sizes.consistency["num_steps"]),
                     "--num-minibatches", "2", *([] if device.type == "cuda" else ["--no-cuda"])]  # fmt: skip
            args = script.parse_args(flags)
            gaps = precision_ratio.measure(script, args, None, sizes.consistency["rollouts"], device)
            rows.append({"script": name, "precision": precision, "max_logprob_gap": gaps["max"],
                         "max_value_gap": gaps["value"], "samples": gaps["samples"]})  # fmt: skip
    return rows


def syncs(sizes, device: torch.device) -> list[dict]:
    rows = []
    for name, script in SCRIPTS.items():
        flags = ["--config", preset(name, sizes.env_id), *sizes.model[name], "--num-envs", str(sizes.consistency["num_envs"]),
                 "--num-steps", str(sizes.consistency["num_steps"]), *([] if device.type == "cuda" else ["--no-cuda"])]
        rows.append({"script": name, **precision_ratio.rollout_crossings(script, script.parse_args(flags), device)})
    return rows


def throughput(sizes, extra: list[str], nproc: int = 1, pairs=None) -> list[dict]:
    """Per (script, precision) of `pairs` (default: every one), a few iterations in a process of its own."""
    rows = []
    for name, precision in pairs or [(name, precision) for name in SCRIPTS for precision in PRECISIONS]:
        flags = ["--config", preset(name, sizes.env_id), *sizes.model[name], *extra]
        options = SimpleNamespace(env_id=sizes.env_id, num_envs=sizes.num_envs, num_steps=sizes.num_steps,
                                  iterations=sizes.iterations, extra=" ".join(flags))  # fmt: skip
        result = train_throughput.measure(options, name, nproc, f"--precision {precision}")
        rows.append({"script": name, "precision": precision, "ranks": nproc, **result})
    return rows


def compiled(sizes, device: torch.device, extra: list[str], names) -> list[dict]:
    rows = []
    for name in names:
        script = SCRIPTS[name]
        flags = ["--config", preset(name, sizes.env_id), "--precision", "float32", "--compile", *sizes.model[name],
                 "--num-envs", str(sizes.consistency["num_envs"]), "--num-steps", str(sizes.consistency["num_steps"]),
                 "--num-minibatches", "2", *([] if device.type == "cuda" else ["--no-cuda"])]  # fmt: skip
        torch._dynamo.reset()
        gaps = precision_ratio.measure(script, script.parse_args(flags), None, sizes.consistency["rollouts"], device)
        speed = throughput(sizes, extra + ["--compile"], pairs=[(name, "float32")])[0]
        rows.append({**speed, "max_logprob_gap": gaps["max"], "max_value_gap": gaps["value"]})
    return rows


def memory(sizes, extra: list[str]) -> dict:
    flags = ["--config", preset("ppo_trxl", sizes.memory_env), "--trxl-memory-length", "256", *sizes.model["ppo_trxl"], *extra]
    options = SimpleNamespace(env_id=sizes.memory_env, num_envs=sizes.num_envs, num_steps=sizes.num_steps,
                              iterations=2, extra=" ".join(flags))  # fmt: skip
    return {"env_id": sizes.memory_env, "window": 256, **train_throughput.measure(options, "ppo_trxl", 1, "")}


def learning(sizes, extra: list[str]) -> dict:
    """Train the paper's TrXL for `learn_seconds`, stop it as a pre-empted job, read its curve."""
    with tempfile.TemporaryDirectory(prefix="device-check-") as folder:
        command = [sys.executable, os.path.join(ROOT, "ppo_trxl.py"), "--config", preset("ppo_trxl", sizes.env_id),
                   "--num-envs", str(sizes.num_envs), "--num-steps", str(sizes.num_steps), *sizes.model["ppo_trxl"], *extra]  # fmt: skip
        process = subprocess.Popen(command, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        time.sleep(sizes.learn_seconds)
        process.send_signal(signal.SIGTERM)  # finishes the iteration, writes a checkpoint, exits
        output, _ = process.communicate(timeout=600)
        runs = glob.glob(os.path.join(folder, "runs", "*"))
        curve = []
        if runs:
            steps, values = plot.load_run(runs[0]).scalars.get("charts/episodic_return", ((), ()))
            curve = [{"step": int(step), "return": float(value)} for step, value in zip(steps, values)]
        return {"seconds": sizes.learn_seconds, "exit": process.returncode, "curve": curve,
                "checkpoint": bool(runs and os.path.exists(os.path.join(runs[0], "checkpoint.pt"))),
                "output_tail": output[-1500:]}  # fmt: skip


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------
def markdown(report: dict) -> str:
    lines = [f"# Device check: {report['device']}", "", f"torch {report['torch']}, {report['gpus']} GPU(s), "
             f"{'smoke (CPU, tiny sizes)' if report['smoke'] else 'full'}", ""]  # fmt: skip
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
        elif "skipped" in part:
            lines += [f"## {name}: skipped ({part['skipped']})", ""]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="folder for device_check.json and device_check.md")
    parser.add_argument("--smoke", action="store_true", help="the same code paths on the CPU at tiny sizes")
    parser.add_argument("--parts", nargs="+", default=["consistency", "syncs", "throughput", "memory", "ranks", "learning", "compiled"])
    options = parser.parse_args()
    cuda = torch.cuda.is_available() and not options.smoke
    if not cuda and not options.smoke:
        raise SystemExit("error: no CUDA device; run with --smoke to check the code paths on the CPU")
    device = torch.device("cuda" if cuda else "cpu")
    sizes = SMOKE if options.smoke else FULL
    extra = [] if cuda else ["--no-cuda"]
    os.makedirs(options.out, exist_ok=True)
    report = {
        "device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__, "smoke": options.smoke,
        "gpus": torch.cuda.device_count() if cuda else 0,
        "sizes": f"{sizes.env_id}, {sizes.num_envs} envs x {sizes.num_steps} steps", "parts": {},
    }  # fmt: skip
    # The smoke check runs each script and each precision once, and one pair of ranks on the CPU: the code
    # paths, not figures.
    timed = extra + ["--eval-interval", "0"]
    smoke_pairs = [("ppo_trxl", "bfloat16"), ("ppo_gru", "float32"), ("ppo_mamba", "bfloat16")] if options.smoke else None
    jobs = {
        "consistency": lambda: {"rows": consistency(sizes, device)},
        "syncs": lambda: {"rows": syncs(sizes, device)},
        "throughput": lambda: {"rows": throughput(sizes, timed, pairs=smoke_pairs)},
        "memory": lambda: {"result": memory(sizes, timed)},
        "ranks": lambda: {"rows": throughput(sizes, timed, 2, [("ppo_gru", "float32")] if options.smoke else
                                             [("ppo_trxl", "float32"), ("ppo_gru", "float32"), ("ppo_mamba", "float32")])}
        if report["gpus"] >= 2 or options.smoke else {"skipped": "one GPU"},
        "learning": lambda: {"result": learning(sizes, extra)},
        # Compiling takes tens of seconds a script: the smoke check compiles TrXL only.
        "compiled": lambda: {"rows": compiled(sizes, device, timed, ["ppo_trxl"] if options.smoke else list(SCRIPTS))},
    }
    for name in options.parts:
        started = time.monotonic()
        try:
            report["parts"][name] = jobs[name]()
        except (Exception, SystemExit):  # one part failing must not lose the others
            report["parts"][name] = {"error": traceback.format_exc(limit=3)[-3000:]}
        report["parts"][name]["seconds"] = round(time.monotonic() - started, 1)
        print(f"{name}: {'failed' if 'error' in report['parts'][name] else 'done'} in {report['parts'][name]['seconds']} s", flush=True)
        with open(os.path.join(options.out, "device_check.json"), "w") as f:
            json.dump(report, f, indent=1)
        with open(os.path.join(options.out, "device_check.md"), "w") as f:
            f.write(markdown(report))
    failed = [name for name, part in report["parts"].items() if "error" in part]
    print(markdown(report))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
