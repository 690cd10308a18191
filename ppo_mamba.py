"""PPO with a Mamba-2 memory, in one file.

The agent embeds each observation, a stack of Mamba-2 layers (state-space duality, "SSD": Dao & Gu,
"Transformers are SSMs", ICML 2024) carries a fixed-size state through the episode (zero at every
episode start), and a shared body feeds the policy and value heads, as in the paper's GRU agent.

A Mamba-2 layer has two equal forms, both written here in plain PyTorch (no compiled extension):
- the step form, used while acting: one step from a carried state (per layer, the last inputs of its
  short causal convolution and the SSM state, heads x head size x state size);
- the chunked form, used by the update: a whole sequence at once, cut into chunks; within a chunk the
  output is a masked matrix product, between chunks the state is carried by a short recurrence.
The convolution, the scan and the state stay float32 under `--precision bfloat16`.

Training uses truncated backpropagation through time over episode fragments, as `ppo_gru.py`: each
env's rollout is cut where episodes end (and, with `--sequence-length`, every that many steps); each
fragment starts from the state the agent had there while acting. Whatever the episode length, the
memory is a fixed size: one state per env, plus one per env and fragment boundary of the rollout.

Run `python ppo_mamba.py --help` for every flag.
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
    EagerUnderCompile,
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
    """a TOML preset (e.g. configs/paper/ppo_mamba/MortarMayhem-v0.toml); flags on the command line override it.
    Without one, `--env-id X` takes the paper's protocol for X where configs/paper/ppo_mamba/X.toml exists"""
    seed: int = 1
    """seed of the experiment (python, numpy, torch and the environments)"""
    torch_deterministic: bool = True
    """if toggled, `torch.backends.cudnn.deterministic=True`"""
    cuda: bool = True
    """if toggled, use CUDA when it is available"""
    precision: Literal["float32", "bfloat16", "auto"] = "float32"
    """compute precision of the encoder's convolutions and the matrix products. bfloat16 is autocast; the Mamba
    convolution, scan and state, the norms, heads, losses and the optimizer stay float32. auto: bfloat16 where
    the device computes it natively (CUDA GPUs from Ampere on, CPUs with AVX512-BF16 or AMX), float32 elsewhere"""
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
    """weight of the MSE loss of a head that estimates the env's `info["ground_truth"]` from the memory's
    output (0 disables the head; Endless-MortarMayhem, Endless-MysteryPath and Endless-SearingSpotlights report it)"""
    sequence_length: int = -1
    """cut episode fragments into training sequences of at most this length, at every multiple of it in the
    rollout (-1: whole fragments)"""

    # The defaults of the size flags are Mamba-2's own (the reference `Mamba2` module: expand 2, state size
    # 128, head size 64, convolution width 4, chunk size 256, one group of B and C).
    # Agent: Mamba-2 memory
    embed_dim: int = 512
    """the size of the observation embedding, which is also the width of the Mamba-2 layers (their d_model)"""
    hidden_dim: int = 512
    """the width of the body and of the policy / value layers"""
    mamba_num_layers: int = 1
    """the number of Mamba-2 layers (one: about the parameters of the paper's GRU layer)"""
    mamba_expand: int = 2
    """the inner width of a layer is expand x embed_dim"""
    mamba_state_size: int = 128
    """the SSM state size per head and channel (Mamba-2's d_state)"""
    mamba_head_dim: int = 64
    """the channels per SSM head (expand x embed_dim must be a multiple of it)"""
    mamba_conv_width: int = 4
    """the width of the short causal convolution before the SSM"""
    mamba_chunk_size: int = 256
    """the chunk length of the chunked (training) form; the result does not depend on it, only speed and memory"""
    zero_memory: bool = False
    """ablation: zero the state before every step, making the agent memoryless"""

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
    "env_id", "env_kwargs", "num_envs", "num_steps", "reconstruction_coef", "world_size", "embed_dim", "hidden_dim",
    "mamba_num_layers", "mamba_expand", "mamba_state_size", "mamba_head_dim", "mamba_conv_width", "ground_truth_coef",
)

