"""Files are data: tampered checkpoints and models run no code and write nowhere they name;
run folders never collide; a crash or a full disk loses at most the work since the last checkpoint."""

from __future__ import annotations

import errno
import glob
import os
import shutil
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import enjoy
import ppo_gru
import ppo_trxl
import run_utils

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = {
    ppo_trxl: dict(trxl_dim=16, trxl_num_heads=2, trxl_num_layers=1, trxl_memory_length=4),
    ppo_gru: dict(rnn_hidden_size=16, embed_dim=16, hidden_dim=16),
}
SCRIPTS = pytest.mark.parametrize("script", [ppo_trxl, ppo_gru], ids=["trxl", "gru"])
TINY = dict(env_id="ProofOfMemory-v0", num_envs=2, num_steps=8, num_minibatches=2, update_epochs=1, cuda=False,
            eval_interval=0)  # the default evaluates at the end (the paper's schedule); FailingEnv never ends most episodes
MARKER_MODULE = "planted_helpers"


def tiny_args(script, **overrides):
    return script.Args(**{**TINY, **SMALL[script], **overrides})


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory):
    """The `runs/` folder of a script's tiny run, trained once, at the first test that asks for it."""
    folders = {}

    def runs_of(script):
        if script not in folders:
            folders[script] = tmp_path_factory.mktemp(f"tiny-{script.__name__}")
            with pytest.MonkeyPatch.context() as patch:
                patch.chdir(folders[script])
                script.train(tiny_args(script, total_timesteps=16, save_model=True))
        return folders[script] / "runs"

    return runs_of


def trained(script, tmp_path, tiny_runs) -> tuple[str, str]:
    """(checkpoint, saved model) of a copy of the script's tiny run in tmp_path, the working folder."""
    shutil.copytree(tiny_runs(script), tmp_path / "runs")
    (checkpoint,) = glob.glob("runs/*/checkpoint.pt", root_dir=tmp_path)
    (model,) = glob.glob("runs/*/*.cleanrl_model", root_dir=tmp_path)
    return checkpoint, model


def tampered(path: str, out: str, edit) -> str:
    data = torch.load(path, weights_only=True)
    edit(data)
    torch.save(data, out)
    return out


def plant_module(folder) -> str:
    """A module next to the files that, if ever imported, leaves a marker file."""
    marker = os.path.join(str(folder), "IMPORTED")
    (folder / f"{MARKER_MODULE}.py").write_text(f"open({marker!r}, 'w').write('ran')\n")
    return marker


def run_script(*command, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *command], cwd=cwd, capture_output=True, text=True, timeout=180,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


def refusal(command: list[str], monkeypatch, capfd) -> str:
    """What `python <command>` stops with, run in this process (as its `__main__` does, without the start-up
    a subprocess costs): the one-line message, with nothing else written to stderr."""
    name, *argv = command
    capfd.readouterr()
    with pytest.raises(SystemExit) as stopped:
        if name == "enjoy.py":
            monkeypatch.setattr(sys, "argv", [name, *argv])
            enjoy.main()
        else:
            script = {"ppo_trxl.py": ppo_trxl, "ppo_gru.py": ppo_gru}[name]
            script.train(script.parse_args(argv))
    message = stopped.value.code
    assert isinstance(message, str), message  # a message is printed to stderr, with exit status 1
    assert len(message.splitlines()) == 1 and capfd.readouterr().err == "", message
    return message


