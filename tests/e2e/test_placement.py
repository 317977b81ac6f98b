"""The run's engines on Ray's logical GPUs (`bench/placement.py`, which starts `VLLMEngines` with a
stand-in engine that holds GPUs as vLLM's Ray executor does): each tensor-parallel replica in a
placement group of its own, the groups removed at stop, `engine.replicas=auto`, a request the
cluster cannot hold refused before any engine starts, and a second set of engines (score.model's)
that does not wait for the GPUs the run's engines hold. Each case runs in its own Ray (a
subprocess): the session's Ray has no GPUs."""

import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

BENCH = Path(__file__).resolve().parents[2] / "bench" / "placement.py"


def placement(*args, timeout=240):
    t0 = time.monotonic()
    r = subprocess.run([sys.executable, str(BENCH), *args], capture_output=True, text=True, timeout=timeout)
    last = r.stdout.strip().splitlines()[-1]
    figures = dict(kv.split("=") for kv in last.split())
    engines = [line.split("GPUs ", 1)[1].split(",") for line in r.stdout.splitlines() if re.match(r"engine \d+:", line)]
    return r, figures, engines, time.monotonic() - t0


def test_two_tensor_parallel_replicas_each_get_their_own_group_and_gpus():
    r, f, engines, _ = placement("--gpus", "4", "--replicas", "2", "--tp", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    assert (f["engines_started"], f["gpus_held"], f["groups"], f["groups_left"]) == ("2", "4", "2", "0")
    assert len(engines) == 2 and all(len(g) == 2 for g in engines)
    assert not set(engines[0]) & set(engines[1])  # no GPU shared, none waited for
    assert "requests answered: 2 (" in r.stdout  # the stages' client reaches every engine


def test_auto_starts_as_many_engines_as_the_gpus_hold_and_a_second_model_does_not_wait():
    r, f, engines, _ = placement("--gpus", "4", "--replicas", "auto", "--tp", "2", "--second-model")
    assert r.returncode == 0, r.stderr[-2000:]
    assert f["engines_started"] == "2" and f["groups_left"] == "0"
    assert "second set: 2 engine(s) started" in r.stdout and "the first set stopped" in r.stdout
    assert "first set started again: 2 engine(s)" in r.stdout


def test_more_engines_than_the_cluster_holds_fail_fast_naming_the_keys():
    r, f, _, seconds = placement("--gpus", "4", "--replicas", "3", "--tp", "2")
    assert r.returncode == 2 and f["engines_started"] == "0"
    assert "engine.replicas=3" in r.stderr and "engine.tensor_parallel_size=2" in r.stderr
    assert seconds < 60


def test_a_tensor_parallel_engine_wider_than_any_node_fails_naming_the_keys():
    r, _, _, _ = placement("--gpus", "4", "--nodes", "2", "--replicas", "1", "--tp", "4")
    assert r.returncode == 2 and "no node has 4 GPUs (the most on one node: 2)" in r.stderr
