"""PPO with a Transformer-XL episodic memory (TrXL), in one file.

The agent embeds each observation, then a stack of pre-LayerNorm transformer layers lets the
current step (the query) attend over the hidden states that each layer received at the previous
`W - 1` steps of the same episode (W = `--trxl-memory-length`). Those hidden states are computed
once, when the step is taken, and cached; they receive no gradient later (the "episodic memory").

Memory layout. Each env keeps a timeline of `W - 1 + num_steps` slots: the W - 1 steps that
precede the rollout followed by the rollout's own steps. Slot `k = W - 1 + s` belongs to rollout
step s, and its window is slots `[k - W + 1, k)`, masked to the current episode. The memory
therefore costs `num_envs x (num_steps + W - 1) x layers x dim` whatever the episode length, and
episodes of any length run and train.

Update. Minibatches are stratified: every env contributes the same number of randomly chosen
steps. Each stored state is layer-normalised once, the key/value projections are folded into the
queries, and each query attends over its env's whole timeline through a banded mask, so windows
are never gathered or materialised.

Run `python ppo_trxl.py --help` for every flag.
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
    """a TOML preset (e.g. configs/paper/ppo_trxl/MortarMayhem-v0.toml); flags on the command line override it.
    Without one, `--env-id X` takes the paper's run of X where configs/paper/ppo_trxl/X.toml exists"""
    seed: int = 1
    """seed of the experiment (python, numpy, torch and the environments)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, use CUDA when it is available"""
    precision: Literal["float32", "bfloat16", "auto"] = "float32"
    """compute precision of the convolutions and matrix products. bfloat16 is autocast; normalisations,
    softmax, heads, losses and the optimizer stay float32. auto: bfloat16 where the device computes it
    natively (CUDA GPUs from Ampere on, CPUs with AVX512-BF16 or AMX), float32 elsewhere"""
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
    """weight of the observation-reconstruction loss: a transposed CNN decodes the observation from the
    transformer's output, as the paper's agent (0 disables the decoder; image observations only)"""
    ground_truth_coef: float = 0.0
    """weight of the MSE loss of a head that estimates the env's `info["ground_truth"]` from the
    transformer's output (0 disables the head; needs an env that reports it, as the Endless ids)"""

    # Agent: Transformer-XL
    trxl_num_layers: int = 3
    """the number of transformer layers"""
    trxl_num_heads: int = 4
    """the number of attention heads"""
    trxl_dim: int = 384
    """the width of the embedding and of every layer"""
    trxl_memory_length: int = 119
    """W: each step attends over the hidden states of the previous W - 1 steps of its episode (1 = no memory)"""
    trxl_memory_dtype: Literal["float32", "bfloat16"] = "float32"
    """storage precision of the cached memory (bfloat16 halves its size; it is normalised in float32)"""
    trxl_positional_encoding: Literal["absolute", "learned", "relative", "none"] = "absolute"
    """absolute: sinusoidal encoding of each memory slot's episode step, added to the memory;
    learned: a learned attention bias per head and distance within the window (with
    --trxl-positional-encoding-horizon: a learned vector per episode step added to the memory, the paper's);
    relative: Transformer-XL's relative encoding (sinusoid of query step minus key step, u/v biases); none"""
    trxl_positional_encoding_horizon: int = 120
    """0: the absolute encoding encodes the episode step t itself (episodes of any length). T > 0: the
    paper's agent's table convention, which encodes T - 1 - t (steps past T - 1 share the last row),
    with T its max episode steps"""
    trxl_query_positional_encoding: bool = False
    """if toggled, the absolute encoding is also added to each layer's query input ("QPos"; with a
    horizon, of the newest memory step max(t - 1, 0), as the paper's agent)"""
    trxl_gate_bias: float | None = None
    """GTrXL: GRU-type gates with this initial bias replace both residual connections of every layer
    (unset: plain residuals)"""
    head_hidden_size: int = 512
    """the width of the Linear(dim -> N) + ReLU layer of its own before the policy, value and ground-truth
    outputs (the paper's agent: 512)"""

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
    """reset parameters of the evaluation envs only, as a JSON object over --env-kwargs (e.g. the
    paper's evaluation cap '{"max_steps": 2560}')"""
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
    """the size of the env's `info["ground_truth"]` (set when --ground-truth-coef is used)"""


