"""PPO with a GRU, in one file.

The agent embeds each observation, a GRU carries a hidden state through the episode (zero at
every episode start), and a shared body feeds the policy and value heads.

Training uses truncated backpropagation through time over episode fragments: each env's rollout
is cut where episodes end (and, with `--sequence-length`, into chunks); each fragment starts from
the hidden state the agent had there while acting. A minibatch is a random set of fragments,
padded at the end to its longest one and run through one GRU call; every loss term is computed on
real steps only.

Run `python ppo_gru.py --help` for every flag.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import random
import sys
import time
import tomllib
from collections import deque
from dataclasses import dataclass

import gymnasium as gym
import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
import tyro
from torch.utils.tensorboard import SummaryWriter

import envs  # noqa: F401  (registers the environment ids with gymnasium)


@dataclass
class Args:
    # Experiment
    exp_name: str = os.path.basename(__file__)[: -len(".py")]
    """the name of this experiment (part of the run name)"""
    config: str | None = None
    """a TOML preset (e.g. configs/ppo_gru/MortarMayhem-v0.toml); flags on the command line override it"""
    seed: int = 1
    """seed of the experiment (python, numpy, torch and the environments)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, use CUDA when it is available"""
    track: bool = False
    """if toggled, mirror the TensorBoard logs to Weights and Biases"""
    wandb_project_name: str = "memory-gym-baselines"
    """the W&B project name"""
    wandb_entity: str | None = None
    """the W&B entity (team)"""
    save_model: bool = False
    """if toggled, save the model and its args to `runs/{run_name}/{exp_name}.cleanrl_model`"""

    # Environment
    env_id: str = "MortarMayhem-Grid-v0"
    """the id of the environment (ours, or any gymnasium id with image/vector obs and discrete actions)"""
    env_kwargs: str = "{}"
    """reset parameters of the environment as a JSON object, e.g. '{"max_steps": 2560}'"""
    total_timesteps: int = 200_000_000
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
    """the number of minibatches per epoch (must divide num_steps: each env gives num_steps / num_minibatches steps)"""
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

    # GRU
    gru_hidden_size: int = 512
    """the size of the GRU hidden state"""
    embed_dim: int = 512
    """the size of the observation embedding fed to the GRU"""
    hidden_dim: int = 512
    """the width of the body and of the policy / value layers"""
    sequence_length: int = -1
    """cut episode fragments into training sequences of at most this length (-1: whole fragments)"""
    zero_memory: bool = False
    """ablation: zero the hidden state before every step, making the agent memoryless"""

    # Filled in at runtime
    batch_size: int = 0
    """the rollout size (num_envs * num_steps)"""
    minibatch_size: int = 0
    """the minibatch size (batch_size // num_minibatches)"""
    num_iterations: int = 0
    """the number of iterations (total_timesteps // batch_size)"""


# ---------------------------------------------------------------------------------------------
# Command line and presets
# ---------------------------------------------------------------------------------------------
def fail(message: str) -> None:
    """Stop with a message that names the problem (non-zero exit, no traceback)."""
    raise SystemExit(f"error: {message}")


def load_preset(path: str) -> dict:
    """Read a TOML preset and check every key and value type against `Args`."""
    try:
        with open(path, "rb") as f:
            preset = tomllib.load(f)
    except FileNotFoundError:
        fail(f"config file {path!r} does not exist")
    except tomllib.TOMLDecodeError as e:
        fail(f"config file {path!r} is not valid TOML: {e}")
    fields = {f.name: f for f in dataclasses.fields(Args)}
    values = {}
    for key, value in preset.items():
        name = key.replace("-", "_")
        if name not in fields or name in ("config", "batch_size", "minibatch_size", "num_iterations"):
            fail(f"config file {path!r}: unknown key {key!r}")
        default = getattr(Args, name)
        if isinstance(default, bool) and not isinstance(value, bool):
            fail(f"config file {path!r}: {key} must be true or false, got {value!r}")
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                fail(f"config file {path!r}: {key} must be a number, got {value!r}")
            if isinstance(default, int) and not isinstance(value, int):
                fail(f"config file {path!r}: {key} must be an integer, got {value!r}")
        if isinstance(default, str) and not isinstance(value, str):
            fail(f"config file {path!r}: {key} must be a string, got {value!r}")
        values[name] = value
    return values


def parse_args(argv: list[str] | None = None) -> Args:
    """tyro CLI on top of an optional `--config` preset (command-line flags win)."""
    argv = sys.argv[1:] if argv is None else argv
    defaults = Args()
    for i, arg in enumerate(argv):
        path = arg.split("=", 1)[1] if arg.startswith("--config=") else None
        if arg == "--config" and i + 1 < len(argv):
            path = argv[i + 1]
        if path is not None:
            defaults = dataclasses.replace(defaults, config=path, **load_preset(path))
    return tyro.cli(Args, default=defaults, args=argv)


# ---------------------------------------------------------------------------------------------
# Environments
# ---------------------------------------------------------------------------------------------
def make_envs(args: Args) -> gym.vector.VectorEnv:
    """Our ids get their native vector env; any other gymnasium id a sync vector env (same-step autoreset)."""
    try:
        env_kwargs = json.loads(args.env_kwargs)
    except json.JSONDecodeError as e:
        fail(f"--env-kwargs is not valid JSON: {e}")
    if not isinstance(env_kwargs, dict):
        fail("--env-kwargs must be a JSON object")
    try:
        spec = gym.spec(args.env_id)
    except gym.error.Error as e:
        fail(f"unknown environment id {args.env_id!r} ({e})")
    try:
        if spec.vector_entry_point is not None:
            envs = gym.make_vec(args.env_id, num_envs=args.num_envs, **env_kwargs)
        else:
            envs = gym.make_vec(
                args.env_id,
                num_envs=args.num_envs,
                vectorization_mode="sync",
                vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
                **env_kwargs,
            )
    except ValueError as e:
        fail(f"{args.env_id}: {e}")
    observation_layout(envs.single_observation_space, args.env_id)
    action_branches(envs.single_action_space, args.env_id)
    return envs


def observation_layout(space: gym.Space, env_id: str) -> tuple[tuple[int, ...] | None, int]:
    """(image shape (H, W, C) or None, vector size) of a supported observation space.

    Supported: a uint8 image Box (H, W, C), a 1-D Box, or a Dict of one of each (as MortarMayhemB).
    """
    boxes = list(space.spaces.values()) if isinstance(space, gym.spaces.Dict) else [space]
    image, vector = None, 0
    for box in boxes:
        if isinstance(box, gym.spaces.Box) and len(box.shape) == 3 and box.dtype == np.uint8 and image is None:
            image = box.shape
        elif isinstance(box, gym.spaces.Box) and len(box.shape) == 1 and vector == 0:
            vector = box.shape[0]
        else:
            fail(
                f"{env_id}: incompatible observation space {space}; supported are a uint8 image Box (H, W, C), "
                "a 1-D Box, or a Dict holding one of each"
            )
    return image, vector


def action_branches(space: gym.Space, env_id: str) -> list[int]:
    """The number of choices of each discrete action branch."""
    if isinstance(space, gym.spaces.Discrete):
        return [int(space.n)]
    if isinstance(space, gym.spaces.MultiDiscrete) and space.nvec.ndim == 1:
        return [int(n) for n in space.nvec]
    fail(f"{env_id}: incompatible action space {space}; supported are Discrete and MultiDiscrete")


def split_observation(obs, space: gym.Space) -> tuple[np.ndarray | None, np.ndarray | None]:
    """Batched observation -> (images uint8 or None, vectors float32 or None)."""
    parts = list(obs.values()) if isinstance(space, gym.spaces.Dict) else [obs]
    image = next((p for p in parts if p.ndim == 4), None)
    vector = next((p for p in parts if p.ndim == 2), None)
    return image, None if vector is None else vector.astype(np.float32)


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
        features = vector_size
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
                features += self.cnn(torch.zeros(1, image_shape[2], *image_shape[:2])).shape[1]
        self.embed = nn.Sequential(layer_init(nn.Linear(features, dim)), nn.ReLU())

    def forward(self, image: torch.Tensor | None, vector: torch.Tensor | None) -> torch.Tensor:
        parts = []
        if self.cnn is not None:
            # uint8 (N, H, W, C) -> float (N, C, H, W) in [0, 1]
            parts.append(self.cnn(image.permute(0, 3, 1, 2).float() / 255.0))
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

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features).permute(0, 2, 3, 1)


