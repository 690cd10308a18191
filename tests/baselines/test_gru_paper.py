"""The paper's recurrent agents in ppo_gru.py: the GRU agent's size, LSTM and ground-truth agents, the paper presets."""

from __future__ import annotations

import glob
import os
import tomllib

import gymnasium as gym
import numpy as np
import pytest
import torch

import ppo_gru
import run_utils
from envs.core import register_game
from envs.proof_of_memory import ProofOfMemoryGame

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PAPER_PRESETS = sorted(glob.glob(os.path.join(ROOT, "configs", "paper", "ppo_gru", "*.toml")))
SMALL = dict(rnn_hidden_size=32, embed_dim=32, hidden_dim=32, cuda=False, precision="float32")
CPU = torch.device("cpu")


class CueTruthGame(ProofOfMemoryGame):
    """The probe env reporting its cue (one-hot) as `info["ground_truth"]`, like the endless Memory Gym envs."""

    env_id = "ProofOfMemoryCueTruth-v0"
    ground_truth_space = gym.spaces.Box(0.0, 1.0, (ProofOfMemoryGame.num_cues,), np.float32)

    def step_info(self) -> dict[str, np.ndarray]:
        return {"ground_truth": np.eye(self.num_cues)[self.cue]}


if CueTruthGame.env_id not in gym.registry:
    register_game(CueTruthGame)

# The agents this file adds, on the probe envs: an LSTM, and a GRU with the ground-truth head.
AGENTS = {
    "lstm": dict(rnn_type="lstm"),
    "ground_truth": dict(env_id=CueTruthGame.env_id, ground_truth_coef=0.5),
}
AGENT_IDS = pytest.mark.parametrize("agent", list(AGENTS))


def preset(name: str) -> ppo_gru.Args:
    return ppo_gru.parse_args(["--config", os.path.join(ROOT, "configs", "paper", "ppo_gru", name)])


def count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# ---------------------------------------------------------------------------------------------
# The paper's GRU agent (reference §2.1), parameter for parameter
# ---------------------------------------------------------------------------------------------
CNN = (3 * 32 * 8 * 8 + 32) + (32 * 64 * 4 * 4 + 64) + (64 * 64 * 3 * 3 + 64)  # 32-8/4, 64-4/2, 64-3/1
EMBED = 64 * 7 * 7 * 512 + 512  # Linear(3136 -> 512)
GRU = 3 * (512 * 512 + 512 * 512 + 512 + 512)  # 3 gates: input and hidden weights, two biases each
BODY = 512 * 512 + 512
POLICY = 512 * 512 + 512  # then one Linear(512 -> n) per branch
VALUE = (512 * 512 + 512) + (512 * 1 + 1)
DECODER = (512 * 3136 + 3136) + (64 * 64 * 3 * 3 + 64) + (64 * 32 * 4 * 4 + 32) + (32 * 3 * 8 * 8 + 3)


@pytest.mark.parametrize(
    "name, branches, expected",
    [
        ("MortarMayhem-Grid-v0.toml", [4], CNN + EMBED + GRU + BODY + POLICY + (512 * 4 + 4) + VALUE),
        (
            "Endless-SearingSpotlights-v0-rec.toml",
            [3, 3],
            CNN + EMBED + GRU + BODY + POLICY + 2 * (512 * 3 + 3) + VALUE + DECODER,
        ),
    ],
)
def test_paper_gru_agent_has_the_published_layers(name, branches, expected):
    args = preset(name)
    agent = ppo_gru.Agent(args, (84, 84, 3), 0, branches)
    assert count(agent) == expected
    assert args.precision == "float32" and args.rnn_type == "gru" and isinstance(agent.rnn, torch.nn.GRU)
    # GRU weight matrices (3 gates stacked) orthogonal with gain sqrt(2): W^T W = 2 I; biases zero.
    for parameter, param in agent.rnn.named_parameters():
        if "weight" in parameter:
            assert torch.allclose(param.detach().T @ param.detach(), 2 * torch.eye(512), atol=1e-4)
        else:
            assert not param.any()
    assert (agent.decoder is not None) == ("rec" in name)


def test_recurrent_state_is_zero_at_every_episode_start():
    args = ppo_gru.Args(env_id="ProofOfMemory-v0", num_envs=3, num_steps=32, rnn_type="lstm", **SMALL)
    envs, agent, rollout = start(args)
    ppo_gru.collect_rollout(agent, envs, rollout, CPU, run_utils.EpisodeStats(args.num_envs))
    assert rollout.hiddens.shape[-1] == 2 * 32  # h and c
    assert not rollout.hiddens[rollout.starts].any()
    assert rollout.starts[1:].any() and rollout.hiddens[~rollout.starts].abs().sum(-1).min() > 0
    envs.close()