# The allowed values of every number (checked before anything starts).
RANGES = {
    **COMMON_RANGES, "embed_dim": ">= 1", "hidden_dim": ">= 1", "mamba_num_layers": ">= 1", "mamba_expand": ">= 1",
    "mamba_state_size": ">= 1", "mamba_head_dim": ">= 1", "mamba_conv_width": ">= 1", "mamba_chunk_size": ">= 1",
}


def parse_args(argv: list[str] | None = None) -> Args:
    """tyro CLI on top of a checkpoint's args (`--resume`), a `--config` preset or the paper's protocol for
    `--env-id`; flags win."""
    return run_utils.parse_args(Args, "ppo_mamba", argv, check_args)


def check_args(args: Args, problems: list[str] = ()) -> None:
    """Refuse the flags (and the preset's `problems`) with every problem named in one message."""
    problems = [*problems, *common_problems(args, RANGES)]
    if args.sequence_length == 0 or args.sequence_length < -1:
        problems.append(f"--sequence-length must be -1 (whole fragments) or >= 1, got {args.sequence_length}")
    inner = args.mamba_expand * args.embed_dim
    if args.mamba_head_dim >= 1 and inner % args.mamba_head_dim:
        problems.append(f"--mamba-expand x --embed-dim ({inner}) must be a multiple of --mamba-head-dim ({args.mamba_head_dim})")
    refuse(problems)


# ---------------------------------------------------------------------------------------------
# Mamba-2 (SSD) in plain PyTorch
# ---------------------------------------------------------------------------------------------
# Under --compile it runs eagerly: torch 2.13's inductor fails to compile its backward for varying lengths.
@EagerUnderCompile
def segment_sums(a: torch.Tensor) -> torch.Tensor:
    """(..., T) -> (..., T, T): out[..., i, j] = a[j+1] + ... + a[i] for j <= i, -inf above the diagonal.

    exp(out) is the decay from step j to step i. The sums are differences of prefix sums taken in float64:
    in float32 a difference of two long prefix sums (hundreds of steps) would lose the precision of short ones."""
    T = a.shape[-1]
    prefix = a.double().cumsum(-1)
    sums = (prefix[..., :, None] - prefix[..., None, :]).float()
    above = torch.ones(T, T, dtype=torch.bool, device=a.device).triu(1)
    return sums.masked_fill(above, -math.inf)


