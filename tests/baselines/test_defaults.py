"""The scripts' defaults are the paper's agents and its Mortar Mayhem Grid run; `--env-id` alone takes the
paper's run of that id; every preset builds the agent its header names."""

from __future__ import annotations

import dataclasses
import glob
import os

import pytest

import ppo_gru
import ppo_mamba
import ppo_trxl
from run_utils import action_branches, make_envs, observation_layout

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = pytest.mark.parametrize("script", [ppo_trxl, ppo_gru, ppo_mamba], ids=["trxl", "gru", "mamba"])
# The paper's TrXL agent: shared head projections and the decoder reading the memory are its only layout
# (benchmarks/results/trxl-agent-decision.md); a preset sets the 512-unit head layers and float32.
PAPER_TRXL = dict(head_hidden_size=512, precision="float32")
# What a preset of the paper's run sets that is not the run itself (its checkpoints).
NOT_THE_RUN = ("config", "checkpoint_interval")


def parameters(script, args) -> int:
    envs = make_envs(args, 1)
    image, vector = observation_layout(envs.single_observation_space, args.env_id)
    agent = script.Agent(args, image, vector, action_branches(envs.single_action_space, args.env_id))
    envs.close()
    return sum(p.numel() for p in agent.parameters())


@pytest.mark.parametrize("script, count", [(ppo_trxl, 2_802_085), (ppo_gru, 4_048_549), (ppo_mamba, 4_193_237)],
                         ids=["trxl", "gru", "mamba"])
def test_defaults_build_the_papers_agent_and_run(script, count):
    args = script.parse_args([])
    assert args.env_id == "MortarMayhem-Grid-v0" and parameters(script, args) == count
    assert args.total_timesteps == 163_840_000 == args.anneal_steps
    assert (args.num_envs, args.num_steps, args.num_minibatches, args.update_epochs) == (32, 512, 8, 3)
    assert (args.eval_interval, args.eval_seeds, args.eval_repetitions, args.eval_seed_start) == (500, 50, 3, 200_000)
    assert args.precision == "float32"


@SCRIPTS
def test_defaults_equal_the_paper_preset_of_mortar_mayhem_grid(script):
    paper = script.parse_args(["--config", os.path.join(ROOT, "configs", "paper", script.__name__, "MortarMayhem-Grid-v0.toml")])
    default = script.parse_args([])
    fields = [f.name for f in dataclasses.fields(script.Args) if f.name not in NOT_THE_RUN]
    assert {f: getattr(default, f) for f in fields} == {f: getattr(paper, f) for f in fields}


@SCRIPTS
@pytest.mark.parametrize("env_id", ["MysteryPath-v0", "Endless-MortarMayhem-v0", "SearingSpotlights-v0"])
def test_an_env_id_alone_takes_the_papers_run_of_that_id(script, env_id):
    path = os.path.join(ROOT, "configs", "paper", script.__name__, f"{env_id}.toml")
    paper = script.parse_args(["--config", path])
    alone = script.parse_args(["--env-id", env_id])
    assert alone == dataclasses.replace(paper, config=alone.config) and os.path.samefile(alone.config, path)
    assert script.parse_args(["--env-id", env_id, "--num-envs", "4"]).num_envs == 4  # flags still win
    if script is ppo_trxl:  # the paper's per-id window and encoding horizon, not the default env's
        assert (alone.trxl_memory_length, alone.trxl_positional_encoding_horizon) != (119, 120)


def test_an_id_the_paper_lacks_gets_the_defaults_with_an_encoding_of_any_length():
    args = ppo_trxl.parse_args(["--env-id", "ProofOfMemory-v0"])
    default = ppo_trxl.parse_args([])
    assert args.config is None and args.trxl_positional_encoding_horizon == 0
    assert dataclasses.replace(args, env_id=default.env_id, trxl_positional_encoding_horizon=120) == default
    assert ppo_trxl.parse_args(["--env-id", "ProofOfMemory-v0", "--trxl-positional-encoding-horizon", "9"]).trxl_positional_encoding_horizon == 9
    assert ppo_gru.parse_args(["--env-id", "ProofOfMemory-v0"]) == dataclasses.replace(ppo_gru.parse_args([]), env_id="ProofOfMemory-v0")


TRXL_PRESETS = sorted(glob.glob(os.path.join(ROOT, "configs", "*", "ppo_trxl", "*.toml")))


@pytest.mark.parametrize("path", TRXL_PRESETS, ids=[os.path.relpath(p, os.path.join(ROOT, "configs")) for p in TRXL_PRESETS])
def test_every_trxl_preset_builds_the_agent_its_header_names(path):
    header = " ".join(line for line in open(path).read().splitlines() if line.startswith("#")).lower()
    args = ppo_trxl.parse_args(["--config", path])
    names_the_paper = "paper's agent" in header or "targets the memory gym paper" in header
    if names_the_paper:
        assert {k: getattr(args, k) for k in PAPER_TRXL} == PAPER_TRXL
    else:  # a preset that names no published agent says so
        assert "no published result" in header