# ---------------------------------------------------------------------------------------------
# LSTM and ground-truth agents: consistency, learning, exact resume
# ---------------------------------------------------------------------------------------------
def start(args: ppo_gru.Args, envs=None):
    torch.manual_seed(args.seed)
    envs = envs or run_utils.make_envs(args, args.num_envs)
    if args.ground_truth_coef > 0:
        args.ground_truth_size = run_utils.ground_truth_size(envs, args.env_id)
    image, vector = run_utils.observation_layout(envs.single_observation_space, args.env_id)
    agent = ppo_gru.Agent(args, image, vector, run_utils.action_branches(envs.single_action_space, args.env_id))
    obs, info = envs.reset(seed=args.seed)
    return envs, agent, ppo_gru.new_rollout(agent, envs, args.num_steps, obs, CPU, info)


@AGENT_IDS
@pytest.mark.parametrize("sequence_length", [-1, 3])
def test_update_recomputes_what_acting_stored(agent, sequence_length):
    """Before any optimizer step, the minibatches reproduce the stored log-probs and values to float32 rounding."""
    args = ppo_gru.Args(**{"env_id": "ProofOfMemory-v0", **SMALL, **AGENTS[agent]}, num_envs=4, num_steps=16,
                        num_minibatches=4, sequence_length=sequence_length)
    envs, model, rollout = start(args)
    continued = ended = 0
    for _ in range(3):  # later rollouts hold episodes that began in an earlier one
        ppo_gru.collect_rollout(model, envs, rollout, CPU, run_utils.EpisodeStats(args.num_envs))
        ended += int(rollout.dones.sum())
        continued += int((~rollout.starts[0]).sum())
        seen = torch.zeros(args.num_steps, args.num_envs, dtype=torch.bool)
        with torch.no_grad():
            for minibatch in ppo_gru.sequence_minibatches(args, ppo_gru.make_sequences(args, rollout)):
                logprob, _, value, _, _, index = ppo_gru.recompute(model, rollout, minibatch)
                assert (logprob - rollout.logprobs[index]).abs().max() < 1e-5
                assert (value - rollout.values[index]).abs().max() < 1e-5
                seen[index] = True
        assert seen.all()
    assert ended > 0 and continued > 0
    envs.close()


PROBE = dict(
    env_id="ProofOfMemory-v0", num_envs=16, num_steps=64, num_minibatches=4, update_epochs=4,
    total_timesteps=16 * 64 * 30, init_lr=1e-3, final_lr=1e-3, init_ent_coef=1e-3, final_ent_coef=1e-3,
    clip_coef=0.2, max_grad_norm=0.5, norm_adv=True, rnn_hidden_size=64, embed_dim=64, hidden_dim=64, cuda=False,
)


