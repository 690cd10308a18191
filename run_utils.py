"""Run plumbing shared by `ppo_trxl.py`, `ppo_gru.py`, `ppo_mamba.py` and `enjoy.py` (no algorithm here).

- The run life cycle (`Run`, at the end of this file): the checks, seeds, run folder, TensorBoard and
  W&B, held-out evaluation envs, videos, signals, heartbeat, checkpoint schedule, progress line, crash
  report and data-parallel ranks around a script's training loop.
- Presets and files: every value read from a preset or a checkpoint is checked against the script's
  `Args` field types; checkpoints and saved models are read with `torch.load(weights_only=True)`
  and nothing read from a file may name code: the algorithm maps through a fixed table, a
  `module:Env` id stored in a file is imported only when the user gives that same `--env-id`, run
  names with path separators are refused, and W&B settings come from the command line only.
- Writes: checkpoints go to a temporary file, are flushed to disk, then replace the previous one;
  a full disk is reported as such and leaves the previous checkpoint in place.
- Run folders: `runs/{env_id}__{exp_name}__{seed}__{time}`, created exclusively (a suffix `-2`,
  `-3`, ... where two runs start in the same second).
- Environments, episode statistics, videos and data-parallel helpers used the same way by every script.
"""

from __future__ import annotations

import dataclasses
import difflib
import errno
import functools
import glob
import importlib
import io
import json
import os
import random
import re
import signal
import sys
import threading
import time
import tomllib
import traceback
from collections import deque
from typing import Any, Callable, Literal, get_args, get_origin, get_type_hints

import gymnasium as gym
import numpy as np
import torch
import torch.distributed as dist
import tyro
from torch.utils.tensorboard import SummaryWriter

import envs as _registered_envs  # noqa: F401  (registers the environment ids with gymnasium)

RUNS_ROOT = "runs"
# Every file format the scripts write, and the one script that reads it: a file names no module.
CHECKPOINT_FORMATS = {"ppo_trxl-checkpoint-1": "ppo_trxl", "ppo_gru-checkpoint-1": "ppo_gru",
                      "ppo_mamba-checkpoint-1": "ppo_mamba"}
ALGORITHMS = ("ppo_trxl", "ppo_gru", "ppo_mamba")
SCRIPT_NAMES = f"{', '.join(ALGORITHMS[:-1])} or {ALGORITHMS[-1]}"  # as messages name them
# Taken from the command line only, never from a checkpoint: who the run reports to.
COMMAND_LINE_ONLY = ("track", "wandb_project_name", "wandb_entity", "config", "resume")
# Fields of `Args` that the run fills in: no preset may set them.
RUNTIME_FIELDS = ("config", "resume", "batch_size", "num_iterations", "world_size", "run_name", "ground_truth_size")
# Fields that older checkpoints hold and that no longer exist: ignored when resuming.
RETIRED_FIELDS = ("minibatch_size",)


def fail(message: str) -> None:
    """Stop with a message that names the problem (non-zero exit, no traceback)."""
    raise SystemExit(f"error: {message}")


def refuse(problems: list[str]) -> None:
    """Stop with every problem found, in one message, when there is any."""
    if len(problems) == 1:
        fail(problems[0])
    if problems:
        fail(f"{len(problems)} problems, nothing was started:\n" + "\n".join(f"  - {p}" for p in problems))


# ---------------------------------------------------------------------------------------------
# Presets, checkpoint args and the command line
# ---------------------------------------------------------------------------------------------
def _type_error(annotation: Any, value: Any) -> str | None:
    """Why `value` cannot be a value of the type `annotation` (None if it can)."""
    options = get_args(annotation) if get_origin(annotation) is not None else (annotation,)
    if get_origin(annotation) is Literal:
        return None if value in options else f"must be one of {', '.join(map(repr, options))}, got {value!r}"
    if value is None:
        return None if type(None) in options else f"must not be empty, got {value!r}"
    if bool in options:
        return None if isinstance(value, bool) else f"must be true or false, got {value!r}"
    if int in options:
        return None if isinstance(value, int) and not isinstance(value, bool) else f"must be an integer, got {value!r}"
    if float in options:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return None if ok else f"must be a number, got {value!r}"
    if str in options:
        return None if isinstance(value, str) else f"must be a string, got {value!r}"
    for option in options:
        if get_origin(option) is Literal:
            choices = get_args(option)
            return None if value in choices else f"must be one of {', '.join(map(repr, choices))}, got {value!r}"
    return f"has an unsupported value {value!r}"


def checked_values(values: dict, args_cls: type, source: str, refused: tuple[str, ...],
                   problems: list[str] | None = None) -> dict:
    """Keys and values of a preset or checkpoint checked against the fields of `args_cls`. Each problem
    goes to `problems` (the value is left out) or, without that list, stops at once."""
    hints = get_type_hints(args_cls)
    known = [f.name for f in dataclasses.fields(args_cls) if f.name not in refused]
    found = [] if problems is None else problems
    checked = {}
    for key, value in values.items():
        name = str(key).replace("-", "_")
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            found.append(f"{source}: unknown key {key!r}{hint}")
        elif (problem := _type_error(hints[name], value)) is not None:
            found.append(f"{source}: {key} {problem}")
        else:
            checked[name] = value
    if problems is None:
        refuse(found)
    return checked


def load_preset(path: str, args_cls: type, refused: tuple[str, ...], problems: list[str] | None = None,
                script: str = "") -> dict:
    """Read a TOML preset and check every key and value type against `args_cls` (see `checked_values`)."""
    if os.path.isdir(path):
        fail(f"config file {path!r} is a directory; give a .toml file such as configs/probe/ppo_trxl/ProofOfMemory-v0.toml")
    try:
        with open(path, "rb") as f:
            preset = tomllib.load(f)
    except FileNotFoundError:
        fail(f"config file {path!r} does not exist{nearest_files(path, preset_paths(), prefer=f'/{script}/')}")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        fail(f"config file {path!r} is not valid TOML: {e}")
    return checked_values(preset, args_cls, f"config file {path!r}", refused, problems)


def preset_paths() -> list[str]:
    """Every preset of the project, as a path from the working folder where it lies below it."""
    configs = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
    paths = sorted(glob.glob(os.path.join(configs, "**", "*.toml"), recursive=True))
    return [os.path.relpath(p) if not os.path.relpath(p).startswith("..") else p for p in paths]


def nearest_files(path: str, candidates: list[str], prefer: str = "", most: int = 2) -> str:
    """'; did you mean ...' naming the files most like a missing `path` (those with its file name, and
    those containing `prefer`, first); '' when nothing is near."""
    def likeness(candidate: str) -> tuple[bool, float]:
        ratio = difflib.SequenceMatcher(None, path, candidate).ratio()
        return os.path.basename(candidate) == os.path.basename(path), ratio + (0.05 if prefer and prefer in candidate else 0)

    near = [c for c in sorted(candidates, key=likeness, reverse=True) if likeness(c)[0] or likeness(c)[1] >= 0.6]
    return f"; did you mean {' or '.join(near[:most])}?" if near else ""


def parse_args(args_cls: type, script: str, argv: list[str] | None, check_args: Callable,
               unknown_id: dict | None = None):
    """tyro CLI on top of a checkpoint's args (`--resume`), a `--config` preset, or else the paper's run of
    `--env-id` (`configs/paper/{script}/{id}.toml`); flags win. `unknown_id`: the defaults an id without a
    paper preset gets. Every problem of the preset and the flags is refused in one message."""
    argv = sys.argv[1:] if argv is None else argv
    defaults, problems = args_cls(), []
    asks_help = any(arg in ("-h", "--help") for arg in argv)
    if (path := flag_value(argv, "--resume")) is not None:
        saved = args_from_checkpoint(load_checkpoint(path, script), path, args_cls, argv)
        defaults = dataclasses.replace(defaults, **saved)
    elif (path := flag_value(argv, "--config")) is not None or (path := paper_preset(script, flag_value(argv, "--env-id"))):
        defaults = dataclasses.replace(defaults, config=path, **load_preset(path, args_cls, RUNTIME_FIELDS, problems, script))
    elif flag_value(argv, "--env-id") not in (None, defaults.env_id):
        defaults = dataclasses.replace(defaults, **(unknown_id or {}))
    if asks_help:  # the flags by group, with the defaults this command line would run (a preset's included)
        print(flag_help(args_cls, script, defaults))
        raise SystemExit(0)
    args = tyro.cli(args_cls, default=defaults, args=argv)
    if args.resume is None:  # a resumed run is checked against its checkpoint first, when it starts
        check_args(args, problems)
    return args


