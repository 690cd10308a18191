"""The paper's TrXL agent and the agents of its TrXL study: consistency, learning, sizes, presets."""

from __future__ import annotations

import glob
import math
import os

import numpy as np
import pytest
import torch

import ppo_trxl
import run_utils
from test_baselines import LEARN, LEARN_MODEL, SMALL, start

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_PRESETS = sorted(glob.glob(os.path.join(ROOT, "configs", "paper", "ppo_trxl", "*.toml")))
PAPER_AGENT = dict(head_hidden_size=512)  # the only agent: shared head projections, decoder from the memory
# Every agent of the study that is new to the script, on the small model.
VARIANTS = {
    "paper": dict(PAPER_AGENT, trxl_positional_encoding_horizon=40),
    "paper-learned": dict(PAPER_AGENT, trxl_positional_encoding="learned", trxl_positional_encoding_horizon=40),
    "qpos": dict(PAPER_AGENT, trxl_query_positional_encoding=True, trxl_positional_encoding_horizon=40),
    "qpos-any-length": dict(trxl_query_positional_encoding=True),
    "relative": dict(trxl_positional_encoding="relative"),
    "relative-shared": dict(PAPER_AGENT, trxl_positional_encoding="relative"),
    "gtrxl": dict(PAPER_AGENT, trxl_gate_bias=2.0),
}


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_new_agents_recompute_what_acting_stored(variant):
    """Before any optimizer step the update's minibatches reproduce the stored log-probs and values."""
    for env_id, extra in (("ProofOfMemory-v0", {}), ("ProofOfMemoryImage-v0", {"reconstruction_coef": 0.1})):
        args = ppo_trxl.Args(cuda=False, precision="float32", env_id=env_id, num_envs=4, num_steps=16,
                             num_minibatches=4, **{**SMALL[ppo_trxl], **VARIANTS[variant], **extra})
        envs, agent, rollout = start(ppo_trxl, args)
        stats = run_utils.EpisodeStats(args.num_envs)
        continued = ended = 0
        for _ in range(3):
            ppo_trxl.collect_rollout(agent, envs, rollout, torch.device("cpu"), stats)
            ended += int(rollout.dones.sum())
            continued += int((rollout.steps[0] > 0).sum())
            with torch.no_grad():
                for sel in ppo_trxl.stratified_minibatches(args, torch.device("cpu")):
                    logprob, _, value, _, _ = ppo_trxl.recompute(agent, rollout, sel)
                    index = (sel, torch.arange(args.num_envs)[:, None])
                    assert (logprob - rollout.logprobs[index]).abs().max() < 1e-5
                    assert (value - rollout.values[index]).abs().max() < 1e-5
        assert ended > 0 and continued > 0
        envs.close()


@pytest.mark.parametrize("variant", ["paper", "qpos", "relative", "gtrxl"])
def test_new_agents_learn_the_probe_env(variant):
    """Each new agent solves the probe env in the budget of the existing probe test; the relative encoding
    on the paper's shared head projections in 1.5x that budget (seed 1: success 0.86 after 30 iterations,
    0.98 after 45)."""
    flags = {k: v for k, v in VARIANTS[variant].items() if k != "trxl_positional_encoding_horizon"}
    if flags.get("trxl_query_positional_encoding"):
        flags["trxl_positional_encoding"] = "absolute"
    budget = LEARN["total_timesteps"] * (3 if variant == "relative" else 2) // 2
    history = ppo_trxl.train(ppo_trxl.Args(**{**LEARN, **LEARN_MODEL[ppo_trxl], **flags, "precision": "float32",
                                              "total_timesteps": budget}))
    assert np.mean([h["episode/success"] for h in history[-5:]]) >= 0.95


def test_shared_head_attention_equals_a_per_head_loop():
    """The folded shared-projection attention equals the paper's computation written head by head."""
    torch.manual_seed(0)
    dim, heads, batch, slots = 32, 4, 3, 7
    hd = dim // heads
    layer = ppo_trxl.TransformerLayer(dim, heads, distances=6, relative=False, gate_bias=None)
    x, memory = torch.randn(batch, 1, dim), torch.randn(batch, slots, dim)
    visible = torch.rand(batch, 1, slots) > 0.3
    visible[:, :, 0] = True
    bias = torch.zeros(batch, 1, 1, slots).masked_fill(~visible[:, None], float("-inf"))
    with torch.no_grad():
        ours = layer(x, memory, bias, torch.ones(batch, 1, 1))
        q_in = layer.norm_query(x)
        heads_out = []
        for h in range(heads):
            part = slice(h * hd, (h + 1) * hd)
            q = q_in[..., part] @ layer.query.weight.T  # the ONE head-sized projection, on every head's slice
            k = memory[..., part] @ layer.key.weight.T
            v = memory[..., part] @ layer.value.weight.T
            energy = (q @ k.transpose(1, 2)).masked_fill(~visible, -1e20) / math.sqrt(dim)
            heads_out.append(energy.softmax(-1) @ v)
        h = x + layer.out(torch.cat(heads_out, dim=-1))
        reference = h + torch.relu(layer.ff(layer.norm_ff(h)))
    assert (ours - reference).abs().max() < 1e-5