@SCRIPTS
def test_a_module_named_in_a_file_is_never_imported(script, tmp_path, tiny_runs, monkeypatch, capfd):
    checkpoint, model = trained(script, tmp_path, tiny_runs)
    marker = plant_module(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))  # the planted module could be imported, were its name ever used
    name = script.__name__

    def planted_env(data):
        data["args"]["env_id"] = f"{MARKER_MODULE}:ProofOfMemory-v0"

    bad_checkpoint = tampered(checkpoint, "env-checkpoint.pt", planted_env)
    bad_model = tampered(model, "env-model.cleanrl_model", planted_env)
    assert "--env-id planted_helpers:ProofOfMemory-v0" in refusal([f"{name}.py", "--resume", bad_checkpoint], monkeypatch, capfd)
    assert "--env-id planted_helpers:ProofOfMemory-v0" in refusal(["enjoy.py", bad_model, "--no-video"], monkeypatch, capfd)

    def planted_algorithm(data):
        data["algorithm"] = MARKER_MODULE

    def planted_format(data):
        data["format"] = f"{MARKER_MODULE}-checkpoint-1"

    bad_model = tampered(model, "a.cleanrl_model", planted_algorithm)
    assert "neither a saved model nor a checkpoint" in refusal(["enjoy.py", bad_model, "--no-video"], monkeypatch, capfd)
    bad_checkpoint = tampered(checkpoint, "f.pt", planted_format)
    for command in (["enjoy.py", bad_checkpoint, "--no-video"], [f"{name}.py", "--resume", bad_checkpoint]):
        refusal(command, monkeypatch, capfd)
    assert not os.path.exists(marker) and MARKER_MODULE not in sys.modules


@SCRIPTS
def test_the_user_can_allow_a_stored_module_env_id_by_naming_it(script, tmp_path, tiny_runs):
    checkpoint, _ = trained(script, tmp_path, tiny_runs)
    marker = plant_module(tmp_path)
    moved = tampered(checkpoint, "moved.pt", lambda d: d["args"].update(env_id=f"{MARKER_MODULE}:ProofOfMemory-v0"))
    args = script.parse_args(["--resume", moved, "--env-id", f"{MARKER_MODULE}:ProofOfMemory-v0"])
    assert args.env_id == f"{MARKER_MODULE}:ProofOfMemory-v0"
    assert not os.path.exists(marker)  # parsing alone imports nothing; the env is built when training starts


@SCRIPTS
@pytest.mark.parametrize("run_name", ["../escaped", "/tmp/absolute-run", "a/b", ".."])
def test_path_like_run_and_experiment_names_are_refused(script, run_name, tmp_path, tiny_runs, monkeypatch, capfd):
    checkpoint, model = trained(script, tmp_path, tiny_runs)
    before = set(os.listdir(tmp_path.parent))
    bad = tampered(checkpoint, "bad.pt", lambda d: d["args"].update(run_name=run_name))
    with pytest.raises(SystemExit, match="run_name .* is not a plain folder name"):
        script.parse_args(["--resume", bad])
    bad = tampered(checkpoint, "bad-exp.pt", lambda d: d["args"].update(exp_name=run_name))
    with pytest.raises(SystemExit, match="--exp-name .* is not a plain folder name"):
        script.train(script.parse_args(["--resume", bad]))
    bad_model = tampered(model, "bad.cleanrl_model", lambda d: d["args"].update(run_name=run_name))
    assert "not a plain folder name" in refusal(["enjoy.py", bad_model, "--episodes", "1"], monkeypatch, capfd)
    assert set(os.listdir(tmp_path.parent)) == before  # nothing written beside the test's own folder
    assert len(os.listdir("runs")) == 1 and not os.path.exists("videos")
    assert not os.path.exists("/tmp/absolute-run") and not os.path.exists(tmp_path.parent / "escaped")


@SCRIPTS
def test_tracking_settings_come_from_the_command_line_only(script, tmp_path, tiny_runs):
    checkpoint, _ = trained(script, tmp_path, tiny_runs)
    bad = tampered(checkpoint, "tracked.pt", lambda d: d["args"].update(track=True, wandb_entity="someone-else",
                                                                          wandb_project_name="their-project"))
    args = script.parse_args(["--resume", bad])
    assert args.track is False and args.wandb_entity is None and args.wandb_project_name == script.Args().wandb_project_name