def flag_help(args_cls: type, script: str, defaults) -> str:
    """`--help`: every flag of `args_cls` under the group its `# Group` comment names, with its docstring
    wrapped once to the terminal and the default this command line would use."""
    import ast
    import inspect
    import shutil
    import textwrap

    source = textwrap.dedent(inspect.getsource(args_cls))
    lines = source.splitlines()
    body = ast.parse(source).body[0].body
    groups, group = {}, "Flags"
    width = min(shutil.get_terminal_size((100, 24)).columns, 110)
    for i, node in enumerate(body):
        if not isinstance(node, ast.AnnAssign):
            continue
        above = lines[node.lineno - 2].strip()  # a "# Group" comment right above a field opens a group
        group = above[2:] if above.startswith("# ") else group
        annotation = ast.unparse(node.annotation)
        if "Suppress" in annotation:
            continue
        name = node.target.id
        following = body[i + 1] if i + 1 < len(body) else None
        doc = following.value.value if isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant) else ""
        flag = "--" + name.replace("_", "-")
        default = getattr(defaults, name)
        if annotation == "bool":
            spec = f"{flag} / --no-{flag[2:]}"
        elif annotation.startswith("Literal"):
            spec = f"{flag} {{{','.join(str(v) for v in ast.literal_eval(node.annotation.slice))}}}"
        else:
            spec = f"{flag} {annotation.split(' |')[0].upper()}"
        text = " ".join(doc.split()) + f" (default: {'unset' if default is None else default})"
        entry = textwrap.fill(text, width, initial_indent=" " * 34, subsequent_indent=" " * 34, break_on_hyphens=False)
        entry = (f"  {spec:<31} " + entry[34:]) if len(spec) <= 31 else f"  {spec}\n{entry}"
        groups.setdefault(group, []).append(entry)
    summary = (sys.modules[args_cls.__module__].__doc__ or "").splitlines()[0]
    intro = f"usage: python {script}.py [--flag VALUE ...]\n\n" + textwrap.fill(
        f"{summary} Flags override a --config preset and a --resume checkpoint; the defaults shown are the ones "
        "this command line would run. More: docs/usage.md.", width)
    return "\n\n".join([intro, *(f"{title}\n" + "\n".join(entries) for title, entries in groups.items())])


def paper_preset(script: str, env_id: str | None) -> str | None:
    """`configs/paper/{script}/{env_id}.toml`, the paper's run of that id, where the paper has one."""
    if not env_id or not re.fullmatch(r"[A-Za-z0-9_.-]+", env_id):  # e.g. `module:EnvId-v0`: a third-party id
        return None
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", "paper", script, f"{env_id}.toml")
    return path if os.path.isfile(path) else None


def preset_headline(path: str | None) -> str | None:
    """The first sentence of a preset's leading comment: what it targets (e.g. the published number it
    reproduces), however many lines it spans."""
    if not path:
        return None
    lines = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("#"):
                break
            lines.append(line.lstrip("#").strip())
            if lines[-1].endswith("."):
                break
    return " ".join(lines) or None


def flag_value(argv: list[str], flag: str) -> str | None:
    """The value of `--flag` (or `--flag_with_underscores`) on a command line, if given."""
    spellings = {flag, "--" + flag[2:].replace("-", "_")}
    for i, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name in spellings:
            if value or "=" in arg:
                return value
            if i + 1 < len(argv):
                return argv[i + 1]
    return None


def args_from_checkpoint(checkpoint: dict, path: str, args_cls: type, argv: list[str]) -> dict:
    """The values of a checkpoint's args that a resumed run takes over, checked like a preset.

    The W&B identity and `--track` are the command line's; the run name must be a plain folder
    name; a `module:Env` id is only taken when the command line names the same id (it imports
    `module`)."""
    saved = checkpoint.get("args")
    if not isinstance(saved, dict):
        fail(f"checkpoint {path!r}: its args are missing or damaged")
    saved = {k: v for k, v in saved.items() if k not in COMMAND_LINE_ONLY + RETIRED_FIELDS}
    run_name = saved.pop("run_name", "")
    values = checked_values(saved, args_cls, f"checkpoint {path!r}", ())
    values["run_name"] = plain_name(run_name, f"checkpoint {path!r}: run_name")
    env_id = values.get("env_id", "")
    if ":" in env_id and flag_value(argv, "--env-id") != env_id:
        fail(
            f"checkpoint {path!r} names the environment {env_id!r}, which would import the module "
            f"{env_id.split(':', 1)[0]!r}; if you trust it, pass --env-id {env_id} to allow that"
        )
    return values


# ---------------------------------------------------------------------------------------------
# Ranges of the flags every script shares (each script adds its own)
# ---------------------------------------------------------------------------------------------
COMMON_RANGES = {
    "seed": "[0, 4294967295]",
    "total_timesteps": ">= 1",
    "num_envs": "[1, 65536]",
    "num_steps": ">= 1",
    "init_lr": "> 0",
    "final_lr": ">= 0",
    "anneal_steps": ">= 1",
    "gamma": "[0, 1]",
    "gae_lambda": "[0, 1]",
    "num_minibatches": ">= 1",
    "update_epochs": ">= 1",
    "clip_coef": "> 0",
    "init_ent_coef": ">= 0",
    "final_ent_coef": ">= 0",
    "vf_coef": ">= 0",
    "max_grad_norm": "> 0",
    "target_kl": "> 0",
    "reconstruction_coef": ">= 0",
    "ground_truth_coef": ">= 0",
    "checkpoint_interval": ">= 0",
    "checkpoint_minutes": ">= 0",
    "eval_interval": ">= 0",
    "eval_seeds": "[1, 65536]",
    "eval_repetitions": ">= 1",
    "eval_seed_start": "[0, 4294967295]",
}


def _within(value: float, rule: str) -> bool:
    if not np.isfinite(value):
        return False
    if rule == "finite":
        return True
    if rule.startswith((">=", ">", "<=", "<")):
        operator, bound = rule.split()
        bound = float(bound)
        return {">=": value >= bound, ">": value > bound, "<=": value <= bound, "<": value < bound}[operator]
    low, high = (float(x) for x in rule[1:-1].split(","))
    above = value >= low if rule[0] == "[" else value > low
    below = value <= high if rule[-1] == "]" else value < high
    return above and below


def range_problems(args, ranges: dict[str, str]) -> list[str]:
    """A line for each field outside its range, naming the flag, the value and what is allowed.

    A range is '>= a', '> a', an interval such as '[a, b]' or '(a, b]', or 'finite'; an unset optional
    field passes."""
    problems = []
    for name, allowed in ranges.items():
        value = getattr(args, name, None)
        if value is not None and not _within(value, allowed):
            in_range = f"in {allowed}" if allowed[0] in "[(" else allowed
            problems.append(f"--{name.replace('_', '-')} must be {in_range}, got {value!r}")
    if args.num_envs * args.num_steps > 2**24:
        problems.append(f"--num-envs x --num-steps is {args.num_envs * args.num_steps:,} steps per rollout; "
                        f"at most {2**24:,} are allowed")
    return problems


def common_problems(args, ranges: dict[str, str]) -> list[str]:
    """What is wrong with the flags every script shares: ranges, names, JSON flags, budget, seeds, env id."""
    problems = range_problems(args, ranges)
    problems += filter(None, [name_problem(args.exp_name, "--exp-name"),  # it names the run folder and model file
                              json_problem(args.env_kwargs, "--env-kwargs"),
                              json_problem(args.eval_env_kwargs, "--eval-env-kwargs"),
                              env_id_problem(args.env_id)])
    rollout = args.num_envs * args.num_steps * args.world_size
    if args.total_timesteps < rollout:
        ranks = f" x {args.world_size} ranks" if args.world_size > 1 else ""
        problems.append(f"--total-timesteps {args.total_timesteps:,} is less than one rollout (--num-envs {args.num_envs} "
                        f"x --num-steps {args.num_steps}{ranks} = {rollout:,} steps); a run trains whole rollouts: "
                        f"the nearest budgets are {rollout:,} and {2 * rollout:,}")
    # Training seeds [seed, seed + envs x ranks) against the held-out ones [start, start + eval_seeds).
    training_end, eval_end = args.seed + args.num_envs * args.world_size, args.eval_seed_start + args.eval_seeds
    if args.eval_interval and args.seed < eval_end and args.eval_seed_start < training_end:
        problems.append("the held-out evaluation seeds overlap the training seeds; change --eval-seed-start")
    return problems