def image_agent(env_id: str, branches: list[int], **flags) -> ppo_trxl.Agent:
    args = ppo_trxl.Args(**{**PAPER_AGENT, **flags})
    return ppo_trxl.Agent(args, (84, 84, 3), 0, branches)


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


# The reference's layer lists: Nature CNN + Linear(3136 -> dim); per block 3 LayerNorms, the shared
# head-sized Q/K/V (no bias), fc_out and the position-wise layer; body Linear(dim -> dim); policy and
# value heads Linear(dim -> 512) then their outputs.
CNN = (3 * 32 * 8 * 8 + 32) + (32 * 64 * 4 * 4 + 64) + (64 * 64 * 3 * 3 + 64)


def paper_trxl(dim: int, blocks: int, heads: int, branches: list[int]) -> int:
    block = 3 * 2 * dim + 3 * linear(dim // heads, dim // heads, bias=False) + linear(dim, dim) + linear(dim, dim)
    policy = linear(dim, 512) + sum(linear(512, n) for n in branches)
    value = linear(dim, 512) + linear(512, 1)
    return CNN + linear(3136, dim) + blocks * block + linear(dim, dim) + policy + value


def test_parameter_counts_of_the_paper_agents_equal_the_reference_layer_lists():
    mm_grid = image_agent("MortarMayhem-Grid-v0", [4], trxl_memory_length=119)
    assert count(mm_grid) == paper_trxl(384, 3, 4, [4])
    assert count(mm_grid.layers[0]) == 325_632  # the reference's per-block figure
    mp_grid = image_agent("MysteryPath-Grid-v0", [4], trxl_num_layers=2, trxl_dim=256, trxl_memory_length=96,
                          trxl_positional_encoding="none")
    assert count(mp_grid) == paper_trxl(256, 2, 4, [4])
    mm_rec = image_agent("MortarMayhem-v0", [3, 3], trxl_memory_length=275, reconstruction_coef=0.1)
    # Linear(384 -> 3136), then transposed convolutions 64->64 (3x3), 64->32 (4x4), 32->3 (8x8), each with bias
    decoder = linear(384, 3136) + (64 * 64 * 3 * 3 + 64) + (64 * 32 * 4 * 4 + 32) + (32 * 3 * 8 * 8 + 3)
    assert decoder == 1_283_235 and paper_trxl(384, 3, 4, [3, 3]) == 2_803_111  # the reference's 1.28 M and 2.80 M
    assert count(mm_rec) == paper_trxl(384, 3, 4, [3, 3]) + decoder
    gt = image_agent("Endless-MortarMayhem-v0", [3, 3], ground_truth_coef=0.1, ground_truth_size=2)
    assert count(gt) == paper_trxl(384, 3, 4, [3, 3]) + linear(384, 512) + linear(512, 2)


def test_paper_positional_encoding_counts_down_from_the_horizon():
    """With a horizon T the encoding of step t is the sinusoid of T - 1 - t (the paper's table)."""
    agent = image_agent("MortarMayhem-Grid-v0", [4], trxl_positional_encoding_horizon=120)
    steps = torch.tensor([[0, 5, 119]])
    assert agent.encoded_position(steps).tolist() == [[119, 114, 0]]
    any_length = image_agent("MortarMayhem-Grid-v0", [4], trxl_positional_encoding_horizon=0)  # ids the paper lacks
    assert any_length.encoded_position(steps).tolist() == steps.tolist()


def test_ground_truth_head_trains_on_the_info_of_its_observation(tmp_path, monkeypatch):
    """Each sample's target is the info["ground_truth"] returned together with its observation, also
    across the same-step autoreset, and the head's loss is logged."""
    monkeypatch.chdir(tmp_path)
    args = ppo_trxl.Args(cuda=False, env_id="Endless-MortarMayhem-v0", num_envs=2, num_steps=32, ground_truth_coef=0.1,
                         ground_truth_size=2, **SMALL[ppo_trxl])
    envs, agent, rollout = start(ppo_trxl, args)
    _, info = envs.reset(seed=args.seed)
    rollout = ppo_trxl.new_rollout(agent, envs, args.num_steps, _, torch.device("cpu"), info)
    reference = run_utils.make_envs(args, args.num_envs)
    _, reference_info = reference.reset(seed=args.seed)
    expected, ended = [reference_info["ground_truth"].copy()], 0
    for _ in range(2):
        ppo_trxl.collect_rollout(agent, envs, rollout, torch.device("cpu"), run_utils.EpisodeStats(2))
        ended += int(rollout.dones.sum())
        for s in range(args.num_steps):
            assert np.allclose(rollout.ground_truths[s].numpy(), expected[-1])
            action = rollout.actions[s].numpy()
            _, _, _, _, reference_info = reference.step(action)
            expected.append(reference_info["ground_truth"].copy())
    assert ended > 0, "the rollouts must cross an autoreset"
    assert len({tuple(e.ravel()) for e in expected}) > 1, "the target must change during the rollouts"
    history = ppo_trxl.train(ppo_trxl.Args(**{**vars(args), "num_steps": 8, "total_timesteps": 32, "ground_truth_size": 0}))
    assert history[-1]["losses/ground_truth_loss"] > 0


def test_ground_truth_coef_is_refused_for_envs_without_ground_truth(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ppo_trxl.Args(cuda=False, env_id="MortarMayhem-Grid-v0", num_envs=2, num_steps=8, total_timesteps=16,
                         ground_truth_coef=0.1, **SMALL[ppo_trxl])
    with pytest.raises(SystemExit, match=r"MortarMayhem-Grid-v0: --ground-truth-coef needs an environment that reports info\['ground_truth'\]"):
        ppo_trxl.train(args)


def test_resumed_ground_truth_agent_equals_uninterrupted_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    base = dict(cuda=False, env_id="Endless-MysteryPath-v0", env_kwargs='{"show_origin": true}', num_envs=2,
                num_steps=16, num_minibatches=2, update_epochs=2, ground_truth_coef=0.1,
                **SMALL[ppo_trxl], **VARIANTS["qpos"])
    budget = 2 * 16 * 4

    def trajectory(history):
        return [{k: v for k, v in h.items() if k.startswith(("losses/", "episode/", "charts/episodic"))} for h in history]

    full = ppo_trxl.train(ppo_trxl.Args(**base, total_timesteps=budget, exp_name="full"))
    first = ppo_trxl.train(ppo_trxl.Args(**base, total_timesteps=budget // 2, exp_name="half", checkpoint_interval=2))
    (checkpoint,) = glob.glob("runs/*__half__*/checkpoint.pt")
    second = ppo_trxl.train(ppo_trxl.parse_args(["--resume", checkpoint, "--total-timesteps", str(budget)]))
    assert trajectory(first + second) == trajectory(full)
    assert "losses/ground_truth_loss" in full[-1]


def test_evaluation_envs_take_their_own_reset_parameters():
    args = ppo_trxl.Args(env_id="Endless-MortarMayhem-v0", eval_env_kwargs='{"max_steps": 2560}')
    assert run_utils.make_envs(args, 1, evaluation=True).unwrapped.params["max_steps"] == 2560
    assert run_utils.make_envs(args, 1).unwrapped.params["max_steps"] == -1
    with pytest.raises(SystemExit, match="--eval-env-kwargs must be a JSON object"):
        ppo_trxl.check_args(ppo_trxl.Args(eval_env_kwargs="[1]"))


def test_query_encoding_needs_the_absolute_encoding():
    with pytest.raises(SystemExit, match="needs --trxl-positional-encoding absolute"):
        ppo_trxl.check_args(ppo_trxl.Args(trxl_query_positional_encoding=True, trxl_positional_encoding="relative"))


def test_precision_defaults_to_float32():
    assert ppo_trxl.Args().precision == "float32"


@pytest.mark.parametrize("path", PAPER_PRESETS, ids=[os.path.basename(p) for p in PAPER_PRESETS])
def test_paper_preset_sets_the_paper_agent_and_starts(path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    header = open(path).readline()
    assert header.startswith("# Targets the Memory Gym paper"), "a paper preset names the number it targets"
    args = ppo_trxl.parse_args(["--config", path])
    assert args.head_hidden_size == 512
    assert args.precision == "float32" and args.eval_seeds == 50 and args.eval_repetitions == 3
    assert os.path.basename(path).startswith(args.env_id)
    if args.env_id.startswith("Endless"):
        assert '"max_steps"' in args.eval_env_kwargs
    tiny = ["--num-envs", "2", "--num-steps", "8", "--num-minibatches", "2", "--update-epochs", "1",
            "--total-timesteps", "16", "--eval-interval", "0", "--checkpoint-interval", "0", "--no-cuda",
            "--trxl-dim", "32", "--trxl-num-heads", "2"]
    history = ppo_trxl.train(ppo_trxl.parse_args(["--config", path, *tiny]))
    assert len(history) == 1 and np.isfinite(history[0]["losses/policy_loss"])
