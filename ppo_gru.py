"""PPO with a GRU, in one file.

The agent embeds each observation, a GRU (or an LSTM, `--rnn-type`) carries a recurrent state
through the episode (zero at every episode start), and a shared body feeds the policy and value heads.

Training uses truncated backpropagation through time over episode fragments: each env's rollout
is cut where episodes end (and, with `--sequence-length`, into chunks); each fragment starts from
the hidden state the agent had there while acting. A minibatch is a random set of fragments,
padded at the end to its longest one and run through one GRU call; every loss term is computed on
real steps only.

Run `python ppo_gru.py --help` for every flag.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro

import run_utils
from run_utils import (
    COMMON_RANGES,
    Run,
    Upload,
    agreed_min,
    average_gradients,
    compile_agent,
    common_problems,
    evaluate_policy,
    checked_observation,
    computes_in_bfloat16,
    checked_tensor,
    fail,
    refuse,
    final_observations,
    leave_finished_rank,
    mean_across,
    observation_layout,
    run_on_ranks,
    saved_observation,
    split_observation,
)


@dataclass
class Args:
    # Experiment
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run name)"""
    config: str | None = None
    """a TOML preset (e.g. configs/paper/ppo_gru/MortarMayhem-v0.toml); flags on the command line override it.
    Without one, `--env-id X` takes the paper's run of X where configs/paper/ppo_gru/X.toml exists"""
    seed: int = 1
    """seed of the experiment (python, numpy, torch and the environments)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, use CUDA when it is available"""
    precision: Literal["float32", "bfloat16", "auto"] = "float32"
    """compute precision of the encoder's convolutions and matrix products. bfloat16 is autocast; the recurrent
    layer, heads, losses and the optimizer stay float32. auto: bfloat16 where the device computes it natively
    (CUDA GPUs from Ampere on, CPUs with AVX512-BF16 or AMX), float32 elsewhere"""
    compile: bool = False
    """if toggled, torch.compile the acting and the update passes (on CUDA, acting replays CUDA graphs); the
    first iteration and the first evaluation take longer while they compile"""
    track: bool = False
    """if toggled, mirror the TensorBoard logs to Weights and Biases"""
    wandb_project_name: str = "memory-gym-baselines"
    """the W&B project name"""
    wandb_entity: str | None = None
    """the W&B entity (team)"""

    # Environment
    env_id: str = "MortarMayhem-Grid-v0"
    """the environment: one of ours, or any gymnasium id with image/vector obs and discrete actions
    (`module:EnvId-v0` imports `module` first, for envs registered there)"""
    env_kwargs: str = "{}"
    """reset parameters of the environment as a JSON object, e.g. '{"command_count": [5]}' for the default env"""
    total_timesteps: int = 163_840_000
    """total environment steps of the experiment"""
    num_envs: int = 32
    """the number of parallel environments"""
    num_steps: int = 512
    """the number of steps per environment in each rollout"""

    # PPO
    init_lr: float = 2.75e-4
    """the initial learning rate"""
    final_lr: float = 1.0e-5
    """the learning rate reached after `anneal_steps` environment steps"""
    anneal_steps: int = 32 * 512 * 10_000
    """environment steps over which learning rate and entropy coefficient decay linearly"""
    gamma: float = 0.995
    """the discount factor"""
    gae_lambda: float = 0.95
    """the lambda of generalised advantage estimation"""
    num_minibatches: int = 8
    """the number of minibatches per epoch: the rollout's sequences (episode fragments) are shuffled into this
    many near-equal groups (fewer when there are fewer sequences; the same number on every rank)"""
    update_epochs: int = 3
    """the number of epochs over each rollout"""
    norm_adv: bool = False
    """if toggled, normalise advantages per minibatch"""
    clip_coef: float = 0.1
    """the surrogate clipping coefficient (also clips the value)"""
    clip_vloss: bool = True
    """if toggled, use the clipped value loss"""
    init_ent_coef: float = 1e-4
    """the initial entropy coefficient"""
    final_ent_coef: float = 1e-6
    """the entropy coefficient reached after `anneal_steps` environment steps"""
    vf_coef: float = 0.5
    """the value loss coefficient"""
    max_grad_norm: float = 0.25
    """the maximum global gradient norm"""
    target_kl: float | None = None
    """stop the update early once an epoch ends above this approximate KL"""
    reconstruction_coef: float = 0.0
    """weight of the observation-reconstruction loss (0 disables the decoder; image observations only)"""
    ground_truth_coef: float = 0.0
    """weight of the MSE loss of a head that estimates the env's `info["ground_truth"]` from the recurrent
    output (0 disables the head; Endless-MortarMayhem, Endless-MysteryPath and Endless-SearingSpotlights report it)"""
    sequence_length: int = -1
    """cut episode fragments into training sequences of at most this length (-1: whole fragments)"""

    # Agent: recurrent core
    rnn_type: Literal["gru", "lstm"] = "gru"
    """the recurrent layer: gru (hidden state h) or lstm (hidden and cell state h, c)"""
    rnn_hidden_size: int = 512
    """the size of the recurrent hidden state (and of the LSTM's cell state)"""
    embed_dim: int = 512
    """the size of the observation embedding fed to the recurrent layer"""
    hidden_dim: int = 512
    """the width of the body and of the policy / value layers"""
    zero_memory: bool = False
    """ablation: zero the hidden state before every step, making the agent memoryless"""

    # Evaluation and checkpoints
    eval_interval: int = 500
    """evaluate every N iterations and at the end (0: never; the paper: every 500 updates)"""
    eval_seeds: int = 50
    """the number of held-out level seeds per evaluation"""
    eval_repetitions: int = 3
    """the number of episodes played on each held-out seed"""
    eval_seed_start: int = 200_000
    """the first held-out seed (the paper's are 200000-200049); must not overlap the training seeds"""
    eval_env_kwargs: str = "{}"
    """reset parameters of the evaluation envs only, as a JSON object over --env-kwargs (e.g.
    '{"max_steps": 8192}' caps evaluation episodes of the endless envs)"""
    checkpoint_interval: int = 0
    """also write `runs/{run_name}/checkpoint.pt` every N iterations (0: only on the time schedule)"""
    checkpoint_minutes: float = 10.0
    """write the checkpoint after the first iteration, then whenever this many minutes have passed since
    the last one, at the end and on SIGINT / SIGTERM (0: after every iteration)"""
    resume: str | None = None
    """continue the run saved in this checkpoint (same TensorBoard run; flags may change budgets and logging)"""
    save_model: bool = False
    """if toggled, save the model and its args to `runs/{run_name}/{exp_name}.cleanrl_model`"""
    capture_video: bool = False
    """if toggled, record episodes of env 0 (agent view beside the ground truth) to `videos/{run_name}`"""

    # Filled in at runtime (not flags)
    batch_size: tyro.conf.Suppress[int] = 0
    """the rollout size (num_envs * num_steps)"""
    num_iterations: tyro.conf.Suppress[int] = 0
    """the number of iterations (total_timesteps // (batch_size x world_size))"""
    world_size: tyro.conf.Suppress[int] = 1
    """the number of data-parallel ranks (set by torchrun)"""
    run_name: tyro.conf.Suppress[str] = ""
    """the name of the run's folders (kept when resuming)"""
    ground_truth_size: tyro.conf.Suppress[int] = 0
    """the size of the env's ground truth (set from the env when --ground-truth-coef is used)"""