def check_rollout_fits(args, space: gym.Space) -> None:
    """Refuse a rollout whose observations alone would not fit in this machine's memory."""
    boxes = list(space.spaces.values()) if isinstance(space, gym.spaces.Dict) else [space]
    per_step = sum(int(np.prod(box.shape)) * (1 if box.dtype == np.uint8 else 4) for box in boxes)
    needed = per_step * args.num_envs * args.num_steps
    try:
        available = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return
    if needed > 0.8 * available:
        fail(
            f"a rollout of --num-envs {args.num_envs} x --num-steps {args.num_steps} needs {needed / 2**30:.1f} GiB for "
            f"its observations alone; this machine has {available / 2**30:.1f} GiB: use fewer envs or steps"
        )


# ---------------------------------------------------------------------------------------------
# Checkpoints and saved models: safe reading, flushed atomic writing
# ---------------------------------------------------------------------------------------------
class DiskFull(Exception):
    """Raised when a write runs out of space; the message names the file."""


def read_file(path: str, what: str = "checkpoint or saved model") -> dict:
    """A file written by the scripts, read with `weights_only=True`; one clear line for anything else."""
    if os.path.isdir(path):
        fail(f"{path!r} is a directory, not a {what} (a file such as runs/<run>/checkpoint.pt)")
    if not os.path.exists(path):
        saved = glob.glob(os.path.join(RUNS_ROOT, "*", "checkpoint.pt")) + glob.glob(os.path.join(RUNS_ROOT, "*", "*.cleanrl_model"))
        fail(f"{path!r} does not exist{nearest_files(path, saved + glob.glob(os.path.join(os.path.dirname(path) or '.', '*')))}")
    size = os.path.getsize(path)
    if size == 0:
        fail(f"{path!r} is empty, not a {what}")
    with open(path, "rb") as f:
        head = f.read(4)
    if head != b"PK\x03\x04":  # torch.save writes a zip archive
        fail(f"{path!r} is not a {what} (not a PyTorch zip archive)")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        detail = str(e).splitlines()[0] if str(e) else type(e).__name__
        if "weights_only" in str(e) or "Unsupported global" in str(e):
            detail = "it holds objects other than tensors and plain values, which are refused"
        fail(f"{path!r} is truncated, damaged or not a {what}: {detail[:200]}")
    if not isinstance(loaded, dict):
        fail(f"{path!r} is not a {what}")
    return loaded


def load_checkpoint(path: str, algorithm: str) -> dict:
    """A checkpoint of `algorithm` (one of ALGORITHMS), refusing any other file clearly."""
    checkpoint = read_file(path, "checkpoint")
    written_by = CHECKPOINT_FORMATS.get(checkpoint.get("format"))
    if written_by is None:
        if checkpoint.get("algorithm") in ALGORITHMS:
            fail(f"{path!r} is a saved model, not a checkpoint: --resume needs runs/<run>/checkpoint.pt")
        fail(f"{path!r} is not a checkpoint of {SCRIPT_NAMES}")
    if written_by != algorithm:
        fail(f"{path!r} is a {written_by} checkpoint; resume it with `python {written_by}.py --resume {path}`")
    return checkpoint


def load_saved(path: str) -> tuple[str, dict, dict]:
    """(algorithm, args, weights) of a saved model or a checkpoint; the algorithm is one of ALGORITHMS."""
    saved = read_file(path)
    if saved.get("format") in CHECKPOINT_FORMATS:
        algorithm, weights = CHECKPOINT_FORMATS[saved["format"]], saved.get("model")
    elif saved.get("algorithm") in ALGORITHMS:
        algorithm, weights = saved["algorithm"], saved.get("model_weights")
    else:
        fail(f"{path!r} is neither a saved model nor a checkpoint of {SCRIPT_NAMES}")
    if not isinstance(weights, dict) or not isinstance(saved.get("args"), dict):
        fail(f"{path!r}: the model weights or args are missing or damaged")
    return algorithm, saved["args"], weights


def save_atomically(payload: dict, path: str) -> None:
    """Write to a temporary file, flush it to disk, then replace `path` with it.

    A crash or kill never leaves a half-written file in place of a good one; a full disk raises
    `DiskFull` and removes the partial file, leaving the previous version intact."""
    folder = os.path.dirname(path) or "."
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    tmp = f"{path}.tmp"
    try:
        with open(tmp, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        directory = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(directory)  # the rename itself reaches the disk
        finally:
            os.close(directory)
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise DiskFull(f"the disk is full: cannot write {path} ({buffer.getbuffer().nbytes:,} bytes) in {folder}") from e
        raise


def check_resumable(saved: dict, args, structural_fields: tuple[str, ...]) -> None:
    """Refuse to resume with another rollout layout, model, environment or number of ranks, naming the field."""
    for name in structural_fields:
        if name == "world_size" and saved.get(name) != args.world_size:
            fail(f"--resume: the checkpoint was written by {saved.get(name)} ranks; resume it with the same number")
        if saved.get(name) != getattr(args, name):
            fail(f"--resume: {name} differs from the checkpoint ({getattr(args, name)!r} vs {saved.get(name)!r})")


def checkpoint_due(iteration: int, args, last_checkpoint: float) -> bool:
    """After the first iteration, at the last one, every --checkpoint-interval iterations and once
    --checkpoint-minutes have passed since the last checkpoint (`last_checkpoint`, a unix time)."""
    return (
        iteration in (1, args.num_iterations)
        or (args.checkpoint_interval > 0 and iteration % args.checkpoint_interval == 0)
        or time.time() - last_checkpoint >= args.checkpoint_minutes * 60
    )


def save_args(run_folder: str, args) -> None:
    """The run's settings as `args.json` (plain data: plot.py groups runs by them)."""
    with open(os.path.join(run_folder, "args.json"), "w") as f:
        json.dump(dataclasses.asdict(args), f, indent=1)


def load_weights(module: torch.nn.Module, weights: dict, path: str) -> None:
    """Load a state dict, refusing one that does not fit the model built from its args in one line."""
    try:
        module.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).strip().splitlines()
        detail = " ".join(line.strip() for line in first[:3])
        fail(f"{path!r}: the weights do not match the model its args describe ({detail[:300]})")
    loaded = module.state_dict().items()
    broken = next((name for name, w in loaded if w.is_floating_point() and not w.isfinite().all()), None)
    if broken is not None:
        fail(f"{path!r}: the weight {broken!r} holds NaN or infinite values")


def load_optimizer_state(optimizer: torch.optim.Optimizer, saved: Any) -> None:
    """Restore an AdamW's moments and step counts, each checked against its parameter (shape, finite
    numbers): fused kernels index them unchecked. The hyperparameters stay the ones the args built."""
    if not isinstance(saved, dict) or not isinstance(saved.get("state"), dict):
        raise ValueError("optimizer: expected a dict holding the state of each parameter")
    groups = optimizer.param_groups
    params = [(p, group.get("amsgrad", False)) for group in groups for p in group["params"]]
    state = {}
    for key, entry in saved["state"].items():
        if type(key) is not int or not 0 <= key < len(params) or not isinstance(entry, dict):
            raise ValueError(f"optimizer.state[{key!r}] is not the state of a parameter of the model")
        param, amsgrad = params[key]
        moments = ["exp_avg", "exp_avg_sq", *(["max_exp_avg_sq"] if amsgrad else [])]
        if set(entry) != {"step", *moments}:
            raise ValueError(f"optimizer.state[{key}] holds {sorted(map(str, entry))}, expected {sorted(['step', *moments])}")
        state[key] = {"step": checked_tensor(entry["step"], torch.zeros(()), f"optimizer.state[{key}].step")}
        if state[key]["step"] < 0:
            raise ValueError(f"optimizer.state[{key}].step is negative")
        for name in moments:
            state[key][name] = checked_tensor(entry[name], param.detach(), f"optimizer.state[{key}].{name}")
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})


