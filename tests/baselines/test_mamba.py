"""ppo_mamba.py: the Mamba-2 layer's two forms, the rollout's stored states, long episodes, the agent's size,
its presets and its ground-truth head. (The probe-env behaviour shared with the other scripts, learning with and
without memory included, is in test_baselines.py; resume and the rest of the workflow in test_workflow.py.)"""

from __future__ import annotations

import glob
import os
import tomllib

import numpy as np
import pytest
import torch

import ppo_mamba
import run_utils
from test_gru_paper import CueTruthGame  # noqa: F401  (registers ProofOfMemoryCueTruth-v0)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CPU = torch.device("cpu")
TINY = dict(embed_dim=16, hidden_dim=16, mamba_head_dim=8, mamba_state_size=8, cuda=False, precision="float32")
PAPER_PRESETS = sorted(glob.glob(os.path.join(ROOT, "configs", "paper", "ppo_mamba", "*.toml")))


def start(args: ppo_mamba.Args):
    torch.manual_seed(args.seed)
    envs = run_utils.make_envs(args, args.num_envs)
    if args.ground_truth_coef > 0:
        args.ground_truth_size = run_utils.ground_truth_size(envs, args.env_id)
    image, vector = run_utils.observation_layout(envs.single_observation_space, args.env_id)
    agent = ppo_mamba.Agent(args, image, vector, run_utils.action_branches(envs.single_action_space, args.env_id))
    obs, info = envs.reset(seed=args.seed)
    return envs, agent, ppo_mamba.new_rollout(agent, envs, args.num_steps, obs, CPU, info)


