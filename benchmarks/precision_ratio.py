"""How far bfloat16 moves PPO's probability ratio before the first optimizer step.

PPO stores the log-probability of each action while acting and recomputes it in the update; with the
same weights the ratio exp(new - old) is exactly 1 in float32. Under bfloat16 autocast the two passes
batch the same numbers differently (one step at a time while acting, whole minibatches in the update),
so they round differently and the ratio starts away from 1. A sample whose ratio already lies outside
[1 - clip, 1 + clip] gives no gradient in the direction the clip blocks. This prints, per precision,
how large that start-up mismatch is, for a preset's agent at initialisation or for a checkpoint's
trained weights. For TrXL it also compares the gradient of the first minibatch's PPO loss computed in bfloat16
with the float32 one (same weights, rollout and minibatch), beside the gap between two float32 minibatches'
gradients, the noise that PPO's sampling already brings:

    python benchmarks/precision_ratio.py --script ppo_trxl --config configs/quick/ppo_trxl/MortarMayhem-Grid-v0.toml
    python benchmarks/precision_ratio.py --script ppo_trxl --config configs/quick/ppo_trxl/MortarMayhem-Grid-v0.toml \
        --checkpoint runs/<run>/checkpoint.pt
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import ppo_gru  # noqa: E402
import ppo_mamba  # noqa: E402
import ppo_trxl  # noqa: E402
import run_utils  # noqa: E402
from run_utils import EpisodeStats, fail, load_checkpoint, load_weights  # noqa: E402

SCRIPTS = {"ppo_trxl": ppo_trxl, "ppo_gru": ppo_gru, "ppo_mamba": ppo_mamba}
CPU = torch.device("cpu")


def update_pass(script, args, agent, rollout, device=CPU):
    """(stored index, recomputed per-branch log-prob, value) for every minibatch of one update epoch."""
    if script is ppo_trxl:
        for sel in ppo_trxl.stratified_minibatches(args, device):
            logprob, _, value, _, _ = ppo_trxl.recompute(agent, rollout, sel)
            yield (sel, torch.arange(args.num_envs, device=device)[:, None]), logprob, value
    else:  # the recurrent scripts (ppo_gru, ppo_mamba): minibatches of episode fragments
        for minibatch in script.sequence_minibatches(args, script.make_sequences(args, rollout)):
            logprob, _, value, _, _, index = script.recompute(agent, rollout, minibatch)
            yield index, logprob, value


def start(script, args, weights: dict | None = None, device=CPU):
    """The envs, the agent (seeded, or with the given weights) and an empty rollout after the first reset."""
    torch.manual_seed(args.seed)
    envs = run_utils.make_envs(args, args.num_envs)
    image, vector = run_utils.observation_layout(envs.single_observation_space, args.env_id)
    agent = script.Agent(args, image, vector, run_utils.action_branches(envs.single_action_space, args.env_id)).to(device)
    if weights is not None:
        load_weights(agent, weights, "--checkpoint")
    if args.compile:
        run_utils.compile_agent(agent, device)
    obs, _ = envs.reset(seed=args.seed)
    return envs, agent, script.new_rollout(agent, envs, args.num_steps, obs, device)


def rollout_crossings(script, args, device=CPU) -> dict:
    """What one rollout sends to the device (`Upload` calls by name, per step) and reads back (`.cpu()`,
    `.item()`, `.tolist()`, `bool()` of a tensor, per step), and on CUDA the synchronisations its sync debug
    mode reports per step."""
    import warnings
    from collections import Counter

    envs, agent, rollout = start(script, args, None, device)
    stats, uploads, reads = EpisodeStats(args.num_envs), Counter(), Counter()
    real_upload = run_utils.Upload.__call__
    real_reads = {name: getattr(torch.Tensor, name) for name in ("cpu", "item", "tolist", "__bool__")}

    def upload(self, name, *rest, **kwargs):
        uploads[name] += 1
        return real_upload(self, name, *rest, **kwargs)

    def counting(name):
        def read(tensor, *rest, **kwargs):
            reads[name] += 1
            return real_reads[name](tensor, *rest, **kwargs)
        return read

    syncs = None
    try:
        run_utils.Upload.__call__ = upload
        for name in real_reads:
            setattr(torch.Tensor, name, counting(name))
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("warn")
            script.collect_rollout(agent, envs, rollout, device, stats)
            if device.type == "cuda":
                torch.cuda.set_sync_debug_mode("default")
                syncs = sum("synchroniz" in str(w.message) for w in caught) / args.num_steps
    finally:
        run_utils.Upload.__call__ = real_upload
        for name, method in real_reads.items():
            setattr(torch.Tensor, name, method)
        envs.close()
    steps = args.num_steps
    per_step = ", ".join(f"{name} {count / steps:.2f}" for name, count in sorted(uploads.items()))
    return {"uploads_per_step": per_step, "uploads": dict(uploads), "reads": dict(reads),
            "reads_per_step": sum(reads.values()) / steps, "syncs_per_step": syncs}


def measure(script, args, weights: dict | None, rollouts: int, device=CPU) -> dict:
    envs, agent, rollout = start(script, args, weights, device)
    stats = EpisodeStats(args.num_envs)
    logprob_gaps, value_gaps = [], []
    with torch.no_grad():
        for _ in range(rollouts):
            script.collect_rollout(agent, envs, rollout, device, stats)
            for index, logprob, value in update_pass(script, args, agent, rollout, device):
                logprob_gaps.append((logprob - rollout.logprobs[index]).flatten())
                value_gaps.append((value - rollout.values[index]).flatten())
    envs.close()
    gap = torch.cat(logprob_gaps).abs().double().cpu().numpy()
    ratio = np.exp(gap)  # |log ratio| -> the farther of ratio and 1 / ratio
    return {
        "mean": gap.mean(),
        "p99": np.quantile(gap, 0.99),
        "max": gap.max(),
        "clipped": float((ratio - 1 > args.clip_coef).mean()),
        "value": torch.cat(value_gaps).abs().max().item(),
        "samples": gap.size,
    }


def first_minibatch_loss(args, agent, rollout, advantages, returns, sel):
    """PPO's loss on a minibatch before any optimizer step: the ratio is 1 and the value is the stored one, so
    neither clip is active and the clipped objectives have the plain objectives' gradient."""
    envs_index = torch.arange(args.num_envs)[:, None]
    logprob, entropy, value, _, _ = ppo_trxl.recompute(agent, rollout, sel)
    ratio = (logprob - rollout.logprobs[sel, envs_index]).exp()
    policy = -(advantages[sel, envs_index][..., None] * ratio).mean()
    return policy + args.vf_coef * ((value - returns[sel, envs_index]) ** 2).mean() - args.init_ent_coef * entropy.mean()


