"""Training throughput and peak memory of ppo_trxl.py and ppo_gru.py.

Each configuration runs in a fresh process (so that peak memory is its own) for a few iterations
of the real training loop; the first iteration is a warm-up and is left out of the speeds.
Prints one table row per configuration: env steps per second end to end, for the rollout alone
and for the update alone, and peak memory (RSS on CPU, max allocated on CUDA). With `--nproc 1 2`
it also runs data-parallel under torchrun and prints the scaling efficiency
(SPS with N ranks / (N x SPS with one rank)). Each rank uses one thread unless OMP_NUM_THREADS says
otherwise.

    python benchmarks/train_throughput.py                                  # image probe env, paper model sizes
    python benchmarks/train_throughput.py --nproc 1 2 --extra="--no-cuda"   # data-parallel scaling (torchrun)
    python benchmarks/train_throughput.py --env-id MortarMayhem-Grid-v0 --num-envs 8 --num-steps 128 \
        --extra="--trxl-memory-length 119"
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys

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
    cuda = torch.cuda.is_available() and args.cuda
    result = {
        "sps": sum(h["charts/SPS"] for h in timed[-1:]),
        "rollout_sps": sum(h["charts/rollout_SPS"] for h in timed) / len(timed),
        "update_sps": sum(h["charts/update_SPS"] for h in timed) / len(timed),
        "rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "cuda_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else "cpu",
    }
    print("RESULT " + json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scripts", nargs="+", default=["ppo_trxl", "ppo_gru"])
    parser.add_argument("--env-id", default="ProofOfMemoryImage-v0")
    parser.add_argument("--num-envs", type=int, default=8)
    parser.add_argument("--num-steps", type=int, default=128)
    parser.add_argument("--iterations", type=int, default=3, help="training iterations per configuration (first is warm-up)")
    parser.add_argument("--extra", default="", help="more flags for the scripts, given with '=': --extra='--no-cuda'")
    parser.add_argument("--nproc", type=int, nargs="+", default=[1], help="ranks per run (>1 launches torchrun)")
    parser.add_argument("--worker", nargs=argparse.REMAINDER, help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.worker:
        worker(options.worker[0], options.worker[1:])
        return

    rows = []
    for script in options.scripts:
        for nproc in options.nproc:
            flags = [
                "--env-id", options.env_id, "--num-envs", str(options.num_envs), "--num-steps", str(options.num_steps),
                "--total-timesteps", str(options.iterations * options.num_envs * options.num_steps * nproc),
                *options.extra.split(),
            ]
            launcher = [sys.executable]
            if nproc > 1:
                launcher += ["-m", "torch.distributed.run", f"--nproc_per_node={nproc}", "--master_addr=127.0.0.1",
                             "--master_port=29531"]
            # One thread per rank, so that N ranks use N cores.
            env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}
            out = subprocess.run(
                [*launcher, __file__, "--worker", script, *flags], capture_output=True, text=True, cwd=ROOT, env=env
            )
            line = next((l for l in out.stdout.splitlines() if l.startswith("RESULT ")), None)
            if line is None:
                print(out.stdout[-2000:], out.stderr[-2000:], file=sys.stderr)
                raise SystemExit(f"{script} failed")
            rows.append((script, nproc, json.loads(line[len("RESULT "):])))

    print(f"\nenv {options.env_id}, {options.num_envs} envs x {options.num_steps} steps, extra flags: '{options.extra}'\n")
    print("| script | ranks | device | SPS end to end | rollout SPS | update SPS | scaling | peak RSS / rank (GiB) | peak CUDA alloc (GiB) |")
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    single = {script: r["sps"] for script, nproc, r in rows if nproc == 1}
    for script, nproc, r in rows:
        cuda = "-" if r["cuda_gib"] is None else f"{r['cuda_gib']:.2f}"
        scaling = f"{r['sps'] / (nproc * single[script]):.0%}" if script in single and nproc > 1 else "-"
        print(f"| {script} | {nproc} | {r['device']} | {r['sps']:,.0f} | {r['rollout_sps']:,.0f} | {r['update_sps']:,.0f} "
              f"| {scaling} | {r['rss_gib']:.2f} | {cuda} |")


if __name__ == "__main__":
    main()
