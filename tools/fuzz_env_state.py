"""Fuzz the env state of checkpoints: a stranger's file may hold any value of the right kind.

For each game, a tiny `ppo_gru.py` run writes a real checkpoint. Each case mutates one leaf of its
env state (generator words, reset parameters, carried values, actions: extreme, negative,
boundary, NaN, huge lengths, raw bytes of bools, wrong types and shapes, missing and extra keys;
with `--scope rank`, of everything the checkpoint keeps of a rank: memory, statistics, RNG states;
with `--scope optimizer`, of the optimizer's moments, step counts and settings),
then resumes the mutated checkpoint in a subprocess with a memory limit and a timeout. Every
outcome must be normal play (exit 0) or a one-line refusal (exit 1, one `error:` line, no
`error.log`): a signal, an abort, a hang, a traceback or a crash in play is a failure.

    python tools/fuzz_env_state.py                          # 8 cases per game (the tests run 4 for three games)
    python tools/fuzz_env_state.py --cases 60 --workers 2   # the long run
"""

from __future__ import annotations

import argparse
import copy
import glob
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GAMES = (
    "Endless-MortarMayhem-v0", "MortarMayhem-Grid-v0", "Endless-MysteryPath-v0", "MysteryPath-v0",
    "SearingSpotlights-v0", "Endless-SearingSpotlights-v0",
)  # fmt: skip
TINY = [
    "--num-envs", "2", "--num-steps", "64", "--num-minibatches", "1", "--update-epochs", "1", "--no-cuda",
    "--rnn-hidden-size", "8", "--embed-dim", "8", "--hidden-dim", "8", "--checkpoint-interval", "1", "--eval-interval", "0",
]  # fmt: skip
SCOPES = {"env": ("ranks", 0, "envs"), "rank": ("ranks", 0), "optimizer": ("optimizer",)}
"""What a case mutates: a leaf of the env state, of everything the checkpoint keeps of rank 0, or of the
optimizer's state."""
MEMORY_LIMIT = 6 * 2**30  # address space of a resumed run, bytes
TIMEOUT = 120  # seconds of a resumed run


def checkpoint_of(env_id: str, folder: str) -> str:
    """Train two iterations of a tiny run in `folder`; its checkpoint's path relative to `folder`."""
    command = [sys.executable, os.path.join(ROOT, "ppo_gru.py"), "--env-id", env_id, "--total-timesteps", "256", *TINY]
    subprocess.run(command, cwd=folder, check=True, capture_output=True, env=_environment())
    (path,) = glob.glob("runs/*/checkpoint.pt", root_dir=folder)
    return path


def _environment() -> dict[str, str]:
    # PYTHONPATH as given: ppo_gru.py, run by its path, finds the project beside itself.
    return {**os.environ, "OMP_NUM_THREADS": "1"}


# ---------------------------------------------------------------------------------------------
# Mutations: (description, function of the old value -> new value); `DELETE` removes the key
# ---------------------------------------------------------------------------------------------
DELETE = object()
INTS = [-1, 0, 1, 7, 255, 2**31, 2**63 - 1, -(2**63), 2**64, 2**200, 10**12]