def rng_state(device: torch.device) -> dict:
    state = {"python": random.getstate(), "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict, device: torch.device) -> None:
    version, internal, gauss = state["python"]
    try:
        random.setstate((version, tuple(internal), gauss))
    except OverflowError as e:
        raise ValueError(f"rng.python is not a state of Python's generator ({e})") from None
    torch.set_rng_state(state["torch"])
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def evaluate_policy(args, agent: torch.nn.Module, envs: gym.vector.VectorEnv, device: torch.device,
                    new_rollout: Callable, collect_rollout: Callable) -> list[dict]:
    """One episode per held-out seed and repetition, with sampled actions, played by the script's own rollout.

    The training envs, memory and random streams are untouched: evaluation has its own envs and
    its own rollout, and runs inside a forked torch RNG.
    """
    seeds = list(range(args.eval_seed_start, args.eval_seed_start + args.eval_seeds))
    episodes = []
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for repetition in range(args.eval_repetitions):
            torch.manual_seed(args.eval_seed_start + repetition)
            obs, _ = envs.reset(seed=seeds)
            ro = new_rollout(agent, envs, 64, obs, device)
            stats = EpisodeStats(len(seeds), first_only=True)
            while not stats.finished.all():
                collect_rollout(agent, envs, ro, device, stats)
            episodes += stats.take_new()
    return episodes


class EagerUnderCompile:
    """A decorator: under `--compile` the function runs eagerly between compiled graphs (`compile_agent`
    disables it then); without, it is the plain function."""

    marked: list[EagerUnderCompile] = []

    def __init__(self, fn: Callable):
        self.plain = self.fn = fn
        functools.update_wrapper(self, fn)
        EagerUnderCompile.marked.append(self)

    def __call__(self, *args, **kwargs):
        return self.fn(*args, **kwargs)


def compile_agent(agent: torch.nn.Module, device: torch.device) -> None:
    """`--compile`: torch.compile the acting pass (`agent.policy_step`) and the update's (`agent.forward`,
    `agent.heads`), in place, so that checkpoints keep their parameter names.

    On CUDA the acting pass also replays CUDA graphs: with a few dozen envs it is many tiny kernels, bound
    by their launches. A replay overwrites the previous one's outputs, so they are copied out.
    """
    # Marked here, not where defined: the marks import the compiler, a second more at every start of a script.
    torch.compiler.assume_constant_result(computes_in_bfloat16)  # asked once while tracing, its answer kept
    for eager in EagerUnderCompile.marked:
        eager.fn = torch.compiler.disable(eager.plain)
    cuda_graphs = device.type == "cuda"
    agent.forward = torch.compile(agent.forward)
    agent.heads = torch.compile(agent.heads)
    compiled_step = torch.compile(agent.policy_step, mode="reduce-overhead" if cuda_graphs else None)

    def policy_step(*inputs):
        if not cuda_graphs:
            return compiled_step(*inputs)
        torch.compiler.cudagraph_mark_step_begin()
        return torch.utils._pytree.tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, compiled_step(*inputs))

    agent.policy_step = policy_step


class Upload:
    """Host arrays to the device without making the host wait. On CUDA each array goes through a pinned
    buffer of its own name and a non-blocking copy; before a buffer is refilled, its last copy is waited
    for (an event, not the device). Elsewhere the tensor shares the array's memory: no copy at all."""

    def __init__(self, device: torch.device):
        self.device, self.buffers = device, {}

    def __call__(self, name: str, array: Any, dtype: torch.dtype | None = None) -> torch.Tensor:
        tensor = torch.as_tensor(array, dtype=dtype)
        if self.device.type != "cuda":
            return tensor.to(self.device)
        buffer, copied = self.buffers.get(name, (None, None))
        if buffer is None or buffer.shape != tensor.shape or buffer.dtype != tensor.dtype:
            buffer = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
        elif copied is not None:
            copied.synchronize()
        buffer.copy_(tensor)
        on_device = buffer.to(self.device, non_blocking=True)
        copied = torch.cuda.Event()
        copied.record()
        self.buffers[name] = (buffer, copied)
        return on_device


def saved_observation(obs: tuple) -> list:
    """A batched observation (a tuple of arrays or None) as a checkpoint stores it."""
    return [None if part is None else torch.from_numpy(np.asarray(part)) for part in obs]


def checked_observation(saved: Any, like: tuple) -> tuple:
    """A stored observation, each part checked against the current one's shape and kind."""
    return tuple(
        None if part is None else checked_tensor(value, torch.from_numpy(np.asarray(part)), "next_obs").numpy()
        for part, value in zip(like, saved, strict=True)
    )


def checked_tensor(value: Any, like: torch.Tensor, field: str) -> torch.Tensor:
    """A tensor read from a checkpoint, refused unless it has the shape and kind of `like` and finite
    numbers (booleans stored as 0 or 1)."""
    if (
        not isinstance(value, torch.Tensor)
        or value.shape != like.shape
        or value.dtype.is_floating_point != like.dtype.is_floating_point
        or (value.dtype == torch.bool) != (like.dtype == torch.bool)
    ):
        described = f"{value.dtype} {tuple(value.shape)}" if isinstance(value, torch.Tensor) else type(value).__name__
        raise ValueError(f"{field} is {described}, expected {like.dtype} {tuple(like.shape)}")
    if value.dtype == torch.bool and (value.view(torch.uint8) > 1).any():
        raise ValueError(f"{field} holds booleans stored as other bytes than 0 and 1")
    if value.dtype.is_floating_point and not value.isfinite().all():
        raise ValueError(f"{field} holds NaN or infinite values")
    return value.to(like.device, like.dtype)


# ---------------------------------------------------------------------------------------------
# Run folders
# ---------------------------------------------------------------------------------------------
def name_problem(name: Any, what: str) -> str | None:
    """Why `name` cannot be one folder name (no path separators, no `..`, not empty); None if it can."""
    if not isinstance(name, str) or not name or name in (".", "..") or "/" in name or "\\" in name or "\x00" in name:
        return f"{what} {name!r} is not a plain folder name (no '/', '\\' or '..' allowed)"
    return None


def plain_name(name: Any, what: str) -> str:
    """A name usable as one folder, or a stop naming the problem."""
    if (problem := name_problem(name, what)) is not None:
        fail(problem)
    return name


def create_run_folder(env_id: str, exp_name: str, seed: int, root: str = RUNS_ROOT, started: float | None = None) -> str:
    """Create `root/{env_id}__{exp_name}__{seed}__{time}` exclusively and return its name.

    Two runs that start in the same second (a sweep, a job array, a shared file system) get
    `...__{time}` and `...__{time}-2`: the folder is claimed by one atomic mkdir."""
    os.makedirs(root, exist_ok=True)
    started = time.time() if started is None else started
    base = f"{env_id.replace('/', '-').replace(':', '-')}__{exp_name}__{seed}__{int(started)}"
    for attempt in range(1, 10_000):
        name = base if attempt == 1 else f"{base}-{attempt}"
        try:
            os.mkdir(os.path.join(root, name))
            return name
        except FileExistsError:
            continue
    fail(f"cannot create a run folder under {root!r}: too many runs named {base!r}")


def claim_run_folder(args, resumed: bool, main: bool) -> str:
    """The run's folder: the checkpoint's when resuming (a plain name), else a fresh one that rank 0
    creates exclusively (concurrent runs never share one) and names for every rank; sets `args.run_name`."""
    if resumed:
        args.run_name = plain_name(args.run_name, "the checkpoint's run name")
    else:
        ranks = f"-{args.world_size}ranks" if args.world_size > 1 else ""
        name = create_run_folder(args.env_id, f"{args.exp_name}{ranks}", args.seed) if main else None
        args.run_name = gather(name, args.world_size)[0]
    return os.path.join(RUNS_ROOT, args.run_name)


