"""The scripts' hard edges: every bad flag refused before anything starts, time limits bootstrapped,
third-party autoreset modes, fresh episodes after resuming envs that cannot be saved, data-parallel
decisions agreed by every rank, a second signal, and what a run says about itself."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import gymnasium as gym
import numpy as np
import pytest
import torch

import ppo_gru
import ppo_trxl
import run_utils

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = {
    ppo_trxl: dict(trxl_dim=16, trxl_num_heads=2, trxl_num_layers=1, trxl_memory_length=8),
    ppo_gru: dict(rnn_hidden_size=16, embed_dim=16, hidden_dim=16),
}
FLAGS = {
    "ppo_trxl": ["--trxl-dim", "16", "--trxl-num-heads", "2", "--trxl-num-layers", "1", "--trxl-memory-length", "8"],
    "ppo_gru": ["--rnn-hidden-size", "16", "--embed-dim", "16", "--hidden-dim", "16"],
}
SCRIPTS = pytest.mark.parametrize("script", [ppo_trxl, ppo_gru], ids=["trxl", "gru"])
TINY = dict(env_id="ProofOfMemory-v0", num_envs=2, num_steps=8, num_minibatches=2, update_epochs=1, cuda=False)


def tiny_args(script, **overrides):
    return script.Args(**{**TINY, **SMALL[script], **overrides})


@SCRIPTS
@pytest.mark.parametrize("flags, message", [
    (["--num-envs", "0"], "--num-envs must be in [1, 65536], got 0"),
    (["--num-envs", str(10**9)], "--num-envs must be in [1, 65536]"),
    (["--num-steps", "0"], "--num-steps must be >= 1, got 0"),
    (["--num-minibatches", "0"], "--num-minibatches must be >= 1, got 0"),
    (["--anneal-steps", "0"], "--anneal-steps must be >= 1"),
    (["--update-epochs", "0"], "--update-epochs must be >= 1"),
    (["--max-grad-norm", "-1"], "--max-grad-norm must be > 0"),
    (["--clip-coef", "-1"], "--clip-coef must be > 0"),
    (["--gamma", "2"], "--gamma must be in [0, 1], got 2.0"),
    (["--gae-lambda", "-1"], "--gae-lambda must be in [0, 1]"),
    (["--eval-seeds", "0"], "--eval-seeds must be in [1, 65536]"),
    (["--checkpoint-interval", "-1"], "--checkpoint-interval must be >= 0"),
    (["--init-lr", "-1"], "--init-lr must be > 0"),
    (["--seed", "-1"], "--seed must be in [0, 4294967295], got -1"),
    (["--target-kl", "nan"], "--target-kl must be > 0, got nan"),
    (["--exp-name", "../elsewhere"], "--exp-name '../elsewhere' is not a plain folder name"),
])
def test_every_invalid_flag_is_refused_before_anything_starts(script, flags, message, tmp_path):
    with pytest.raises(SystemExit, match=None) as stopped:
        script.train(script.parse_args(["--env-id", "ProofOfMemory-v0", "--no-cuda", *flags]))
    assert message in str(stopped.value)
    assert not os.path.exists("runs")


@pytest.mark.parametrize("script, flags, message", [
    (ppo_trxl, ["--trxl-num-heads", "0"], "--trxl-num-heads must be >= 1"),
    (ppo_trxl, ["--trxl-dim", "0"], "--trxl-dim must be >= 1"),
    (ppo_trxl, ["--trxl-dim", "30", "--trxl-num-heads", "4"], "--trxl-dim (30) must be divisible by 2 x --trxl-num-heads (4)"),
    (ppo_trxl, ["--trxl-dim", "36", "--trxl-num-heads", "4"], "--trxl-dim (36) must be divisible by 2 x --trxl-num-heads (4)"),
    (ppo_gru, ["--rnn-hidden-size", "0"], "--rnn-hidden-size must be >= 1"),
    (ppo_gru, ["--sequence-length", "0"], "--sequence-length must be -1"),
])
def test_model_flags_are_refused_before_anything_starts(script, flags, message):
    with pytest.raises(SystemExit) as stopped:
        script.train(script.parse_args(["--env-id", "ProofOfMemory-v0", "--no-cuda", *flags]))
    assert message in str(stopped.value)
    assert not os.path.exists("runs"), "a refused combination leaves no run folder"


@SCRIPTS
def test_an_env_the_script_refuses_leaves_no_run_folder(script):
    # Checked only once the env exists (no image observations to film): still before the run folder.
    with pytest.raises(SystemExit, match="has no image observations"):
        script.train(script.parse_args(["--env-id", "ProofOfMemory-v0", "--no-cuda", "--capture-video"]))
    assert not os.path.exists("runs")


@SCRIPTS
@pytest.mark.parametrize("preset, message", [
    ('precision = "float16"\n', "precision must be one of 'float32', 'bfloat16', 'auto', got 'float16'"),
    ('target_kl = "abc"\n', "target_kl must be a number, got 'abc'"),
    ("num_env = 4\n", "unknown key 'num_env' (did you mean 'num_envs'?)"),
    ("batch_size = 4096\n", "unknown key 'batch_size'"),
])
def test_preset_values_are_checked_like_flags(script, preset, message, tmp_path):
    (tmp_path / "p.toml").write_text(preset)
    with pytest.raises(SystemExit) as stopped:
        script.parse_args(["--config", str(tmp_path / "p.toml")])
    assert message in str(stopped.value)


def test_trxl_positional_encoding_in_a_preset_is_checked(tmp_path):
    (tmp_path / "p.toml").write_text('trxl_positional_encoding = "rotary"\n')
    with pytest.raises(SystemExit, match="trxl_positional_encoding must be one of"):
        ppo_trxl.parse_args(["--config", str(tmp_path / "p.toml")])


@SCRIPTS
@pytest.mark.parametrize("flag", ["--run-name", "--batch-size", "--minibatch-size", "--num-iterations", "--world-size"])
def test_fields_computed_at_run_time_are_not_flags(script, flag, capsys):
    with pytest.raises(SystemExit) as stopped:
        script.parse_args([flag, "4096"])
    assert stopped.value.code != 0
    assert "Unrecognized options" in capsys.readouterr().err


class Counter(gym.Env):
    """Observes its own step count; reward 0; never ends by itself (a time limit cuts it)."""

    observation_space = gym.spaces.Box(0.0, 100.0, (1,), np.float32)
    action_space = gym.spaces.Discrete(2)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), 0.0, False, False, {}


def register_counters():
    if "CounterLimited-v0" not in gym.registry:
        gym.register("CounterLimited-v0", entry_point=Counter, max_episode_steps=5)
        gym.register("CounterUnlimited-v0", entry_point=Counter)


@SCRIPTS
def test_a_time_limit_bootstraps_from_the_value_of_the_last_observation(script):
    """With a limit of 5 steps, the reward stored at the cut is gamma x the value the agent gives the
    6th observation, which an unlimited twin (same seed, same actions) computes as its next value."""
    register_counters()
    rollouts = {}
    for env_id in ("CounterLimited-v0", "CounterUnlimited-v0"):
        args = tiny_args(script, env_id=env_id, num_envs=1, num_steps=8)
        envs = run_utils.make_envs(args, 1)
        image, vector = run_utils.observation_layout(envs.single_observation_space)
        torch.manual_seed(0)
        agent = script.Agent(args, image, vector, [2])
        torch.manual_seed(1)
        obs, _ = envs.reset(seed=0)
        ro = script.new_rollout(agent, envs, 8, obs, torch.device("cpu"))
        script.collect_rollout(agent, envs, ro, torch.device("cpu"), lambda *a: None, gamma=0.9)
        rollouts[env_id] = ro
    limited, unlimited = rollouts["CounterLimited-v0"], rollouts["CounterUnlimited-v0"]
    assert limited.dones[:, 0].tolist() == [0, 0, 0, 0, 1, 0, 0, 0]
    assert limited.rewards[4, 0].item() == pytest.approx(0.9 * unlimited.values[5, 0].item(), rel=1e-5, abs=1e-6)
    assert limited.rewards[4, 0].item() != 0.0
    assert torch.count_nonzero(limited.rewards).item() == 1  # only the cut gets a bootstrap


@SCRIPTS
def test_a_termination_is_not_bootstrapped(script):
    args = tiny_args(script)
    envs = run_utils.make_envs(args, 2)
    image, vector = run_utils.observation_layout(envs.single_observation_space)
    agent = script.Agent(args, image, vector, [2])
    rewards = []
    for gamma in (None, 0.9):
        torch.manual_seed(3)
        obs, _ = envs.reset(seed=3)
        ro = script.new_rollout(agent, envs, 8, obs, torch.device("cpu"))
        script.collect_rollout(agent, envs, ro, torch.device("cpu"), lambda *a: None, gamma=gamma)
        rewards.append(ro.rewards.clone())
        assert ro.dones.sum() > 0
    assert torch.equal(rewards[0], rewards[1])  # Memory Gym ids report every end as terminated


def test_envs_with_next_step_autoreset_are_stepped_with_same_step_autoreset():
    envs = run_utils.make_envs(tiny_args(ppo_gru, env_id="CartPole-v1"), 2)
    assert envs.metadata["autoreset_mode"] == gym.vector.AutoresetMode.SAME_STEP
    obs, _ = envs.reset(seed=0)
    lengths, length = [], np.zeros(2, int)
    for _ in range(200):
        obs, reward, terminated, truncated, info = envs.step(np.zeros(2, int))  # always left: short episodes
        length += 1
        for i in np.flatnonzero(terminated | truncated):
            assert "final_obs" in info and info["final_obs"][i] is not None
            if i == 0:
                lengths.append(length[i])
            length[i] = 0
    true_lengths = []
    single = gym.make("CartPole-v1")
    single.reset(seed=0)
    steps = 0
    while len(true_lengths) < 3:
        steps += 1
        if any(single.step(0)[2:4]):
            true_lengths.append(steps)
            steps = 0
            single.reset()
    assert lengths[:3] == true_lengths  # env 0 (seed 0): no extra junk step per episode


@SCRIPTS
def test_resuming_envs_that_cannot_be_saved_starts_fresh_episodes(script):
    register_counters()
    args = tiny_args(script, env_id="CounterUnlimited-v0")
    device = torch.device("cpu")

    def rank_with_rollout():
        run = run_utils.Run(args, script.__name__, 0, device, script.STRUCTURAL_FIELDS, script.check_args)
        envs, image, vector, branches = run.make_envs()
        agent = script.Agent(args, image, vector, branches)
        obs, _ = envs.reset(seed=0)
        ro = script.new_rollout(agent, envs, 8, obs, device)
        run.save_rollout = lambda: script.rollout_state(ro)
        run.load_rollout = lambda state: pytest.fail("the rollout of envs that were not restored was loaded")
        return run, agent, envs, ro

    run, agent, envs, ro = rank_with_rollout()
    script.collect_rollout(agent, envs, ro, device, run.stats)
    saved = run.rank_state()
    assert saved["envs"] is None and run.stats.running_length.tolist() == [8, 8]

    fresh_run, _, _, fresh = rank_with_rollout()
    assert fresh_run.load_rank_state(saved) is False
    assert fresh_run.stats.running_length.tolist() == [0, 0] and fresh_run.stats.running_return.tolist() == [0.0, 0.0]
    _, _, _, reference = rank_with_rollout()
    for name in ("memory", "memory_steps", "next_step", "next_hidden", "next_start"):
        if hasattr(reference, name):
            assert torch.equal(getattr(fresh, name), getattr(reference, name)), name


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(script: str, flags: list[str], cwd) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={free_port()}", os.path.join(ROOT, f"{script}.py"), "--no-cuda", *FLAGS[script], *flags]
    return subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=240,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})


@pytest.mark.parametrize("script", ["ppo_trxl", "ppo_gru"])
def test_target_kl_stops_every_rank_at_the_same_epoch(script, tmp_path):
    result = torchrun(script, ["--env-id", "ProofOfMemory-v0", "--num-envs", "4", "--num-steps", "16",
                               "--num-minibatches", "2", "--update-epochs", "8", "--target-kl", "0.003",
                               "--total-timesteps", str(4 * 16 * 2 * 3)], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "parameters identical on all 2 ranks" in result.stdout


def test_gru_ranks_with_different_sequence_counts_take_the_same_steps(tmp_path):
    # Episodes of 2-41 steps: in 16-step rollouts the ranks cut different numbers of sequences.
    result = torchrun("ppo_gru", ["--env-id", "ProofOfMemory-v0", "--env-kwargs", '{"min_delay": 0, "max_delay": 40}',
                                  "--num-envs", "2", "--num-steps", "16", "--num-minibatches", "4",
                                  "--total-timesteps", str(2 * 16 * 2 * 6)], tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "iter 6/6" in result.stdout and "parameters identical on all 2 ranks" in result.stdout


@SCRIPTS
def test_a_second_signal_stops_at_once_with_one_line(script, tmp_path):
    name = script.__name__
    command = [sys.executable, os.path.join(ROOT, f"{name}.py"), "--env-id", "ProofOfMemoryImage-v0", "--num-envs", "2",
               "--num-steps", "4096", "--num-minibatches", "2", "--total-timesteps", str(10**7), "--no-cuda", *FLAGS[name]]
    process = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    for line in process.stdout:
        if line.startswith("run folder"):
            break
    process.send_signal(signal.SIGTERM)
    time.sleep(1.0)  # two signals sent at once may be delivered as one
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=120)
    assert process.returncode == 128 + signal.SIGTERM
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1].startswith("stopped at once by a second signal; ")


@SCRIPTS
def test_a_run_says_what_it_is_and_what_it_resumed(script, capsys):
    args = tiny_args(script, total_timesteps=32)
    script.train(args)
    out = capsys.readouterr().out
    agent_size = next(line for line in out.splitlines() if "parameters: " in line)
    assert "precision float32" in agent_size and "device cpu" in agent_size
    count = int(agent_size.split("parameters: ")[1].replace(",", ""))
    image, vector = run_utils.observation_layout(run_utils.make_envs(args, 1).single_observation_space)
    assert count == sum(p.numel() for p in script.Agent(args, image, vector, [2]).parameters())
    assert "2 envs x 8 steps x 1 rank(s) = 16 steps per iteration, 2 iterations" in out
    assert "tensorboard --logdir runs" in out
    checkpoint = os.path.join("runs", args.run_name, "checkpoint.pt")
    script.train(script.parse_args(["--resume", checkpoint, "--total-timesteps", "48"]))
    assert "resumed at iteration 2, step 32" in capsys.readouterr().out
    script.train(script.parse_args(["--resume", checkpoint]))
    assert "nothing left to do" in capsys.readouterr().out


@SCRIPTS
def test_one_name_per_metric(script):
    history = script.train(tiny_args(script, total_timesteps=64, eval_interval=2, eval_seeds=2, eval_repetitions=1))
    keys = {key for entry in history for key in entry}
    assert "charts/episodic_return" in keys and "eval/return_mean" in keys and "episode/success" in keys
    assert not {"episode/reward", "episode/length", "eval/reward_mean", "eval/reward_se"} & keys


@SCRIPTS
def test_capture_video_without_images_says_there_is_nothing_to_film(script):
    with pytest.raises(SystemExit, match="has no image observations, so --capture-video has nothing to film"):
        script.train(tiny_args(script, capture_video=True))


@SCRIPTS
def test_the_env_kwargs_example_of_the_help_works_with_the_default_env(script):
    doc = script.Args.__dataclass_fields__["env_kwargs"]
    example = next(line for line in open(script.__file__) if "reset parameters of the environment as a JSON object" in line)
    kwargs = example.split("e.g. '")[1].split("'")[0]
    envs = run_utils.make_envs(script.Args(env_kwargs=kwargs), 1)
    assert envs.unwrapped.params["command_count"] == [5] and doc.default == "{}"


def test_episode_stats_skip_ratios_with_nothing_to_count():
    # Searing Spotlights without coins ends episodes with coins_collected = 0/0 = NaN; a NaN would turn the
    # logged mean into NaN, so such a value is left out while the finite ones are kept.
    stats = run_utils.EpisodeStats(2)
    done = np.array([True, True])
    info = {"final_info": {"coins_collected": np.array([np.nan, 0.5]), "_coins_collected": done,
                           "success": np.array([1, 0]), "_success": done}}
    stats(np.array([1.0, 0.25]), done, info)
    first, second = stats.take_new()
    assert first == {"return": 1.0, "length": 1, "success": 1.0}
    assert second == {"return": 0.25, "length": 1, "coins_collected": 0.5, "success": 0.0}
