"""Batched-environment machinery shared by every environment family.

A family implements one `BatchedGame` subclass per environment id: the state of `num_envs`
games held in arrays shaped `(num_envs, ...)`, advanced by one array program per step. Two thin
faces turn a game into the Gymnasium API:

* `NativeEnv`: a `gymnasium.Env`, the batch of one. It never resets by itself, so stepping
  after termination runs the game logic on, as the reference environments do.
* `NativeVectorEnv`: a `gymnasium.vector.VectorEnv` with same-step autoreset: the observation
  returned with `terminated` is the first one of the next episode; the last one and the
  episode's info are in `info["final_obs"]` / `info["final_info"]`.

Randomness comes only from one `numpy.random.Generator` per env: sub-env `i` of a vector env
reset with seed `s` uses the generator a single env reset with seed `s + i` gets.
Reset parameters are taken as constructor keywords (they become the env's standing
parameters) and as `reset(options=...)` (for that reset only); unknown names and values outside
the game's declared `parameters` table raise `ValueError` naming them. Actions outside the action
space raise `ValueError`, stepping before the first reset `gymnasium.error.ResetNeeded`; returned
observations and infos are copies that later steps never change.
"""

from __future__ import annotations

import reprlib
from numbers import Integral
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from envs.parameters import Param
from envs.state import Carry, EpisodeLog, restore_state, save_state

RENDER_MODES = ["rgb_array", "debug_rgb_array"]


