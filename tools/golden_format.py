"""The golden-fixture format, shared by the recorder (reference venv) and the tests (project venv).

Only numpy and the standard library are imported here, so both sides hash and encode the same
way. A fixture is one gzip-compressed JSON file per scenario:

    {"family", "name", "env_id", "render_debug",
     "episodes": [{"seed", "options",
                   "reset": {"obs", "info", "debug"},
                   "steps": {"action": [...], "obs": [...], "reward": [...], "terminated": [...],
                             "truncated": [...], "info": [...], "debug": [...]}}],
     "frames": [{"episode", "step", "obs", "debug"}]}

`obs` / `debug` entries in the step lists are `obs_hash` strings; `step` in a frame is the number
of steps taken (0 = the reset observation); a frame's images are `encode_image` strings.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

FIXTURES = Path(__file__).resolve().parents[1] / "tests" / "envs" / "fixtures"


def obs_hash(obs: Any) -> str:
    """blake2b-64 over the contiguous bytes of an observation; dict observations per key (sorted)."""
    if isinstance(obs, dict):
        return "|".join(f"{key}:{obs_hash(obs[key])}" for key in sorted(obs))
    array = np.ascontiguousarray(obs)
    digest = hashlib.blake2b(array.tobytes(), digest_size=8)
    digest.update(f"{array.dtype.str}{array.shape}".encode())
    return digest.hexdigest()


def to_jsonable(value: Any) -> Any:
    """Info values as plain JSON (numpy scalars to Python numbers, arrays to nested lists)."""
    if isinstance(value, dict):
        return {str(key): to_jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item) for item in value]
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, np.generic):
        return value.item()
    return value


def encode_image(image: np.ndarray) -> dict[str, Any]:
    image = np.ascontiguousarray(image)
    data = base64.b64encode(zlib.compress(image.tobytes(), 9)).decode("ascii")
    return {"shape": list(image.shape), "dtype": image.dtype.str, "data": data}


def decode_image(encoded: dict[str, Any]) -> np.ndarray:
    raw = zlib.decompress(base64.b64decode(encoded["data"]))
    return np.frombuffer(raw, dtype=np.dtype(encoded["dtype"])).reshape(encoded["shape"])


def fixture_path(family: str, name: str) -> Path:
    return FIXTURES / family / f"{name}.json.gz"


def save_fixture(fixture: dict[str, Any]) -> Path:
    path = fixture_path(fixture["family"], fixture["name"])
    path.parent.mkdir(parents=True, exist_ok=True)
    data = json.dumps(fixture, separators=(",", ":")).encode("utf-8")
    # mtime=0: re-recording identical content gives an identical file.
    path.write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
    return path


def load_fixture(path: Path | str) -> dict[str, Any]:
    with gzip.open(path, "rt", encoding="utf-8") as file:
        return json.load(file)


# A policy maps (reference env, policy rng, last observation, steps taken) to an action. It runs
# only when recording and may read the reference env's internals; the recorded actions make the
# replay independent of it.
Policy = Callable[[Any, np.random.Generator, Any, int], Any]


@dataclass
class Episode:
    """One episode of a scenario: `seed=None` resets without a new seed (the stream continues)."""

    seed: int | None
    policy: Policy
    options: dict[str, Any] = field(default_factory=dict)
    max_steps: int = 2000
    steps_after_done: int = 0
    """Steps taken after termination (the single env keeps running the game logic)."""


@dataclass
class Scenario:
    """Episodes played one after another on one env instance, and the frames stored in full."""

    name: str
    env_id: str
    episodes: list[Episode]
    frames: list[tuple[int, int]] = field(default_factory=list)
    """(episode index, steps taken) pairs; 0 steps is the reset observation."""
    render_debug: bool = True
    """Render the debug picture after reset and every step and record its hash."""
    policy_seed: int = 0