# ---------------------------------------------------------------------------------------------
# Command line and presets
# ---------------------------------------------------------------------------------------------
# What a resumed run must keep: the rollout layout, the model and the environment.
STRUCTURAL_FIELDS = (
    "env_id", "env_kwargs", "num_envs", "num_steps", "reconstruction_coef", "world_size",
    "trxl_num_layers", "trxl_num_heads", "trxl_dim", "trxl_memory_length", "trxl_positional_encoding",
    "trxl_memory_dtype", "trxl_positional_encoding_horizon", "trxl_query_positional_encoding",
    "trxl_gate_bias", "head_hidden_size", "ground_truth_coef",
)

# The allowed values of every number (checked before anything starts).
RANGES = {
    **COMMON_RANGES,
    "head_hidden_size": ">= 1",
    "trxl_num_layers": ">= 1",
    "trxl_num_heads": ">= 1",
    "trxl_dim": ">= 1",
    "trxl_memory_length": ">= 1",
    "trxl_positional_encoding_horizon": ">= 0",
    "trxl_gate_bias": "finite",
}


def parse_args(argv: list[str] | None = None) -> Args:
    """tyro CLI on top of a checkpoint's args (`--resume`), a `--config` preset or the paper's run of `--env-id`;
    flags win. An id the paper lacks has no known episode limit, so the absolute encoding encodes the step itself."""
    return run_utils.parse_args(Args, "ppo_trxl", argv, check_args, unknown_id={"trxl_positional_encoding_horizon": 0})


def check_args(args: Args, problems: list[str] = ()) -> None:
    """Refuse the flags (and the preset's `problems`) with every problem named in one message."""
    problems = [*problems, *common_problems(args, RANGES)]
    # Each head's slice splits into sine and cosine halves.
    if args.trxl_num_heads >= 1 and args.trxl_dim % (2 * args.trxl_num_heads) != 0:
        problems.append(f"--trxl-dim ({args.trxl_dim}) must be divisible by 2 x --trxl-num-heads ({args.trxl_num_heads})")
    if args.num_minibatches >= 1 and args.num_steps % args.num_minibatches != 0:
        problems.append(f"--num-minibatches ({args.num_minibatches}) must divide --num-steps ({args.num_steps})")
    if args.trxl_query_positional_encoding and args.trxl_positional_encoding != "absolute":
        problems.append("--trxl-query-positional-encoding adds the absolute encoding; it needs --trxl-positional-encoding absolute")
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


def sinusoidal_encoding(positions: torch.Tensor, dim: int) -> torch.Tensor:
    """Sinusoidal encoding of integer positions of any size: (...,) -> (..., dim)."""
    inv_freq = 1.0 / (10000 ** (torch.arange(0, dim, 2, device=positions.device, dtype=torch.float32) / dim))
    angles = positions.float().clamp(min=0)[..., None] * inv_freq
    return torch.cat([angles.sin(), angles.cos()], dim=-1)