class BatchedGame:
    """State and rules of `num_envs` independent games of one environment id.

    Subclasses set the class attributes and implement `reset_envs`, `step` and `observe`;
    the rest has sensible defaults. All per-step work must be array code over the batch;
    per-env Python loops belong only in `reset_envs` (e.g. level generation) and in
    `episode_info` (called for ending envs only). The faces start episodes with `new_episodes`
    and step with `play`, which record each env's current episode (see `envs.state`).
    """

    env_id: ClassVar[str]
    observation_space: ClassVar[gym.Space]
    action_space: ClassVar[gym.Space]
    defaults: ClassVar[dict[str, Any]] = {}
    """Every reset parameter and its default value."""
    parameters: ClassVar[dict[str, Param]] = {}
    """The values each reset parameter accepts (a family's table may hold names other ids lack)."""
    ground_truth_space: ClassVar[gym.Space | None] = None
    render_fps: ClassVar[int] = 25
    carried: ClassVar[dict[str, Carry]] = {}
    """Per-env arrays whose rows a new episode inherits from the last one (as memory-gym keeps them
    across resets), with the values each may hold; saved with every episode's start."""
    rendered: ClassVar[dict[str, Carry]] = {}
    """Per-env arrays that rendering changes, not play (memory-gym's debug render keeps its own place
    in the command list), with the values each may hold; saved as they are."""
    fresh_observations: ClassVar[tuple[str, ...]] = ()
    """Attributes holding arrays `observe` returns that `step` rewrites whole (every element of every
    env): `hand_out` gives them away uncopied (see there)."""

    def __init__(self, num_envs: int):
        self.num_envs = num_envs
        # One generator per env; created from OS entropy on the first reset without a seed.
        self.rngs: list[np.random.Generator | None] = [None] * num_envs
        self.log = EpisodeLog(num_envs, self.action_space.shape)
        self.handed_out: tuple[str, ...] = ()
        """The `fresh_observations` whose arrays are the caller's now, never to be written again."""

    # ---- to implement --------------------------------------------------------------------
    def check_params(self, params: dict[str, Any]) -> None:
        """Raise `ValueError` naming the parameter if a value is invalid (names are checked already):
        each value against its declared range, then `check_combinations` (resets and restored states)."""
        for name, value in params.items():
            self.parameters[name].check(self.env_id, name, value)
        self.check_combinations(params)

    def check_combinations(self, params: dict[str, Any]) -> None:
        """Raise `ValueError` naming the parameter if values do not fit together (each one fits its `Param`)."""

    def reset_envs(self, idx: np.ndarray, params: dict[str, Any]) -> None:
        """Start a new episode in the envs `idx`, drawing from `self.rngs[i]`."""
        raise NotImplementedError

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Advance every env by one step; return rewards (float64) and terminated flags (bool)."""
        raise NotImplementedError

    def settle(self, idx: np.ndarray) -> None:
        """Fix what the ending episodes of envs `idx` leave to the next ones (in `carried`)."""

    def observe(self) -> Any:
        """The current observation of every env, batched like `batch_space(observation_space)`."""
        raise NotImplementedError

    def step_info(self) -> dict[str, np.ndarray]:
        """Info keys that every env reports after every reset and step, as batched arrays (the faces copy them)."""
        return {}

    def episode_info(self, i: int) -> dict[str, Any]:
        """The end-of-episode info of env `i` (called only in a step where it terminated)."""
        return {}

    def render_rgb(self, i: int) -> np.ndarray:
        """What the agent of env `i` sees, as a normal (row-major) image."""
        obs = self.observe()
        obs = obs["visual_observation"] if isinstance(obs, dict) else obs
        return np.ascontiguousarray(obs[i].transpose(1, 0, 2))

    def render_debug(self, i: int) -> np.ndarray:
        """The ground-truth picture of env `i` (normal image)."""
        return self.render_rgb(i)

    # ---- shared machinery ----------------------------------------------------------------
    @classmethod
    def resolve_params(cls, *layers: dict[str, Any] | None) -> dict[str, Any]:
        """Defaults overridden by each non-empty layer in turn; unknown names raise."""
        params = dict(cls.defaults)
        for layer in layers:
            for name, value in (layer or {}).items():
                if name not in cls.defaults:
                    known = ", ".join(sorted(cls.defaults)) or "none"
                    raise ValueError(
                        f"{cls.env_id}: unknown reset parameter {name!r}; known parameters: {known}"
                    )
                params[name] = value
        return params

    def validated_params(self, *layers: dict[str, Any] | None) -> dict[str, Any]:
        """`resolve_params` of the layers, with every value checked."""
        params = self.resolve_params(*layers)
        self.check_params(params)
        return params

    def new_episodes(self, idx: np.ndarray, params: dict[str, Any], carried: dict[str, np.ndarray] | None = None) -> None:
        """Start new episodes in envs `idx` (recorded for `get_state`); `carried`: the values they
        inherit, in place of the previous episodes' (when a saved state is replayed)."""
        self._take_back(whole=False)
        self.settle(idx)
        for name, rows in (carried or {}).items():
            getattr(self, name)[idx] = rows
        self.log.started(self, idx, params)
        self.reset_envs(idx, params)

    def play(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """`step` (the actions checked by the caller), recorded for `get_state`."""
        self._take_back(whole=True)
        rewards, terminated = self.step(actions)
        self.log.stepped(actions, terminated)
        return rewards, terminated

    def hand_out(self) -> Any:
        """`observe()` for a caller that keeps what it gets: the arrays of `fresh_observations` as they
        are, copies of the others.

        A copy of a batch of screens every step costs more than itself (it pushes the rest of the
        step out of the caches), so the game gives its screens away instead and writes no element of
        them again: the next `play` lets `step` rewrite new arrays, and the next `new_episodes`,
        which rewrites some envs only, copies first.
        """
        fresh = {id(getattr(self, name)) for name in self.fresh_observations}
        self.handed_out = self.fresh_observations
        obs = self.observe()
        if isinstance(obs, dict):
            return {key: value if id(value) in fresh else value.copy() for key, value in obs.items()}
        return obs if id(obs) in fresh else obs.copy()

    def _take_back(self, whole: bool) -> None:
        """New arrays in place of those handed out: uninitialised when every element will be rewritten."""
        for name in self.handed_out:
            array = getattr(self, name)
            setattr(self, name, np.empty_like(array) if whole else array.copy())
        self.handed_out = ()

    def checked_actions(self, actions: Any) -> np.ndarray:
        """`actions` (any number of them, stacked) as an array, refused with `ValueError` outside the action space."""
        batch = np.shape(actions)[: np.ndim(actions) - len(self.action_space.shape)]
        return _ActionCheck(self.env_id, self.action_space, batch)(actions)

    def get_state(self) -> dict[str, Any]:
        """Each env's current episode as plain values and CPU tensors (for checkpoints loadable with
        `torch.load(weights_only=True)`): restoring it with `set_state` continues bit for bit."""
        return save_state(self)

    def set_state(self, state: dict[str, Any]) -> None:
        """Replay a `get_state` result into this game; a state that play could not have produced is
        refused with `ValueError` naming the field, the game left unchanged."""
        restore_state(self, state)

    def seed(self, seed: int | list[int | None] | None) -> None:
        """`int`: env i gets seed + i; list: one seed per env; `None`: keep the current generators."""
        if isinstance(seed, (list, tuple, np.ndarray)):
            if len(seed) != self.num_envs:
                raise ValueError(f"got {len(seed)} seeds for {self.num_envs} envs")
            seeds = list(seed)
        else:
            seeds = [None if seed is None else int(seed) + i for i in range(self.num_envs)]
        for i, s in enumerate(seeds):
            if s is not None or self.rngs[i] is None:
                self.rngs[i], _ = seeding.np_random(s)


def _checked_render_mode(env_id: str, render_mode: str | None) -> str | None:
    if render_mode not in (None, *RENDER_MODES):
        raise ValueError(f"{env_id}: unknown render_mode {render_mode!r}; choose from {RENDER_MODES}")
    return render_mode


class _ActionCheck:
    """Refuses actions outside the action space: a dtype test, a shape test and two reductions."""

    def __init__(self, env_id: str, space: gym.spaces.Discrete | gym.spaces.MultiDiscrete, batch: tuple[int, ...]):
        self.env_id, self.space, self.shape = env_id, space, (*batch, *space.shape)
        low = np.asarray(space.start)
        high = low + (space.n if isinstance(space, gym.spaces.Discrete) else space.nvec)
        # One scalar bound per side where every component shares it (all our ids): min/max suffice.
        self.low = int(low.min()) if (low == low.min()).all() else None
        self.high = int(high.max()) if (high == high.max()).all() else None
        self.lows, self.highs = low, high

    def __call__(self, actions: Any) -> np.ndarray:
        array = np.asarray(actions)
        if array.dtype.kind not in "iu" or array.shape != self.shape or not self._within(array):
            # A batch is summarised on one line (first and last rows).
            if isinstance(actions, np.ndarray):
                shown = np.array2string(actions, threshold=8, separator=", ")
            else:
                shown = reprlib.repr(actions)
            expected = f"integers of shape {self.shape}" if self.shape else "an integer"
            low = self.lows.tolist() if self.low is None else self.low
            high = self.highs.tolist() if self.high is None else self.high
            raise ValueError(
                f"{self.env_id}: action {' '.join(shown.split())} is outside the "
                f"action space {self.space} (expected {expected} in [{low}, {high}))"
            )
        return array

    def _within(self, array: np.ndarray) -> bool:
        if self.low is not None and self.high is not None:
            if array.size <= 2:  # one env's action: Python's min/max cost a fraction of two reductions
                values = array.ravel().tolist()
                return self.low <= min(values) and max(values) < self.high
            return bool(array.min() >= self.low and array.max() < self.high)
        return bool((array >= self.lows).all() and (array < self.highs).all())


def _first(value: Any) -> Any:
    """Element 0 of a batched info value: a plain Python number where it is a scalar, else a copy."""
    item = value[0]
    return item.item() if isinstance(item, np.generic) else np.array(item, copy=True)


class NativeEnv(gym.Env):
    """The single-env face of a `BatchedGame` (a batch of one, no autoreset)."""

    game_cls: type[BatchedGame]

    def __init__(self, render_mode: str | None = None, **params: Any):
        self.render_mode = _checked_render_mode(self.game_cls.env_id, render_mode)
        self.game = self.game_cls(1)
        self.params = self.game.validated_params(params)
        self.observation_space = self.game_cls.observation_space
        self.action_space = self.game_cls.action_space
        self.has_ground_truth_info = self.game_cls.ground_truth_space is not None
        if self.has_ground_truth_info:
            self.ground_truth_space = self.game_cls.ground_truth_space
        self._checked_action = _ActionCheck(self.game_cls.env_id, self.action_space, ())
        self._reset_done = False

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        params = self.game.validated_params(self.params, options)
        self.game.seed(seed)
        self._np_random = self.game.rngs[0]
        self.game.new_episodes(np.array([0]), params)
        self._reset_done = True
        return self._observation(), self._info(terminated=False)

    def step(self, action):
        if not self._reset_done:
            raise gym.error.ResetNeeded(f"{self.game_cls.env_id}: call reset() before step()")
        rewards, terminated = self.game.play(self._checked_action(action)[None])
        done = bool(terminated[0])
        return self._observation(), float(rewards[0]), done, False, self._info(terminated=done)

    def render(self):
        if self.render_mode == "rgb_array":
            return self.game.render_rgb(0)
        if self.render_mode == "debug_rgb_array":
            return self.game.render_debug(0)
        return None

    def _observation(self):
        obs = self.game.observe()
        if isinstance(obs, dict):
            return {key: value[0].copy() for key, value in obs.items()}
        return obs[0].copy()

    def _info(self, terminated: bool) -> dict[str, Any]:
        info = {key: _first(value) for key, value in self.game.step_info().items()}
        if terminated:
            info.update(self.game.episode_info(0))
        return info


class NativeVectorEnv(VectorEnv):
    """The vector face of a `BatchedGame`, with same-step autoreset."""

    game_cls: type[BatchedGame]

    def __init__(self, num_envs: int = 1, render_mode: str | None = None, **params: Any):
        env_id = self.game_cls.env_id
        if not isinstance(num_envs, Integral) or isinstance(num_envs, (bool, np.bool_)) or num_envs < 1:
            raise ValueError(f"{env_id}: num_envs must be an integer >= 1, got {num_envs!r}")
        self.num_envs = num_envs = int(num_envs)
        self.render_mode = _checked_render_mode(env_id, render_mode)
        self.game = self.game_cls(num_envs)
        self.params = self.game.validated_params(params)
        self.single_observation_space = self.game_cls.observation_space
        self.single_action_space = self.game_cls.action_space
        self.observation_space = batch_space(self.single_observation_space, num_envs)
        self.action_space = batch_space(self.single_action_space, num_envs)
        self._all = np.arange(num_envs)
        self._checked_actions = _ActionCheck(env_id, self.single_action_space, (num_envs,))
        self._reset_done = False

    def reset(self, *, seed: int | list[int | None] | None = None, options: dict[str, Any] | None = None):
        params = self.game.validated_params(self.params, options)
        self.game.seed(seed)
        self.game.new_episodes(self._all, params)
        self._reset_done = True
        return self._observation(), self._every_step_info()

    def step(self, actions):
        if not self._reset_done:
            raise gym.error.ResetNeeded(f"{self.game_cls.env_id}: call reset() before step()")
        rewards, terminated = self.game.play(self._checked_actions(actions))
        truncated = np.zeros(self.num_envs, dtype=bool)
        infos: dict[str, Any] = {}
        ended = np.flatnonzero(terminated)
        if len(ended):
            # One copy of the ended envs' rows (a copy of the whole batch would only add a large
            # allocation per step); each env's final observation and step info are rows of it.
            final_obs = _index(self.game.observe(), ended)
            step_info = _index(self.game.step_info(), ended)
            infos["final_obs"] = np.empty(self.num_envs, dtype=object)  # None everywhere
            infos["_final_obs"] = terminated.astype(bool)
            rows = ended.tolist()  # Python ints index one element several times faster
            episodes = []
            for k, i in enumerate(rows):
                infos["final_obs"][i] = _index(final_obs, k)
                episode = _index(step_info, k)
                episode.update(self.game.episode_info(i))
                episodes.append(episode)
            infos["final_info"] = self._batch_infos(rows, episodes)
            infos["_final_info"] = infos["_final_obs"].copy()
            self.game.new_episodes(ended, self.params)
        infos.update(self._every_step_info())
        return self._observation(), rewards.astype(np.float64), terminated.astype(bool), truncated, infos

    def render(self):
        if self.render_mode == "rgb_array":
            return tuple(self.game.render_rgb(i) for i in range(self.num_envs))
        if self.render_mode == "debug_rgb_array":
            return tuple(self.game.render_debug(i) for i in range(self.num_envs))
        return None

    def _observation(self):
        return self.game.hand_out()

    def _batch_infos(self, ended: list[int], episodes: list[dict[str, Any]]) -> dict[str, Any]:
        """Per-env info dicts of the ended envs -> gymnasium's batched layout (`key` array + `_key` mask)."""
        batched: dict[str, Any] = {}
        for key in dict.fromkeys(k for episode in episodes for k in episode):
            present = [(i, e[key]) for i, e in zip(ended, episodes) if key in e]
            first = present[0][1]
            if isinstance(first, np.ndarray):
                array = np.zeros((self.num_envs, *first.shape), dtype=first.dtype)
            elif type(first) in (int, float, bool) or isinstance(first, np.number):
                array = np.zeros(self.num_envs, dtype=type(first))
            else:
                array = np.full(self.num_envs, None, dtype=object)
            mask = np.zeros(self.num_envs, dtype=bool)
            for i, value in present:
                array[i] = value
                mask[i] = True
            batched[key], batched[f"_{key}"] = array, mask
        return batched

    def _every_step_info(self) -> dict[str, Any]:
        infos: dict[str, Any] = {}
        for key, value in self.game.step_info().items():
            infos[key] = np.array(value, copy=True)
            infos[f"_{key}"] = np.ones(self.num_envs, dtype=bool)
        return infos


def _index(batched: Any, i: Any) -> Any:
    """`batched[i]` of an array or of each array of a dict: a copy for an index array, a view for an int."""
    if isinstance(batched, dict):
        return {key: value[i] for key, value in batched.items()}
    return batched[i]


def register_game(game_cls: type[BatchedGame]) -> None:
    """Register `game_cls.env_id` with gymnasium: the single env and the native vector env."""
    name = game_cls.__name__.removesuffix("Game")
    metadata = {"render_modes": RENDER_MODES, "render_fps": game_cls.render_fps}
    attributes = {"game_cls": game_cls, "__module__": game_cls.__module__, "metadata": metadata}
    single = type(f"{name}Env", (NativeEnv,), attributes)
    vector_metadata = {**metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
    vector = type(f"{name}VectorEnv", (NativeVectorEnv,), {**attributes, "metadata": vector_metadata})
    gym.register(id=game_cls.env_id, entry_point=single, vector_entry_point=vector)
