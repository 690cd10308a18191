"""Behaviour of the PPO baselines on the probe environments (CPU)."""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest
import torch

import ppo_gru
import run_utils
import ppo_mamba
import ppo_trxl

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "benchmarks"))
import precision_ratio  # noqa: E402

# Small models so that every test runs in seconds on a laptop CPU.
SMALL = {
    ppo_trxl: dict(trxl_dim=32, trxl_num_heads=2, trxl_num_layers=2, trxl_memory_length=8),
    ppo_gru: dict(rnn_hidden_size=32, embed_dim=32, hidden_dim=32),
    ppo_mamba: dict(embed_dim=32, hidden_dim=32, mamba_num_layers=2, mamba_head_dim=16, mamba_state_size=8, mamba_chunk_size=5),
}
# A budget in which the probe env is solved with memory (about 10k steps are needed).
LEARN = dict(
    env_id="ProofOfMemory-v0",
    num_envs=16,
    num_steps=64,
    num_minibatches=4,
    update_epochs=4,
    total_timesteps=16 * 64 * 30,
    init_lr=1e-3,
    final_lr=1e-3,
    init_ent_coef=1e-3,
    final_ent_coef=1e-3,
    clip_coef=0.2,
    max_grad_norm=0.5,
    norm_adv=True,
    cuda=False,
)
LEARN_MODEL = {
    ppo_trxl: dict(trxl_dim=64, trxl_num_heads=2, trxl_num_layers=1, trxl_memory_length=8, trxl_positional_encoding="none"),
    ppo_gru: dict(rnn_hidden_size=64, embed_dim=64, hidden_dim=64),
    ppo_mamba: dict(embed_dim=64, hidden_dim=64, mamba_head_dim=16, mamba_state_size=16),
}
MEMORYLESS = {ppo_trxl: dict(trxl_memory_length=1), ppo_gru: dict(zero_memory=True), ppo_mamba: dict(zero_memory=True)}
SCRIPTS = pytest.mark.parametrize("script", [ppo_trxl, ppo_gru, ppo_mamba], ids=["trxl", "gru", "mamba"])


def small_args(script, **overrides):
    return script.Args(**{"cuda": False, **SMALL[script], **overrides})


def start(script, args):
    return precision_ratio.start(script, args)


def minibatches(script, args, agent, rollout):
    """The minibatches the update uses in its first epoch, as (stored index, recomputed log-prob, value)."""
    return precision_ratio.update_pass(script, args, agent, rollout)


@SCRIPTS
@pytest.mark.parametrize(
    "env_id, extra",
    [
        ("ProofOfMemory-v0", {}),
        ("ProofOfMemoryImage-v0", {"reconstruction_coef": 0.1}),
    ],
)
def test_logprobs_recomputed_equal_stored(script, env_id, extra):
    """Before any optimizer step, the update's minibatches reproduce what acting stored (to float32
    rounding, or to bfloat16 rounding where the model computes in bfloat16)."""
    if script is ppo_trxl:
        variants = [{"trxl_positional_encoding": pe} for pe in ("absolute", "learned", "none")]
        variants.append({"trxl_memory_dtype": "bfloat16"})
    else:
        variants = [{}, {"sequence_length": 3}]
    variants = [{"precision": "float32", **v} for v in variants] + [{"precision": "bfloat16", **variants[0]}]
    for variant in variants:
        tolerance = 1e-5 if variant["precision"] == "float32" else 2e-2
        args = small_args(script, env_id=env_id, num_envs=4, num_steps=16, num_minibatches=4, **extra, **variant)
        envs, agent, rollout = start(script, args)
        stats = run_utils.EpisodeStats(args.num_envs)
        continued = ended = 0
        for _ in range(3):  # later rollouts hold episodes that began in an earlier one
            script.collect_rollout(agent, envs, rollout, torch.device("cpu"), stats)
            ended += int(rollout.dones.sum())
            if script is ppo_trxl:
                continued += int((rollout.steps[0] > 0).sum())
            else:
                continued += int((~rollout.starts[0]).sum())
            seen = torch.zeros(args.num_steps, args.num_envs, dtype=torch.bool)
            with torch.no_grad():
                for index, logprob, value in minibatches(script, args, agent, rollout):
                    assert (logprob - rollout.logprobs[index]).abs().max() < tolerance
                    assert (value - rollout.values[index]).abs().max() < tolerance
                    seen[index] = True
            assert seen.all(), "the minibatches of one epoch must cover the whole rollout"
        assert ended > 0 and continued > 0, "the rollouts must contain episode ends and continued episodes"
        envs.close()