# ---------------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------------
def json_problem(text: str, flag: str) -> str | None:
    """Why a flag's text is not a JSON object (reset parameters); None if it is one."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        return f"{flag} is not valid JSON: {e}"
    return None if isinstance(value, dict) else f"{flag} must be a JSON object, e.g. '{{\"max_steps\": 2560}}'"


def json_object(text: str, flag: str) -> dict:
    """A JSON object given on the command line or in a preset (reset parameters)."""
    if (problem := json_problem(text, flag)) is not None:
        fail(problem)
    return json.loads(text)


def env_id_problem(env_id: str) -> str | None:
    """Why `env_id` names no registered environment (importing `module` of `module:EnvId-v0`); None if it does."""
    module, _, name = env_id.rpartition(":")
    if module:
        try:
            importlib.import_module(module)
        except ImportError as e:
            return f"cannot import {module!r} for environment {env_id!r}: {e}"
    try:
        gym.spec(name)
        return None
    except gym.error.Error:
        pass
    close = difflib.get_close_matches(name, list(gym.registry), n=1, cutoff=0.8)
    return f"unknown environment id {env_id!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def make_envs(args, num_envs: int, evaluation: bool = False) -> gym.vector.VectorEnv:
    """Our ids get their native vector env; any other gymnasium id a sync vector env (same-step autoreset).

    Evaluation envs take `--eval-env-kwargs` over `--env-kwargs` (e.g. an episode cap for evaluation only)."""
    kwargs = json_object(args.env_kwargs, "--env-kwargs")
    if evaluation:
        kwargs.update(json_object(args.eval_env_kwargs, "--eval-env-kwargs"))
    env_id = args.env_id
    if ":" in env_id:  # "my_package.my_envs:MyEnv-v0" imports the module that registers MyEnv-v0
        module, env_id = env_id.split(":", 1)
        try:
            importlib.import_module(module)
        except ImportError as e:
            fail(f"cannot import {module!r} for environment {args.env_id!r}: {e}")
    try:
        spec = gym.spec(env_id)
    except gym.error.Error as e:
        fail(f"unknown environment id {args.env_id!r} ({e})")
    try:
        vector_env = None
        if spec.vector_entry_point is not None:
            vector_env = gym.make_vec(env_id, num_envs=num_envs, **kwargs)
            # The scripts need same-step autoreset; a vector env with another mode is replaced.
            if vector_env.metadata.get("autoreset_mode") != gym.vector.AutoresetMode.SAME_STEP:
                vector_env.close()
                vector_env = None
        if vector_env is None:
            vector_env = gym.make_vec(
                env_id,
                num_envs=num_envs,
                vectorization_mode="sync",
                vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
                **kwargs,
            )
    except (ValueError, TypeError) as e:
        message = str(e)
        fail(message if message.startswith(env_id) else f"{args.env_id}: {message}")
    observation_layout(vector_env.single_observation_space, args.env_id)
    action_branches(vector_env.single_action_space, args.env_id)
    return vector_env


def observation_layout(space: gym.Space, env_id: str = "the environment") -> tuple[tuple[int, ...] | None, int]:
    """(image shape (H, W, C) or None, vector size) of a supported observation space.

    Supported: a uint8 image Box (H, W, C), a 1-D Box, or a Dict of one of each (as MortarMayhemB).
    """
    boxes = list(space.spaces.values()) if isinstance(space, gym.spaces.Dict) else [space]
    image, vector = None, 0
    for box in boxes:
        if isinstance(box, gym.spaces.Box) and len(box.shape) == 3 and box.dtype == np.uint8 and image is None:
            image = box.shape
        elif isinstance(box, gym.spaces.Box) and len(box.shape) == 1 and vector == 0:
            vector = box.shape[0]
        else:
            fail(
                f"{env_id}: incompatible observation space {space}; supported are a uint8 image Box (H, W, C), "
                "a 1-D Box, or a Dict holding one of each"
            )
    return image, vector


def action_branches(space: gym.Space, env_id: str) -> list[int]:
    """The number of choices of each discrete action branch."""
    if isinstance(space, gym.spaces.Discrete):
        return [int(space.n)]
    if isinstance(space, gym.spaces.MultiDiscrete) and space.nvec.ndim == 1:
        return [int(n) for n in space.nvec]
    fail(f"{env_id}: incompatible action space {space}; supported are Discrete and MultiDiscrete")


def ground_truth_size(envs: gym.vector.VectorEnv, env_id: str) -> int:
    """The size of the env's `info["ground_truth"]`, declared as `ground_truth_space` (Memory Gym's convention)."""
    game = getattr(envs.unwrapped, "game", None)
    if game is not None:
        space = game.ground_truth_space
    else:
        try:
            space = envs.get_attr("ground_truth_space")[0]
        except AttributeError:
            space = None
    if space is None:
        fail(f"{env_id}: --ground-truth-coef needs an environment that reports info['ground_truth'] "
             "(Endless-MortarMayhem-v0, Endless-MysteryPath-v0, Endless-SearingSpotlights-v0)")
    return int(np.prod(space.shape))


def split_observation(obs, space: gym.Space) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Batched observation -> (images uint8 or None, vectors float32 or None)."""
    parts = list(obs.values()) if isinstance(space, gym.spaces.Dict) else [obs]
    image = next((p for p in parts if p.ndim == 4), None)
    vector = next((p for p in parts if p.ndim == 2), None)
    return image, None if vector is None else vector.astype(np.float32)


def final_observations(obs, info: dict, ended: np.ndarray):
    """The batch `obs` with each `ended` env's last observation, which same-step autoreset keeps in
    `info["final_obs"]` (the batch itself already shows the next episode there)."""
    final = info["final_obs"]
    if isinstance(obs, dict):
        batch = {key: value.copy() for key, value in obs.items()}
        for i in np.flatnonzero(ended):
            for key in batch:
                batch[key][i] = final[i][key]
        return batch
    batch = obs.copy()
    for i in np.flatnonzero(ended):
        batch[i] = final[i]
    return batch


# ---------------------------------------------------------------------------------------------
# Episode statistics and evaluation summaries
# ---------------------------------------------------------------------------------------------
class EpisodeStats:
    """Returns, lengths and the env's numeric end-of-episode info of finished episodes."""

    def __init__(self, num_envs: int, window: int = 100, first_only: bool = False):
        self.running_return = np.zeros(num_envs)
        self.running_length = np.zeros(num_envs, dtype=np.int64)
        self.recent = deque(maxlen=window)
        self.new: list[dict] = []
        self.first_only = first_only  # keep only each env's first episode (evaluation)
        self.finished = np.zeros(num_envs, dtype=bool)

    def __call__(self, reward, done, info) -> None:
        self.running_return += reward
        self.running_length += 1
        final = info.get("final_info", {})
        for i in np.flatnonzero(done):
            if not (self.first_only and self.finished[i]):
                episode = {"return": float(self.running_return[i]), "length": int(self.running_length[i])}
                for key, value in final.items():
                    # The env's own "reward" and "length" repeat the return and length counted here.
                    if key not in ("reward", "length") and not key.startswith("_") and final.get(f"_{key}", np.ones(len(done), bool))[i]:
                        item = np.asarray(value[i])
                        # NaN marks a ratio with nothing to count (Searing Spotlights' coins_collected without coins).
                        if item.ndim == 0 and np.issubdtype(item.dtype, np.number) and np.isfinite(item):
                            episode[key] = float(item)
                self.new.append(episode)
                self.recent.append(episode)
            self.finished[i] = True
        self.running_return[done] = 0.0
        self.running_length[done] = 0

    def take_new(self) -> list[dict]:
        new, self.new = self.new, []
        return new

    def state(self) -> dict:
        return {
            "running_return": torch.from_numpy(self.running_return.copy()),
            "running_length": torch.from_numpy(self.running_length.copy()),
            "recent": list(self.recent),
        }

    def load(self, state: dict) -> None:
        running_return, running_length = state["running_return"], state["running_length"]
        if running_return.shape != self.running_return.shape or running_length.shape != self.running_length.shape:
            raise ValueError("stats: running episode sums do not match the number of envs")
        recent = state["recent"]
        if not isinstance(recent, list) or not all(
            isinstance(e, dict) and all(isinstance(k, str) and isinstance(v, (int, float)) for k, v in e.items())
            for e in recent
        ):
            raise ValueError("stats.recent: expected a list of episodes of numbers")
        self.running_return = running_return.numpy().astype(np.float64)
        self.running_length = running_length.numpy().astype(np.int64)
        self.recent.extend(recent)

    def restart(self) -> None:
        """Forget the episodes in progress (the envs were reset)."""
        self.running_return[:] = 0.0
        self.running_length[:] = 0


def mean_of(episodes: list[dict], key: str) -> float | None:
    values = [e[key] for e in episodes if key in e]
    return float(np.mean(values)) if values else None


def summarise(episodes: list[dict]) -> dict[str, float]:
    """Mean and standard error of every numeric episode key."""
    summary = {}
    for key in sorted({k for e in episodes for k in e}):
        values = np.array([e[key] for e in episodes if key in e])
        summary[f"{key}_mean"] = float(values.mean())
        summary[f"{key}_se"] = float(values.std(ddof=1) / np.sqrt(len(values))) if len(values) > 1 else 0.0
    return summary