class GRUGate(nn.Module):
    """GTrXL's gate in place of a residual: out = (1 - z) * x + z * tanh(W_g y + U_g (r * x)).

    x is the residual stream, y the sublayer's output; the bias lowers z at first, so that a layer
    starts close to the identity."""

    def __init__(self, dim: int, bias: float):
        super().__init__()
        self.w = nn.Linear(dim, 3 * dim, bias=False)  # W_r, W_z, W_g applied to y in one product
        self.u = nn.Linear(dim, 2 * dim, bias=False)  # U_r, U_z applied to x
        self.u_g = nn.Linear(dim, dim, bias=False)
        self.bias = nn.Parameter(torch.full((dim,), float(bias)))
        for weight in (*self.w.weight.chunk(3), *self.u.weight.chunk(2), self.u_g.weight):
            nn.init.xavier_uniform_(weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        w_r, w_z, w_g = self.w(y).chunk(3, dim=-1)
        u_r, u_z = self.u(x).chunk(2, dim=-1)
        r = torch.sigmoid(w_r + u_r)
        z = torch.sigmoid(w_z + u_z - self.bias)
        return (1 - z) * x + z * torch.tanh(w_g + self.u_g(r * x))


class TransformerLayer(nn.Module):
    """Pre-LayerNorm attention of queries over cached memory, then a position-wise layer.

    Keys and values are never materialised: with key/value weights K_h, V_h of head h, a query's
    score for slot j is (K_h^T q_h) . n_j and its output is V_h (sum_j a_j n_j), where n_j is the
    normalised memory's slice of head h. Only the normalisation is computed per stored state, which is
    much cheaper than projecting every state.

    The paper's agent: ONE bias-free head-sized Linear each for query, key and value, applied to every
    head's slice of the embedding, and scores scaled by 1/sqrt(dim).
    """

    def __init__(self, dim: int, num_heads: int, distances: int, relative: bool, gate_bias: float | None):
        super().__init__()
        self.num_heads, self.distances = num_heads, distances
        head_dim = dim // num_heads
        self.scale = 1 / math.sqrt(dim)  # the paper's agent (not the usual 1/sqrt(head dim))
        self.norm_query = nn.LayerNorm(dim)
        self.norm_memory = nn.LayerNorm(dim)
        self.norm_ff = nn.LayerNorm(dim)
        self.query = nn.Linear(head_dim, head_dim, bias=False)
        self.key = nn.Linear(head_dim, head_dim, bias=False)
        self.value = nn.Linear(head_dim, head_dim, bias=False)
        self.out = nn.Linear(dim, dim)
        self.ff = nn.Linear(dim, dim)
        self.relative = None
        if relative:
            self.relative = nn.Linear(dim, dim, bias=False)  # W_r of the distance encoding
            self.content_bias = nn.Parameter(torch.zeros(num_heads, head_dim))  # u
            self.position_bias = nn.Parameter(torch.zeros(num_heads, head_dim))  # v
        self.gates = None
        if gate_bias is not None:
            self.gates = nn.ModuleList([GRUGate(dim, gate_bias), GRUGate(dim, gate_bias)])

    def forward(self, x, memory, attn_bias, has_memory, distance_index=None) -> torch.Tensor:
        """x (B, Q, dim); memory (B, T, dim) normalised; attn_bias (B, 1 or heads, Q, T) added to the
        scores (-inf hides a slot); has_memory (B, Q, 1): queries without any visible slot get no
        attention contribution; distance_index (B, 1, Q, T): each slot's distance - 1 (relative only)."""
        batch, queries, dim = x.shape
        heads, head_dim = self.num_heads, dim // self.num_heads
        normed = self.norm_query(x)
        q = self.query(normed.view(batch, queries, heads, head_dim)).transpose(1, 2)  # (B, H, Q, hd)
        content_q = q if self.relative is None else q + self.content_bias[:, None]
        # The one key weight folds into every head's query, which then reads its head's slice of n_j.
        memory_heads = memory.view(batch, -1, heads, head_dim).transpose(1, 2)  # (B, H, T, hd)
        scores = (content_q @ self.key.weight) @ memory_heads.transpose(2, 3)  # (B, H, Q, T)
        if self.relative is not None:
            # Each distance 1..W-1 is scored once per query; every slot then reads its distance's score.
            distances = torch.arange(1, self.distances + 1, device=x.device)
            encoded = self.relative(sinusoidal_encoding(distances, dim)).view(-1, heads, head_dim).permute(1, 2, 0)
            position_q = (q + self.position_bias[:, None]).transpose(0, 1).reshape(heads, batch * queries, head_dim)
            by_distance = torch.bmm(position_q, encoded).view(heads, batch, queries, -1).transpose(0, 1)  # (B, H, Q, W-1)
            scores = scores + by_distance.gather(-1, distance_index.expand(batch, heads, queries, -1))
        weights = (scores * self.scale + attn_bias).softmax(-1)  # (B, H, Q, T)
        attended = self.value(weights @ memory_heads).transpose(1, 2)  # (B, Q, H, hd)
        attention = has_memory * self.out(attended.reshape(batch, queries, dim))
        x = x + attention if self.gates is None else self.gates[0](x, attention)
        forward = F.relu(self.ff(self.norm_ff(x)))
        return x + forward if self.gates is None else self.gates[1](x, forward)


def window_mask(query_slots: torch.Tensor, query_steps: torch.Tensor, num_keys: int, memory_length: int):
    """Which key slots each query attends to, and at which distance.

    query_slots / query_steps: (B, Q) timeline slot and episode step of every query.
    A key slot j is visible to a query in slot k at episode step t iff k - min(t, W - 1) <= j < k:
    inside the window and inside the query's episode. Returns (visible (B, Q, T), distance (B, Q, T)).
    """
    keys = torch.arange(num_keys, device=query_slots.device)
    distance = query_slots[..., None] - keys  # 1 = the previous step
    reach = query_steps.clamp(max=memory_length - 1)[..., None]
    return (distance >= 1) & (distance <= reach), distance


def hidden_layer(width: int, hidden: int) -> nn.Module:
    """A head's own Linear(width -> hidden) + ReLU before its outputs (the paper's agent)."""
    return nn.Sequential(layer_init(nn.Linear(width, hidden)), nn.ReLU())


class Agent(nn.Module):
    def __init__(self, args: Args, image_shape, vector_size: int, branches: list[int]):
        super().__init__()
        dim, heads, layers = args.trxl_dim, args.trxl_num_heads, args.trxl_num_layers
        if dim % (2 * heads) != 0:
            fail(f"--trxl-dim ({dim}) must be divisible by 2 x --trxl-num-heads ({heads})")
        self.dim, self.num_layers, self.memory_length = dim, layers, args.trxl_memory_length
        # Slots kept before the rollout; at least one so that a window is never empty (W = 1 masks it).
        self.context = max(self.memory_length - 1, 1)
        self.positional_encoding = args.trxl_positional_encoding
        self.horizon = args.trxl_positional_encoding_horizon
        self.query_positional_encoding = args.trxl_query_positional_encoding
        self.memory_dtype = getattr(torch, args.trxl_memory_dtype)
        self.encoder = Encoder(image_shape, vector_size, dim)
        self.layers = nn.ModuleList(
            TransformerLayer(dim, heads, self.context, self.positional_encoding == "relative", args.trxl_gate_bias)
            for _ in range(layers)
        )
        if self.positional_encoding == "learned" and self.horizon:
            # The paper's learned encoding: one vector per episode step, added to the memory.
            self.step_embedding = nn.Parameter(torch.randn(self.horizon, dim))
        elif self.positional_encoding == "learned":
            # One bias per layer, head and distance 1..W-1: works for episodes of any length.
            self.distance_bias = nn.Parameter(torch.zeros(layers, heads, max(self.memory_length - 1, 1)))
        self.post = nn.Sequential(layer_init(nn.Linear(dim, dim)), nn.ReLU())
        hidden = args.head_hidden_size
        self.actor_hidden = hidden_layer(dim, hidden)
        self.actor = nn.ModuleList(layer_init(nn.Linear(hidden, n), std=0.01) for n in branches)
        self.critic_hidden = hidden_layer(dim, hidden)
        self.critic = layer_init(nn.Linear(hidden, 1), std=1.0)
        self.decoder = None
        if args.reconstruction_coef > 0 and image_shape is not None:
            self.decoder = Decoder(dim, image_shape[2])
        self.ground_truth, self.ground_truth_size = None, args.ground_truth_size
        if args.ground_truth_coef > 0:
            self.ground_truth = nn.Sequential(hidden_layer(dim, hidden), layer_init(nn.Linear(hidden, args.ground_truth_size)))
        self.precision = args.precision

    def autocast(self):
        """bfloat16 autocast of convolutions and matrix products when `--precision` asks for it."""
        device_type = self.post[0].weight.device.type
        return torch.autocast(device_type, torch.bfloat16, enabled=computes_in_bfloat16(self.precision, device_type))

    def encoded_position(self, steps: torch.Tensor) -> torch.Tensor:
        """The position the absolute encoding encodes for episode steps (the paper's table counts down)."""
        return steps if self.horizon == 0 else self.horizon - 1 - steps

    def normalise_memory(self, memory: torch.Tensor, steps: torch.Tensor) -> list[torch.Tensor]:
        """memory (B, T, layers, dim), steps (B, T) -> per layer the normalised memory (B, T, dim)."""
        memory = memory.float()
        if self.positional_encoding == "absolute":
            memory = memory + sinusoidal_encoding(self.encoded_position(steps), self.dim)[:, :, None]
        elif self.positional_encoding == "learned" and self.horizon:
            memory = memory + self.step_embedding[steps.clamp(max=self.horizon - 1)][:, :, None]
        # Rounded once here to the precision attention computes in, rather than in every product.
        dtype = torch.bfloat16 if computes_in_bfloat16(self.precision, memory.device.type) else torch.float32
        return [layer.norm_memory(memory[:, :, i]).to(dtype) for i, layer in enumerate(self.layers)]

    def forward(self, image, vector, memories, query_slots, query_steps):
        """Queries (B, Q) attend over (B, T) memory slots (`memories`: per layer, normalised).

        Returns the transformer's output (B, Q, dim) and the input each layer received,
        (B, Q, layers, dim): the states this step adds to the memory.
        """
        with self.autocast():
            batch, queries = query_slots.shape
            x = self.encoder(
                None if image is None else image.flatten(0, 1), None if vector is None else vector.flatten(0, 1)
            ).unflatten(0, (batch, queries))
            x = x.float()  # the residual stream, and so the memory, stays float32
            visible, distance = window_mask(query_slots, query_steps, memories[0].shape[1], self.memory_length)
            # A query without memory (episode start) attends to nothing; its row is unmasked only to
            # keep the softmax finite, and the layer zeroes what it returns.
            has_memory = visible.any(-1, keepdim=True)
            hidden = (~visible & has_memory)[:, None]  # (B, 1, Q, T)
            mask_bias = torch.zeros(hidden.shape, device=x.device).masked_fill(hidden, float("-inf"))
            distance_index = (distance - 1).clamp(0, max(self.memory_length - 2, 0))[:, None]  # (B, 1, Q, T)
            query_encoding = None
            if self.query_positional_encoding:
                # The paper's agent encodes the newest visible memory step, max(t - 1, 0).
                steps = query_steps if self.horizon == 0 else (query_steps - 1).clamp(min=0)
                query_encoding = sinusoidal_encoding(self.encoded_position(steps), self.dim)
            layer_inputs = []
            for i, layer in enumerate(self.layers):
                layer_inputs.append(x)
                bias = mask_bias
                if self.positional_encoding == "learned" and not self.horizon:
                    bias = mask_bias + self.distance_bias[i][:, distance_index[:, 0]].transpose(0, 1)  # (B, heads, Q, T)
                if query_encoding is not None:
                    x = x + query_encoding
                relative = distance_index if self.positional_encoding == "relative" else None
                x = layer(x, memories[i], bias, has_memory, relative)
            return x.float(), torch.stack(layer_inputs, dim=2)

    def policy_step(self, image, vector, window, query_slots, query_steps):
        """Acting: one step of every env over its memory window -> logits, value and the layer inputs to store."""
        memory_out, layer_inputs = self(image, vector, window, query_slots, query_steps)
        logits, value = self.heads(memory_out[:, 0])
        return logits, value, layer_inputs

    def features(self, memory_out: torch.Tensor) -> torch.Tensor:
        """The body layer over the transformer's output (memory_out): what the policy and value read."""
        with self.autocast():
            return self.post(memory_out).float()

    def heads(self, memory_out: torch.Tensor):
        features = self.features(memory_out)
        policy = self.actor_hidden(features)
        logits = [branch(policy) for branch in self.actor]
        return logits, self.critic(self.critic_hidden(features)).squeeze(-1)

    def reconstruct(self, memory_out: torch.Tensor) -> torch.Tensor:
        with self.autocast():  # from the transformer's output, as the paper's agent
            return self.decoder(memory_out).float()

    def estimate_ground_truth(self, memory_out: torch.Tensor) -> torch.Tensor:
        return self.ground_truth(memory_out)


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
    steps: torch.Tensor  # (num_steps, num_envs): episode step of each sample
    memory: torch.Tensor  # (num_envs, context + num_steps, layers, dim): cached layer inputs
    memory_steps: torch.Tensor  # (num_envs, context + num_steps): episode step of each slot
    next_obs: tuple  # (images, vectors) of the observation the next step starts from
    next_step: torch.Tensor  # (num_envs,): its episode step
    ground_truths: torch.Tensor | None = None  # (num_steps, num_envs, size): info["ground_truth"] of each sample
    next_ground_truth: torch.Tensor | None = None  # (num_envs, size): the one reported with next_obs
    upload: Upload | None = None  # host arrays to the device without waiting (pinned buffers on CUDA)


def new_rollout(agent: Agent, envs: gym.vector.VectorEnv, num_steps: int, first_obs, device, first_info=None) -> Rollout:
    """Empty storage; `first_info` (the reset's info) gives the first ground truth where the agent estimates it."""
    image_shape, vector_size = observation_layout(envs.single_observation_space)
    S, E = num_steps, envs.num_envs
    ground_truth = None
    if agent.ground_truth is not None:
        size = agent.ground_truth_size
        ground_truth = torch.zeros((E, size), device=device)
        if first_info is not None:
            ground_truth = torch.as_tensor(first_info["ground_truth"], dtype=torch.float32, device=device)
    return Rollout(
        images=None if image_shape is None else torch.zeros((S, E, *image_shape), dtype=torch.uint8, device=device),
        vectors=None if not vector_size else torch.zeros((S, E, vector_size), device=device),
        actions=torch.zeros((S, E, len(agent.actor)), dtype=torch.long, device=device),
        logprobs=torch.zeros((S, E, len(agent.actor)), device=device),
        values=torch.zeros((S, E), device=device),
        rewards=torch.zeros((S, E), device=device),
        dones=torch.zeros((S, E), device=device),
        steps=torch.zeros((S, E), dtype=torch.long, device=device),
        memory=torch.zeros((E, agent.context + S, agent.num_layers, agent.dim), dtype=agent.memory_dtype, device=device),
        memory_steps=torch.zeros((E, agent.context + S), dtype=torch.long, device=device),
        next_obs=split_observation(first_obs, envs.single_observation_space),
        next_step=torch.zeros(E, dtype=torch.long, device=device),
        ground_truths=None if ground_truth is None else torch.zeros((S, E, ground_truth.shape[1]), device=device),
        next_ground_truth=ground_truth,
        upload=Upload(device),
    )


def act(agent: Agent, ro: Rollout, cache: list, slot: int, device: torch.device):
    """One forward pass of every env at timeline `slot` over the window of the normalised-memory cache."""
    image, vector = (None if part is None else ro.upload(name, part) for name, part in zip(("image", "vector"), ro.next_obs))
    window = [normalised[:, slot - agent.context : slot] for normalised in cache]
    query_slots = torch.full_like(ro.next_step, agent.context)[:, None]
    logits, value, layer_inputs = agent.policy_step(
        None if image is None else image[:, None],
        None if vector is None else vector[:, None],
        window,
        query_slots,
        ro.next_step[:, None],
    )
    return image, vector, logits, value, layer_inputs


@torch.no_grad()
def collect_rollout(agent: Agent, envs: gym.vector.VectorEnv, ro: Rollout, device, on_episode, recorder=None, gamma=None):
    """Step all envs for one rollout; return the bootstrap value of the observation that follows.

    With `gamma`, an episode cut by a time limit (truncated, not terminated) gets the discounted value of
    its last observation added to its last reward: the task did not end there."""
    C, S = agent.context, ro.values.shape[0]
    # The last C slots of the previous rollout become the context of this one.
    ro.memory[:, :C] = ro.memory[:, S : S + C].clone()
    ro.memory_steps[:, :C] = ro.memory_steps[:, S : S + C].clone()
    # The normalised memory of every slot under the current parameters: the context now, each new
    # slot when it is written.
    cache = []
    for normalised in agent.normalise_memory(ro.memory[:, :C], ro.memory_steps[:, :C]):
        cache.append(torch.cat([normalised, normalised.new_zeros((normalised.shape[0], S, normalised.shape[2]))], 1))

    # Rewards are gathered on the host and copied once; a time limit's bootstrap is added after.
    rewards, bootstraps = np.zeros((S, ro.values.shape[1]), np.float32), []
    for s in range(S):
        slot = C + s
        if recorder is not None:
            recorder.capture(ro.next_obs[0], envs)
        image, vector, logits, value, layer_inputs = act(agent, ro, cache, slot, device)
        # The cache holds the stored (possibly rounded) states, exactly as the update will see them.
        stored = layer_inputs.to(agent.memory_dtype)
        ro.memory[:, slot] = stored[:, 0]
        ro.memory_steps[:, slot] = ro.next_step
        for normalised, new in zip(cache, agent.normalise_memory(stored, ro.next_step[:, None])):
            normalised[:, slot] = new[:, 0]
        # Unvalidated: checking the arguments reads them on the host, a wait for the device every step.
        dists = [torch.distributions.Categorical(logits=l, validate_args=False) for l in logits]
        action = torch.stack([d.sample() for d in dists], dim=1)
        if image is not None:
            ro.images[s] = image
        if vector is not None:
            ro.vectors[s] = vector
        ro.actions[s] = action
        ro.logprobs[s] = torch.stack([d.log_prob(a) for d, a in zip(dists, action.T)], dim=1)
        ro.values[s] = value
        ro.steps[s] = ro.next_step
        if ro.ground_truths is not None:
            ro.ground_truths[s] = ro.next_ground_truth

        env_action = action.cpu().numpy()  # the step's one copy from the device, and its one wait
        obs, reward, terminated, truncated, info = envs.step(env_action[:, 0] if len(dists) == 1 else env_action)
        done = np.logical_or(terminated, truncated)
        rewards[s] = reward
        done_now = ro.upload("done", done)
        ro.dones[s] = done_now.float()
        cut = np.logical_and(truncated, np.logical_not(terminated))
        if gamma is not None and cut.any():
            # The last observation's value, attending to the window that includes the step just taken.
            ro.next_obs = split_observation(final_observations(obs, info, cut), envs.single_observation_space)
            ro.next_step = ro.steps[s] + 1
            final_value = act(agent, ro, cache, slot + 1, device)[3]
            bootstraps.append((s, gamma * final_value * ro.upload("cut", cut, torch.float32)))
        ro.next_obs = split_observation(obs, envs.single_observation_space)
        ro.next_step = torch.where(done_now, 0, ro.steps[s] + 1)
        if ro.ground_truths is not None:
            # With same-step autoreset the info returned with an observation belongs to that observation.
            ro.next_ground_truth = ro.upload("ground_truth", info["ground_truth"], torch.float32)
        on_episode(reward, done, info)
        if recorder is not None:
            recorder.step_done(bool(done[0]))

    ro.rewards.copy_(ro.upload("rewards", rewards))
    for s, bootstrap in bootstraps:
        ro.rewards[s] += bootstrap
    # Bootstrap from exactly the window a step in the next slot would attend to.
    return act(agent, ro, cache, C + S, device)[3]


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


def stratified_minibatches(args: Args, device) -> tuple[torch.Tensor, ...]:
    """One epoch's minibatches, each (num_envs, num_steps / num_minibatches) step indices: every env
    contributes the same number of randomly chosen steps, and the epoch covers every step once."""
    order = torch.rand((args.num_envs, args.num_steps), device=device).argsort(dim=1)
    return order.split(args.num_steps // args.num_minibatches, dim=1)


def recompute(agent: Agent, ro: Rollout, sel: torch.Tensor):
    """Recompute the policy and value of the samples `sel` (num_envs, Q): step indices per env;
    also returns the transformer's output and the images, for the auxiliary losses.

    Every query attends over its env's whole timeline through the window mask; the memory is
    normalised once per stored state.
    """
    envs_index = torch.arange(sel.shape[0], device=sel.device)[:, None]
    image = None if ro.images is None else ro.images[sel, envs_index]
    vector = None if ro.vectors is None else ro.vectors[sel, envs_index]
    memories = agent.normalise_memory(ro.memory, ro.memory_steps)
    memory_out, _ = agent(image, vector, memories, agent.context + sel, ro.steps[sel, envs_index])
    logits, value = agent.heads(memory_out)
    actions = ro.actions[sel, envs_index]
    dists = [torch.distributions.Categorical(logits=l) for l in logits]
    logprob = torch.stack([d.log_prob(a) for d, a in zip(dists, actions.unbind(-1))], dim=-1)
    entropy = torch.stack([d.entropy() for d in dists], dim=-1).sum(-1)
    return logprob, entropy, value, memory_out, image


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------
def train(args: Args) -> list[dict]:
    """Run the experiment (on every rank under torchrun); returns the metrics logged at every iteration (on rank 0)."""
    return run_on_ranks(args, run_training)


def run_training(args: Args, rank: int, device: torch.device) -> list[dict]:
    # The run around the algorithm (run_utils.Run): checks, seeds, run folder, logs, checkpoints, signals.
    run = Run(args, "ppo_trxl", rank, device, STRUCTURAL_FIELDS, check_args)
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
                   load_rollout=lambda state: load_rollout_state(state, ro, envs, device)):
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
            # PPO update over stratified minibatches: each env contributes num_steps / num_minibatches steps.
            envs_index = torch.arange(args.num_envs, device=device)[:, None]
            logs = {key: [] for key in ("policy_loss", "value_loss", "entropy", "reconstruction_loss", "ground_truth_loss",
                                        "old_approx_kl", "approx_kl", "clipfrac")}
            for epoch in range(args.update_epochs):
                for sel in stratified_minibatches(args, device):
                    logprob, entropy, value, memory_out, image = recompute(agent, ro, sel)
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
                        reconstruction = agent.reconstruct(memory_out.flatten(0, 1))
                        r_loss = F.binary_cross_entropy(reconstruction, image.flatten(0, 1).float() / 255.0)
                        loss = loss + args.reconstruction_coef * r_loss
                        logs["reconstruction_loss"].append(r_loss.item())
                    if agent.ground_truth is not None:
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
                epoch_kl = logs["approx_kl"][-args.num_minibatches :]
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
    """What a checkpoint keeps of the rollout to continue exactly: the memory carried over and the next step."""
    S = ro.values.shape[0]
    return {
        "memory_tail": ro.memory[:, S:].float().cpu(),
        "memory_steps_tail": ro.memory_steps[:, S:].cpu(),
        "next_obs": saved_observation(ro.next_obs),
        "next_step": ro.next_step.cpu(),
    }


def load_rollout_state(state: dict, ro: Rollout, envs, device) -> None:
    """Restore `rollout_state` into `ro` (after the envs), every tensor checked against the one it replaces."""
    if ro.ground_truths is not None:  # the restored envs' ground truth of their current observation
        ro.next_ground_truth = torch.as_tensor(envs.unwrapped.game.step_info()["ground_truth"], dtype=torch.float32, device=device)
    S = ro.values.shape[0]
    ro.memory[:, S:] = checked_tensor(state["memory_tail"], ro.memory[:, S:], "memory_tail")
    ro.memory_steps[:, S:] = checked_tensor(state["memory_steps_tail"], ro.memory_steps[:, S:], "memory_steps_tail")
    ro.next_step = checked_tensor(state["next_step"], ro.next_step, "next_step")
    if (ro.next_step < 0).any() or (ro.memory_steps[:, S:] < 0).any():
        raise ValueError("next_step and memory_steps_tail must hold episode steps (>= 0)")
    ro.next_obs = checked_observation(state["next_obs"], ro.next_obs)


if __name__ == "__main__":
    args = parse_args()
    train(args)
    leave_finished_rank(args)
