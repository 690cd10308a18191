"""Watch a trained agent: play episodes with a saved model, print their metrics, write videos.

Works with the models written by `--save-model` (`*.cleanrl_model`) and with training checkpoints
(`checkpoint.pt`) of ppo_trxl.py, ppo_gru.py and ppo_mamba.py. Each episode becomes an MP4 of the agent's
view beside the ground-truth render, in `videos/enjoy/<run name>/` (or `--video-folder`).

    python enjoy.py runs/MortarMayhem-Grid-v0__ppo_trxl__1__1700000000/ppo_trxl.cleanrl_model --episodes 5

Loading a file runs no code from it: the algorithm maps through a fixed table to ppo_trxl,
ppo_gru or ppo_mamba, the args are checked like a preset, and an env id `module:Env` stored in the file (which
would import `module`) is used only when `--env-id` names that same id.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os

import torch

from run_utils import (
    EpisodeStats,
    VideoRecorder,
    action_branches,
    args_from_checkpoint,
    fail,
    load_saved,
    load_weights,
    make_envs,
    observation_layout,
)


def load(path: str, env_id: str | None = None):
    """(script module, its Args, model weights) of a saved model or checkpoint."""
    algorithm, saved_args, weights = load_saved(path)
    script = importlib.import_module({"ppo_trxl": "ppo_trxl", "ppo_gru": "ppo_gru", "ppo_mamba": "ppo_mamba"}[algorithm])
    argv = [] if env_id is None else ["--env-id", env_id]
    values = args_from_checkpoint({"args": saved_args}, path, script.Args, argv)
    args = dataclasses.replace(script.Args(), **values)
    if env_id is not None and env_id != args.env_id:
        fail(f"--env-id {env_id!r} differs from the model's environment {args.env_id!r}")
    return script, args, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a *.cleanrl_model file or a checkpoint.pt")
    parser.add_argument("--episodes", type=int, default=3, help="how many episodes to play (>= 1; default: 3)")
    parser.add_argument("--seed", type=int, default=200_000,
                        help="seed of the first level, later ones follow from it (default: 200000, the first held-out seed)")
    parser.add_argument("--video-folder", default=None, help="where the MP4 files go (default: videos/enjoy/<run name>)")
    parser.add_argument("--no-video", action="store_true", help="only print the episode metrics (default: off, videos are written)")
    parser.add_argument("--env-id", default=None,
                        help="confirm a `module:Env` id stored in the model, which imports `module` (default: none)")
    parser.add_argument("--cuda", action="store_true", help="run the model on CUDA (default: off, the CPU)")
    options = parser.parse_args()
    if options.episodes < 1:
        parser.error(f"--episodes must be >= 1, got {options.episodes}")
    if options.seed < 0:
        parser.error(f"--seed must be >= 0, got {options.seed}")

    script, args, weights = load(options.model, options.env_id)
    device = torch.device("cuda" if options.cuda and torch.cuda.is_available() else "cpu")
    torch.manual_seed(options.seed)
    envs = make_envs(args, 1)
    image, vector = observation_layout(envs.single_observation_space, args.env_id)
    agent = script.Agent(args, image, vector, action_branches(envs.single_action_space, args.env_id)).to(device)
    load_weights(agent, weights, options.model)
    agent.eval()

    recorder = None
    if not options.no_video:
        if image is None:
            fail(f"{args.env_id} has no image observations, so there is nothing to film; pass --no-video")
        folder = options.video_folder or os.path.join("videos", "enjoy", args.run_name or args.env_id.replace(":", "-"))
        recorder = VideoRecorder(folder, envs.metadata.get("render_fps", 25), record_all=True, limit=options.episodes)
    obs, _ = envs.reset(seed=options.seed)
    rollout = script.new_rollout(agent, envs, 16, obs, device)
    stats = EpisodeStats(1)
    played = []
    while len(played) < options.episodes:
        script.collect_rollout(agent, envs, rollout, device, stats, recorder)
        for episode in stats.take_new()[: options.episodes - len(played)]:
            played.append(episode)
            details = " ".join(f"{k} {v:g}" for k, v in episode.items() if k not in ("return", "length"))
            print(f"episode {len(played)}: return {episode['return']:.3f} length {int(episode['length'])} {details}".rstrip())
    for number, path, _ in recorder.finished if recorder is not None else []:
        print(f"video of episode {number + 1}: {path}")
    print(f"mean return over {len(played)} episodes: {sum(e['return'] for e in played) / len(played):.3f}")
    envs.close()


if __name__ == "__main__":
    main()
