"""Training throughput and peak memory of ppo_trxl.py, ppo_gru.py and ppo_mamba.py.

Each configuration runs in a fresh process (so that peak memory is its own) for a few iterations
of the real training loop; the first iteration is a warm-up and is left out of the speeds (its seconds are
printed: with `--compile` they include the compilation).
Prints one table row per configuration: env steps per second end to end, for the rollout alone
and for the update alone, and peak memory (RSS on CPU, max allocated on CUDA). `--variants`
compares flag sets side by side and `--repeats` takes medians over runs taken in turn. With
`--nproc 1 2` it also runs data-parallel under torchrun and prints the scaling efficiency
(SPS with N ranks / (N x SPS with one rank)). The CPU cores are shared out between the ranks
unless OMP_NUM_THREADS says otherwise.

    python benchmarks/train_throughput.py                                  # image probe env, paper model sizes
    python benchmarks/train_throughput.py --nproc 1 2 --extra="--no-cuda"   # data-parallel scaling (torchrun)
    python benchmarks/train_throughput.py --scripts ppo_trxl --env-id MortarMayhem-Grid-v0 --num-envs 8 \
        --num-steps 128 --extra="--trxl-memory-length 119" --variants="--precision float32, --precision bfloat16" \
        --repeats 3
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def worker(script: str, flags: list[str]) -> None:
    """Run training in this process and print one JSON line of measurements."""
    sys.path.insert(0, ROOT)
    module = __import__(script)
    import torch

    args = module.parse_args(flags)
    history = module.train(args)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    timed = history[1:] or history
    # charts/SPS counts from the start of training: recover the wall time after the warm-up iteration.
    elapsed = [h["global_step"] / h["charts/SPS"] for h in history]
    steady = history[0]["charts/SPS"]
    if len(history) > 1:
        steady = (history[-1]["global_step"] - history[0]["global_step"]) / (elapsed[-1] - elapsed[0])
    cuda = torch.cuda.is_available() and args.cuda
    result = {
        "sps": steady,
        "rollout_sps": sum(h["charts/rollout_SPS"] for h in timed) / len(timed),
        "update_sps": sum(h["charts/update_SPS"] for h in timed) / len(timed),
        "first_iteration_s": elapsed[0],  # the warm-up: with --compile, the compilation is in it
        "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }
    print("RESULT " + json.dumps(result))


def measure(options, script: str, nproc: int, variant: str) -> dict:
    """One training run in a fresh process (torchrun for several ranks)."""
    flags = [
        "--env-id", options.env_id, "--num-envs", str(options.num_envs), "--num-steps", str(options.num_steps),
        "--total-timesteps", str(options.iterations * options.num_envs * options.num_steps * nproc),
        *options.extra.split(), *variant.split(),
    ]
    launcher = [sys.executable]
    if nproc > 1:
        launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
                     "--master_port=29531"]
    # The cores are shared out between the ranks, unless OMP_NUM_THREADS says otherwise.
    threads = os.environ.get("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    env = {**os.environ, "OMP_NUM_THREADS": threads, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    with tempfile.TemporaryDirectory() as scratch:  # the runs' folders and checkpoints are thrown away
        out = subprocess.run([*launcher, __file__, "--worker", script, *flags], capture_output=True, text=True, cwd=scratch, env=env)
    line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
    if line is None:
        print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
        raise SystemExit(f"{script} {variant} failed")
    return json.loads(line[len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scripts", nargs="+", default=["ppo_trxl", "ppo_gru", "ppo_mamba"])
    parser.add_argument("--env-id", default="ProofOfMemoryImage-v0")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--num-steps", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=3, help="training iterations per configuration (first is warm-up)")
    parser.add_argument("--extra", default="", help="more flags for the scripts, given with '=': --extra='--no-cuda'")
    parser.add_argument("--variants", default="", help="flag sets compared side by side, separated by commas, "
                        "e.g. --variants='--precision float32, --precision bfloat16'")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1], help="ranks per run (>1 launches torchrun)")
    parser.add_argument("--repeats", type=int, default=1, help="runs per configuration, taken in turn; the table "
                        "gives medians (a shared machine varies by 10-20%% from run to run)")
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        worker(options.worker[0], options.worker[1:])
        return

    variants = [variant.strip() for variant in options.variants.split(",")]
    configs = [(script, nproc, variant) for script in options.scripts for variant in variants for nproc in options.nproc]
    runs = {config: [] for config in configs}
    for _ in range(options.repeats):
        for config in configs:
            runs[config].append(measure(options, *config))

    median = lambda rs, key: statistics.median(r[key] for r in rs)
    print(f"\nenv {options.env_id}, {options.num_envs} envs x {options.num_steps} steps, extra flags: '{options.extra}', "
          f"medians of {options.repeats} run(s), {options.iterations - 1} timed iteration(s) each\n")
    print("| script | flags | ranks | device | SPS end to end (min-max) | rollout SPS | update SPS | scaling "
          "| first iteration (s) | peak RSS / rank (GiB) | peak CUDA alloc (GiB) |")
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---:|")
    for script, nproc, variant in configs:
        rs = runs[(script, nproc, variant)]
        sps = median(rs, "sps")
        spread = f" ({min(r['sps'] for r in rs):,.0f}-{max(r['sps'] for r in rs):,.0f})" if len(rs) > 1 else ""
        single = runs.get((script, 1, variant))
        scaling = f"{sps / (nproc * median(single, 'sps')):.0%}" if single and nproc > 1 else "-"
        cuda = "-" if rs[0]["cuda_gib"] is None else f"{median(rs, 'cuda_gib'):.2f}"
        print(f"| {script} | {variant or '-'} | {nproc} | {rs[0]['device']} | {sps:,.0f}{spread} | {median(rs, 'rollout_sps'):,.0f} "
              f"| {median(rs, 'update_sps'):,.0f} | {scaling} | {median(rs, 'first_iteration_s'):.1f} | {median(rs, 'rss_gib'):.2f} | {cuda} |")


if __name__ == "__main__":
    main()
