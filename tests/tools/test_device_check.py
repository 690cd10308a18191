"""The device check's `--smoke` mode: every part runs on the CPU at tiny sizes and writes its figures."""

from __future__ import annotations

import json
import os
import subprocess
import sys

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


@pytest.mark.slow  # compiling takes about a minute on the CPU
def test_smoke_device_check_compiled_part(tmp_path):
    """--compile (TrXL in the smoke check): compiled acting and update still agree, and it trains."""
    parts = smoke(tmp_path, "compiled")
    [row] = parts["compiled"]["rows"]
    assert row["script"] == "ppo_trxl" and row["max_logprob_gap"] < 1e-5 and row["max_value_gap"] < 1e-5 and row["sps"] > 0
    assert "## Under --compile" in (tmp_path / "device_check.md").read_text()