@SCRIPTS
@pytest.mark.parametrize("field, value, message", [
    ("num_envs", "2", "num_envs must be an integer"),
    ("precision", "float16", "precision must be one of"),
    ("no_such_field", 1, "unknown key 'no_such_field'"),
])
def test_checkpoint_args_are_checked_like_a_preset(script, field, value, message, tmp_path, tiny_runs):
    checkpoint, _ = trained(script, tmp_path, tiny_runs)
    bad = tampered(checkpoint, "typed.pt", lambda d: d["args"].update({field: value}))
    with pytest.raises(SystemExit, match=message):
        script.parse_args(["--resume", bad])


@SCRIPTS
def test_damaged_parts_of_a_checkpoint_are_named(script, tmp_path, tiny_runs, monkeypatch, capfd):
    checkpoint, model = trained(script, tmp_path, tiny_runs)

    def wrong_shape(data):
        data["ranks"][0]["next_obs"] = [None if part is None else torch.zeros(7, 7) for part in data["ranks"][0]["next_obs"]]

    bad = tampered(checkpoint, "shape.pt", wrong_shape)
    with pytest.raises(SystemExit, match="is damaged .*next_obs"):
        script.train(script.parse_args(["--resume", bad, "--total-timesteps", "32"]))
    bad = tampered(checkpoint, "norng.pt", lambda d: d["ranks"][0].pop("rng"))
    with pytest.raises(SystemExit, match="is damaged .*'rng'"):
        script.train(script.parse_args(["--resume", bad, "--total-timesteps", "32"]))
    bad_model = tampered(model, "weights.cleanrl_model", lambda d: d["args"].update(num_envs=2) or d["model_weights"].popitem())
    assert "weights do not match the model its args describe" in refusal(["enjoy.py", bad_model, "--no-video"], monkeypatch, capfd)


def _first_float_weight(data: dict) -> str:
    return next(name for name, w in data["model"].items() if w.is_floating_point())


def _set_all(field: str, value):
    def edit(data):
        saved = data["ranks"][0][field]
        data["ranks"][0][field] = torch.full_like(saved, value)
    return edit


# Values of the right shape that would crash play (NaN logits), index out of range or hit undefined
# behaviour (a bool byte other than 0 or 1) are refused in one line before training starts.
CARRIED_OVER = {
    "nan_weight": (lambda d: d["model"][_first_float_weight(d)].fill_(float("nan")), r"the weight '.*' holds NaN or infinite"),
    "nan_memory": (_set_all("memory_tail", float("nan")), r"is damaged .*memory_tail holds NaN or infinite values"),
    "negative_episode_step": (_set_all("next_step", -5), r"is damaged .*next_step and memory_steps_tail must hold episode steps"),
    "inf_hidden": (_set_all("next_hidden", float("inf")), r"is damaged .*next_hidden holds NaN or infinite values"),
    "raw_byte_start": (
        lambda d: d["ranks"][0].__setitem__("next_start", torch.full_like(d["ranks"][0]["next_start"], 127, dtype=torch.uint8).view(torch.bool)),
        r"is damaged .*next_start holds booleans stored as other bytes than 0 and 1",
    ),
    "optimizer_moment_shape": (
        lambda d: d["optimizer"]["state"][0].__setitem__("exp_avg", torch.zeros(2)),
        r"is damaged .*optimizer\.state\[0\]\.exp_avg is torch\.float32 \(2,\), expected",
    ),
    "optimizer_zero_stride_moment": (
        lambda d: d["optimizer"]["state"][1].__setitem__("exp_avg_sq", torch.zeros(1).expand(10**9)),
        r"is damaged .*optimizer\.state\[1\]\.exp_avg_sq is torch\.float32 \(1000000000,\)",
    ),
    "optimizer_unknown_state": (
        lambda d: d["optimizer"]["state"][0].__setitem__("momentum_buffer", torch.zeros(1)),
        r"is damaged .*optimizer\.state\[0\] holds \['exp_avg', 'exp_avg_sq', 'momentum_buffer', 'step'\]",
    ),
    "python_rng_overflow": (
        lambda d: d["ranks"][0]["rng"].__setitem__("python", [3, [2**70] * 625, None]),
        r"is damaged .*rng\.python is not a state of Python's generator",
    ),
}