class Agent(nn.Module):
    def __init__(self, args: Args, image_shape, vector_size: int, branches: list[int]):
        super().__init__()
        self.hidden_size = args.gru_hidden_size
        self.encoder = Encoder(image_shape, vector_size, args.embed_dim)
        self.gru = nn.GRU(args.embed_dim, args.gru_hidden_size, batch_first=True)
        for name, param in self.gru.named_parameters():
            if "weight" in name:
                nn.init.orthogonal_(param, math.sqrt(2))
            else:
                nn.init.zeros_(param)
        self.body = nn.Sequential(layer_init(nn.Linear(args.gru_hidden_size, args.hidden_dim)), nn.ReLU())
        self.policy = nn.Sequential(layer_init(nn.Linear(args.hidden_dim, args.hidden_dim)), nn.ReLU())
        self.actor = nn.ModuleList(layer_init(nn.Linear(args.hidden_dim, n), std=0.01) for n in branches)
        self.value = nn.Sequential(
            layer_init(nn.Linear(args.hidden_dim, args.hidden_dim)), nn.ReLU(), layer_init(nn.Linear(args.hidden_dim, 1), std=1.0)
        )
        self.decoder = None
        if args.reconstruction_coef > 0 and image_shape is not None:
            self.decoder = Decoder(args.gru_hidden_size, image_shape[2])

    def forward(self, image, vector, hidden: torch.Tensor):
        """Sequences (B, L, ...) from initial hidden states (B, hidden) -> GRU outputs (B, L, hidden), final hidden."""
        batch, length = (image if image is not None else vector).shape[:2]
        x = self.encoder(
            None if image is None else image.flatten(0, 1), None if vector is None else vector.flatten(0, 1)
        ).unflatten(0, (batch, length))
        out, hidden = self.gru(x, hidden[None].contiguous())
        return out, hidden[0]

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
    hiddens: torch.Tensor  # (num_steps, num_envs, hidden): the hidden state each step started from
    next_obs: tuple  # (images, vectors) of the observation the next step starts from
    next_hidden: torch.Tensor  # (num_envs, hidden)
    next_start: torch.Tensor  # (num_envs,) bool: the next step begins an episode


