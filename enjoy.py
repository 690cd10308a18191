"""Watch a trained agent: play episodes with a saved model, print their metrics, write videos.

Works with the models written by `--save-model` (`*.cleanrl_model`) and with training checkpoints
(`checkpoint.pt`) of both ppo_trxl.py and ppo_gru.py. Each episode becomes an MP4 of the agent's
view beside the ground-truth render, in `--video-folder`.

    python enjoy.py runs/MortarMayhem-Grid-v0__ppo_trxl__1__1700000000/ppo_trxl.cleanrl_model --episodes 5
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import os

import torch


def load(path: str):
    """(script module, its Args, model weights) of a saved model or checkpoint."""
    try:
        saved = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"error: {path!r} does not exist")
    except Exception as e:
        raise SystemExit(f"error: {path!r} is corrupted or not a saved model ({type(e).__name__}: {e})")
    if "algorithm" in saved:
        algorithm, weights = saved["algorithm"], saved["model_weights"]
    elif str(saved.get("format", "")).endswith("-checkpoint-1"):
        algorithm, weights = saved["format"].removesuffix("-checkpoint-1"), saved["model"]
    else:
        raise SystemExit(f"error: {path!r} is neither a saved model nor a checkpoint of ppo_trxl / ppo_gru")
    script = importlib.import_module(algorithm)
    fields = {f.name for f in dataclasses.fields(script.Args)}
    args = script.Args(**{k: v for k, v in saved["args"].items() if k in fields})
    return script, args, weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a *.cleanrl_model file or a checkpoint.pt")
    parser.add_argument("--episodes", type=int, default=3, help="how many episodes to play")
    parser.add_argument("--seed", type=int, default=200_000, help="seed of the first level (later ones follow from it)")
    parser.add_argument("--video-folder", default=None, help="where the MP4 files go (default: videos/enjoy/<run name>)")
    parser.add_argument("--no-video", action="store_true", help="only print the episode metrics")
    parser.add_argument("--cuda", action="store_true", help="run the model on CUDA")
    options = parser.parse_args()

    script, args, weights = load(options.model)
    device = torch.device("cuda" if options.cuda and torch.cuda.is_available() else "cpu")
    torch.manual_seed(options.seed)
    envs = script.make_envs(args, 1)
    image, vector = script.observation_layout(envs.single_observation_space, args.env_id)
    agent = script.Agent(args, image, vector, script.action_branches(envs.single_action_space, args.env_id)).to(device)
    agent.load_state_dict(weights)
    agent.eval()

    recorder = None
    if not options.no_video:
        folder = options.video_folder or os.path.join("videos", "enjoy", args.run_name or args.env_id)
        recorder = script.VideoRecorder(folder, envs.metadata.get("render_fps", 25), record_all=True)
    obs, _ = envs.reset(seed=options.seed)
    rollout = script.new_rollout(agent, envs, 16, obs, device)
    stats = script.EpisodeStats(1)
    played = []
    while len(played) < options.episodes:
        script.collect_rollout(agent, envs, rollout, device, stats, recorder)
        for episode in stats.take_new()[: options.episodes - len(played)]:
            played.append(episode)
            details = " ".join(f"{k} {v:g}" for k, v in episode.items() if k not in ("return", "length"))
            print(f"episode {len(played)}: return {episode['return']:.3f} length {int(episode['length'])} {details}".rstrip())
    if recorder is not None:
        for number, path, _ in recorder.finished[: options.episodes]:
            print(f"video of episode {number + 1}: {path}")
    print(f"mean return over {len(played)} episodes: {sum(e['return'] for e in played) / len(played):.3f}")
    envs.close()


if __name__ == "__main__":
    main()