@pytest.mark.parametrize("case", CARRIED_OVER)
def test_values_that_would_break_play_are_refused_in_one_line(case, tmp_path, tiny_runs):
    edit, message = CARRIED_OVER[case]
    script = ppo_gru if case in ("inf_hidden", "raw_byte_start") else ppo_trxl
    checkpoint, _ = trained(script, tmp_path, tiny_runs)
    bad = tampered(checkpoint, "bad.pt", edit)
    with pytest.raises(SystemExit, match=message):
        script.train(script.parse_args(["--resume", bad, "--total-timesteps", "32"]))


def bad_file(content, tmp_path, tiny_runs) -> str:
    """A file that is no checkpoint: empty, text, a folder, or the first third of a real checkpoint."""
    if content is None:
        (tmp_path / "folder.pt").mkdir()
        return str(tmp_path / "folder.pt")
    if content == "truncated":
        checkpoint, _ = trained(ppo_gru, tmp_path, tiny_runs)
        content = open(checkpoint, "rb").read()
        content = content[: len(content) // 3]
    (tmp_path / "file.pt").write_bytes(content)
    return str(tmp_path / "file.pt")


COMMANDS = (["ppo_gru.py", "--resume"], ["ppo_trxl.py", "--resume"], ["enjoy.py"])


@pytest.mark.parametrize("content, message", [
    (b"", "is empty"),
    (b"just some text\n", "not a PyTorch zip archive"),
    (None, "is a directory"),
    ("truncated", "is truncated, damaged or not a"),
])
def test_bad_files_get_one_line(content, message, tmp_path, tiny_runs, monkeypatch, capfd):
    target = bad_file(content, tmp_path, tiny_runs)
    for command in COMMANDS:
        line = refusal([*command, target], monkeypatch, capfd)
        assert message in line and target in line and "weights_only" not in line


def test_a_bad_file_is_one_line_on_the_command_line(tmp_path, tiny_runs):
    """The same as a user sees it: exit status 1 and one line on stderr, no warning or log beside it."""
    target = bad_file("truncated", tmp_path, tiny_runs)
    for command in COMMANDS:
        result = run_script(os.path.join(ROOT, command[0]), *command[1:], target, cwd=tmp_path)
        [line] = result.stderr.strip().splitlines()
        assert result.returncode == 1 and line.startswith("error: ") and target in line and "is truncated" in line, line


def test_a_checkpoint_resumed_by_another_script_names_its_own(tmp_path, tiny_runs, monkeypatch, capfd):
    checkpoint, _ = trained(ppo_gru, tmp_path, tiny_runs)
    line = refusal(["ppo_trxl.py", "--resume", checkpoint], monkeypatch, capfd)
    assert "is a ppo_gru checkpoint; resume it with `python ppo_gru.py" in line


@SCRIPTS
def test_runs_started_in_the_same_second_get_their_own_folders(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    same_second = run_utils.create_run_folder
    monkeypatch.setattr(run_utils, "create_run_folder", lambda *a, **k: same_second(*a, started=1_700_000_000.5, **k))
    for _ in range(2):
        script.train(tiny_args(script, total_timesteps=16, save_model=True))
    folders = sorted(os.listdir("runs"))
    prefix = f"ProofOfMemory-v0__{script.__name__}__1__1700000000"
    assert folders == [prefix, f"{prefix}-2"]
    for folder in folders:
        files = os.listdir(os.path.join("runs", folder))
        assert "checkpoint.pt" in files and f"{script.__name__}.cleanrl_model" in files
        assert len([f for f in files if f.startswith("events.out.tfevents")]) == 1


def test_concurrent_processes_claim_distinct_folders(tmp_path):
    code = "import run_utils; print(run_utils.create_run_folder('Env-v0', 'exp', 1, started=1_700_000_000.0))"
    processes = [subprocess.Popen([sys.executable, "-c", code], cwd=tmp_path, stdout=subprocess.PIPE, text=True)
                 for _ in range(4)]
    names = [p.communicate(timeout=120)[0].strip() for p in processes]
    assert len(set(names)) == 4 and all(n.startswith("Env-v0__exp__1__1700000000") for n in names)
    assert sorted(os.listdir(tmp_path / "runs")) == sorted(names)


class FailingEnv(gym.Env):
    """A vector-observation env that raises after a number of steps (a bug in a user's env)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)
    action_space = gym.spaces.Discrete(2)
    steps = 0
    fail_after = 10**9

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        FailingEnv.steps += 1
        if FailingEnv.steps > FailingEnv.fail_after:
            raise RuntimeError("the simulator lost its connection")
        return np.zeros(3, np.float32), 0.0, FailingEnv.steps % 5 == 0, False, {}


@SCRIPTS
def test_an_exception_in_training_leaves_a_checkpoint_to_resume_from(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    if "FailingEnv-v0" not in gym.registry:
        gym.register("FailingEnv-v0", entry_point=FailingEnv)
    FailingEnv.steps, FailingEnv.fail_after = 0, 2 * 8 * 2 + 3  # in the third iteration
    args = tiny_args(script, env_id="FailingEnv-v0", total_timesteps=16 * 5)
    with pytest.raises(SystemExit) as stopped:
        script.train(args)
    message = str(stopped.value)
    assert "training stopped in iteration 3 by RuntimeError: the simulator lost its connection" in message
    (checkpoint,) = glob.glob("runs/*/checkpoint.pt")
    assert f"--resume {checkpoint}" in message and "error.log" in message
    assert "Traceback" in open(glob.glob("runs/*/error.log")[0]).read()
    assert torch.load(checkpoint, weights_only=True)["iteration"] == 1  # the first iteration's checkpoint
    FailingEnv.fail_after = 10**9
    history = script.train(script.parse_args(["--resume", checkpoint]))
    assert [h["global_step"] for h in history] == [32, 48, 64, 80]


@SCRIPTS
def test_a_full_disk_is_reported_and_keeps_the_previous_checkpoint(script, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    real_open, writes = open, {"count": 0}

    class FullDisk:
        """A file that takes a few bytes, then reports no space left (as a full disk does)."""

        def __init__(self, path):
            self.file = real_open(path, "wb")

        def write(self, data):
            self.file.write(bytes(data)[:100])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.file.close()

    def open_filling_up(path, mode="r", *rest, **kwargs):
        if str(path).endswith(".tmp"):
            writes["count"] += 1
            if writes["count"] >= 2:  # the first checkpoint fits; the second does not
                return FullDisk(path)
        return real_open(path, mode, *rest, **kwargs)

    monkeypatch.setattr(run_utils, "open", open_filling_up, raising=False)
    with pytest.raises(SystemExit, match=r"the disk is full: cannot write runs/.*checkpoint\.pt .*no partial file was left"):
        script.train(tiny_args(script, total_timesteps=16 * 4, checkpoint_interval=1))
    (folder,) = glob.glob("runs/*")
    assert sorted(f for f in os.listdir(folder) if not f.startswith("events")) == ["args.json", "checkpoint.pt"]
    assert torch.load(os.path.join(folder, "checkpoint.pt"), weights_only=True)["iteration"] == 1
    monkeypatch.setattr(run_utils, "open", real_open, raising=False)
    history = script.train(script.parse_args(["--resume", os.path.join(folder, "checkpoint.pt")]))
    assert [h["global_step"] for h in history] == [32, 48, 64]


def test_save_atomically_flushes_before_it_replaces(tmp_path, monkeypatch):
    order = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(run_utils.os, "fsync", lambda fd: order.append("fsync") or real_fsync(fd))
    monkeypatch.setattr(run_utils.os, "replace", lambda a, b: order.append("replace") or real_replace(a, b))
    run_utils.save_atomically({"x": torch.ones(3)}, str(tmp_path / "c.pt"))
    assert order == ["fsync", "replace", "fsync"]  # the file, the rename, then the folder
    assert torch.equal(torch.load(tmp_path / "c.pt", weights_only=True)["x"], torch.ones(3))