def new_rollout(args: Args, agent: Agent, envs: gym.vector.VectorEnv, device: torch.device) -> Rollout:
    image_shape, vector_size = observation_layout(envs.single_observation_space, args.env_id)
    S, E = args.num_steps, args.num_envs
    obs, _ = envs.reset(seed=args.seed)
    return Rollout(
        images=None if image_shape is None else torch.zeros((S, E, *image_shape), dtype=torch.uint8, device=device),
        vectors=None if not vector_size else torch.zeros((S, E, vector_size), device=device),
        actions=torch.zeros((S, E, len(agent.actor)), dtype=torch.long, device=device),
        logprobs=torch.zeros((S, E, len(agent.actor)), device=device),
        values=torch.zeros((S, E), device=device),
        rewards=torch.zeros((S, E), device=device),
        dones=torch.zeros((S, E), device=device),
        starts=torch.zeros((S, E), dtype=torch.bool, device=device),
        hiddens=torch.zeros((S, E, agent.hidden_size), device=device),
        next_obs=split_observation(obs, envs.single_observation_space),
        next_hidden=torch.zeros((E, agent.hidden_size), device=device),
        next_start=torch.ones(E, dtype=torch.bool, device=device),
    )


def to_device(obs: tuple, device: torch.device) -> tuple:
    return tuple(None if part is None else torch.as_tensor(part, device=device) for part in obs)


def act(args: Args, agent: Agent, ro: Rollout, device: torch.device):
    """One GRU step of every env; the hidden state is zero at an episode start."""
    image, vector = to_device(ro.next_obs, device)
    reset = ro.next_start[:, None] if not args.zero_memory else torch.ones_like(ro.next_start)[:, None]
    hidden = torch.where(reset, 0.0, ro.next_hidden)
    out, next_hidden = agent(
        None if image is None else image[:, None], None if vector is None else vector[:, None], hidden
    )
    logits, value = agent.heads(out[:, 0])
    return image, vector, hidden, next_hidden, logits, value


@torch.no_grad()
def collect_rollout(args: Args, agent: Agent, envs: gym.vector.VectorEnv, ro: Rollout, device, on_episode):
    """Step all envs `num_steps` times; return the bootstrap value of the observation that follows."""
    for s in range(args.num_steps):
        image, vector, hidden, next_hidden, logits, value = act(args, agent, ro, device)
        dists = [torch.distributions.Categorical(logits=l) for l in logits]
        action = torch.stack([d.sample() for d in dists], dim=1)
        if image is not None:
            ro.images[s] = image
        if vector is not None:
            ro.vectors[s] = vector
        ro.hiddens[s] = hidden
        ro.starts[s] = ro.next_start
        ro.actions[s] = action
        ro.logprobs[s] = torch.stack([d.log_prob(a) for d, a in zip(dists, action.T)], dim=1)
        ro.values[s] = value

        env_action = action.cpu().numpy()
        obs, reward, terminated, truncated, info = envs.step(env_action[:, 0] if len(dists) == 1 else env_action)
        done = np.logical_or(terminated, truncated)
        ro.rewards[s] = torch.as_tensor(reward, dtype=torch.float32, device=device)
        ro.dones[s] = torch.as_tensor(done, dtype=torch.float32, device=device)
        ro.next_obs = split_observation(obs, envs.single_observation_space)
        ro.next_hidden = next_hidden
        ro.next_start = torch.as_tensor(done, device=device)
        on_episode(reward, done, info)
    return act(args, agent, ro, device)[5]


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