def gradient(agent, loss_fn, precision: str) -> dict[str, torch.Tensor]:
    agent.precision = precision
    agent.zero_grad()
    loss_fn().backward()
    return {name: p.grad.detach().flatten().clone() for name, p in agent.named_parameters() if p.grad is not None}


def compare(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], names: list[str]) -> tuple[float, float]:
    """Cosine similarity and relative error |a - b| / |a| of the gradients of the named parameters."""
    x, y = torch.cat([a[n] for n in names]).double(), torch.cat([b[n] for n in names]).double()
    return float(torch.nn.functional.cosine_similarity(x, y, dim=0)), float((x - y).norm() / x.norm())


def gradient_agreement(args, weights: dict | None) -> list[tuple[str, float, float, float, float]]:
    """Per parameter group: (group, cos bf16 vs f32, rel. error, cos f32 minibatch 1 vs 2, rel. difference)."""
    args = dataclasses.replace(args, precision="float32")
    envs, agent, rollout = start(ppo_trxl, args, weights)
    with torch.no_grad():
        next_value = ppo_trxl.collect_rollout(agent, envs, rollout, torch.device("cpu"), EpisodeStats(args.num_envs),
                                              gamma=args.gamma)
    envs.close()
    advantages, returns = ppo_trxl.compute_advantages(args, rollout, next_value)
    first, second = ppo_trxl.stratified_minibatches(args, torch.device("cpu"))[:2]
    loss_on = lambda sel: lambda: first_minibatch_loss(args, agent, rollout, advantages, returns, sel)
    full, rounded, other = (gradient(agent, loss_on(first), "float32"), gradient(agent, loss_on(first), "bfloat16"),
                            gradient(agent, loss_on(second), "float32"))
    # The heads row holds every parameter outside the encoder and the transformer layers.
    groups = {"all": lambda n: True, "encoder": lambda n: n.startswith("encoder."),
              "transformer": lambda n: n.startswith("layers."), "heads": lambda n: not n.startswith(("encoder.", "layers."))}
    rows = []
    for label, member in groups.items():
        if names := [n for n in full if member(n)]:
            rows.append((label, *compare(full, rounded, names), *compare(full, other, names)))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--script", choices=sorted(SCRIPTS), default="ppo_trxl")
    parser.add_argument("--config", required=True, help="the preset whose env, rollout and agent are measured")
    parser.add_argument("--checkpoint", help="trained weights (a checkpoint.pt of the same preset); default: a fresh agent")
    parser.add_argument("--rollouts", type=int, default=2, help="rollouts measured per precision (default 2)")
    parser.add_argument("--seed", type=int, default=1)
    options = parser.parse_args()
    if options.rollouts < 1:
        fail(f"--rollouts must be at least 1, got {options.rollouts}")
    if not os.path.isfile(options.config):
        fail(f"--config: no such preset file: {options.config}")
    script = SCRIPTS[options.script]
    weights = None
    if options.checkpoint:
        weights = load_checkpoint(options.checkpoint, options.script).get("model")

    print(f"{options.script}, {options.config}, {'weights of ' + options.checkpoint if weights else 'a fresh agent'}, "
          f"{options.rollouts} rollouts per precision")
    print("| precision | samples | mean abs log-ratio | 99th percentile | max | ratio outside 1 +- clip | max abs value gap |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for precision in ("float32", "bfloat16"):
        args = script.parse_args(["--config", options.config, "--precision", precision, "--no-cuda",
                                  "--seed", str(options.seed)])
        row = measure(script, args, weights, options.rollouts)
        print(f"| {precision} | {row['samples']:,} | {row['mean']:.2e} | {row['p99']:.2e} | {row['max']:.2e} | "
              f"{100 * row['clipped']:.2f} % (clip {args.clip_coef}) | {row['value']:.2e} |")
    if script is ppo_trxl:
        print("\nGradient of the first minibatch's loss: bfloat16 against float32, and float32 on a second minibatch")
        print("| parameters | cosine, bfloat16 vs float32 | relative error | cosine, minibatch 2 vs 1 | relative difference |")
        print("|---|---:|---:|---:|---:|")
        for label, cos_bf16, err_bf16, cos_mb, diff_mb in gradient_agreement(args, weights):
            print(f"| {label} | {cos_bf16:.4f} | {err_bf16:.3f} | {cos_mb:.4f} | {diff_mb:.3f} |")


if __name__ == "__main__":
    main()