# Compiling takes 20-60 s a script on a CPU, so these run with `-m slow` (as does the device check's compiled part).
@SCRIPTS
@pytest.mark.slow
def test_compiled_agent_acts_and_recomputes_consistently(script):
    """--compile: acting runs the compiled step and the update the compiled forward and backward, as in
    training (with gradients); the update still reproduces what acting stored."""
    torch._dynamo.reset()
    args = small_args(script, env_id="ProofOfMemory-v0", num_envs=4, num_steps=16, num_minibatches=4, compile=True)
    envs, agent, rollout = start(script, args)
    stats = run_utils.EpisodeStats(args.num_envs)
    for _ in range(2):
        script.collect_rollout(agent, envs, rollout, torch.device("cpu"), stats)
        for index, logprob, value in minibatches(script, args, agent, rollout):
            (logprob.sum() + value.sum()).backward()
            assert (logprob.detach() - rollout.logprobs[index]).abs().max() < 1e-5
            assert (value.detach() - rollout.values[index]).abs().max() < 1e-5
    envs.close()
    compiled = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert compiled >= 3, f"expected compiled acting, forward and heads graphs, got {compiled}"


def test_trxl_window_holds_exactly_the_previous_steps_of_the_episode():
    """Attending over the whole timeline with the window mask equals attending over the window alone."""
    args = small_args(ppo_trxl, env_id="ProofOfMemory-v0", num_envs=3, num_steps=24, trxl_memory_length=4)
    envs, agent, rollout = start(ppo_trxl, args)
    stats = run_utils.EpisodeStats(args.num_envs)
    for _ in range(2):
        ppo_trxl.collect_rollout(agent, envs, rollout, torch.device("cpu"), stats)
    C = agent.context
    with torch.no_grad():
        for env in range(args.num_envs):
            for s in range(args.num_steps):
                t = int(rollout.steps[s, env])
                n = min(t, args.trxl_memory_length - 1)
                slot = C + s
                window = rollout.memory[env : env + 1, slot - n : slot]
                window_steps = rollout.memory_steps[env : env + 1, slot - n : slot]
                assert window_steps.tolist() == [list(range(t - n, t))], "window slots belong to this episode"
                if n == 0:
                    continue
                memories = agent.normalise_memory(window, window_steps)
                obs = rollout.vectors[s, env][None, None]
                features, _ = agent(None, obs, memories, torch.tensor([[n]]), torch.tensor([[t]]))
                logits, value = agent.heads(features[:, 0])
                assert abs(float(value[0]) - float(rollout.values[s, env])) < 1e-5


def final_success(script, **extra) -> float:
    history = script.train(script.Args(**{**LEARN, **LEARN_MODEL[script], **extra}))
    return np.mean([h["episode/success"] for h in history[-5:]])


@SCRIPTS
def test_learns_proof_of_memory_and_fails_without_memory(script):
    assert final_success(script, precision="float32") >= 0.95
    assert final_success(script, precision="float32", **MEMORYLESS[script]) <= 0.7


@SCRIPTS
@pytest.mark.slow
def test_learns_proof_of_memory_compiled(script):
    torch._dynamo.reset()
    assert final_success(script, precision="float32", compile=True) >= 0.95