# ---------------------------------------------------------------------------------------------
# Videos
# ---------------------------------------------------------------------------------------------
class VideoRecorder:
    """Records episodes of env 0, agent view beside the ground truth, as MP4 files.

    Episodes 0, 1, 8, 27, ... (cubes) up to 1000 are recorded, then every 1000th (or all of them, up
    to `limit`). Files are numbered like episodes: `episode-1.mp4` is the first.
    """

    def __init__(self, folder: str, fps: int, record_all: bool = False, limit: int | None = None):
        self.folder, self.fps, self.record_all, self.limit = folder, fps, record_all, limit
        self.episode, self.frames = 0, []
        self.finished: list[tuple[int, str, np.ndarray]] = []  # (episode, path, frames for logging)

    def recording(self) -> bool:
        e = self.episode
        if self.limit is not None and e >= self.limit:
            return False
        return self.record_all or (round(e ** (1 / 3)) ** 3 == e if e < 1000 else e % 1000 == 0)

    def capture(self, images: np.ndarray | None, envs: gym.vector.VectorEnv) -> None:
        if not self.recording():
            return
        game = getattr(envs.unwrapped, "game", None)
        if game is not None and images is not None:  # our envs: the agent's view and the ground-truth render
            view, truth = game.render_rgb(0), game.render_debug(0)
        elif images is not None:
            view, truth = images[0], None
        else:
            return
        # Both panels are scaled by whole factors to at least 336 pixels high (the ground-truth size).
        panels = [p.repeat(max(1, 336 // p.shape[0]), axis=0).repeat(max(1, 336 // p.shape[0]), axis=1)
                  for p in (view, truth) if p is not None]
        if len({p.shape[0] for p in panels}) > 1:
            panels = panels[:1]
        self.frames.append(np.concatenate(panels, axis=1))

    def step_done(self, done: bool) -> None:
        if not done:
            return
        if self.frames:
            os.makedirs(self.folder, exist_ok=True)
            path = os.path.join(self.folder, f"episode-{self.episode + 1}.mp4")
            write_video(path, self.frames, self.fps)
            self.finished.append((self.episode, path, np.stack(self.frames[:500])))
        self.episode += 1
        self.frames = []


def write_video(path: str, frames: list[np.ndarray], fps: int) -> None:
    """H.264 MP4 (yuv420p) that common players open."""
    import imageio_ffmpeg

    height, width = frames[0].shape[:2]
    writer = imageio_ffmpeg.write_frames(
        path, (width, height), fps=fps, codec="libx264", pix_fmt_out="yuv420p", macro_block_size=1, quality=8
    )
    writer.send(None)
    for frame in frames:
        writer.send(np.ascontiguousarray(frame))
    writer.close()


def log_video(writer, tag: str, frames: np.ndarray, step: int, fps: int) -> None:
    """An animated GIF in TensorBoard's image tab (W&B picks it up through tensorboard sync)."""
    from PIL import Image
    from tensorboard.compat.proto.summary_pb2 import Summary

    images = [Image.fromarray(f[::2, ::2]) for f in frames]
    buffer = io.BytesIO()
    images[0].save(buffer, format="GIF", save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
    height, width = frames.shape[1] // 2, frames.shape[2] // 2
    image = Summary.Image(height=height, width=width, colorspace=3, encoded_image_string=buffer.getvalue())
    writer._get_file_writer().add_summary(Summary(value=[Summary.Value(tag=tag, image=image)]), step)


# ---------------------------------------------------------------------------------------------
# Data-parallel ranks (torchrun)
# ---------------------------------------------------------------------------------------------
def setup_ranks(args) -> tuple[int, torch.device]:
    """(rank, device); under torchrun, joins the process group (NCCL on CUDA, gloo on CPU)."""
    args.world_size = int(os.environ.get("WORLD_SIZE", "1"))
    cuda = torch.cuda.is_available() and args.cuda
    if args.world_size == 1:
        return 0, torch.device("cuda" if cuda else "cpu")
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if cuda else "gloo")
    return rank, device


def average_gradients(parameters: list[torch.nn.Parameter], world_size: int) -> None:
    """All-reduce the gradients as one flat buffer and divide by the number of ranks."""
    grads = [p.grad for p in parameters if p.grad is not None]
    flat = torch.cat([g.flatten() for g in grads])
    dist.all_reduce(flat)
    flat /= world_size
    offset = 0
    for g in grads:
        g.copy_(flat[offset : offset + g.numel()].view_as(g))
        offset += g.numel()


def gather(value, world_size: int) -> list:
    """Every rank's value, on every rank (a list of one without torchrun)."""
    if world_size == 1:
        return [value]
    values = [None] * world_size
    dist.all_gather_object(values, value)
    return values


def run_on_ranks(args, run_training: Callable[[Any, int, torch.device], list[dict]]) -> list[dict]:
    """Join the ranks (under torchrun), run `run_training(args, rank, device)`, and leave the process group
    cleanly; a rank that fails says so with its rank."""
    rank, device = setup_ranks(args)
    try:
        history = run_training(args, rank, device)
        if args.world_size > 1:
            dist.barrier()  # no rank tears down the process group while another still uses it
        return history
    except BaseException as e:
        if args.world_size > 1 and not (isinstance(e, SystemExit) and not isinstance(e.code, str)):
            detail = e.code.removeprefix("error: ") if isinstance(e, SystemExit) else f"{type(e).__name__}: {e}"
            print(f"rank {rank} failed: {detail}", file=sys.stderr, flush=True)
        raise
    finally:
        if args.world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def leave_finished_rank(args) -> None:
    """A finished torchrun rank leaves before interpreter finalization, where gloo's worker threads can
    still abort the process (SIGABRT) after all the work is done."""
    if args.world_size > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def _all_reduced(value: float, op, world_size: int, device: torch.device, dtype=torch.int64) -> float:
    """`value` reduced over all ranks with `op` (the value itself without torchrun)."""
    if world_size == 1:
        return value
    tensor = torch.tensor([value], dtype=dtype, device=device)
    dist.all_reduce(tensor, op=op)
    return tensor.item()


def agree(flag: bool, world_size: int, device: torch.device) -> bool:
    """True on every rank if it is true on any rank (decisions that all ranks must take together)."""
    return bool(_all_reduced(int(flag), dist.ReduceOp.MAX, world_size, device))


def agreed_min(value: int, world_size: int, device: torch.device) -> int:
    """The smallest value over all ranks (e.g. a count of optimizer steps every rank must take)."""
    return int(_all_reduced(int(value), dist.ReduceOp.MIN, world_size, device))


def mean_across(value: float, world_size: int, device: torch.device) -> float:
    """The mean of a number over all ranks (decisions such as target-KL stops are then the same everywhere)."""
    return float(_all_reduced(float(value), dist.ReduceOp.SUM, world_size, device, torch.float64)) / world_size


# ---------------------------------------------------------------------------------------------
# Progress and failures
# ---------------------------------------------------------------------------------------------
def computes_in_bfloat16(precision: str, device_type: str) -> bool:
    """Whether `--precision` means bfloat16 autocast on this kind of device."""
    if precision != "auto":
        return precision == "bfloat16"
    if device_type not in _NATIVE_BFLOAT16:  # asked once per device type: every forward pass calls this
        if device_type == "cuda":
            native = torch.cuda.is_bf16_supported(including_emulation=False)
        else:  # elsewhere bfloat16 is emulated and slower than float32
            native = device_type == "cpu" and (torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
        _NATIVE_BFLOAT16[device_type] = native
    return _NATIVE_BFLOAT16[device_type]


_NATIVE_BFLOAT16: dict[str, bool] = {}


def format_duration(seconds: float) -> str:
    if not np.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def announce(args, device: torch.device, precision: str, num_parameters: int, run_folder: str) -> None:
    """What a run is, printed before its first iteration starts."""
    rollout = args.batch_size * args.world_size
    trained = args.num_iterations * rollout
    print(
        f"{args.env_id} | device {device} | precision {precision} | parameters: {num_parameters:,}\n"
        f"{args.num_envs} envs x {args.num_steps} steps x {args.world_size} rank(s) = "
        f"{rollout:,} steps per iteration, {args.num_iterations:,} iterations = {trained:,} steps\n"
        f"run folder {run_folder} (watch it with: tensorboard --logdir {RUNS_ROOT})",
        flush=True,
    )
    if trained != args.total_timesteps:
        print(f"note: --total-timesteps {args.total_timesteps:,} is not a whole number of rollouts of {rollout:,} steps; "
              f"this run trains {trained:,} ({args.num_iterations:,} rollouts; {trained + rollout:,} would train "
              f"{args.num_iterations + 1:,})", flush=True)
    if (headline := preset_headline(args.config)) is not None:
        print(f"preset {args.config}: {headline}", flush=True)


def report_resume(args, iteration: int, global_step: int, envs_restored: bool) -> None:
    """What a resumed run continues from, and whether anything is left to do."""
    fresh = "" if envs_restored else " (this env's state cannot be saved: its envs restart from a reset, with fresh episodes)"
    print(f"resumed at iteration {iteration:,}, step {global_step:,}{fresh}", flush=True)
    if iteration >= args.num_iterations:
        print(f"nothing left to do: the run has reached --total-timesteps {args.total_timesteps:,}", flush=True)


class Heartbeat:
    """Prints what the run is doing every `every` seconds while one phase lasts longer than that,
    so a long first iteration (a CPU, a large rollout) is never silent."""

    def __init__(self, enabled: bool = True, every: float = 10.0):
        self.enabled, self.every = enabled, every
        self.label, self.started, self.timer = None, 0.0, None

    def phase(self, label: str | None) -> None:
        self.stop()
        self.label, self.started = label, time.time()
        if self.enabled and label is not None:
            self._schedule()

    def _schedule(self) -> None:
        self.timer = threading.Timer(self.every, self._beat)
        self.timer.daemon = True
        self.timer.start()

    def _beat(self) -> None:
        print(f"  ... {self.label} ({format_duration(time.time() - self.started)})", flush=True)
        self._schedule()

    def stop(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None


class Interrupted(Exception):
    """A first SIGINT / SIGTERM: the iteration was finished and a checkpoint written."""


class StopNow(Exception):
    """A second signal: stop at once."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def last_checkpoint_note(checkpoint_path: str, kind: str = "") -> str:
    """Where to resume from (or that there is nothing to resume yet)."""
    if os.path.exists(checkpoint_path):
        return f"resume from the last {kind}checkpoint with --resume {checkpoint_path}"
    return "no checkpoint was written yet"


def crash_report(error: Exception, run_folder: str, iteration: int, checkpoint_path: str) -> str:
    """One line for an unexpected exception; the full traceback goes to `run_folder/error.log`."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"the disk is full ({error}) in or near {run_folder}; {last_checkpoint_note(checkpoint_path)} after freeing space"
    log = os.path.join(run_folder, "error.log")
    try:
        with open(log, "a") as f:
            traceback.print_exception(error, file=f)
        where = f"traceback in {log}"
    except OSError:
        where = "the traceback could not be written"
    first_line = (str(error).strip().splitlines() or [""])[0][:300]
    return (
        f"training stopped in iteration {iteration} by {type(error).__name__}: {first_line} ({where}); "
        f"{last_checkpoint_note(checkpoint_path)}"
    )


# ---------------------------------------------------------------------------------------------
# The run life cycle: everything around the algorithm, in the order a run meets it
# ---------------------------------------------------------------------------------------------
class Run:
    """One training run on one rank, apart from the algorithm. A script drives it in a few lines:

        run = Run(args, "ppo_trxl", rank, device, STRUCTURAL_FIELDS, check_args)  # checks, sizes, seeds
        envs, image_shape, vector_size, branches = run.make_envs()
        ...  # the agent, the optimizer, the rollout storage
        with run.start(agent, optimizer, save_rollout, load_rollout):
            for iteration in run.iterations():  # each one followed by a checkpoint when due
                run.phase("rollout"); ...; run.global_step += steps
                run.phase("update"); ...
                run.log(metrics, evaluate)
            run.finish()
        return run.history

    `make_envs` builds the training and held-out evaluation envs, checked against the flags. `start` loads a
    resumed run (weights, optimizer, each rank's envs and rollout state), then claims the run folder, opens
    TensorBoard and W&B and the video recorder, and takes over SIGINT / SIGTERM: a first signal finishes the iteration and writes a checkpoint, a second
    stops at once. Leaving the `with` block closes all of it; an error leaves one line, a traceback in
    `error.log` and the last checkpoint's name.
    """

    def __init__(self, args, script: str, rank: int, device: torch.device, structural_fields: tuple[str, ...],
                 check_args: Callable[[Any], None]):
        self.args, self.script, self.rank, self.device = args, script, rank, device
        self.main = rank == 0
        self.checkpoint = load_checkpoint(args.resume, script) if args.resume else None
        if self.checkpoint is not None:
            check_resumable(self.checkpoint["args"], args, structural_fields)
        check_args(args)
        args.batch_size = args.num_envs * args.num_steps
        args.num_iterations = args.total_timesteps // (args.batch_size * args.world_size)
        random.seed(args.seed)
        np.random.seed(args.seed)
        torch.manual_seed(args.seed)  # the same initial parameters on every rank
        torch.backends.cudnn.deterministic = args.torch_deterministic
        self.iteration, self.global_step, self.history = 0, 0, []
        self.stats = EpisodeStats(args.num_envs)
        self.envs = self.eval_envs = self.writer = self.wandb = self.recorder = None
        self.heartbeat, self.signal, self.previous_handlers = Heartbeat(enabled=self.main), 0, {}
        self.current, self.durations = None, {}

    def make_envs(self) -> tuple[gym.vector.VectorEnv, tuple[int, ...] | None, int, list[int]]:
        """The training envs, checked against the flags: (envs, image shape or None, vector size, action branches);
        on rank 0 also the held-out evaluation envs (`eval_envs`)."""
        args = self.args
        self.envs = envs = make_envs(args, args.num_envs)
        image_shape, vector_size = observation_layout(envs.single_observation_space, args.env_id)
        check_rollout_fits(args, envs.single_observation_space)
        if args.reconstruction_coef > 0 and image_shape is None:
            fail(f"{args.env_id}: --reconstruction-coef needs image observations")
        if args.capture_video and image_shape is None:
            fail(f"{args.env_id} has no image observations, so --capture-video has nothing to film")
        if args.ground_truth_coef > 0:
            args.ground_truth_size = ground_truth_size(envs, args.env_id)
        if self.main and args.eval_interval:  # made here, so that their problems too come before any file
            self.eval_envs = make_envs(args, args.eval_seeds, evaluation=True)
        return envs, image_shape, vector_size, action_branches(envs.single_action_space, args.env_id)

    def start(self, agent: torch.nn.Module, optimizer, save_rollout: Callable[[], dict],
              load_rollout: Callable[[dict], None]) -> "Run":
        """Resume (when asked), then open the run folder, the logs, the video recorder and the signal handlers.
        `save_rollout` / `load_rollout`: what the script's rollout carries into the next iteration."""
        args, checkpoint = self.args, self.checkpoint
        self.agent, self.optimizer = agent, optimizer
        self.save_rollout, self.load_rollout = save_rollout, load_rollout
        # Only now, after every check (flags, env, agent), is anything written.
        self.folder = claim_run_folder(args, checkpoint is not None, self.main)
        self.checkpoint_path = os.path.join(self.folder, "checkpoint.pt")
        if self.rank > 0:
            torch.manual_seed(args.seed + self.rank)  # each rank samples its own actions
        if checkpoint is not None:
            load_weights(agent, checkpoint.get("model"), args.resume)
            try:
                load_optimizer_state(optimizer, checkpoint["optimizer"])
                self.iteration, self.global_step = int(checkpoint["iteration"]), int(checkpoint["global_step"])
                envs_restored = self.load_rank_state(checkpoint["ranks"][self.rank])
            except (KeyError, IndexError, TypeError, ValueError, RuntimeError) as e:
                fail(f"checkpoint {args.resume!r} is damaged ({type(e).__name__}: {e})")
            if self.main:
                report_resume(args, self.iteration, self.global_step, envs_restored)
        if self.main:
            self._open_logs()
            if args.capture_video:
                self.recorder = VideoRecorder(os.path.join("videos", args.run_name), self.envs.metadata.get("render_fps", 25))
        self.previous_handlers = {s: signal.signal(s, self._request_stop) for s in (signal.SIGINT, signal.SIGTERM)}
        if self.main:
            precision = "bfloat16" if computes_in_bfloat16(args.precision, self.device.type) else "float32"
            announce(args, self.device, precision, sum(p.numel() for p in agent.parameters()), self.folder)
        self.started, self.start_step, self.last_checkpoint = time.time(), self.global_step, time.time()
        return self

    def _open_logs(self) -> None:
        args = self.args
        if args.track:
            import wandb

            wandb.init(project=args.wandb_project_name, entity=args.wandb_entity, sync_tensorboard=True, config=vars(args),
                       name=args.run_name, id=args.run_name.replace("/", "-"), resume="allow", save_code=True)
            self.wandb = wandb
        # Resuming appends to the same run; events logged after the checkpoint are dropped.
        self.writer = SummaryWriter(self.folder, purge_step=self.global_step + 1 if self.checkpoint else None)
        if self.checkpoint is None:
            save_args(self.folder, args)
            table = "\n".join(f"|{key}|{value}|" for key, value in vars(args).items())
            self.writer.add_text("hyperparameters", "|param|value|\n|-|-|\n" + table)

    def _request_stop(self, signum, frame) -> None:
        if self.signal:
            raise StopNow(signum)
        self.signal = signum
        if self.main:
            print(f"\nreceived signal {signum}: stopping after this iteration with a checkpoint", flush=True)

    def iterations(self):
        """The iteration numbers left. After each: a checkpoint after the first, every --checkpoint-interval
        iterations, once --checkpoint-minutes have passed, at the end and on a signal to any rank (then it stops)."""
        args = self.args
        while self.iteration < args.num_iterations:
            self.iteration += 1
            yield self.iteration
            self.heartbeat.phase(None)
            stopping = agree(bool(self.signal), args.world_size, self.device)
            if agree(checkpoint_due(self.iteration, args, self.last_checkpoint), args.world_size, self.device) or stopping:
                self.write_checkpoint()
                self.last_checkpoint = time.time()
                if self.main and (stopping or args.checkpoint_interval or self.iteration == args.num_iterations):
                    print(f"checkpoint written to {self.checkpoint_path}", flush=True)
            if stopping:
                raise Interrupted

    def phase(self, name: str | None) -> None:
        """Name what the iteration does now ("rollout", "update"; None: neither). The heartbeat says it while
        it lasts, and its duration gives `charts/{name}_SPS`."""
        now = time.time()
        if self.current is not None:
            self.durations[self.current[0]] = now - self.current[1]
        self.current = None if name is None else (name, now)
        self.heartbeat.phase(None if name is None else f"iteration {self.iteration}: {name}")

    def rank_state(self) -> dict:
        """What this rank needs to continue exactly: env state, the rollout's carried state, statistics, RNG."""
        game = getattr(self.envs.unwrapped, "game", None)
        return {"envs": None if game is None else game.get_state(), **self.save_rollout(),
                "stats": self.stats.state(), "rng": rng_state(self.device)}

    def load_rank_state(self, state: dict) -> bool:
        """Restore this rank. Where the envs cannot be restored (not our envs) they restart from a reset, so
        every episode starts afresh: no rollout state or running return is carried over; returns False."""
        set_rng_state(state["rng"], self.device)
        self.stats.load(state["stats"])
        game = getattr(self.envs.unwrapped, "game", None)
        if game is None or state["envs"] is None:
            self.stats.restart()
            return False
        game.set_state(state["envs"])
        self.load_rollout(state)
        return True

    def write_checkpoint(self) -> None:
        states = gather(self.rank_state(), self.args.world_size)
        if self.main:
            save_atomically({
                "format": f"{self.script}-checkpoint-1",
                "args": vars(self.args),
                "iteration": self.iteration,
                "global_step": self.global_step,
                "model": self.agent.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "ranks": states,
            }, self.checkpoint_path)

    def log(self, metrics: dict[str, float], evaluate: Callable[[gym.vector.VectorEnv], list[dict]]) -> None:
        """Write one iteration's metrics with the speeds, the episodes every rank finished and, on the
        --eval-interval schedule, `evaluate(eval_envs)`'s held-out episodes; print the progress line."""
        args, step = self.args, self.global_step
        self.phase(None)
        new_episodes = [e for episodes in gather(self.stats.take_new(), args.world_size) for e in episodes]
        recent = [e for episodes in gather(list(self.stats.recent), args.world_size) for e in episodes]
        if not self.main:
            return
        steps = args.batch_size * args.world_size
        sps = (step - self.start_step) / (time.time() - self.started)
        metrics = {
            "charts/SPS": sps,
            "charts/rollout_SPS": int(steps / self.durations["rollout"]),
            "charts/update_SPS": int(steps / self.durations["update"]),
            **metrics,
        }
        if recent:  # the statistic the published PPO-TrXL logs (episode/r_mean): rows side by side use it
            metrics["charts/episodic_return_last100"] = mean_of(recent, "return")
        if new_episodes:
            metrics["charts/episodic_return"] = mean_of(new_episodes, "return")
            metrics["charts/episodic_length"] = mean_of(new_episodes, "length")
            for key in sorted({k for e in new_episodes for k in e} - {"return", "length"}):
                metrics[f"episode/{key}"] = mean_of(new_episodes, key)
        if self.eval_envs is not None and (self.iteration % args.eval_interval == 0 or self.iteration == args.num_iterations):
            for key, value in summarise(evaluate(self.eval_envs)).items():
                metrics[f"eval/{key}"] = value
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, step)
        for episode, path, frames in self.recorder.finished if self.recorder else []:
            log_video(self.writer, "videos/agent_and_ground_truth", frames, step, self.recorder.fps)
            if self.wandb is not None:
                self.wandb.log({"videos/agent_and_ground_truth": self.wandb.Video(path, format="mp4")}, commit=False)
        if self.recorder:
            self.recorder.finished.clear()
        self.history.append({"global_step": step, **metrics})

        recent_return = mean_of(recent, "return")
        eta = (args.num_iterations - self.iteration) * steps / max(sps, 1)
        evaluation = f" | eval {metrics['eval/return_mean']:.3f}" if "eval/return_mean" in metrics else ""
        print(
            f"iter {self.iteration}/{args.num_iterations} | step {step:,} | SPS {sps:,.0f} "
            f"| return (last 100 episodes) {'n/a' if recent_return is None else f'{recent_return:.3f}'}{evaluation} "
            f"| pi {metrics['losses/policy_loss']:.4f} | v {metrics['losses/value_loss']:.4f} "
            f"| entropy {metrics['losses/entropy']:.3f} | ETA {format_duration(eta)}",
            flush=True,
        )

    def finish(self) -> None:
        """After the last iteration: check that every rank holds the same parameters; save the model if asked."""
        args, parameters = self.args, list(self.agent.parameters())
        if args.world_size > 1:
            sums = gather(float(sum(p.detach().double().sum() for p in parameters)), args.world_size)
            if len(set(sums)) != 1:
                raise RuntimeError(f"parameters differ between ranks: {sums}")
            if self.main:
                print(f"parameters identical on all {args.world_size} ranks", flush=True)
        if self.main and args.save_model:
            path = os.path.join(self.folder, f"{args.exp_name}.cleanrl_model")
            save_atomically({"algorithm": self.script, "model_weights": self.agent.state_dict(), "args": vars(args)}, path)
            print(f"model saved to {path}")

    def __enter__(self) -> "Run":
        return self

    def __exit__(self, kind, error, trace) -> None:
        self.heartbeat.stop()
        for s, handler in self.previous_handlers.items():
            signal.signal(s, handler)
        for closable in (self.envs, self.eval_envs, self.writer):
            if closable is not None:
                closable.close()
        if self.wandb is not None:
            self.wandb.finish()
        if error is None or isinstance(error, SystemExit):
            return
        if isinstance(error, Interrupted):
            raise SystemExit(128 + self.signal)
        if isinstance(error, StopNow):
            print(f"stopped at once by a second signal; {last_checkpoint_note(self.checkpoint_path)}", file=sys.stderr, flush=True)
            raise SystemExit(128 + error.signum)
        if isinstance(error, FloatingPointError):
            fail(f"training diverged at step {self.global_step:,} ({error}); {last_checkpoint_note(self.checkpoint_path, 'good ')}")
        if isinstance(error, DiskFull):
            fail(f"{error}; no partial file was left and {last_checkpoint_note(self.checkpoint_path)}: free some space")
        if isinstance(error, Exception):
            fail(crash_report(error, self.folder, self.iteration, self.checkpoint_path))
