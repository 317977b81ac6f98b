"""A normal local run says nothing is wrong when nothing is (issue 30): `evol-ray run` in a shell of
its own, starting its own local Ray as a laptop user's first run does, prints no warning, no error
line of Ray's core and no traceback. What used to show on every such run, each now avoided or
filtered (`engine/resources.py`): Ray's "Token authentication is enabled for this Ray cluster"
(the default made explicit), Ray Data's "does not have any available CPUs ... will hang" (logged as
the engine phase's last tasks are released), and core_worker's "constructor arguments in the object
store and max_restarts > 0" (the stage actors are not restarted)."""

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import tiny_overrides
from tests.e2e.test_failures import write_seeds

pytestmark = pytest.mark.e2e

NOISE = re.compile(r"WARNING|Warning:|warn\(|core_worker\.cc|\] E |^\[[^\]]* E \d+ \d+\]|Traceback")


def test_a_normal_local_run_prints_no_warning(tmp_path, tiny_model):
    write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "out"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE")}  # a fresh shell
    env.update(PYTHONUNBUFFERED="1", EVOL_RAY_LOGS=str(tmp_path / "logs"))
    done = subprocess.run([sys.executable, "-m", "evol_ray", "run",
                           *tiny_overrides(tiny_model, tmp_path / "seeds.jsonl", out, rounds=1), "input.limit=4"],
                          env=env, capture_output=True, text=True, timeout=600)
    said = (done.stdout + done.stderr).splitlines()
    assert done.returncode == 0, "\n".join(said[-40:])
    assert (out / "final" / "manifest.json").exists()
    noisy = [line for line in said if NOISE.search(line)]
    assert not noisy, "a normal run printed:\n" + "\n".join(noisy)
