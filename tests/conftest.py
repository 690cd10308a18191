"""Every test runs in a fresh temporary working folder, so nothing lands in the repository's
`runs/` or `videos/`; the session fails if either changed anyway. The suite runs on every core
(pytest-xdist, `-n auto` in pyproject.toml), one thread per worker."""

from __future__ import annotations

import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WATCHED = ("runs", "videos", "wandb")

# The scripts, tools and benchmarks the tests start import the project from ROOT, and keep whatever the
# PYTHONPATH they were given already held (packages installed with `pip install --target`, say).
os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))

# Workers share the cores: with torch's default thread pool each, they fight over them and a small run slows
# several times. Set before any test module imports torch; the scripts the tests start inherit it.
if int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")) > 1:
    os.environ.setdefault("OMP_NUM_THREADS", "1")


def _listing() -> dict[str, list[str]]:
    return {name: sorted(os.listdir(os.path.join(ROOT, name))) if os.path.isdir(os.path.join(ROOT, name)) else []
            for name in WATCHED}


_before: dict[str, list[str]] = {}


def pytest_sessionstart(session):
    _before.update(_listing())


def pytest_sessionfinish(session, exitstatus):
    before, after = _before, _listing()
    if before != after:
        changed = [name for name in WATCHED if before[name] != after[name]]
        print(f"\nerror: the tests wrote into the repository's {', '.join(changed)}/ folder(s)")
        session.exitstatus = 1


@pytest.fixture(autouse=True)
def _work_in_a_temporary_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

