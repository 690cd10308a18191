"""benchmarks/learning.py: tiny grids run end to end into a temporary folder, locally and through submitit."""

from __future__ import annotations

import json
import math
import os
import shutil
import sys
import textwrap

import pytest
from PIL import Image

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.join(REPO, "benchmarks"))
import learning  # noqa: E402

# Two iterations of 4 envs x 64 steps on CPU; the preset's end-of-training evaluation on 4 seeds only.
TINY = "--no-cuda --num-envs 4 --num-steps 64 --eval-seeds 4 --eval-repetitions 1"
# Stands in for the published script: its flags, its tags (episode/r_mean) and its runs/ folder.
FAKE_REFERENCE = textwrap.dedent('''
    import argparse, os, time
    from torch.utils.tensorboard import SummaryWriter
    parser = argparse.ArgumentParser()
    for flag in ("--env_id", "--exp_name"):
        parser.add_argument(flag)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--total_timesteps", type=int)
    args = parser.parse_args()
    print("threads", os.environ["OMP_NUM_THREADS"])
    start = time.time()
    writer = SummaryWriter(f"runs/{args.env_id}__{args.exp_name}__{args.seed}__{int(start)}")
    for step in range(0, args.total_timesteps + 1, 256):
        # Logged as if 10 steps took a second, so that both seeds span the same 100 s of wall time.
        writer.add_scalar("episode/r_mean", args.seed + step / args.total_timesteps, step, walltime=start + step / 10)
        writer.add_scalar("episode/l_mean", 10.0, step, walltime=start + step / 10)
    writer.close()
''')


def rows(folder) -> dict[str, dict]:
    with open(os.path.join(folder, "results.json")) as f:
        return {row["config"]: row for row in json.load(f)["rows"]}


def assert_valid_png(path) -> None:
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width >= 400


def test_local_grid_builds_table_and_curves_from_event_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    written = learning.main(["--name", "tiny", "--out", str(tmp_path), "--env-ids", "ProofOfMemory-v0",
                             "--scripts", "ppo_trxl", "ppo_gru", "--presets", "probe", "--seeds", "1", "2", "--total-timesteps", "512",
                             f"--flags={TINY}", "--workers", "1", "--threads", "1"])
    folder = tmp_path / "tiny"
    table = rows(folder)
    assert set(table) == {"ppo_trxl", "ppo_gru"}
    for row in table.values():
        assert row["seeds_ok"] == row["seeds"] == 2 and row["status"] == "ok"
        assert row["source"] == "eval"  # the preset evaluates at the end of training
        assert row["steps"] == 512 and row["wall_time_s"] > 0 and row["sps"] > 0
        for key in ("final_mean", "final_se", "best_mean", "best_se"):
            assert math.isfinite(row[key])
        assert 0 <= row["final_mean"] <= row["best_mean"] <= 1
    markdown = (folder / "results.md").read_text()
    assert "| ProofOfMemory-v0 | ppo_gru | 2/2 | eval |" in markdown
    assert "learning.py" in (folder / "command.txt").read_text()
    # Each run in its own folder with its log, its wall time and the preset on its command line.
    for seed in (1, 2):
        run = folder / "runs" / f"ppo_trxl__ProofOfMemory-v0__{seed}"
        record = json.loads((run / "run.json").read_text())
        assert record["returncode"] == 0 and record["wall_time_s"] > 0 and record["threads"] == 1
        assert "configs/probe/ppo_trxl/ProofOfMemory-v0.toml" in record["command"] and (run / "log.txt").exists()
        assert len(os.listdir(run / "runs")) == 1
    assert not os.path.exists(tmp_path / "runs")  # nothing in the caller's ./runs
    for name in ("charts_episodic_return_last100", "eval_return_mean"):
        png = str(folder / f"ProofOfMemory-v0__{name}.png")
        assert png in written
        assert_valid_png(png)

    # The table can be rebuilt from the folder alone, also once it has been moved.
    os.rename(folder, tmp_path / "moved")
    os.remove(tmp_path / "moved" / "results.md")
    learning.main(["--name", "moved", "--out", str(tmp_path), "--report-only"])
    assert (tmp_path / "moved" / "results.md").read_text() == markdown
    # Both scripts log the mean return of the last 100 training episodes, the statistic of --source training.
    learning.main(["--name", "moved", "--out", str(tmp_path), "--report-only", "--source", "training"])
    for row in rows(tmp_path / "moved").values():
        assert row["source"] == "training" and row["seeds_ok"] == 2 and 0 <= row["final_mean"] <= 1


def test_failed_run_is_reported_with_its_error_line_through_the_submitit_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    learning.main(["--name", "bad", "--out", str(tmp_path), "--executor", "debug", "--env-ids", "ProofOfMemory-v0",
                   "--presets", "probe", "--seeds", "1", "--total-timesteps", "512", f"--flags={TINY}", "--variants", "ok=", "bad=--bogus-flag 3"])
    table = rows(tmp_path / "bad")
    assert table["ppo_trxl-ok"]["status"] == "ok" and table["ppo_trxl-ok"]["seeds_ok"] == 1
    bad = table["ppo_trxl-bad"]
    assert bad["seeds_ok"] == 0 and bad["source"] == "-" and bad["final_mean"] is None
    assert bad["status"] == "seed 1 failed (exit code 2): Unrecognized options: --bogus-flag, 3"
    markdown = (tmp_path / "bad" / "results.md").read_text()
    assert "| ppo_trxl-bad | 0/1 | - | - | - | - | - | - | seed 1 failed (exit code 2): Unrecognized options" in markdown
    assert os.listdir(tmp_path / "bad" / "submitit")  # the jobs went through submitit