# ---------------------------------------------------------------------------------------------
# Command line and presets
# ---------------------------------------------------------------------------------------------
# What a resumed run must keep: the rollout layout, the model and the environment.
STRUCTURAL_FIELDS = (
    "env_id", "env_kwargs", "num_envs", "num_steps", "reconstruction_coef", "world_size",
    "rnn_type", "rnn_hidden_size", "embed_dim", "hidden_dim", "ground_truth_coef",
)

# The allowed values of every number (checked before anything starts).
RANGES = {**COMMON_RANGES, "rnn_hidden_size": ">= 1", "embed_dim": ">= 1", "hidden_dim": ">= 1"}


def parse_args(argv: list[str] | None = None) -> Args:
    """tyro CLI on top of a checkpoint's args (`--resume`), a `--config` preset or the paper's run of `--env-id`;
    flags win."""
    return run_utils.parse_args(Args, "ppo_gru", argv, check_args)


def check_args(args: Args, problems: list[str] = ()) -> None:
    """Refuse the flags (and the preset's `problems`) with every problem named in one message."""
    problems = [*problems, *common_problems(args, RANGES)]
    if args.sequence_length == 0 or args.sequence_length < -1:
        problems.append(f"--sequence-length must be -1 (whole fragments) or >= 1, got {args.sequence_length}")
    refuse(problems)


