"""Every preset in configs/ parses and starts a run (with a tiny budget); bad presets fail clearly."""

from __future__ import annotations

import glob
import os

import pytest

import ppo_gru
import ppo_mamba
import ppo_trxl

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
# Presets on one axis: configs/{paper,quick,probe}/{script}/{env_id}[-variant].toml.
PRESETS = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*", "*.toml")))
PROBE = sorted(glob.glob(os.path.join(ROOT, "configs", "probe", "*", "*.toml")))
TINY_BUDGET = ["--num-envs", "2", "--num-steps", "8", "--num-minibatches", "2", "--update-epochs", "1",
               "--total-timesteps", "16", "--eval-interval", "0", "--checkpoint-interval", "0", "--no-cuda"]


def script_of(path: str):
    return {"ppo_trxl": ppo_trxl, "ppo_gru": ppo_gru, "ppo_mamba": ppo_mamba}[os.path.basename(os.path.dirname(path))]


def test_presets_lie_on_one_axis_and_none_repeats_another():
    assert {os.path.relpath(os.path.dirname(p), os.path.join(ROOT, "configs")) for p in PRESETS} == {
        f"{kind}/{script}" for kind in ("paper", "quick", "probe") for script in ("ppo_trxl", "ppo_gru", "ppo_mamba")}
    assert not glob.glob(os.path.join(ROOT, "configs", "*.toml")) and not glob.glob(os.path.join(ROOT, "configs", "ppo_*"))
    bodies = {}
    for path in PRESETS:  # the settings, comments left out
        body = tuple(line for line in open(path).read().splitlines() if line.strip() and not line.startswith("#"))
        assert body not in bodies, f"{path} repeats {bodies.get(body)}"
        bodies[body] = path


@pytest.mark.parametrize("path", PROBE, ids=[os.path.relpath(p, os.path.join(ROOT, "configs")) for p in PROBE])
def test_probe_preset_parses_and_starts(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open(path).readline().startswith("# "), "a preset starts with a comment naming what it is for"
    script = script_of(path)
    args = script.parse_args(["--config", path, *TINY_BUDGET])
    assert args.env_id == os.path.basename(path)[: -len(".toml")]
    history = script.train(args)
    assert len(history) == 1 and "losses/policy_loss" in history[0]


@pytest.mark.parametrize("script", [ppo_trxl, ppo_gru, ppo_mamba], ids=["trxl", "gru", "mamba"])
def test_preset_with_an_unknown_key_fails_naming_it(script, tmp_path):
    preset = tmp_path / "typo.toml"
    own = os.path.join(ROOT, "configs", "paper", script.__name__, "MortarMayhem-v0.toml")
    preset.write_text(open(own).read() + "learning_rate = 0.1\n")
    with pytest.raises(SystemExit, match="unknown key 'learning_rate'"):
        script.parse_args(["--config", str(preset)])


QUICK = sorted(glob.glob(os.path.join(ROOT, "configs", "quick", "*", "*.toml")))


@pytest.mark.parametrize("path", QUICK, ids=[os.path.relpath(p, os.path.join(ROOT, "configs")) for p in QUICK])
def test_quick_preset_parses_and_starts(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    header = open(path).readline()
    assert header.startswith("# ") and ("measured" in header.lower() or "DRAFT" in header), "a quick preset states what it learns"
    script = script_of(path)
    args = script.parse_args(["--config", path, *TINY_BUDGET])
    assert args.env_id == os.path.basename(path)[: -len(".toml")]
    # A finite game is made easier to learn on a CPU; an endless one is the paper's game at a smaller budget.
    assert args.env_kwargs != "{}" or args.env_id.startswith("Endless-")
    assert len(script.train(args)) == 1