def ssd_chunked(x: torch.Tensor, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor, chunk: int,
                state: torch.Tensor, final: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The SSM over whole sequences, chunk by chunk: h_t = exp(a_t) h_{t-1} + x_t b_t^T, y_t = h_t c_t.

    x: (B, L, H, P) the inputs already scaled by dt; a: (B, L, H) dt x A (log-decays, <= 0);
    b, c: (B, L, N) shared by the heads (one group); state: (B, H, P, N) the state before the first step.
    Returns y (B, L, H, P) and the state after the last step (None unless `final`: the update does not need it).
    A length that is not a multiple of the chunk is padded with steps that neither decay nor add anything, so
    the final state is the last real step's."""
    batch, length = x.shape[:2]
    T = min(chunk, length)
    pad = -length % T
    if pad:
        x, a, b, c = (torch.cat([t, t.new_zeros((batch, pad, *t.shape[2:]))], dim=1) for t in (x, a, b, c))
    n = x.shape[1] // T
    x = x.unflatten(1, (n, T))  # (B, n, T, H, P)
    b, c = b.unflatten(1, (n, T)), c.unflatten(1, (n, T))  # (B, n, T, N)
    a = a.unflatten(1, (n, T)).transpose(2, 3)  # (B, n, H, T)
    decay = segment_sums(a).exp()  # (B, n, H, T, T): from step j to step i of a chunk
    # 1. Within each chunk: a masked "attention" matrix (c_i . b_j) x decay from j to i, times the inputs.
    weights = torch.einsum("bkin,bkjn->bkij", c, b)[:, :, None] * decay  # (B, n, H, T, T)
    y = torch.einsum("bkhij,bkjhp->bkihp", weights, x)
    # 2. The state each chunk ends with, from its own inputs decayed to the chunk's end (the last chunk's only
    # for the final state).
    m = n if final else n - 1
    to_end = decay[:, :m, :, -1, :].transpose(2, 3)[..., None]  # (B, m, T, H, 1)
    chunk_states = torch.einsum("bkjn,bkjhp->bkhpn", b[:, :m], x[:, :m] * to_end)  # (B, m, H, P, N)
    # 3. The state entering each chunk: a recurrence over chunks, decayed by each chunk's total.
    states = torch.cat([state[:, None], chunk_states], dim=1)  # (B, m + 1, H, P, N)
    if m > 0:
        totals = F.pad(a[:, :m].sum(-1).transpose(1, 2), (1, 0))  # (B, H, m + 1)
        states = torch.einsum("bhzk,bkhpn->bzhpn", segment_sums(totals).exp(), states)
    entering = states[:, :n]
    # 4. What the entering state adds to each step, decayed from the chunk's start.
    from_start = a.cumsum(-1).exp().transpose(2, 3)[..., None]  # (B, n, T, H, 1)
    y = y + torch.einsum("bkin,bkhpn->bkihp", c, entering) * from_start
    return y.flatten(1, 2)[:, :length], states[:, n] if final else None


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight


class Mamba2Layer(nn.Module):
    """One Mamba-2 mixer: in_proj -> [z, x, B, C, dt]; causal depthwise convolution + SiLU on x, B, C;
    the SSM with A = -exp(A_log) per head, dt = softplus(dt + dt_bias) and a skip D per head;
    y x SiLU(z) through a gated RMSNorm; out_proj. No biases in the projections (Mamba-2's defaults)."""

    def __init__(self, args: Args):
        super().__init__()
        d_model = args.embed_dim
        self.inner = args.mamba_expand * d_model
        self.heads, self.head_dim, self.state_dim = self.inner // args.mamba_head_dim, args.mamba_head_dim, args.mamba_state_size
        self.conv_dim = self.inner + 2 * self.state_dim  # x, B and C pass the convolution
        self.width, self.chunk = args.mamba_conv_width, args.mamba_chunk_size
        self.in_proj = nn.Linear(d_model, self.inner + self.conv_dim + self.heads, bias=False)
        self.conv = nn.Conv1d(self.conv_dim, self.conv_dim, self.width, groups=self.conv_dim)
        # Mamba-2's initialisation: dt log-uniform in [0.001, 0.1] (floor 1e-4) stored through the inverse
        # softplus; A uniform in [1, 16]; D = 1. The reference keeps these three out of the weight decay.
        dt = torch.exp(torch.rand(self.heads) * (math.log(0.1) - math.log(0.001)) + math.log(0.001)).clamp(min=1e-4)
        self.dt_bias = nn.Parameter(dt + torch.log(-torch.expm1(-dt)))
        self.A_log = nn.Parameter(torch.empty(self.heads).uniform_(1, 16).log())
        self.D = nn.Parameter(torch.ones(self.heads))
        self.norm_weight = nn.Parameter(torch.ones(self.inner))
        self.out_proj = nn.Linear(self.inner, d_model, bias=False)
        with torch.no_grad():  # the reference's rescaling of residual branches: 1 / sqrt(layers)
            self.out_proj.weight.div_(math.sqrt(args.mamba_num_layers))
        # The carried state of one env: the last (width - 1) convolution inputs, then the SSM state.
        self.state_sizes = (self.conv_dim * (self.width - 1), self.heads * self.head_dim * self.state_dim)

    def _project(self, u: torch.Tensor):
        zxbcdt = self.in_proj(u).float()  # autocast (if on) ends here: the rest is float32
        return zxbcdt.split([self.inner, self.conv_dim, self.heads], dim=-1)  # z, xBC, dt

    def _ssm_inputs(self, xbc: torch.Tensor, dt: torch.Tensor):
        x, b, c = F.silu(xbc).split([self.inner, self.state_dim, self.state_dim], dim=-1)
        dt = F.softplus(dt + self.dt_bias)
        x = x.unflatten(-1, (self.heads, self.head_dim))
        return x, b, c, dt, -torch.exp(self.A_log) * dt  # ..., log-decay dt x A

    def _output(self, y: torch.Tensor, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = (y + self.D[:, None] * x).flatten(-2)
        y = rms_norm(y * F.silu(z), self.norm_weight)  # gated RMSNorm, the gate before the norm
        return self.out_proj(y)

    def _state(self, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        conv, ssm = state.split(self.state_sizes, dim=-1)
        return conv.unflatten(-1, (self.conv_dim, self.width - 1)), ssm.unflatten(-1, (self.heads, self.head_dim, self.state_dim))

    def forward(self, u: torch.Tensor, state: torch.Tensor, final: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Chunked form: u (B, L, d_model), state (B, state size) -> outputs (B, L, d_model), final state (if asked)."""
        z, xbc, dt = self._project(u)
        conv_state, ssm_state = self._state(state)
        with torch.autocast(u.device.type, enabled=False):
            inputs = torch.cat([conv_state, xbc.transpose(1, 2)], dim=-1)  # (B, conv_dim, width - 1 + L)
            xbc = F.conv1d(inputs, self.conv.weight, self.conv.bias, groups=self.conv_dim).transpose(1, 2)
            x, b, c, dt, log_decay = self._ssm_inputs(xbc, dt)
            y, ssm_state = ssd_chunked(x * dt[..., None], log_decay, b, c, self.chunk, ssm_state, final)
        if final:
            final = torch.cat([inputs[..., inputs.shape[-1] - (self.width - 1):].flatten(1), ssm_state.flatten(1)], dim=-1)
        return self._output(y, x, z), final

    def step(self, u: torch.Tensor, state: torch.Tensor, next_state: torch.Tensor) -> torch.Tensor:
        """Step form: u (B, d_model), state (B, state size) -> output (B, d_model); the next state is written into
        `next_state` (B, state size). The SSM state is the largest thing an env carries (d_inner x N floats), so
        it is written once a step, in place, with no temporaries. For acting, without gradients (`out=` has none);
        the update differentiates the chunked form."""
        z, xbc, dt = self._project(u)
        conv_state, ssm_state = self._state(state)
        next_conv, next_ssm = self._state(next_state)
        with torch.autocast(u.device.type, enabled=False):
            window = torch.cat([conv_state, xbc[..., None]], dim=-1)  # (B, conv_dim, width)
            next_conv.copy_(window[..., 1:])
            xbc = (window * self.conv.weight[:, 0]).sum(-1) + self.conv.bias
            x, b, c, dt, log_decay = self._ssm_inputs(xbc, dt)
            torch.mul(ssm_state, log_decay.exp()[..., None, None], out=next_ssm)  # h = exp(dt A) h + (dt x) b^T
            next_ssm.addcmul_((x * dt[..., None])[..., None], b[:, None, None])
            y = torch.einsum("bhpn,bn->bhp", next_ssm, c)
        return self._output(y, x, z)


class Mamba2(nn.Module):
    """Pre-norm residual Mamba-2 layers and a final RMSNorm (the reference's stack). The state of an env is
    one float32 tensor, the layers' states side by side, so that storing, zeroing and carrying it is one
    operation."""

    def __init__(self, args: Args):
        super().__init__()
        self.layers = nn.ModuleList(Mamba2Layer(args) for _ in range(args.mamba_num_layers))
        self.norms = nn.ParameterList(nn.Parameter(torch.ones(args.embed_dim)) for _ in self.layers)
        self.final_norm = nn.Parameter(torch.ones(args.embed_dim))
        self.state_sizes = [sum(layer.state_sizes) for layer in self.layers]
        self.state_size = sum(self.state_sizes)

    def forward(self, x: torch.Tensor, state: torch.Tensor, final: bool = True) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(B, L, d) sequences from states (B, state size) -> outputs (B, L, d), states after the last step (if asked)."""
        finals = []
        for layer, norm, layer_state in zip(self.layers, self.norms, state.split(self.state_sizes, dim=-1)):
            out, layer_final = layer(rms_norm(x, norm), layer_state, final)
            x = x + out.float()
            finals.append(layer_final)
        return rms_norm(x, self.final_norm), torch.cat(finals, dim=-1) if final else None

    def step(self, x: torch.Tensor, state: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, d) one step from states (B, state size) -> outputs (B, d), next states."""
        next_state = torch.empty_like(state)  # each layer writes its part
        for layer, norm, layer_state, layer_next in zip(self.layers, self.norms, state.split(self.state_sizes, dim=-1),
                                                        next_state.split(self.state_sizes, dim=-1)):
            x = x + layer.step(rms_norm(x, norm), layer_state, layer_next).float()
        return rms_norm(x, self.final_norm), next_state


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
    """Encoder -> Mamba-2 layers -> body -> policy / value layers and heads: the paper's GRU agent with the
    GRU replaced by Mamba-2 layers of width embed_dim."""

    def __init__(self, args: Args, image_shape, vector_size: int, branches: list[int]):
        super().__init__()
        self.zero_memory = args.zero_memory
        # Where the rollout keeps the state for the update: every `sequence_length` steps (0: at its start only).
        self.sequence_length = max(args.sequence_length, 0)
        self.encoder = Encoder(image_shape, vector_size, args.embed_dim)
        self.memory = Mamba2(args)
        self.state_size = self.memory.state_size
        self.body = nn.Sequential(layer_init(nn.Linear(args.embed_dim, args.hidden_dim)), nn.ReLU())
        self.policy = nn.Sequential(layer_init(nn.Linear(args.hidden_dim, args.hidden_dim)), nn.ReLU())
        self.actor = nn.ModuleList(layer_init(nn.Linear(args.hidden_dim, n), std=0.01) for n in branches)
        self.value = nn.Sequential(
            layer_init(nn.Linear(args.hidden_dim, args.hidden_dim)), nn.ReLU(), layer_init(nn.Linear(args.hidden_dim, 1), std=1.0)
        )
        self.decoder = None
        if args.reconstruction_coef > 0 and image_shape is not None:
            self.decoder = Decoder(args.embed_dim, image_shape[2])
        # Like the decoder, the ground-truth estimator reads the memory's output (the GRU agent's layout).
        self.ground_truth = None
        if args.ground_truth_coef > 0:
            self.ground_truth = nn.Sequential(
                layer_init(nn.Linear(args.embed_dim, args.hidden_dim)),
                nn.ReLU(),
                layer_init(nn.Linear(args.hidden_dim, args.ground_truth_size)),
            )
        self.precision = args.precision

    def autocast(self):
        """bfloat16 autocast of convolutions and matrix products when `--precision` asks for it."""
        device_type = self.body[0].weight.device.type
        return torch.autocast(device_type, torch.bfloat16, enabled=computes_in_bfloat16(self.precision, device_type))

    def forward(self, image, vector, state: torch.Tensor, mask: torch.Tensor | None = None, final: bool = True):
        """Chunked form. Sequences from initial states (B, state_size) -> outputs (B, L, embed_dim), final states
        (None unless `final`).

        Without `mask`, image / vector are (B, L, ...). With a (B, L) mask of real steps they hold the
        real steps only, (N, ...): the encoder skips the padding, which enters the memory as zeros at the
        ends of sequences and so never affects a real step (the layers are causal)."""
        with self.autocast():
            x = self.encoder(image.flatten(0, 1) if image is not None and mask is None else image,
                             vector.flatten(0, 1) if vector is not None and mask is None else vector)
            x = x.float()
            if mask is None:
                x = x.unflatten(0, state.shape[:1] + (-1,))
            else:
                x = x.new_zeros((*mask.shape, x.shape[-1])).masked_scatter(mask[..., None], x)
            return self.memory(x, state, final)

    def step(self, image, vector, state: torch.Tensor):
        """Step form. One step (B, ...) from states (B, state_size) -> outputs (B, embed_dim), next states."""
        with self.autocast():
            return self.memory.step(self.encoder(image, vector).float(), state)

    def policy_step(self, image, vector, state: torch.Tensor):
        """Acting: one step of every env in the step form -> logits, value, next states."""
        out, next_state = self.step(image, vector, state)
        logits, value = self.heads(out)
        return logits, value, next_state

    def reconstruct(self, memory_out: torch.Tensor) -> torch.Tensor:
        with self.autocast():
            return self.decoder(memory_out).float()

    def estimate_ground_truth(self, memory_out: torch.Tensor) -> torch.Tensor:
        return self.ground_truth(memory_out)

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
    states: torch.Tensor  # (num_steps / period, num_envs, state_size): the state steps 0, period, 2 x period ... started from
    period: int  # the steps between two stored states: --sequence-length, or the whole rollout
    ground_truths: torch.Tensor | None  # (num_steps, num_envs, size): the env's ground truth at each observation
    next_obs: tuple  # (images, vectors, ground truth or None) of the observation the next step starts from
    next_state: torch.Tensor  # (num_envs, state_size)
    next_start: torch.Tensor  # (num_envs,) bool: the next step begins an episode
    upload: Upload  # host arrays to the device without waiting (pinned buffers on CUDA)


def new_rollout(agent: Agent, envs: gym.vector.VectorEnv, num_steps: int, first_obs, device, first_info=None) -> Rollout:
    """Empty storage; the ground truth is stored when the agent estimates it and `first_info` is given (training)."""
    image_shape, vector_size = observation_layout(envs.single_observation_space)
    S, E = num_steps, envs.num_envs
    ground_truth = agent.ground_truth is not None and first_info is not None
    # The state is large (heads x head size x state size per layer), so it is stored only where a training
    # sequence can start from it: at every `period`-th step. At an episode start it is zero anyway.
    period = min(agent.sequence_length or S, S)
    return Rollout(
        images=None if image_shape is None else torch.zeros((S, E, *image_shape), dtype=torch.uint8, device=device),
        vectors=None if not vector_size else torch.zeros((S, E, vector_size), device=device),
        actions=torch.zeros((S, E, len(agent.actor)), dtype=torch.long, device=device),
        logprobs=torch.zeros((S, E, len(agent.actor)), device=device),
        values=torch.zeros((S, E), device=device),
        rewards=torch.zeros((S, E), device=device),
        dones=torch.zeros((S, E), device=device),
        starts=torch.zeros((S, E), dtype=torch.bool, device=device),
        states=torch.zeros((math.ceil(S / period), E, agent.state_size), device=device),
        period=period,
        ground_truths=torch.zeros((S, E, agent.ground_truth[-1].out_features), device=device) if ground_truth else None,
        next_obs=observed(first_obs, first_info, envs.single_observation_space, ground_truth),
        next_state=torch.zeros((E, agent.state_size), device=device),
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
    """One step of every env in the step form; the state is zero at an episode start."""
    image, vector = (None if part is None else ro.upload(name, part) for name, part in zip(("image", "vector"), ro.next_obs))
    reset = torch.ones_like(ro.next_start)[:, None] if agent.zero_memory else ro.next_start[:, None]
    state = ro.next_state.masked_fill_(reset, 0.0)  # in place: the carried state is the rollout's alone, and large
    logits, value, next_state = agent.policy_step(image, vector, state)
    return image, vector, state, next_state, logits, value


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
        image, vector, state, next_state, logits, value = act(agent, ro, device)
        # Unvalidated: checking the arguments reads them on the host, a wait for the device every step.
        dists = [torch.distributions.Categorical(logits=l, validate_args=False) for l in logits]
        action = torch.stack([d.sample() for d in dists], dim=1)
        if image is not None:
            ro.images[s] = image
        if vector is not None:
            ro.vectors[s] = vector
        if s % ro.period == 0:
            ro.states[s // ro.period] = state
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
        ro.next_state = next_state
        cut = np.logical_and(truncated, np.logical_not(terminated))
        if gamma is not None and cut.any():
            # The last observation's value, from the state the episode reached.
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
    """Cut every env's rollout at episode starts and at the steps whose state was stored (its start, and
    every `sequence_length` steps; every step without memory): (env, first step, length)."""
    cuts = ro.starts.cpu().numpy().copy()
    cuts[:: 1 if args.zero_memory else ro.period] = True
    sequences = []
    for env in range(args.num_envs):
        firsts = np.flatnonzero(cuts[:, env]).tolist() + [args.num_steps]
        sequences += [(env, first, end - first) for first, end in zip(firsts[:-1], firsts[1:])]
    return sequences


def sequence_minibatches(args: Args, sequences: list[tuple[int, int, int]], num_groups: int | None = None) -> list[list[tuple[int, int, int]]]:
    """One epoch's minibatches: the sequences shuffled into `num_groups` near-equal groups (default:
    `num_minibatches`, or one per sequence when there are fewer sequences)."""
    order = torch.randperm(len(sequences)).numpy()
    groups = np.array_split(order, num_groups or min(args.num_minibatches, len(sequences)))
    return [[sequences[k] for k in group] for group in groups]


def recompute(agent: Agent, ro: Rollout, sequences: list[tuple[int, int, int]]):
    """Recompute policy and value of whole sequences at once, in the chunked form.

    Each sequence starts from zero at an episode start (always without memory), else from the state stored
    at its first step. Sequences are padded at the end to the longest one; the results are returned for
    real steps only, flattened, with the (step, env) index of each.
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
    stored = ~ro.starts[first, env] & (not agent.zero_memory)  # the others start from zero
    state = ro.states.new_zeros((len(sequences), agent.state_size))
    state[stored] = ro.states[first[stored] // ro.period, env[stored]]
    memory_out = agent(image, vector, state, mask, final=False)[0][mask]
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
    run = Run(args, "ppo_mamba", rank, device, STRUCTURAL_FIELDS, check_args)
    envs, image_shape, vector_size, branches = run.make_envs()
    agent = Agent(args, image_shape, vector_size, branches).to(device)
    if args.compile:
        compile_agent(agent, device)
    # Fused: one pass over the parameters per step instead of one per operation and tensor. AdamW's default
    # weight decay, except on each layer's dt bias, A and D (Mamba-2's reference leaves them undecayed).
    undecayed = [p for name, p in agent.named_parameters() if name.rsplit(".", 1)[-1] in ("dt_bias", "A_log", "D")]
    decayed = [p for name, p in agent.named_parameters() if name.rsplit(".", 1)[-1] not in ("dt_bias", "A_log", "D")]
    optimizer = torch.optim.AdamW([{"params": decayed}, {"params": undecayed, "weight_decay": 0.0}], lr=args.init_lr,
                                  fused=device.type in ("cpu", "cuda"))
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
    """What a checkpoint keeps of the rollout to continue exactly: the state carried over and the next step."""
    return {"next_state": ro.next_state.cpu(), "next_start": ro.next_start.cpu(), "next_obs": saved_observation(ro.next_obs)}


def load_rollout_state(state: dict, ro: Rollout) -> None:
    """Restore `rollout_state` into `ro` (after the envs), every tensor checked against the one it replaces."""
    ro.next_state = checked_tensor(state["next_state"], ro.next_state, "next_state")
    ro.next_start = checked_tensor(state["next_start"], ro.next_start, "next_start")
    ro.next_obs = checked_observation(state["next_obs"], ro.next_obs)


if __name__ == "__main__":
    args = parse_args()
    train(args)
    leave_finished_rank(args)