def test_command_template_runs_side_by_side_with_reference_tags_read_as_ours(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "fake_ref.py").write_text(FAKE_REFERENCE)
    template = f"{{python}} {tmp_path}/fake_ref.py --env_id {{env_id}} --seed {{seed}} --total_timesteps {{total_timesteps}} --exp_name {{label}}"
    learning.main(["--name", "cmp", "--out", str(tmp_path), "--env-ids", "ProofOfMemory-v0", "--scripts",
                   "--seeds", "1", "3", "--total-timesteps", "1024", "--command", f"fake={template}", "--threads", "1"])
    row = rows(tmp_path / "cmp")["fake"]
    # The returns of seed s climb from s to s + 1: final = best = mean(2, 4) with standard error 1.
    assert row["source"] == "training" and row["seeds_ok"] == 2
    assert (row["final_mean"], row["final_se"], row["best_mean"], row["steps"]) == (3.0, 1.0, 3.0, 1024)
    log = (tmp_path / "cmp" / "runs" / "fake__ProofOfMemory-v0__1" / "log.txt").read_text()
    assert "threads 1" in log
    for name in ("charts_episodic_return_last100", "charts_episodic_return_last100__wall_time"):
        assert_valid_png(tmp_path / "cmp" / f"ProofOfMemory-v0__{name}.png")

    # Another seed run as a grid of its own: --combine tabulates both grids' runs as one.
    learning.main(["--name", "cmp2", "--out", str(tmp_path), "--env-ids", "ProofOfMemory-v0", "--scripts",
                   "--seeds", "5", "--total-timesteps", "1024", "--command", f"fake={template}", "--threads", "1"])
    learning.main(["--name", "both", "--out", str(tmp_path), "--report-only", "--combine", "cmp", "cmp2"])
    row = rows(tmp_path / "both")["fake"]
    assert row["seeds_ok"] == 3 and row["final_mean"] == 4.0  # mean(2, 4, 6)
    assert "--combine cmp cmp2" in (tmp_path / "both" / "command.txt").read_text()
    with pytest.raises(SystemExit, match="same configuration, env and seed"):
        learning.main(["--name", "twice", "--out", str(tmp_path), "--report-only", "--combine", "cmp", "cmp"])
    # A grid stopped before its seed 5 ran: the seed finished in cmp2 stands in for it.
    stopped = tmp_path / "stopped"
    shutil.copytree(tmp_path / "cmp", stopped)
    grid = json.loads((stopped / "grid.json").read_text())
    grid["runs"].append({**grid["runs"][0], "seed": 5, "folder": "runs/fake__ProofOfMemory-v0__5"})
    (stopped / "grid.json").write_text(json.dumps(grid))
    learning.main(["--name", "resumed", "--out", str(tmp_path), "--report-only", "--combine", "stopped", "cmp2"])
    assert rows(tmp_path / "resumed")["fake"]["seeds_ok"] == 3


def test_local_pool_never_oversubscribes_the_cores(monkeypatch):
    monkeypatch.setattr(learning, "available_cores", lambda: 8)
    options = learning.build_parser().parse_args(["--name", "x"])
    assert learning.local_workers(options, 3) == (3, 2)
    assert learning.local_workers(options, 20) == (8, 1)
    options.threads = 4
    assert learning.local_workers(options, 20) == (2, 4)
    options.workers = 3
    with pytest.raises(SystemExit, match="--workers 3 x --threads 4 = 12 exceeds the 8 available cores"):
        learning.local_workers(options, 20)


@pytest.mark.parametrize("flags, message", [
    (["--command", "x=python run.py --seed {seed}"], "missing: {env_id}, {total_timesteps}"),
    (["--env-ids", "MortarMayhem-v0={bad json"], "reset parameters of MortarMayhem-v0 are not valid JSON"),
    (["--scripts", "no_such_script"], "script no_such_script not found"),
    (["--scripts", "--command", "x=run {env_id} {seed} {total_timesteps}", "--env-ids", 'MortarMayhem-v0={"command_count": 5}'],
     "configuration x takes no reset parameters"),
    (["--reference-script", "/nonexistent/ppo_trxl.py"], "needs both --reference-python and --reference-script"),
    (["--seeds", "1", "1"], "names a run twice"),
    (["--flags=--env-kwargs '{}"], "--flags is not a valid shell command line"),
])
def test_bad_grid_is_refused_with_one_line(tmp_path, flags, message):
    with pytest.raises(SystemExit, match="^error: .*" + message.replace("{", r"\{").replace("}", r"\}")):
        learning.main(["--name", "x", "--out", str(tmp_path), "--total-timesteps", "512", *flags])
    assert not os.path.exists(tmp_path / "x")  # refused before anything is written


def test_slurm_executor_without_a_cluster_is_refused_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(learning.shutil, "which", lambda name: None)
    with pytest.raises(SystemExit, match="^error: --executor slurm needs a Slurm cluster"):
        learning.main(["--name", "x", "--out", str(tmp_path), "--total-timesteps", "512", "--executor", "slurm"])
    assert not os.path.exists(tmp_path / "x")