def evaluate(agent: Agent, ro: Rollout, sequences: list[tuple[int, int, int]]):
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
    image = None if ro.images is None else ro.images[steps, envs_index]
    vector = None if ro.vectors is None else ro.vectors[steps, envs_index]
    out, _ = agent(image, vector, ro.hiddens[first, env])
    out = out[mask]
    logits, value = agent.heads(out)
    step_index, env_index = steps[mask], envs_index[mask]
    actions = ro.actions[step_index, env_index]
    dists = [torch.distributions.Categorical(logits=l) for l in logits]
    logprob = torch.stack([d.log_prob(a) for d, a in zip(dists, actions.unbind(-1))], dim=-1)
    entropy = torch.stack([d.entropy() for d in dists], dim=-1).sum(-1)
    real_image = None if image is None else image[mask]
    return logprob, entropy, value, out, real_image, (step_index, env_index)


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
class EpisodeStats:
    """Returns, lengths and the env's end-of-episode info of recently finished episodes."""

    def __init__(self, num_envs: int, window: int = 100):
        self.running_return = np.zeros(num_envs)
        self.running_length = np.zeros(num_envs, dtype=np.int64)
        self.recent = deque(maxlen=window)
        self.new: list[dict] = []

    def __call__(self, reward, done, info) -> None:
        self.running_return += reward
        self.running_length += 1
        final = info.get("final_info", {})
        for i in np.flatnonzero(done):
            episode = {"return": float(self.running_return[i]), "length": int(self.running_length[i])}
            for key, value in final.items():
                if not key.startswith("_") and final.get(f"_{key}", np.ones(len(done), bool))[i]:
                    item = np.asarray(value[i])
                    if item.ndim == 0 and np.issubdtype(item.dtype, np.number):
                        episode[key] = float(item)
            self.new.append(episode)
            self.recent.append(episode)
        self.running_return[done] = 0.0
        self.running_length[done] = 0

    def take_new(self) -> list[dict]:
        new, self.new = self.new, []
        return new


def mean_of(episodes: list[dict], key: str) -> float | None:
    values = [e[key] for e in episodes if key in e]
    return float(np.mean(values)) if values else None