# ---------------------------------------------------------------------------------------------
# The chunked form (training) equals the step form (acting)
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("length, chunk", [(1, 4), (3, 4), (8, 4), (13, 4), (13, 256), (40, 7)])
def test_chunked_form_equals_step_form(length, chunk):
    """Two layers on random sequences from random carried states: the same outputs and final states, whether the
    length is shorter than a chunk, a multiple of it or not."""
    torch.manual_seed(length)
    args = ppo_mamba.Args(**{**TINY, "mamba_num_layers": 2, "mamba_chunk_size": chunk, "mamba_conv_width": 4})
    memory = ppo_mamba.Mamba2(args)
    with torch.no_grad():  # livelier dynamics than at initialisation: larger steps, so the state decays and fills
        for layer in memory.layers:
            layer.dt_bias.add_(2.0)
    x, state = torch.randn(3, length, args.embed_dim), torch.randn(3, memory.state_size)
    with torch.no_grad():
        chunked, chunked_final = memory(x, state)
        stepped, step_state = [], state
        for t in range(length):
            out, step_state = memory.step(x[:, t], step_state)
            stepped.append(out)
    torch.testing.assert_close(chunked, torch.stack(stepped, dim=1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(chunked_final, step_state, atol=1e-5, rtol=1e-5)
    assert chunked_final.shape == state.shape  # the state's size does not depend on the length


def test_ssd_chunked_equals_the_recurrence_in_float64():
    """The chunked scan against h_t = exp(a_t) h_{t-1} + x_t b_t^T, y_t = h_t c_t written out step by step."""
    torch.manual_seed(0)
    B, L, H, P, N = 2, 11, 3, 4, 5
    x, b, c = torch.randn(B, L, H, P), torch.randn(B, L, N), torch.randn(B, L, N)
    a, h = -torch.rand(B, L, H), torch.randn(B, H, P, N)
    y, final = ppo_mamba.ssd_chunked(x, a, b, c, 4, h)
    h = h.double()
    for t in range(L):
        h = h * a[:, t, :, None, None].double().exp() + x[:, t, ..., None].double() * b[:, t, None, None].double()
        torch.testing.assert_close(y[:, t].double(), torch.einsum("bhpn,bn->bhp", h, c[:, t].double()), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(final.double(), h, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------------------------------------
# The rollout: states zeroed at episode starts, stored only where a training sequence starts
# ---------------------------------------------------------------------------------------------
def test_state_is_zero_at_episode_starts_and_stored_at_fragment_starts():
    args = ppo_mamba.Args(env_id="ProofOfMemory-v0", num_envs=3, num_steps=32, sequence_length=8, **TINY)
    envs, agent, rollout = start(args)
    for _ in range(2):
        ppo_mamba.collect_rollout(agent, envs, rollout, CPU, run_utils.EpisodeStats(args.num_envs))
    assert rollout.states.shape == (32 // 8, 3, agent.state_size)  # steps 0, 8, 16, 24
    stored_at_start = rollout.starts[::8]
    assert not rollout.states[stored_at_start].any()
    assert rollout.states[~stored_at_start].abs().sum(-1).min() > 0
    sequences = ppo_mamba.make_sequences(args, rollout)
    assert all(rollout.starts[first, env] or first % 8 == 0 for env, first, _ in sequences)
    assert sorted((env, first + s) for env, first, length in sequences for s in range(length)) == \
        [(env, s) for env in range(3) for s in range(32)]
    envs.close()


def test_update_recomputes_long_fragments_that_span_chunks_and_rollouts():
    """Episodes of 60-odd steps, rollouts of 48 steps, chunks of 16: every fragment of the update (whole, and
    cut every 20 steps) starts from the state stored while acting and reproduces its log-probs and values."""
    for sequence_length in (-1, 20):
        args = ppo_mamba.Args(env_id="ProofOfMemory-v0", env_kwargs='{"min_delay": 50, "max_delay": 70}', num_envs=3,
                              num_steps=48, num_minibatches=2, sequence_length=sequence_length, mamba_chunk_size=16,
                              mamba_num_layers=2, **TINY)
        envs, agent, rollout = start(args)
        longest, continued, ended = 0, 0, 0
        for _ in range(3):
            ppo_mamba.collect_rollout(agent, envs, rollout, CPU, run_utils.EpisodeStats(args.num_envs))
            continued += int((~rollout.starts[0]).sum())
            ended += int(rollout.dones.sum())
            sequences = ppo_mamba.make_sequences(args, rollout)
            longest = max(longest, max(length for _, _, length in sequences))
            with torch.no_grad():
                for minibatch in ppo_mamba.sequence_minibatches(args, sequences):
                    logprob, _, value, _, _, index = ppo_mamba.recompute(agent, rollout, minibatch)
                    assert (logprob - rollout.logprobs[index]).abs().max() < 1e-5
                    assert (value - rollout.values[index]).abs().max() < 1e-5
        assert continued > 0 and ended > 0 and longest > 16
        assert longest == (48 if sequence_length == -1 else 20)
        envs.close()


def test_trains_through_episodes_of_thousands_of_steps():
    """3202-step episodes with 1200-step rollouts: fragments of up to 1200 steps, five chunks, one stored state per
    env whatever the episode length."""
    args = ppo_mamba.Args(**TINY, env_id="ProofOfMemory-v0", env_kwargs='{"min_delay": 3200, "max_delay": 3200}',
                          num_envs=2, num_steps=1200, num_minibatches=2, update_epochs=1, total_timesteps=2 * 1200 * 3,
                          eval_interval=0)
    history = ppo_mamba.train(args)
    assert len(history) == 3
    assert history[-1]["charts/episodic_length"] == 3202
    assert all(np.isfinite(h["losses/policy_loss"]) and np.isfinite(h["losses/value_loss"]) for h in history)


# ---------------------------------------------------------------------------------------------
# The agent around the memory is the paper's GRU agent
# ---------------------------------------------------------------------------------------------
def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_agent_is_the_paper_gru_agent_with_mamba_layers():
    """Encoder, embedding, body and heads of the paper's GRU agent (4,048,549 parameters with its GRU of 1,575,936);
    one Mamba-2 layer of width 512 with Mamba-2's default sizes in place of the GRU."""
    import ppo_gru

    args = ppo_mamba.parse_args([])
    agent = ppo_mamba.Agent(args, (84, 84, 3), 0, [4])
    gru_agent = ppo_gru.Agent(ppo_gru.parse_args([]), (84, 84, 3), 0, [4])
    assert count(agent) - count(agent.memory) == count(gru_agent) - count(gru_agent.rnn) == 4_048_549 - 1_575_936
    d, inner, heads, state, width = 512, 1024, 16, 128, 4  # d_model, expand x d_model, inner / 64, d_state, d_conv
    conv_dim = inner + 2 * state  # x, B and C
    layer = d * (2 * inner + 2 * state + heads) + conv_dim * (width + 1) + 3 * heads + inner + inner * d
    assert count(agent.memory) == layer + 2 * d  # plus the layer's pre-norm and the final norm
    assert count(agent) == 4_193_237
    assert agent.state_size == conv_dim * (width - 1) + heads * 64 * state


# ---------------------------------------------------------------------------------------------
# The paper's protocol and the ground-truth head
# ---------------------------------------------------------------------------------------------
PAPER_TASKS = ["MortarMayhem-Grid-v0", "MortarMayhemB-Grid-v0", "MortarMayhem-v0", "MysteryPath-Grid-v0", "MysteryPath-v0",
               "SearingSpotlights-v0", "Endless-MortarMayhem-v0", "Endless-MysteryPath-v0", "Endless-SearingSpotlights-v0"]


def test_there_is_a_paper_preset_per_paper_task_with_the_papers_ppo():
    assert [os.path.basename(p)[: -len(".toml")] for p in PAPER_PRESETS] == sorted(PAPER_TASKS)
    for path in PAPER_PRESETS:
        header = " ".join(line for line in open(path).read().splitlines() if line.startswith("#")).lower()
        assert "no published result" in header, f"{path}: the header says there is no number to target"
        with open(path, "rb") as f:
            assert tomllib.load(f)["precision"] == "float32"
        env_id = os.path.basename(path)[: -len(".toml")]
        args = ppo_mamba.parse_args(["--config", path])
        # The GRU's preset of the task (Endless Searing Spotlights: the paper's agents learned it with reconstruction).
        gru_preset = os.path.join(ROOT, "configs", "paper", "ppo_gru", f"{env_id}.toml")
        with open(gru_preset if os.path.exists(gru_preset) else gru_preset.replace(".toml", "-rec.toml"), "rb") as f:
            paper = tomllib.load(f)
        # The paper's PPO, budget, schedules and evaluation for this task, as its GRU preset holds them.
        for key in ("env_kwargs", "total_timesteps", "num_envs", "num_steps", "update_epochs", "num_minibatches", "gamma",
                    "gae_lambda", "norm_adv", "clip_coef", "clip_vloss", "vf_coef", "max_grad_norm", "init_lr", "final_lr",
                    "init_ent_coef", "final_ent_coef", "anneal_steps", "eval_interval", "eval_seeds", "eval_repetitions",
                    "eval_seed_start", "eval_env_kwargs", "reconstruction_coef", "sequence_length"):
            assert getattr(args, key) == paper[key], f"{env_id}: {key}"
        assert (args.embed_dim, args.hidden_dim, args.mamba_num_layers) == (512, 512, 1)
        assert (args.mamba_expand, args.mamba_state_size, args.mamba_head_dim, args.mamba_conv_width,
                args.mamba_chunk_size) == (2, 128, 64, 4, 256)


@pytest.mark.parametrize("name", ["MortarMayhem-Grid-v0.toml", "Endless-SearingSpotlights-v0.toml"])
def test_paper_preset_starts(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = os.path.join(ROOT, "configs", "paper", "ppo_mamba", name)
    args = ppo_mamba.parse_args(["--config", path, "--num-envs", "2", "--num-steps", "8", "--num-minibatches", "2",
                                 "--update-epochs", "1", "--total-timesteps", "16", "--eval-interval", "0",
                                 "--checkpoint-interval", "0", "--no-cuda"])
    assert len(ppo_mamba.train(args)) == 1


def test_ground_truth_head_learns_to_read_the_cue_from_the_memory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = ppo_mamba.Args(env_id=CueTruthGame.env_id, ground_truth_coef=0.5, num_envs=16, num_steps=64, num_minibatches=4,
                          update_epochs=4, total_timesteps=16 * 64 * 12, init_lr=1e-3, final_lr=1e-3, eval_interval=0,
                          embed_dim=32, hidden_dim=32, mamba_head_dim=16, mamba_state_size=8, cuda=False)
    history = ppo_mamba.train(args)
    # Guessing the one-hot cue gives an error of 0.25; the head reads it from the memory's output.
    assert history[-1]["losses/ground_truth_loss"] < 0.05 < history[0]["losses/ground_truth_loss"]