def _tensor_mutations(old: torch.Tensor) -> list[tuple[str, Callable[[], Any]]]:
    mutations: list[tuple[str, Callable[[], Any]]] = []
    if old.dtype == torch.bool:
        mutations.append(("raw byte 0x7f", lambda: torch.full(old.shape, 127, dtype=torch.uint8).view(torch.bool)))
        mutations.append(("raw byte 0xff", lambda: torch.full(old.shape, 255, dtype=torch.uint8).view(torch.bool)))
    elif old.dtype.is_floating_point:
        info = torch.finfo(old.dtype)
        for value in (float("nan"), float("inf"), -float("inf"), info.min, 0.0, info.max, 3.0):
            mutations.append((f"all {value}", lambda v=value: torch.full(old.shape, v, dtype=old.dtype)))
    else:
        info = torch.iinfo(old.dtype)
        for value in (info.min, info.max, -1, 0, 1, 45, 83, 84, 540, 1080, 3000, 10**12):
            if info.min <= value <= info.max:
                mutations.append((f"all {value}", lambda v=value: torch.full(old.shape, v, dtype=old.dtype)))
        mutations.append(("+1", lambda: old + 1))
        mutations.append(("-1", lambda: old - 1))
        mutations.append(("random", lambda: torch.randint(-(2**40), 2**40, old.shape).to(old.dtype)))
    if old.dim() >= 1:
        mutations.append(("zero-stride 10**9 rows", lambda: old.reshape(-1)[:1].reshape([1] * old.dim()).expand(10**9, *old.shape[1:])))
        mutations.append(("doubled", lambda: torch.cat([old, old])))
        mutations.append(("empty", lambda: old[:0]))
        mutations.append(("one longer", lambda: torch.cat([old, old[-1:] if len(old) else torch.zeros_like(old[:1])])))
        if len(old) > 1:
            mutations.append(("reversed", lambda: old.flip(0)))
    mutations += [
        ("float64", lambda: old.to(torch.float64)),
        ("int32", lambda: old.to(torch.int32)),
        ("one more axis", lambda: old.unsqueeze(0)),
        ("scalar", lambda: torch.tensor(0)),
        ("a list", lambda: old.tolist()),
        ("requires grad", lambda: torch.zeros(old.shape, requires_grad=True)),
    ]
    return mutations


def mutations_of(old: Any) -> list[tuple[str, Callable[[], Any]]]:
    if isinstance(old, torch.Tensor):
        mutations = _tensor_mutations(old)
    elif type(old) is bool:
        mutations = [("negated", lambda: not old), ("int 1", lambda: 1), ("int 2", lambda: 2)]
    elif type(old) is int:
        mutations = [(f"int {v}", lambda v=v: v) for v in INTS] + [("old + 1", lambda: old + 1), ("bool", lambda: True)]
    elif type(old) is float:
        mutations = [(f"float {v}", lambda v=v: v) for v in (float("nan"), float("inf"), -1.0, 0.0, 1e300, old * 100)]
    elif type(old) is list:
        mutations = [
            ("empty list", lambda: []), ("doubled list", lambda: old * 2), ("10**6 items", lambda: [old[0] if old else 0] * 10**6),
            ("nested", lambda: [old]),
        ]  # fmt: skip
    elif type(old) is str:
        mutations = [("empty str", lambda: ""), ("long str", lambda: "x" * 100_000), ("other str", lambda: old + "x")]
    else:
        mutations = []
    return mutations + [("None", lambda: None), ("a str", lambda: "os.system"), ("deleted", lambda: DELETE)]


def leaves(value: Any, path: tuple = ()) -> list[tuple]:
    """Paths of every leaf (and of every dict, for extra keys) of a state."""
    if isinstance(value, dict):
        return [path + ("+extra",)] + [p for key, v in value.items() for p in leaves(v, path + (key,))]
    if isinstance(value, list) and value and isinstance(value[0], (dict, list)):
        return [p for k, v in enumerate(value) for p in leaves(v, path + (k,))]
    return [path]


def cases(state: dict, count: int, rng: random.Random) -> list[tuple[str, tuple, Callable]]:
    """`count` (path, description, mutation) drawn over every leaf and every mutation of it."""
    every = []
    for path in leaves(state):
        if path[-1] == "+extra":
            every.append((path, "extra key", lambda: 0))
            continue
        holder = state
        for key in path[:-1]:
            holder = holder[key]
        every += [(path, name, make) for name, make in mutations_of(holder[path[-1]])]
    return rng.sample(every, min(count, len(every)))


def _root(checkpoint: dict, scope: str) -> Any:
    root = checkpoint
    for key in SCOPES[scope]:
        root = root[key]
    return root


def mutated(checkpoint: dict, scope: str, path: tuple, make: Callable) -> dict:
    holder = _root(checkpoint, scope)
    for key in path[:-1]:
        holder = holder[key]
    if path[-1] == "+extra":
        holder["planted"] = make()
        return checkpoint
    value = make()
    if value is DELETE:
        del holder[path[-1]]
    else:
        holder[path[-1]] = value
    return checkpoint


# ---------------------------------------------------------------------------------------------
# One case: resume in a subprocess, classify the outcome
# ---------------------------------------------------------------------------------------------
def _limit_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))