# ---------------------------------------------------------------------------------------------
# Agent
# ---------------------------------------------------------------------------------------------
def layer_init(layer: nn.Module, std: float = math.sqrt(2)) -> nn.Module:
    nn.init.orthogonal_(layer.weight, std)
    return layer


class Encoder(nn.Module):
    """Image (Nature CNN) and/or vector observation -> embedding of size dim."""

    def __init__(self, image_shape: tuple[int, ...] | None, vector_size: int, dim: int):
        super().__init__()
        self.cnn = None
        flat_size = vector_size
        if image_shape is not None:
            self.cnn = nn.Sequential(
                layer_init(nn.Conv2d(image_shape[2], 32, 8, stride=4)),
                nn.ReLU(),
                layer_init(nn.Conv2d(32, 64, 4, stride=2)),
                nn.ReLU(),
                layer_init(nn.Conv2d(64, 64, 3, stride=1)),
                nn.ReLU(),
                nn.Flatten(),
            )
            with torch.no_grad():
                flat_size += self.cnn(torch.zeros(1, image_shape[2], *image_shape[:2])).shape[1]
        self.embed = nn.Sequential(layer_init(nn.Linear(flat_size, dim)), nn.ReLU())

    def forward(self, image: torch.Tensor | None, vector: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if self.cnn is not None:
            # uint8 (N, H, W, C) -> (N, C, H, W) in [0, 1], made once in the precision the convolutions use
            device = image.device.type
            dtype = torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else torch.float32
            parts.append(self.cnn(image.permute(0, 3, 1, 2).to(dtype).mul_(1 / 255)))
        if vector is not None:
            parts.append(vector)
        return self.embed(torch.cat(parts, dim=1))


class Decoder(nn.Module):
    """Embedding -> reconstructed 84x84 image (N, H, W, C) in [0, 1], the inverse of the Nature CNN."""

    def __init__(self, dim: int, channels: int):
        super().__init__()
        self.net = nn.Sequential(
            layer_init(nn.Linear(dim, 64 * 7 * 7)),
            nn.ReLU(),
            nn.Unflatten(1, (64, 7, 7)),
            layer_init(nn.ConvTranspose2d(64, 64, 3, stride=1)),
            nn.ReLU(),
            layer_init(nn.ConvTranspose2d(64, 32, 4, stride=2)),
            nn.ReLU(),
            layer_init(nn.ConvTranspose2d(32, channels, 8, stride=4)),
            nn.Sigmoid(),
        )

    def forward(self, memory_out: torch.Tensor) -> torch.Tensor:
        return self.net(memory_out).permute(0, 2, 3, 1)


class Agent(nn.Module):
    """Encoder -> GRU or LSTM -> body -> policy / value layers and heads (the paper's GRU agent by default).

    The recurrent state of each env is one tensor: h for a GRU, h and c side by side for an LSTM, so
    that storing, zeroing and carrying it is the same for both.
    """

    def __init__(self, args: Args, image_shape, vector_size: int, branches: list[int]):
        super().__init__()
        self.zero_memory = args.zero_memory
        self.encoder = Encoder(image_shape, vector_size, args.embed_dim)
        rnn = {"gru": nn.GRU, "lstm": nn.LSTM}[args.rnn_type]
        self.rnn = rnn(args.embed_dim, args.rnn_hidden_size, batch_first=True)
        self.state_size = args.rnn_hidden_size * (2 if args.rnn_type == "lstm" else 1)
        for name, param in self.rnn.named_parameters():
            if "weight" in name:
                nn.init.orthogonal_(param, math.sqrt(2))
            else:
                nn.init.zeros_(param)
        self.body = nn.Sequential(layer_init(nn.Linear(args.rnn_hidden_size, args.hidden_dim)), nn.ReLU())
        self.policy = nn.Sequential(layer_init(nn.Linear(args.hidden_dim, args.hidden_dim)), nn.ReLU())
        self.actor = nn.ModuleList(layer_init(nn.Linear(args.hidden_dim, n), std=0.01) for n in branches)
        self.value = nn.Sequential(
            layer_init(nn.Linear(args.hidden_dim, args.hidden_dim)), nn.ReLU(), layer_init(nn.Linear(args.hidden_dim, 1), std=1.0)
        )
        self.decoder = None
        if args.reconstruction_coef > 0 and image_shape is not None:
            self.decoder = Decoder(args.rnn_hidden_size, image_shape[2])
        # Like the decoder, the ground-truth estimator reads the recurrent output (neroRL's layout).
        self.ground_truth = None
        if args.ground_truth_coef > 0:
            self.ground_truth = nn.Sequential(
                layer_init(nn.Linear(args.rnn_hidden_size, args.hidden_dim)),
                nn.ReLU(),
                layer_init(nn.Linear(args.hidden_dim, args.ground_truth_size)),
            )
        self.precision = args.precision

    def autocast(self):
        """bfloat16 autocast of convolutions and matrix products when `--precision` asks for it."""
        device_type = self.body[0].weight.device.type
        return torch.autocast(device_type, torch.bfloat16, enabled=computes_in_bfloat16(self.precision, device_type))

    def forward(self, image, vector, hidden: torch.Tensor, mask: torch.Tensor | None = None):
        """Sequences from initial recurrent states (B, state_size) -> outputs (B, L, hidden), final states.

        Without `mask`, image / vector are (B, L, ...). With a (B, L) mask of real steps they hold the
        real steps only, (N, ...): the encoder skips the padding, which enters the GRU as zeros at
        the ends of sequences and so never affects a real step.
        """
        with self.autocast():
            x = self.encoder(image.flatten(0, 1) if image is not None and mask is None else image,
                             vector.flatten(0, 1) if vector is not None and mask is None else vector)
        x = x.float()  # the recurrence runs in float32 outside autocast: its state is carried across hundreds of steps
        if mask is None:
            x = x.unflatten(0, hidden.shape[:1] + (-1,))
        else:
            x = x.new_zeros((*mask.shape, x.shape[-1])).masked_scatter(mask[..., None], x)
        if isinstance(self.rnn, nn.LSTM):
            h, c = hidden.chunk(2, dim=-1)
            out, (h, c) = self.rnn(x, (h[None].contiguous(), c[None].contiguous()))
            return out, torch.cat([h[0], c[0]], dim=-1)
        out, hidden = self.rnn(x, hidden[None].contiguous())
        return out, hidden[0]

    def reconstruct(self, memory_out: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.decoder(memory_out).float()

    def estimate_ground_truth(self, memory_out: torch.Tensor) -> torch.Tensor:
        return self.ground_truth(memory_out)

    def policy_step(self, image, vector, hidden: torch.Tensor):
        """Acting: one step (B, ...) of every env from its recurrent state -> logits, value, next state."""
        out, next_hidden = self(None if image is None else image[:, None], None if vector is None else vector[:, None], hidden)
        logits, value = self.heads(out[:, 0])
        return logits, value, next_hidden

    def heads(self, memory_out: torch.Tensor):
        features = self.body(memory_out)
        policy = self.policy(features)
        return [branch(policy) for branch in self.actor], self.value(features).squeeze(-1)


# ---------------------------------------------------------------------------------------------
# Rollout storage and collection
# ---------------------------------------------------------------------------------------------
@dataclass
class Rollout:
    """Everything one rollout stores, plus the state that carries over to the next one."""

    images: torch.Tensor | None  # (num_steps, num_envs, H, W, C) uint8
    vectors: torch.Tensor | None  # (num_steps, num_envs, size) float32
    actions: torch.Tensor  # (num_steps, num_envs, branches)
    logprobs: torch.Tensor  # (num_steps, num_envs, branches)
    values: torch.Tensor  # (num_steps, num_envs)
    rewards: torch.Tensor  # (num_steps, num_envs)
    dones: torch.Tensor  # (num_steps, num_envs): the episode ended with this step
    starts: torch.Tensor  # (num_steps, num_envs): the sample begins an episode
    hiddens: torch.Tensor  # (num_steps, num_envs, state_size): the recurrent state each step started from
    ground_truths: torch.Tensor | None  # (num_steps, num_envs, size): the env's ground truth at each observation
    next_obs: tuple  # (images, vectors, ground truth or None) of the observation the next step starts from
    next_hidden: torch.Tensor  # (num_envs, state_size)
    next_start: torch.Tensor  # (num_envs,) bool: the next step begins an episode
    upload: Upload  # host arrays to the device without waiting (pinned buffers on CUDA)


def new_rollout(agent: Agent, envs: gym.vector.VectorEnv, num_steps: int, first_obs, device, first_info=None) -> Rollout:
    """Empty storage; the ground truth is stored when the agent estimates it and `first_info` is given (training)."""
    image_shape, vector_size = observation_layout(envs.single_observation_space)
    S, E = num_steps, envs.num_envs
    ground_truth = agent.ground_truth is not None and first_info is not None
    return Rollout(
        images=None if image_shape is None else torch.zeros((S, E, *image_shape), dtype=torch.uint8, device=device),
        vectors=None if not vector_size else torch.zeros((S, E, vector_size), device=device),
        actions=torch.zeros((S, E, len(agent.actor)), dtype=torch.long, device=device),
        logprobs=torch.zeros((S, E, len(agent.actor)), device=device),
        values=torch.zeros((S, E), device=device),
        rewards=torch.zeros((S, E), device=device),
        dones=torch.zeros((S, E), device=device),
        starts=torch.zeros((S, E), dtype=torch.bool, device=device),
        hiddens=torch.zeros((S, E, agent.state_size), device=device),
        ground_truths=torch.zeros((S, E, agent.ground_truth[-1].out_features), device=device) if ground_truth else None,
        next_obs=observed(first_obs, first_info, envs.single_observation_space, ground_truth),
        next_hidden=torch.zeros((E, agent.state_size), device=device),
        next_start=torch.ones(E, dtype=torch.bool, device=device),
        upload=Upload(device),
    )


def observed(obs, info: dict | None, space: gym.Space, ground_truth: bool) -> tuple:
    """(images, vectors, ground truth or None) of a batched observation.

    The ground truth is the one reported in the same info as the observation: where an episode ended
    (same-step autoreset) that is the first one of the next episode, like the observation.
    """
    image, vector = split_observation(obs, space)
    if not ground_truth:
        return image, vector, None
    if info is None or "ground_truth" not in info:
        fail("--ground-truth-coef: the environment reported no info['ground_truth'] with its observation")
    return image, vector, np.asarray(info["ground_truth"], dtype=np.float32)


def act(agent: Agent, ro: Rollout, device: torch.device):
    """One GRU step of every env; the hidden state is zero at an episode start."""
    image, vector = (None if part is None else ro.upload(name, part) for name, part in zip(("image", "vector"), ro.next_obs))
    reset = torch.ones_like(ro.next_start)[:, None] if agent.zero_memory else ro.next_start[:, None]
    hidden = torch.where(reset, 0.0, ro.next_hidden)
    logits, value, next_hidden = agent.policy_step(image, vector, hidden)
    return image, vector, hidden, next_hidden, logits, value


@torch.no_grad()
def collect_rollout(agent: Agent, envs: gym.vector.VectorEnv, ro: Rollout, device, on_episode, recorder=None, gamma=None):
    """Step all envs for one rollout; return the bootstrap value of the observation that follows.

    With `gamma`, an episode cut by a time limit (truncated, not terminated) gets the discounted value of
    its last observation added to its last reward: the task did not end there."""
    # Rewards are gathered on the host and copied once; a time limit's bootstrap is added after.
    rewards, bootstraps = np.zeros(tuple(ro.values.shape), np.float32), []
    for s in range(ro.values.shape[0]):
        if recorder is not None:
            recorder.capture(ro.next_obs[0], envs)
        image, vector, hidden, next_hidden, logits, value = act(agent, ro, device)
        # Unvalidated: checking the arguments reads them on the host, a wait for the device every step.
        dists = [torch.distributions.Categorical(logits=l, validate_args=False) for l in logits]
        action = torch.stack([d.sample() for d in dists], dim=1)
        if image is not None:
            ro.images[s] = image
        if vector is not None:
            ro.vectors[s] = vector
        ro.hiddens[s] = hidden
        if ro.ground_truths is not None:
            ro.ground_truths[s] = ro.upload("ground_truth", ro.next_obs[2])
        ro.starts[s] = ro.next_start
        ro.actions[s] = action
        ro.logprobs[s] = torch.stack([d.log_prob(a) for d, a in zip(dists, action.T)], dim=1)
        ro.values[s] = value

        env_action = action.cpu().numpy()  # the step's one copy from the device, and its one wait
        obs, reward, terminated, truncated, info = envs.step(env_action[:, 0] if len(dists) == 1 else env_action)
        done = np.logical_or(terminated, truncated)
        rewards[s] = reward
        done_now = ro.upload("done", done)
        ro.dones[s] = done_now.float()
        ro.next_hidden = next_hidden
        cut = np.logical_and(truncated, np.logical_not(terminated))
        if gamma is not None and cut.any():
            # The last observation's value, from the hidden state the episode reached.
            ro.next_obs = observed(final_observations(obs, info, cut), None, envs.single_observation_space, False)
            ro.next_start = torch.zeros_like(ro.next_start)
            final_value = act(agent, ro, device)[5]
            bootstraps.append((s, gamma * final_value * ro.upload("cut", cut, torch.float32)))
        ro.next_obs = observed(obs, info, envs.single_observation_space, ro.ground_truths is not None)
        ro.next_start = done_now
        on_episode(reward, done, info)
        if recorder is not None:
            recorder.step_done(bool(done[0]))
    ro.rewards.copy_(ro.upload("rewards", rewards))
    for s, bootstrap in bootstraps:
        ro.rewards[s] += bootstrap
    return act(agent, ro, device)[5]


def compute_advantages(args: Args, ro: Rollout, next_value: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalised advantage estimation; an episode end cuts the bootstrap."""
    advantages = torch.zeros_like(ro.rewards)
    last = 0.0
    for s in reversed(range(args.num_steps)):
        following = next_value if s == args.num_steps - 1 else ro.values[s + 1]
        alive = 1.0 - ro.dones[s]
        delta = ro.rewards[s] + args.gamma * following * alive - ro.values[s]
        last = delta + args.gamma * args.gae_lambda * alive * last
        advantages[s] = last
    return advantages, advantages + ro.values


def make_sequences(args: Args, ro: Rollout) -> list[tuple[int, int, int]]:
    """Cut every env's rollout at episode starts (and every `sequence_length` steps): (env, first step, length)."""
    starts = ro.starts.cpu().numpy().copy()
    starts[0] = True
    limit = 1 if args.zero_memory else args.sequence_length
    sequences = []
    for env in range(args.num_envs):
        cuts = np.flatnonzero(starts[:, env]).tolist() + [args.num_steps]
        for first, end in zip(cuts[:-1], cuts[1:]):
            step = end - first if limit <= 0 else limit
            sequences += [(env, s, min(step, end - s)) for s in range(first, end, step)]
    return sequences


def sequence_minibatches(args: Args, sequences: list[tuple[int, int, int]], num_groups: int | None = None) -> list[list[tuple[int, int, int]]]:
    """One epoch's minibatches: the sequences shuffled into `num_groups` near-equal groups (default:
    `num_minibatches`, or one per sequence when there are fewer sequences)."""
    order = torch.randperm(len(sequences)).numpy()
    groups = np.array_split(order, num_groups or min(args.num_minibatches, len(sequences)))
    return [[sequences[k] for k in group] for group in groups]


def recompute(agent: Agent, ro: Rollout, sequences: list[tuple[int, int, int]]):
    """Recompute policy and value of whole sequences in one GRU call.

    Sequences are padded at the end to the longest one; the results are returned for real steps
    only, flattened, with the (step, env) index of each.
    """
    device = ro.values.device
    env, first, length = (torch.tensor(column, device=device) for column in zip(*sequences))
    offsets = torch.arange(int(length.max()), device=device)
    mask = offsets < length[:, None]  # (B, L): real steps
    steps = (first[:, None] + offsets).clamp(max=ro.values.shape[0] - 1)
    envs_index = env[:, None].expand_as(steps)
    step_index, env_index = steps[mask], envs_index[mask]
    image = None if ro.images is None else ro.images[step_index, env_index]
    vector = None if ro.vectors is None else ro.vectors[step_index, env_index]
    memory_out = agent(image, vector, ro.hiddens[first, env], mask)[0][mask]
    logits, value = agent.heads(memory_out)
    actions = ro.actions[step_index, env_index]
    dists = [torch.distributions.Categorical(logits=l) for l in logits]
    logprob = torch.stack([d.log_prob(a) for d, a in zip(dists, actions.unbind(-1))], dim=-1)
    entropy = torch.stack([d.entropy() for d in dists], dim=-1).sum(-1)
    return logprob, entropy, value, memory_out, image, (step_index, env_index)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def train(args: Args) -> list[dict]:
    """Run the experiment (on every rank under torchrun); returns the metrics logged at every iteration (on rank 0)."""
    return run_on_ranks(args, run_training)


def run_training(args: Args, rank: int, device: torch.device) -> list[dict]:
    # The run around the algorithm (run_utils.Run): checks, seeds, run folder, logs, checkpoints, signals.
    run = Run(args, "ppo_gru", rank, device, STRUCTURAL_FIELDS, check_args)
    envs, image_shape, vector_size, branches = run.make_envs()
    agent = Agent(args, image_shape, vector_size, branches).to(device)
    if args.compile:
        compile_agent(agent, device)
    # Fused: one pass over the parameters per step instead of one per operation and tensor.
    optimizer = torch.optim.AdamW(agent.parameters(), lr=args.init_lr, fused=device.type in ("cpu", "cuda"))
    obs, info = envs.reset(seed=args.seed + rank * args.num_envs)  # distinct env seeds per rank
    ro = new_rollout(agent, envs, args.num_steps, obs, device, info)
    # Resume when asked, then open the run folder, the logs and the signal handlers. Leaving the block
    # closes them; an error leaves one line and names the last checkpoint.
    with run.start(agent, optimizer, save_rollout=lambda: rollout_state(ro),
                   load_rollout=lambda state: load_rollout_state(state, ro)):
        for iteration in run.iterations():  # each followed by a checkpoint when one is due
            # Linear decay of learning rate and entropy coefficient in environment steps.
            frac = max(0.0, 1.0 - run.global_step / args.anneal_steps)
            lr = args.final_lr + (args.init_lr - args.final_lr) * frac
            ent_coef = args.final_ent_coef + (args.init_ent_coef - args.final_ent_coef) * frac
            for group in optimizer.param_groups:
                group["lr"] = lr

            run.phase("rollout")
            next_value = collect_rollout(agent, envs, ro, device, run.stats, run.recorder, args.gamma)
            run.global_step += args.batch_size * args.world_size

            run.phase("update")
            advantages, returns = compute_advantages(args, ro, next_value)
            # PPO update over minibatches of whole sequences.
            sequences = make_sequences(args, ro)
            # Every rank takes the same number of optimizer steps, whatever its episodes look like.
            num_groups = agreed_min(min(args.num_minibatches, len(sequences)), args.world_size, device)
            logs = {key: [] for key in ("policy_loss", "value_loss", "entropy", "reconstruction_loss", "ground_truth_loss",
                                        "old_approx_kl", "approx_kl", "clipfrac")}
            for epoch in range(args.update_epochs):
                for minibatch in sequence_minibatches(args, sequences, num_groups):
                    logprob, entropy, value, memory_out, image, (sel, envs_index) = recompute(agent, ro, minibatch)
                    logratio = logprob - ro.logprobs[sel, envs_index]
                    ratio = logratio.exp()
                    with torch.no_grad():
                        logs["old_approx_kl"].append((-logratio).mean().item())
                        logs["approx_kl"].append(((ratio - 1) - logratio).mean().item())
                        logs["clipfrac"].append(((ratio - 1.0).abs() > args.clip_coef).float().mean().item())

                    mb_advantages = advantages[sel, envs_index]
                    if args.norm_adv:
                        mb_advantages = (mb_advantages - mb_advantages.mean()) / (mb_advantages.std() + 1e-8)
                    # The ratio is taken per action branch; the advantage is shared by the branches.
                    mb_advantages = mb_advantages[..., None]
                    pg_loss = torch.max(
                        -mb_advantages * ratio, -mb_advantages * ratio.clamp(1 - args.clip_coef, 1 + args.clip_coef)
                    ).mean()

                    mb_returns, mb_values = returns[sel, envs_index], ro.values[sel, envs_index]
                    if args.clip_vloss:
                        clipped = mb_values + (value - mb_values).clamp(-args.clip_coef, args.clip_coef)
                        v_loss = torch.max((value - mb_returns) ** 2, (clipped - mb_returns) ** 2).mean()
                    else:
                        v_loss = ((value - mb_returns) ** 2).mean()
                    entropy_loss = entropy.mean()
                    loss = pg_loss - ent_coef * entropy_loss + args.vf_coef * v_loss

                    if agent.decoder is not None:
                        reconstruction = agent.reconstruct(memory_out)
                        r_loss = F.binary_cross_entropy(reconstruction, image.float() / 255.0)
                        loss = loss + args.reconstruction_coef * r_loss
                        logs["reconstruction_loss"].append(r_loss.item())
                    if agent.ground_truth is not None:
                        # Real steps only; each target is the info reported with that step's observation.
                        gt_loss = F.mse_loss(agent.estimate_ground_truth(memory_out), ro.ground_truths[sel, envs_index])
                        loss = loss + args.ground_truth_coef * gt_loss
                        logs["ground_truth_loss"].append(gt_loss.item())

                    optimizer.zero_grad()
                    loss.backward()
                    if args.world_size > 1:
                        average_gradients(list(agent.parameters()), args.world_size)
                    grad_norm = nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                    if not torch.isfinite(grad_norm):  # identical on every rank after averaging
                        raise FloatingPointError(f"the loss or its gradient is {loss.item()} / {grad_norm.item()}")
                    optimizer.step()
                    logs["policy_loss"].append(pg_loss.item())
                    logs["value_loss"].append(v_loss.item())
                    logs["entropy"].append(entropy_loss.item())
                # Every rank stops at the same epoch: the decision is taken on the KL averaged over ranks.
                epoch_kl = logs["approx_kl"][-num_groups:]
                if args.target_kl is not None and mean_across(np.mean(epoch_kl), args.world_size, device) > args.target_kl:
                    break
            if not all(torch.isfinite(p).all() for p in agent.parameters()):
                raise FloatingPointError("a parameter became NaN or infinite")

            y_pred, y_true = ro.values.flatten().cpu().numpy(), returns.flatten().cpu().numpy()
            var_y = np.var(y_true)
            metrics = {"charts/learning_rate": lr, "charts/entropy_coefficient": ent_coef,
                       "losses/explained_variance": np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y}
            metrics.update({f"losses/{key}": float(np.mean(values)) for key, values in logs.items() if values})
            # Every --eval-interval iterations: held-out seeds, played by this script's rollout.
            run.log(metrics, evaluate=lambda eval_envs: evaluate_policy(args, agent, eval_envs, device, new_rollout, collect_rollout))
        run.finish()
    return run.history


# ---------------------------------------------------------------------------------------------
# What a checkpoint keeps of the rollout
# ---------------------------------------------------------------------------------------------
def rollout_state(ro: Rollout) -> dict:
    """What a checkpoint keeps of the rollout to continue exactly: the hidden state carried over and the next step."""
    return {"next_hidden": ro.next_hidden.cpu(), "next_start": ro.next_start.cpu(), "next_obs": saved_observation(ro.next_obs)}


def load_rollout_state(state: dict, ro: Rollout) -> None:
    """Restore `rollout_state` into `ro` (after the envs), every tensor checked against the one it replaces."""
    ro.next_hidden = checked_tensor(state["next_hidden"], ro.next_hidden, "next_hidden")
    ro.next_start = checked_tensor(state["next_start"], ro.next_start, "next_start")
    ro.next_obs = checked_observation(state["next_obs"], ro.next_obs)


if __name__ == "__main__":
    args = parse_args()
    train(args)
    leave_finished_rank(args)
