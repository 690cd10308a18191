"""plot.py: learning curves and the results table from real (tiny) training runs and synthetic event files."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import matplotlib.figure
import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.tensorboard import SummaryWriter

import plot
import ppo_gru
import ppo_trxl

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = dict(env_id="ProofOfMemory-v0", num_envs=4, num_steps=16, num_minibatches=2, update_epochs=1,
            total_timesteps=4 * 16 * 3, cuda=False)
TINY_MODEL = {
    ppo_trxl: dict(trxl_dim=16, trxl_num_heads=2, trxl_num_layers=1, trxl_memory_length=4),
    ppo_gru: dict(rnn_hidden_size=16, embed_dim=16, hidden_dim=16),
}


def table_rows(markdown: str) -> list[list[str]]:
    """The body rows of a markdown table as lists of stripped cells."""
    lines = [line for line in markdown.splitlines() if line.startswith("|")]
    return [[cell.strip() for cell in line.strip("|").split("|")] for line in lines[2:]]


def write_run(root, name: str, scalars: dict[str, list[tuple[int, float]]]) -> str:
    path = os.path.join(root, name)
    writer = SummaryWriter(path)
    for tag, points in scalars.items():
        for step, value in points:
            writer.add_scalar(tag, value, step)
    writer.close()
    return path


def test_plots_and_table_from_real_training_runs(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    torch.set_num_threads(1)
    # ppo_trxl evaluates on held-out seeds (eval/ scalars); ppo_gru does not (its default, the paper's, would
    # at the end), so its row falls back.
    evaluation = {ppo_trxl: dict(eval_interval=3, eval_seeds=4, eval_repetitions=1), ppo_gru: dict(eval_interval=0)}
    for script in (ppo_trxl, ppo_gru):
        for seed in (1, 2):
            script.train(script.Args(seed=seed, **TINY, **TINY_MODEL[script], **evaluation[script]))
    assert len(os.listdir("runs")) == 4

    written = plot.main(["runs/*", "--out", "plots"])
    png = tmp_path / "plots" / "ProofOfMemory-v0__charts_episodic_return_last100.png"
    assert str(png.relative_to(tmp_path)) in written
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.format == "PNG" and image.width >= 400 and image.height >= 300

    table = (tmp_path / "plots" / "results.md").read_text()
    header, rows = table.splitlines()[0], table_rows(table)
    assert [r[:5] for r in rows] == [["ProofOfMemory-v0", "the env's defaults", "ppo_gru", "2", "192"],
                                     ["ProofOfMemory-v0", "the env's defaults", "ppo_trxl", "2", "192"]]
    gru, trxl = rows
    assert trxl[5] == "eval" and gru[5] == "training episodes (no eval/ scalars)"
    assert "success" in header and all("±" in r[6] for r in rows)

    # The command line: a directory of runs, the evaluation tag, the min / max band, smoothing.
    result = subprocess.run(
        [sys.executable, os.path.join(REPO, "plot.py"), "runs", "--tag", "eval/return_mean", "--spread", "minmax",
         "--smooth", "0.5", "--out", "figures"],
        capture_output=True, text=True, timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "ppo_gru: 2 of 2 runs did not log eval/return_mean" in result.stderr
    with Image.open(tmp_path / "figures" / "ProofOfMemory-v0__eval_return_mean.png") as image:
        assert image.width >= 400


def test_eval_table_mean_and_standard_error_across_seeds(tmp_path, capsys):
    for seed, (ret, success) in enumerate([(1.0, 0.5), (3.0, 1.0)], start=1):
        write_run(tmp_path, f"MortarMayhem-Grid-v0__ppo_trxl__{seed}__100{seed}", {
            "charts/episodic_return": [(100, 0.0), (200, 9.0)],
            "eval/return_mean": [(100, 0.0), (200, ret)],
            "eval/return_se": [(200, 0.1)],
            "eval/length_mean": [(200, 50.0)],
            "eval/success_mean": [(200, success)],
        })
    write_run(tmp_path, "MortarMayhem-Grid-v0__ppo_gru__1__1003", {"charts/episodic_return": [(100, 0.5), (300, 2.0)]})

    plot.main([str(tmp_path / "*"), "--tag", "eval/return_mean", "--out", str(tmp_path / "out"), "--table", str(tmp_path / "t.md")])
    table = (tmp_path / "t.md").read_text()
    assert table in capsys.readouterr().out
    header = [cell.strip() for cell in table.splitlines()[0].strip("|").split("|")]
    assert header == ["env", "reset parameters", "algorithm", "seeds", "final step", "source", "return", "length", "success"]
    gru, trxl = table_rows(table)
    # Two seeds: mean 2.0, standard error std([1, 3], ddof=1) / sqrt(2) = 1.0.
    assert trxl == ["MortarMayhem-Grid-v0", "the env's defaults", "ppo_trxl", "2", "200", "eval", "2.000 ± 1.000",
                    "50.000 ± 0.000", "0.750 ± 0.250"]
    # No eval/ scalars: the last training return, said so in the source column.
    assert gru[:7] == ["MortarMayhem-Grid-v0", "the env's defaults", "ppo_gru", "1", "300",
                       "training episodes (no eval/ scalars)", "2.000"]
    assert (tmp_path / "out" / "MortarMayhem-Grid-v0__eval_return_mean.png").exists()


def test_seeds_logged_at_different_steps_are_interpolated_onto_a_common_grid():
    a = (np.array([0.0, 10.0, 20.0]), np.array([0.0, 10.0, 20.0]))
    b = (np.array([5.0, 15.0, 25.0]), np.array([0.0, 0.0, 0.0]))
    steps, mean, low, high = plot.aggregate([a, b], "minmax")
    np.testing.assert_array_equal(steps, [5, 10, 15, 20])  # the range both seeds cover
    np.testing.assert_allclose(mean, [2.5, 5.0, 7.5, 10.0])
    np.testing.assert_allclose(low, 0.0)
    np.testing.assert_allclose(high, [5, 10, 15, 20])
    _, mean, low, high = plot.aggregate([a, b], "se")
    np.testing.assert_allclose(high - mean, [2.5, 5.0, 7.5, 10.0])  # std(ddof=1) / sqrt(2) = |a - b| / 2
    np.testing.assert_allclose(mean - low, high - mean)


def test_clear_errors(tmp_path, capsys):
    def error(*argv) -> str:
        with pytest.raises(SystemExit) as exit_info:
            plot.main([*argv, "--out", str(tmp_path / "out")])
        assert exit_info.value.code == 2
        return capsys.readouterr().err

    assert "no runs matched" in error(str(tmp_path / "nothing*"))

    empty = tmp_path / "CartPole-v1__ppo_gru__1__1000"
    empty.mkdir()
    assert "no TensorBoard event files" in error(str(empty))

    write_run(tmp_path, "CartPole-v1__ppo_gru__2__1001", {"charts/episodic_return": [(1, 1.0)], "losses/entropy": [(1, 0.5)]})
    message = error(str(tmp_path / "*"), "--tag", "eval/return_mean")
    assert "no run logged the tag 'eval/return_mean'" in message
    assert "charts/episodic_return, losses/entropy" in message
    assert "skipping" in message and "no event files" in message  # the empty run dir beside a real one
    assert "--smooth must be in [0, 1)" in error(str(tmp_path / "*"), "--smooth", "1.5")


def test_runs_are_grouped_by_settings_on_request_and_mixed_settings_are_named(tmp_path, capsys):

    for seed, precision, value in ((1, "float32", 1.0), (2, "float32", 3.0), (1, "bfloat16", 10.0), (2, "bfloat16", 20.0)):
        path = write_run(tmp_path, f"Env-v0__ppo_trxl__{seed}__1700000000{'-2' if precision == 'bfloat16' else ''}",
                         {"charts/episodic_return": [(100, value)]})
        with open(os.path.join(path, "args.json"), "w") as f:
            json.dump({"seed": seed, "precision": precision, "run_name": os.path.basename(path)}, f)
    plot.main([str(tmp_path), "--out", str(tmp_path / "mixed")])
    err = capsys.readouterr().err
    assert "differ in precision but are averaged as seeds; separate them with --group-by precision" in err
    plot.main([str(tmp_path), "--out", str(tmp_path / "split"), "--group-by", "precision"])
    captured = capsys.readouterr()
    assert "differ in" not in captured.err
    rows = {row[2]: row for row in table_rows(open(tmp_path / "split" / "results.md").read())}
    assert set(rows) == {"ppo_trxl precision=float32", "ppo_trxl precision=bfloat16"}
    assert any(cell.startswith("2.000 ±") for cell in rows["ppo_trxl precision=float32"])
    assert any(cell.startswith("15.000 ±") for cell in rows["ppo_trxl precision=bfloat16"])


class Drawn:
    """What plot_env put in each figure it saved: title, y-label, y-range and legend labels, by file name."""

    def __init__(self, monkeypatch):
        self.figures = {}
        real = matplotlib.figure.Figure.savefig

        def record(figure, path, *args, **kwargs):
            ax = figure.axes[0]
            self.figures[os.path.basename(path)] = dict(
                title=ax.get_title(), ylabel=ax.get_ylabel(), ylim=ax.get_ylim(), labels=ax.get_legend_handles_labels()[1])
            return real(figure, path, *args, **kwargs)

        monkeypatch.setattr(matplotlib.figure.Figure, "savefig", record)


def test_a_figure_draws_the_evaluation_the_random_policy_and_says_one_seed(tmp_path, monkeypatch):
    drawn = Drawn(monkeypatch)
    for seed, name in ((1, "ppo_trxl"), (1, "ppo_gru"), (2, "ppo_gru")):
        path = write_run(tmp_path, f"ProofOfMemory-v0__{name}__{seed}__170000000{seed}", {
            "charts/episodic_return_last100": [(100, 0.90), (200, 0.95)],
            "eval/return_mean": [(200, 0.97 if name == "ppo_trxl" else 0.99)],
        })
        with open(os.path.join(path, "args.json"), "w") as f:
            json.dump({"seed": seed, "env_kwargs": "{}"}, f)
    plot.main([str(tmp_path / "*"), "--out", str(tmp_path / "out")])
    figure = drawn.figures["ProofOfMemory-v0__charts_episodic_return_last100.png"]
    assert "ppo_trxl (one seed)" in figure["labels"] and "ppo_gru (2 seeds)" in figure["labels"]
    assert "ppo_trxl: held-out evaluation (one seed)" in figure["labels"]
    random_policy = plot.random_policy_return("ProofOfMemory-v0", "{}")
    assert 0.3 < random_policy < 0.7 and f"random policy ({random_policy:.3f})" in figure["labels"]
    assert "last 100 episodes" in figure["ylabel"] and "held-out evaluation" in figure["ylabel"]
    low, high = figure["ylim"]
    assert low <= 0 < random_policy < 0.99 < high, "an honest range: from 0, past the highest value"

    # One seed everywhere: the title says so instead of naming a spread.
    plot.main([str(tmp_path / "*ppo_trxl*"), "--out", str(tmp_path / "one")])
    assert drawn.figures["ProofOfMemory-v0__charts_episodic_return_last100.png"]["title"].endswith("one seed per curve")


def test_a_figure_that_cannot_be_drawn_leaves_no_stale_file(tmp_path, capsys):
    write_run(tmp_path / "runs", "Env-v0__ppo_trxl__1__1700000001", {"charts/episodic_return": [(100, 1.0), (200, 2.0)]})
    write_run(tmp_path / "runs", "Env-v0__ppo_trxl__2__1700000002", {"charts/episodic_return": [(300, 1.0), (400, 2.0)]})
    stale = tmp_path / "out" / "Env-v0__charts_episodic_return.png"
    stale.parent.mkdir()
    stale.write_bytes(b"an earlier figure")
    plot.main([str(tmp_path / "runs"), "--tag", "charts/episodic_return", "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert "share no step range" in err and f"removed {stale}" in err
    assert not stale.exists()


def test_the_table_names_reset_parameters_that_differ_from_the_defaults(tmp_path, capsys):
    kwargs = '{"show_origin": true, "show_goal": true}'
    path = write_run(tmp_path, "MysteryPath-Grid-v0__ppo_trxl__1__1700000001", {"charts/episodic_return": [(100, 0.5)]})
    with open(os.path.join(path, "args.json"), "w") as f:
        json.dump({"seed": 1, "env_kwargs": kwargs}, f)
    plot.main([str(tmp_path / "*"), "--tag", "charts/episodic_return", "--out", str(tmp_path / "out")])
    (row,) = table_rows((tmp_path / "out" / "results.md").read_text())
    assert row[:3] == ["MysteryPath-Grid-v0", '`{"show_goal": true, "show_origin": true}`', "ppo_trxl"]
