"""Every preset in configs/ parses and starts a run (with a tiny budget); bad presets fail clearly."""

from __future__ import annotations

import glob
import os

import pytest

import ppo_gru
import ppo_trxl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PRESETS = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "*.toml")))
TINY_BUDGET = ["--num-envs", "2", "--num-steps", "8", "--num-minibatches", "2", "--update-epochs", "1",
               "--total-timesteps", "16", "--eval-interval", "0", "--checkpoint-interval", "0", "--no-cuda"]


def script_of(path: str):
    return {"ppo_trxl": ppo_trxl, "ppo_gru": ppo_gru}[os.path.basename(os.path.dirname(path))]


def test_every_algorithm_and_memory_gym_id_has_a_preset():
    ids = {os.path.basename(p)[: -len(".toml")] for p in PRESETS}
    assert len(PRESETS) == 22
    for algorithm in ("ppo_trxl", "ppo_gru"):
        assert {os.path.basename(p)[: -len(".toml")] for p in glob.glob(os.path.join(ROOT, "configs", algorithm, "*.toml"))} == ids


@pytest.mark.parametrize("path", PRESETS, ids=[os.path.relpath(p, os.path.join(ROOT, "configs")) for p in PRESETS])
def test_preset_parses_and_starts(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert open(path).readline().startswith("# "), "a preset starts with a comment naming the result it targets"
    script = script_of(path)
    args = script.parse_args(["--config", path, *TINY_BUDGET])
    assert args.env_id == os.path.basename(path)[: -len(".toml")]
    history = script.train(args)
    assert len(history) == 1 and "losses/policy_loss" in history[0]


@pytest.mark.parametrize("script", [ppo_trxl, ppo_gru], ids=["trxl", "gru"])
def test_preset_with_an_unknown_key_fails_naming_it(script, tmp_path):
    preset = tmp_path / "typo.toml"
    own = os.path.join(ROOT, "configs", script.__name__, "MortarMayhem-v0.toml")
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
    assert args.env_id == os.path.basename(path)[: -len(".toml")] and args.env_kwargs != "{}"
    assert len(script.train(args)) == 1
