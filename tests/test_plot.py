"""plot.py turns real TensorBoard runs into learning-curve PNGs and a results table."""

from __future__ import annotations

import os
import subprocess
import sys

from PIL import Image
from torch.utils.tensorboard import SummaryWriter

import ppo_gru
import ppo_trxl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(env_id="ProofOfMemory-v0", num_envs=4, num_steps=16, num_minibatches=2, total_timesteps=4 * 16 * 3, cuda=False)


def plot(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "plot.py"), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120)


def test_learning_curves_and_results_table_from_real_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for seed in (1, 2):
        ppo_trxl.train(ppo_trxl.Args(**TINY, seed=seed, trxl_dim=32, trxl_num_heads=2, trxl_num_layers=1,
                                     trxl_memory_length=8, eval_interval=3, eval_seeds=4, eval_repetitions=1))
        ppo_gru.train(ppo_gru.Args(**TINY, seed=seed, gru_hidden_size=32, embed_dim=32, hidden_dim=32))
    result = plot("runs", "--out", "figures", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    png = tmp_path / "figures" / "ProofOfMemory-v0__charts_episodic_return.png"
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.size[0] >= 400 and image.size[1] >= 300
    table = (tmp_path / "figures" / "results.md").read_text().splitlines()
    rows = [line for line in table if line.startswith("| ProofOfMemory-v0")]
    assert len(rows) == 2
    trxl_row = next(r for r in rows if "ppo_trxl" in r)
    gru_row = next(r for r in rows if "ppo_gru" in r)
    assert "| 2 |" in trxl_row and "| 2 |" in gru_row  # two seeds each
    # The source column: evaluation results where the runs have them, the training fallback otherwise.
    assert trxl_row.split("|")[5].strip() == "eval"
    assert gru_row.split("|")[5].strip().startswith("training episodes")

    evaluated = plot("runs", "--tag", "eval/return_mean", "--out", "figures", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    assert (tmp_path / "figures" / "ProofOfMemory-v0__eval_return_mean.png").exists()


def test_clear_errors_for_no_runs_and_unknown_tags(tmp_path):
    empty = plot(str(tmp_path / "nothing-here"), cwd=tmp_path)
    assert empty.returncode != 0 and "no" in empty.stderr.lower() and "run" in empty.stderr.lower()
    run = tmp_path / "runs" / "ProofOfMemory-v0__ppo_trxl__1__1700000000"
    with SummaryWriter(str(run)) as writer:
        for step in (100, 200):
            writer.add_scalar("charts/episodic_return", 0.5, step)
    missing = plot("runs", "--tag", "eval/nothing_mean", cwd=tmp_path)
    assert missing.returncode != 0
    assert "eval/nothing_mean" in missing.stderr and "charts/episodic_return" in missing.stderr