@pytest.mark.parametrize("script", [ppo_trxl, ppo_gru], ids=["trxl", "gru"])  # ppo_mamba: its bfloat16 consistency above
def test_learns_proof_of_memory_in_bfloat16(script):
    """The light settings learn as well: bfloat16 compute, and for TrXL bfloat16 cached memory."""
    light = {"trxl_memory_dtype": "bfloat16"} if script is ppo_trxl else {}
    assert final_success(script, precision="bfloat16", **light) >= 0.95


@SCRIPTS
def test_precision_selects_the_compute_dtype(script):
    """The same weights act slightly differently in bfloat16 than in float32, and identically when asked twice."""
    values = {}
    for precision in ("float32", "bfloat16", "float32"):
        args = small_args(script, env_id="ProofOfMemoryImage-v0", num_envs=4, num_steps=8, precision=precision)
        envs, agent, rollout = start(script, args)
        script.collect_rollout(agent, envs, rollout, torch.device("cpu"), run_utils.EpisodeStats(args.num_envs))
        values.setdefault(precision, []).append(rollout.values)
        envs.close()
    assert torch.equal(*values["float32"])
    difference = (values["bfloat16"][0] - values["float32"][0]).abs().max()
    # Mamba's memory output is RMS-normalised (about 1 per feature, where the GRU's and TrXL's are smaller), so
    # the same relative rounding (about 0.5 % here) moves its value further.
    assert 0 < difference < (6e-2 if script is ppo_mamba else 2e-2)


@pytest.mark.parametrize("script", [ppo_trxl, ppo_gru], ids=["trxl", "gru"])  # ppo_mamba: its exact resume (test_workflow.py)
def test_same_seed_gives_identical_losses(script):
    def losses():
        args = small_args(script, env_id="ProofOfMemoryImage-v0", num_envs=2, num_steps=16, num_minibatches=2,
                          total_timesteps=64, reconstruction_coef=0.1)
        return [{k: v for k, v in h.items() if k.startswith("losses/")} for h in script.train(args)]

    first, second = losses(), losses()
    assert first == second and len(first) == 2


def test_trxl_trains_through_episodes_of_thousands_of_steps():
    args = small_args(
        ppo_trxl,
        env_id="ProofOfMemory-v0",
        env_kwargs='{"min_delay": 3200, "max_delay": 3200}',
        trxl_memory_length=16,
        num_envs=2,
        num_steps=1200,
        num_minibatches=4,
        update_epochs=1,
        total_timesteps=2 * 1200 * 3,
    )
    history = ppo_trxl.train(args)
    assert len(history) == 3
    assert history[-1]["charts/episodic_length"] == 3202
    assert all(np.isfinite(h["losses/policy_loss"]) for h in history)


def test_precision_ratio_benchmark_finds_no_gap_in_float32():
    """benchmarks/precision_ratio.py: acting and the update agree exactly in float32, so nothing starts clipped."""
    args = small_args(ppo_trxl, env_id="ProofOfMemory-v0", num_envs=4, num_steps=16, num_minibatches=4)
    row = precision_ratio.measure(ppo_trxl, args, None, rollouts=1)
    assert row["samples"] == 4 * 16 and row["max"] < 1e-5 and row["clipped"] == 0.0 and row["value"] < 1e-5


def test_precision_ratio_gradient_agreement_compares_like_with_like():
    """The bfloat16 gradient of the first minibatch points where the float32 one does; a second minibatch's
    float32 gradient is a different vector (the comparison would not notice a broken gradient otherwise)."""
    args = small_args(ppo_trxl, env_id="ProofOfMemory-v0", num_envs=4, num_steps=16, num_minibatches=4)
    rows = {row[0]: row[1:] for row in precision_ratio.gradient_agreement(args, None)}
    assert {"all", "encoder", "transformer", "heads"} <= set(rows)
    cos_bf16, err_bf16, cos_other, diff_other = rows["all"]
    assert cos_bf16 > 0.99 and err_bf16 < 0.1
    assert diff_other > 0.0 and cos_other < 1.0