@AGENT_IDS
def test_agent_learns_the_probe_env(agent, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    history = ppo_gru.train(ppo_gru.Args(**{**PROBE, **AGENTS[agent]}))
    assert np.mean([h["episode/success"] for h in history[-5:]]) >= 0.95
    if agent == "ground_truth":
        # The head learns to read the cue from the memory: its error falls far below guessing's (0.25).
        assert history[-1]["losses/ground_truth_loss"] < 0.05 < history[0]["losses/ground_truth_loss"]


@AGENT_IDS
def test_resumed_run_equals_uninterrupted_run(agent, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    overrides = {"env_id": "ProofOfMemory-v0", **SMALL, "num_envs": 4, "num_steps": 16, "num_minibatches": 2,
                 "update_epochs": 2, **AGENTS[agent]}
    budget = 4 * 16 * 4  # four iterations
    full = ppo_gru.train(ppo_gru.Args(**overrides, total_timesteps=budget, exp_name="full"))
    first = ppo_gru.train(ppo_gru.Args(**overrides, total_timesteps=budget // 2, exp_name="half", checkpoint_interval=2))
    (checkpoint,) = glob.glob("runs/*__half__*/checkpoint.pt")
    second = ppo_gru.train(ppo_gru.parse_args(["--resume", checkpoint, "--total-timesteps", str(budget)]))

    def trajectory(history):
        return [{k: v for k, v in h.items() if k.startswith(("losses/", "episode/", "charts/episodic"))} for h in history]

    assert trajectory(first + second) == trajectory(full)
    if agent == "ground_truth":
        assert "losses/ground_truth_loss" in second[0]


# ---------------------------------------------------------------------------------------------
# Ground truth: the target of a step is the info reported with its observation
# ---------------------------------------------------------------------------------------------
class Recording(gym.vector.VectorWrapper):
    """Remembers every observation and the ground truth returned with it."""

    def __init__(self, env):
        super().__init__(env)
        self.seen = []

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.seen.append((obs.copy(), info["ground_truth"].copy(), None))
        return obs, info

    def step(self, actions):
        obs, reward, terminated, truncated, info = self.env.step(actions)
        final = info["final_info"]["ground_truth"].copy() if "final_info" in info else None
        self.seen.append((obs.copy(), info["ground_truth"].copy(), final))
        return obs, reward, terminated, truncated, info


def test_ground_truth_target_is_the_info_reported_with_the_observation():
    args = ppo_gru.Args(env_id="Endless-MortarMayhem-v0", num_envs=3, num_steps=32, ground_truth_coef=0.1, **SMALL)
    envs = Recording(run_utils.make_envs(args, args.num_envs))
    envs, agent, rollout = start(args, envs)
    ppo_gru.collect_rollout(agent, envs, rollout, CPU, run_utils.EpisodeStats(args.num_envs))
    assert rollout.dones.any(), "the rollout must cross an episode end (same-step autoreset)"
    for s in range(args.num_steps):
        obs, truth, _ = envs.seen[s]
        assert torch.equal(rollout.images[s], torch.as_tensor(obs))
        assert torch.equal(rollout.ground_truths[s], torch.as_tensor(truth, dtype=torch.float32))
    # After an episode end the target is the new episode's, not the ended one's final info.
    s, e = map(int, torch.nonzero(rollout.dones[:-1])[0])
    final = envs.seen[s + 1][2][e]
    assert not np.allclose(rollout.ground_truths[s + 1, e].numpy(), final)

    # The update regresses the head's estimate of each real step onto exactly these targets.
    sequences = ppo_gru.make_sequences(args, rollout)
    _, _, _, features, _, index = ppo_gru.recompute(agent, rollout, sequences)
    estimate = agent.estimate_ground_truth(features)
    assert estimate.shape == rollout.ground_truths[index].shape == (args.num_envs * args.num_steps, 2)
    envs.close()


def test_ground_truth_coef_is_refused_for_envs_without_ground_truth(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit, match="MortarMayhem-v0: --ground-truth-coef needs an environment that reports"):
        ppo_gru.train(ppo_gru.Args(env_id="MortarMayhem-v0", ground_truth_coef=0.1, num_envs=2, num_steps=8,
                                   total_timesteps=16, **SMALL))
    with pytest.raises(SystemExit, match="--ground-truth-coef must be >= 0"):
        ppo_gru.check_args(ppo_gru.Args(ground_truth_coef=-1.0))


def test_eval_env_kwargs_apply_to_the_evaluation_envs_only(tmp_path, monkeypatch):
    """The evaluation envs are made with --eval-env-kwargs over --env-kwargs; the training envs without them."""
    monkeypatch.chdir(tmp_path)
    made = []
    original = run_utils.make_envs

    def recording(args, num_envs, evaluation=False):
        envs = original(args, num_envs, evaluation)
        made.append((num_envs, dict(envs.unwrapped.params)))
        return envs

    monkeypatch.setattr(run_utils, "make_envs", recording)
    ppo_gru.train(ppo_gru.Args(env_id="Endless-MysteryPath-v0", env_kwargs='{"show_origin": true}',
                               eval_env_kwargs='{"max_steps": 8192}', eval_interval=1,
                               eval_seeds=2, eval_repetitions=1, eval_seed_start=100, num_envs=2, num_steps=8,
                               num_minibatches=2, update_epochs=1, total_timesteps=16, **SMALL))
    (training, train_params), (evaluation, eval_params) = made
    assert (training, evaluation) == (2, 2)
    assert train_params["show_origin"] and train_params["max_steps"] == -1
    assert eval_params["show_origin"] and eval_params["max_steps"] == 8192


# ---------------------------------------------------------------------------------------------
# The paper presets
# ---------------------------------------------------------------------------------------------
def test_there_is_a_paper_preset_for_every_published_recurrent_agent():
    names = {os.path.basename(p)[: -len(".toml")] for p in PAPER_PRESETS}
    finite = ["MortarMayhem-v0", "MysteryPath-v0", "SearingSpotlights-v0"]
    expected = {"MortarMayhem-Grid-v0", "MortarMayhemB-Grid-v0", "MysteryPath-Grid-v0", "MysteryPath-Grid-v0-cues",
                *finite, "Endless-MortarMayhem-v0", "Endless-MysteryPath-v0"}
    expected |= {f"{env}-rec" for env in [*finite, "Endless-SearingSpotlights-v0"]}
    expected |= {f"{env}-lstm" for env in finite}
    expected |= {f"{env}-gru{size}" for size in (256, 384) for env in ["Endless-MortarMayhem-v0", "Endless-MysteryPath-v0"]}
    assert names == expected


def agent_and_env(name: str) -> tuple[str, str]:
    """A preset's name is `{env_id}` or `{env_id}-{variant}`: (variant or "gru", env id with the cue suffix)."""
    for variant in ("rec", "lstm", "gru256", "gru384"):
        if name.endswith(f"-{variant}"):
            return variant, name.removesuffix(f"-{variant}")
    return "gru", name


@pytest.mark.parametrize("path", PAPER_PRESETS, ids=[os.path.basename(p) for p in PAPER_PRESETS])
def test_paper_preset_holds_the_paper_config(path):
    name = os.path.basename(path)[: -len(".toml")]
    agent, env = agent_and_env(name)
    header = open(path).readline()
    assert header.startswith("# Targets ") and "final checkpoint, 50 held-out seeds x 3" in header
    with open(path, "rb") as f:
        assert tomllib.load(f)["precision"] == "float32", "paper presets state their precision"
    args = preset(os.path.basename(path))
    assert args.env_id == env.removesuffix("-cues")
    # Shared by every paper GRU / LSTM run (reference §2.1, §2.2).
    assert (args.num_envs, args.num_steps, args.update_epochs, args.num_minibatches) == (32, 512, 3, 8)
    assert (args.gamma, args.gae_lambda, args.clip_coef, args.vf_coef, args.max_grad_norm) == (0.995, 0.95, 0.1, 0.5, 0.25)
    assert (args.init_lr, args.final_lr, args.final_ent_coef) == (2.75e-4, 1e-5, 1e-6)
    assert not args.norm_adv and args.clip_vloss and args.sequence_length == -1 and not args.zero_memory
    assert (args.embed_dim, args.hidden_dim) == (512, 512)
    assert args.rnn_type == ("lstm" if agent == "lstm" else "gru")
    assert args.rnn_hidden_size == {"gru256": 256, "gru384": 384}.get(agent, 512)
    assert args.reconstruction_coef == (0.1 if agent == "rec" else 0.0)
    assert args.init_ent_coef == (1e-3 if "MysteryPath" in env else 1e-4)
    assert args.anneal_steps == 512 * 32 * (20_000 if "SearingSpotlights" in env else 10_000)
    assert (args.eval_seeds, args.eval_repetitions, args.eval_seed_start, args.eval_interval) == (50, 3, 200_000, 500)
    env_kwargs = {"Endless-MysteryPath-v0": '{"show_origin": true}',
                  "MysteryPath-Grid-v0-cues": '{"show_origin": true, "show_goal": true}'}.get(env, "{}")
    assert args.env_kwargs == env_kwargs
    # The evaluation envs get the training envs' parameters, and a cap of 8192 steps on the endless envs.
    capped = env_kwargs[:-1] + (', ' if env_kwargs != "{}" else "") + '"max_steps": 8192}'
    assert args.eval_env_kwargs == (capped if env.startswith("Endless") else env_kwargs)
    assert args.total_timesteps % (512 * 32 * 500) == 0, "the budget ends on an evaluated checkpoint"


@pytest.mark.parametrize("name", ["MortarMayhem-v0-lstm.toml", "Endless-MysteryPath-v0-gru256.toml"])
def test_paper_preset_starts(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = os.path.join(ROOT, "configs", "paper", "ppo_gru", name)
    args = ppo_gru.parse_args(["--config", path, "--num-envs", "2", "--num-steps", "8", "--num-minibatches", "2",
                               "--update-epochs", "1", "--total-timesteps", "16", "--eval-interval", "0",
                               "--checkpoint-interval", "0", "--no-cuda"])
    assert len(ppo_gru.train(args)) == 1