def format_duration(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def check_args(args: Args) -> None:
    if args.sequence_length == 0 or args.sequence_length < -1:
        fail(f"--sequence-length must be -1 (whole fragments) or >= 1, got {args.sequence_length}")
    if args.total_timesteps < args.num_envs * args.num_steps:
        fail(f"--total-timesteps ({args.total_timesteps}) is smaller than one rollout (num_envs x num_steps)")


def train(args: Args) -> list[dict]:
    """Run the experiment; returns the metrics logged at every iteration."""
    check_args(args)
    args.batch_size = args.num_envs * args.num_steps
    args.minibatch_size = args.batch_size // args.num_minibatches
    args.num_iterations = args.total_timesteps // args.batch_size
    run_name = f"{args.env_id}__{args.exp_name}__{args.seed}__{int(time.time())}"

    random.seed(args.seed)
    np.random.seed(args.seed)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.deterministic = args.torch_deterministic
    device = torch.device("cuda" if torch.cuda.is_available() and args.cuda else "cpu")

    envs = make_envs(args)
    image_shape, vector_size = observation_layout(envs.single_observation_space, args.env_id)
    if args.reconstruction_coef > 0 and image_shape is None:
        fail(f"{args.env_id}: --reconstruction-coef needs image observations")
    agent = Agent(args, image_shape, vector_size, action_branches(envs.single_action_space, args.env_id)).to(device)
    optimizer = torch.optim.AdamW(agent.parameters(), lr=args.init_lr)

    if args.track:
        import wandb

        wandb.init(
            project=args.wandb_project_name,
            entity=args.wandb_entity,
            sync_tensorboard=True,
            config=vars(args),
            name=run_name,
            save_code=True,
        )
    writer = SummaryWriter(f"runs/{run_name}")
    writer.add_text(
        "hyperparameters",
        "|param|value|\n|-|-|\n" + "\n".join(f"|{key}|{value}|" for key, value in vars(args).items()),
    )

    ro = new_rollout(args, agent, envs, device)
    stats = EpisodeStats(args.num_envs)
    history = []
    global_step, start_time = 0, time.time()
    try:
        for iteration in range(1, args.num_iterations + 1):
            # Linear decay of learning rate and entropy coefficient in environment steps.
            frac = max(0.0, 1.0 - global_step / args.anneal_steps)
            lr = args.final_lr + (args.init_lr - args.final_lr) * frac
            ent_coef = args.final_ent_coef + (args.init_ent_coef - args.final_ent_coef) * frac
            for group in optimizer.param_groups:
                group["lr"] = lr

            rollout_start = time.time()
            next_value = collect_rollout(args, agent, envs, ro, device, stats)
            global_step += args.batch_size
            rollout_time = time.time() - rollout_start
            advantages, returns = compute_advantages(args, ro, next_value)

            # PPO update over minibatches of whole sequences.
            update_start = time.time()
            sequences = make_sequences(args, ro)
            logs = {key: [] for key in ("policy", "value", "entropy", "reconstruction", "old_approx_kl", "approx_kl", "clipfrac")}
            for epoch in range(args.update_epochs):
                order = torch.randperm(len(sequences)).tolist()
                for chunk in np.array_split(np.array(order), min(args.num_minibatches, len(sequences))):
                    logprob, entropy, value, features, image, (sel, envs_index) = evaluate(
                        agent, ro, [sequences[k] for k in chunk]
                    )
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
                        reconstruction = agent.decoder(features)
                        r_loss = F.binary_cross_entropy(reconstruction, image.float() / 255.0)
                        loss = loss + args.reconstruction_coef * r_loss
                        logs["reconstruction"].append(r_loss.item())

                    optimizer.zero_grad()
                    loss.backward()
                    nn.utils.clip_grad_norm_(agent.parameters(), args.max_grad_norm)
                    optimizer.step()
                    logs["policy"].append(pg_loss.item())
                    logs["value"].append(v_loss.item())
                    logs["entropy"].append(entropy_loss.item())
                if args.target_kl is not None and np.mean(logs["approx_kl"][-args.num_minibatches :]) > args.target_kl:
                    break
            update_time = time.time() - update_start

            # Logging
            y_pred, y_true = ro.values.flatten().cpu().numpy(), returns.flatten().cpu().numpy()
            var_y = np.var(y_true)
            explained_var = np.nan if var_y == 0 else 1 - np.var(y_true - y_pred) / var_y
            sps = int(global_step / (time.time() - start_time))
            metrics = {
                "charts/SPS": sps,
                "charts/rollout_SPS": int(args.batch_size / rollout_time),
                "charts/update_SPS": int(args.batch_size / update_time),
                "charts/learning_rate": lr,
                "charts/entropy_coefficient": ent_coef,
                "losses/explained_variance": explained_var,
            }
            for key, values in logs.items():
                if values:
                    name = {"policy": "policy_loss", "value": "value_loss", "reconstruction": "reconstruction_loss"}.get(key, key)
                    metrics[f"losses/{name}"] = float(np.mean(values))
            new_episodes = stats.take_new()
            if new_episodes:
                metrics["charts/episodic_return"] = mean_of(new_episodes, "return")
                metrics["charts/episodic_length"] = mean_of(new_episodes, "length")
                for key in sorted({k for e in new_episodes for k in e} - {"return", "length"}):
                    metrics[f"episode/{key}"] = mean_of(new_episodes, key)
            for key, value in metrics.items():
                writer.add_scalar(key, value, global_step)
            history.append({"global_step": global_step, **metrics})

            recent_return = mean_of(list(stats.recent), "return")
            eta = (args.num_iterations - iteration) * args.batch_size / max(sps, 1)
            print(
                f"iter {iteration}/{args.num_iterations} | step {global_step:,} | SPS {sps:,} "
                f"| return {'n/a' if recent_return is None else f'{recent_return:.3f}'} "
                f"| pi {metrics['losses/policy_loss']:.4f} | v {metrics['losses/value_loss']:.4f} "
                f"| entropy {metrics['losses/entropy']:.3f} | ETA {format_duration(eta)}",
                flush=True,
            )

        if args.save_model:
            save_model(args, agent, f"runs/{run_name}/{args.exp_name}.cleanrl_model")
    finally:
        envs.close()
        writer.close()
        if args.track:
            import wandb

            wandb.finish()
    return history


def save_model(args: Args, agent: Agent, path: str) -> None:
    """Write weights and args atomically (a crash never leaves a half-written file)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp"
    torch.save({"model_weights": agent.state_dict(), "args": vars(args)}, tmp)
    os.replace(tmp, path)
    print(f"model saved to {path}")


if __name__ == "__main__":
    train(parse_args())
