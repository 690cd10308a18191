"""The device check's `--smoke` mode: every part runs on the CPU at tiny sizes and writes its figures."""

from __future__ import annotations

import contextlib
import glob
import json
import os
import signal
import subprocess
import sys
import tempfile
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def smoke(out, *parts: str) -> dict:
    done = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "device_check.py"), "--smoke", "--out", str(out), "--parts", *parts],
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads((out / "device_check.json").read_text())["parts"]


def test_smoke_device_check_runs_every_part_and_writes_json_and_markdown(tmp_path):
    out = tmp_path / "check"
    parts = smoke(out, "consistency", "syncs", "throughput", "memory", "ranks", "learning")
    assert set(parts) == {"consistency", "syncs", "throughput", "memory", "ranks", "learning"}
    assert not [name for name, part in parts.items() if "error" in part]
    for row in parts["consistency"]["rows"]:
        tolerance = 1e-5 if row["precision"] == "float32" else 2e-2
        assert row["max_logprob_gap"] < tolerance and row["max_value_gap"] < tolerance
    assert {(r["script"], r["precision"]) for r in parts["throughput"]["rows"]} == {
        ("ppo_trxl", "bfloat16"), ("ppo_gru", "float32"), ("ppo_mamba", "bfloat16")}
    assert all(r["sps"] > 0 and r["rollout_sps"] > 0 and r["update_sps"] > 0 for r in parts["throughput"]["rows"])
    assert parts["ranks"]["rows"][0]["ranks"] == 2
    # One read from the device per rollout step (the actions); CUDA's own count needs a GPU.
    assert all(r["reads_per_step"] == 1.0 and r["syncs_per_step"] is None for r in parts["syncs"]["rows"])
    learning = parts["learning"]["result"]
    assert learning["checkpoint"] and learning["exit"] == 128 + 15 and learning["curve"]
    markdown = (out / "device_check.md").read_text()
    assert "## Act / update consistency" in markdown and "## Training throughput" in markdown
    assert "## What one rollout step sends to the device and reads back" in markdown


def test_a_part_past_the_budget_is_stopped_with_all_it_started(tmp_path, monkeypatch):
    """The learning part is given more seconds than the budget leaves it: at the end of the budget it is
    stopped, and so is the training run it started (which would run until told to stop); the check exits
    with status 1, the report says so, and its temporary folders are gone."""
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import device_check

    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.setattr(device_check.SMOKE, "learn_margin", -30)  # so that learning outlasts the budget
    monkeypatch.setattr(sys, "argv", ["device_check.py", "--smoke", "--out", str(tmp_path / "check"), "--parts", "learning",
                                      "--budget", "10"])  # fmt: skip
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    started = time.monotonic()
    try:
        with pytest.raises(SystemExit, match="not finished: learning"):
            device_check.main()
        assert time.monotonic() - started < 10 + 5  # the budget (its end leaves the 5 s grace to stop the part)
        report = json.loads((tmp_path / "check" / "device_check.json").read_text())
        assert "stopped" in report["parts"]["learning"] and "error" not in report["parts"]["learning"]
        assert "## learning: stopped" in (tmp_path / "check" / "device_check.md").read_text()
        assert list(scratch.iterdir()) == []
        assert working_in(scratch) == []  # the training run, whose working directory was there, is gone too
    finally:
        for pid in working_in(scratch):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def test_a_check_killed_leaves_no_part_running(tmp_path):
    """The parts run in sessions of their own (so that the budget can stop each with all it started): when the
    check itself is killed, its part and the training run the part started stop too, instead of running on."""
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    check = subprocess.Popen(
        [sys.executable, os.path.join(ROOT, "benchmarks", "device_check.py"), "--smoke", "--out", str(tmp_path / "check"),
         "--parts", "learning"],  # trains for 15 s, then stops the run
        env={**os.environ, "OMP_NUM_THREADS": "1", "TMPDIR": str(scratch)},
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while not any("ppo_trxl.py" in command_line(pid) for pid in working_in(scratch)):  # the training has started
            assert time.monotonic() < deadline and check.poll() is None
            time.sleep(0.2)
        check.kill()
        check.wait()
        stopped_by = time.monotonic() + 8  # well before the 15 s the part would otherwise train
        while working_in(scratch) and time.monotonic() < stopped_by:
            time.sleep(0.2)
        assert working_in(scratch) == []
    finally:
        check.kill()
        for pid in working_in(scratch):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def command_line(pid: int) -> str:
    with contextlib.suppress(OSError), open(f"/proc/{pid}/cmdline", "rb") as f:
        return f.read().replace(b"\0", b" ").decode(errors="replace")
    return ""


def working_in(folder) -> list[int]:
    """The processes whose working directory is in `folder` (or was, if it was removed)."""
    pids = []
    for cwd in glob.glob("/proc/[0-9]*/cwd"):
        with contextlib.suppress(OSError):
            if os.readlink(cwd).startswith(str(folder)):
                pids.append(int(cwd.split("/")[2]))
    return pids


@pytest.mark.slow  # compiling takes about a minute on the CPU
def test_smoke_device_check_compiled_part(tmp_path):
    """--compile (TrXL in the smoke check): compiled acting and update still agree, and it trains."""
    parts = smoke(tmp_path, "compiled")
    [row] = parts["compiled"]["rows"]
    assert row["script"] == "ppo_trxl" and row["max_logprob_gap"] < 1e-5 and row["max_value_gap"] < 1e-5 and row["sps"] > 0
    assert "## Under --compile" in (tmp_path / "device_check.md").read_text()