def resume(run_folder: str, relative: str, data: dict, budget: int) -> dict:
    """Resume a copy of the run with `data` as its checkpoint; the outcome and its evidence."""
    with tempfile.TemporaryDirectory(prefix="fuzz-case-") as folder:
        shutil.copytree(os.path.join(run_folder, "runs"), os.path.join(folder, "runs"))
        torch.save(data, os.path.join(folder, relative))
        command = [sys.executable, os.path.join(ROOT, "ppo_gru.py"), "--resume", relative, "--total-timesteps", str(budget)]
        started = time.monotonic()
        try:
            done = subprocess.run(
                command, cwd=folder, capture_output=True, text=True, timeout=TIMEOUT, preexec_fn=_limit_memory,
                env=_environment(),
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            return {"outcome": "hang", "detail": f"no exit after {TIMEOUT} s"}
        seconds = round(time.monotonic() - started, 1)
        crashed_in_play = bool(glob.glob("runs/*/error.log", root_dir=folder))
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    if done.returncode == 0:
        return {"outcome": "played", "seconds": seconds}
    if done.returncode < 0:
        return {"outcome": "signal", "detail": f"killed by signal {-done.returncode}: {' | '.join(lines[-3:])}"}
    if any("Traceback" in line for line in lines):
        return {"outcome": "traceback", "detail": " | ".join(lines[-3:])}
    last = lines[-1] if lines else ""
    if done.returncode == 1 and last.startswith("error: ") and not crashed_in_play:
        return {"outcome": "refused", "detail": last, "seconds": seconds}
    return {"outcome": "crash in play" if crashed_in_play else "other", "detail": f"exit {done.returncode}: {last}"}


def fuzz(games: list[str], per_game: int, workers: int, seed: int, scope: str = "env", log: Callable[[str], None] = print) -> dict:
    """Run `per_game` cases for each game; every case with its outcome."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    results = []
    with tempfile.TemporaryDirectory(prefix="fuzz-runs-") as base:
        jobs = []
        for env_id in games:
            run_folder = os.path.join(base, env_id)
            os.makedirs(run_folder)
            relative = checkpoint_of(env_id, run_folder)
            original = torch.load(os.path.join(run_folder, relative), weights_only=True)
            budget = int(original["global_step"]) + 128  # one more iteration
            for path, name, make in cases(_root(original, scope), per_game, rng):
                data = mutated(copy.deepcopy(original), scope, path, make)
                case = {"env_id": env_id, "leaf": ".".join(map(str, path)), "mutation": name}
                jobs.append((case, run_folder, relative, data, budget))
        with ThreadPoolExecutor(max_workers=workers) as pool:
            futures = [pool.submit(resume, folder, relative, data, budget) for _, folder, relative, data, budget in jobs]
            for (case, *_), future in zip(jobs, futures):
                case.update(future.result())
                results.append(case)
                if case["outcome"] not in ("played", "refused"):
                    log(f"FAILED {case['env_id']} {case['leaf']} <- {case['mutation']}: {case['outcome']}: {case['detail']}")
    return {"cases": results}


def table(report: dict, games: list[str]) -> str:
    outcomes = ["played", "refused", "signal", "hang", "traceback", "crash in play", "other"]
    counts = Counter((case["env_id"], case["outcome"]) for case in report["cases"])
    lines = ["| game | " + " | ".join(outcomes) + " |", "|---" * (len(outcomes) + 1) + "|"]
    for env_id in games:
        lines.append(f"| {env_id} | " + " | ".join(str(counts[(env_id, o)]) for o in outcomes) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=8, help="cases per game")
    parser.add_argument("--games", nargs="+", default=list(GAMES), choices=GAMES)
    parser.add_argument("--workers", type=int, default=1, help="resumed runs at a time (one core each)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scope", choices=SCOPES, default="env", help="env: the env state; rank: all that rank 0 keeps; optimizer: the optimizer's state")
    parser.add_argument("--out", help="write every case and its outcome to this JSON file")
    args = parser.parse_args()
    started = time.monotonic()
    report = fuzz(args.games, args.cases, args.workers, args.seed, args.scope)
    print(table(report, args.games))
    failed = [case for case in report["cases"] if case["outcome"] not in ("played", "refused")]
    print(f"{len(report['cases'])} cases in {time.monotonic() - started:.0f} s: {len(failed)} failed")
    if args.out:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
