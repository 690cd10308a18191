"""benchmarks/random_policy.py: the random policy's level of chosen settings, into a temporary folder."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(ROOT, "benchmarks", "random_policy.py")


def test_chosen_settings_only_and_bad_ones_refused_in_one_line(tmp_path):
    done = subprocess.run([sys.executable, SCRIPT, "--episodes", "20", "--out", str(tmp_path),
                           "--settings", 'ProofOfMemory-v0={"min_delay": 2, "max_delay": 2}'], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    [row] = json.loads((tmp_path / "results.json").read_text())["settings"]
    assert row["env_kwargs"] == '{"max_delay": 2, "min_delay": 2}' and row["episodes"] == 20
    assert 0.0 <= row["return_mean"] <= 1.0 and "--settings" in (tmp_path / "command.txt").read_text()
    for setting, message in (("Nope-v0={}", "unknown env id 'Nope-v0'"), ("ProofOfMemory-v0={bad", "are not JSON"),
                             ("ProofOfMemory-v0=[1]", "must be a JSON object"),
                             ('MortarMayhem-Grid-v0={"bogus": 1}', "unknown reset parameter 'bogus'")):
        bad = subprocess.run([sys.executable, SCRIPT, "--out", str(tmp_path / "bad"), "--settings", setting],
                             capture_output=True, text=True)
        assert bad.returncode == 1 and message in bad.stderr and len(bad.stderr.strip().splitlines()) == 1
