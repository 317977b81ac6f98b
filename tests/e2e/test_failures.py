"""Crash safety with the real engine: a driver killed mid-round, an engine actor killed mid-round,
and object storage gone for a few seconds. Each checks that every input row of the round ends up
in its output exactly once, and counts what was sent to the engine again."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pyarrow.parquet as pq
import pytest

from evol_ray import columns as C
from evol_ray import identity
from evol_ray.config import load_config
from evol_ray.pipeline.driver import run
from evol_ray.engine.meter import STATS_ACTOR_PREFIX, summarize_engines
from evol_ray.io.attempt_files import HAND_OVER_S
from evol_ray.io.storage import locate
from tests.conftest import parquet_rows, tiny_overrides

pytestmark = pytest.mark.e2e

N = 48


def write_seeds(path: Path) -> set:
    rows = [{"instruction": f"Write a paragraph about subject {i}.", "input": "", "output": ""} for i in range(N)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return {identity.content_id(r["instruction"]) for r in rows}


def slow_round(model, seeds, out):
    """One round in small batches with long answers, so the round lasts long enough to be hit.
    The tiny model decodes a step in milliseconds, and Ray Data writes a finished block a moment
    after the engine yields it, so the answers are long enough that the round outlasts that lag
    many times over, on a fast machine too. Every row gets its answer: the rules that would drop a
    random model's rewrite before it (a full run once dropped 37 of 48, and the round ended before
    the stop could land) are off."""
    return tiny_overrides(model, seeds, out, rounds=1) + [
        "engine.batch_size=2", "engine.rows_in_flight=2", "evolution.answer_sampling.max_tokens=384",
        "elimination.judge=false", "elimination.not_instruction=false", "elimination.lost_input=false",
        "elimination.language_drift=false", "elimination.copied_phrases=[]",
        "output.answer_seeds=false",  # the round is what these tests stop
        "output.flush_s=1",  # the attempt writers write what has ended every second
    ]


def wait_for(predicate, timeout=300, step=0.05):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(step)
    return False


def round_rows(out: Path, r: int = 1):
    m = json.load(open(out / f"round_{r}" / "manifest.json"))
    return m, pq.read_table([str(out / f"round_{r}" / f) for f in m["files"]]).to_pylist()


def engine_actor_processes():
    """EngineServer actor processes (the warm engines) of this test session's Ray (descendants of
    this process), so other Ray instances on the machine are never touched."""
    procs = []
    for p in psutil.Process(os.getpid()).children(recursive=True):
        try:
            if "EngineServer" in " ".join(p.cmdline()):
                procs.append(p)
        except psutil.Error:
            pass
    return procs


def engine_rows_done(ray) -> int:
    """Rows the running round's stage actors have finished, from its named stats actor, in any
    namespace (a driver in another process runs in a namespace of its own)."""
    done = 0
    for a in ray.util.list_named_actors(all_namespaces=True):
        if not a["name"].startswith(STATS_ACTOR_PREFIX):
            continue
        try:
            snaps = ray.get(ray.get_actor(a["name"], namespace=a["namespace"]).get.remote(), timeout=10)
        except Exception:
            continue  # the round ended and removed it
        done += summarize_engines(snaps).get("rows", 0)
    return done


FLUSH_S = 2.0


def test_driver_sigkill_mid_round_loses_only_the_last_flush_interval(tmp_path, tiny_model, ray_local):
    """Issue 29: with `output.flush_s` at a few seconds, a driver killed mid-round (its attempt
    writers die with it) has written every row that ended more than one flush interval before the
    kill; the rerun sends only the others, and every seed is in the round once."""
    seed_ids = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "out"
    args = slow_round(tiny_model, tmp_path / "seeds.jsonl", out) + [f"output.flush_s={FLUSH_S}"]
    gcs = ray_local.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    driver = subprocess.Popen([sys.executable, "-m", "evol_ray", "run", *args, f"ray.address={gcs}"],
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    ended = []  # (when, rows handed to the writers: a batch is counted once its rows are with them)
    window = FLUSH_S + HAND_OVER_S + 1.0  # a flush interval, a hand-over, and a second for the write
    attempts = out / "round_1" / "_attempts"
    try:
        def sample():
            ended.append((time.monotonic(), engine_rows_done(ray_local)))
            return parquet_rows(attempts) >= 6 and ended[-1][0] - ended[0][0] > 2 * window

        assert wait_for(sample, step=0.2), "no attempt was written in time"
        ended.append((time.monotonic(), engine_rows_done(ray_local)))
        driver.send_signal(signal.SIGKILL)
        killed_at = time.monotonic()
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
    # Ray ends a dead driver's actors and tasks; give it a moment, then see what survived.
    assert wait_for(lambda: not engine_actor_processes(), timeout=60, step=0.5)
    done_before = parquet_rows(attempts)
    ended_at_kill = ended[-1][1]
    ended_before_window = max(n for t, n in ended if t <= killed_at - window)
    assert 0 < done_before < N, f"the kill was not mid-round ({done_before} of {N} rows written)"
    assert ended_at_kill < N, "the round had ended before the kill"
    assert done_before >= ended_before_window, (
        f"{ended_before_window} rows had ended more than {window} s before the kill, {done_before} were written")
    assert not (out / "round_1" / "manifest.json").exists()

    cfg = load_config(args)
    run(cfg)
    m, rows = round_rows(out)
    parents = [x[C.PARENT_ID] for x in rows]
    assert sorted(parents) == sorted(seed_ids), "every seed exactly once"
    assert m["rows_in"] == N and m["rows_resumed"] == done_before
    assert m["engine"]["rows"] == N - done_before, "written rows were sent to the engine again"
    print(f"driver kill (flush_s={FLUSH_S}): rows in {N}, ended before the kill {ended_at_kill}, "
          f"written {done_before}, lost {max(0, ended_at_kill - done_before)}, re-sent {m['engine']['rows']}")


def test_engine_actor_killed_mid_round(tmp_path, tiny_model, ray_local):
    seed_ids = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "out"
    cfg = load_config(slow_round(tiny_model, tmp_path / "seeds.jsonl", out))
    result = {}

    def go():
        try:
            result["summary"] = run(cfg)
        except BaseException as e:  # reported by the assertion below
            result["error"] = e

    t = threading.Thread(target=go)
    t.start()
    # Trigger on the engine's own progress (the stats actor hears of every finished batch), not
    # on written files: Ray Data writes blocks later, by when a fast engine may be done.
    assert wait_for(lambda: 4 <= engine_rows_done(ray_local) < N), "the engine made no progress in time"
    victims = engine_actor_processes()
    assert victims, "no engine actor process found"
    for p in victims:
        p.kill()
    killed_at = engine_rows_done(ray_local)
    assert killed_at < N, f"the kill was not mid-round ({killed_at} of {N} rows done)"
    t.join(timeout=600)
    assert not t.is_alive(), "the run did not finish by itself"
    assert "error" not in result, result.get("error")
    m, rows = round_rows(out)
    assert sorted(x[C.PARENT_ID] for x in rows) == sorted(seed_ids), "no row lost or duplicated"
    assert m["rows_in"] == N
    # Ray restarted the engine actor and retried its unfinished requests on the new engine
    assert m["engine"]["engine_starts"] >= 2, f"a restarted engine should have taken over: {m['engine']}"
    print(f"actor kill: rows in {N}, done before kill {killed_at}, engine rows {m['engine']['rows']} "
          f"(re-sent {m['engine']['rows'] - N}), rows out {len(rows)}")


def test_s3_outage_mid_round(tmp_path, tiny_model, ray_local, s3):
    seed_ids = write_seeds(tmp_path / "seeds.jsonl")
    url = s3.make_bucket("evol-outage")
    cfg = load_config(slow_round(tiny_model, tmp_path / "seeds.jsonl", f"{url}/run") + s3.overrides())
    fs = locate(f"{url}/run", cfg.storage).fs
    result = {}

    def go():
        try:
            result["summary"] = run(cfg)
        except BaseException as e:
            result["error"] = e

    t = threading.Thread(target=go)
    t.start()
    assert wait_for(lambda: bool(fs.glob("evol-outage/run/round_1/_attempts/*.parquet")), step=0.2)
    s3.stop()
    time.sleep(5)
    s3.start()
    t.join(timeout=600)
    assert not t.is_alive()
    outcome = "recovered"
    if "error" in result:
        outcome = f"failed cleanly ({type(result['error']).__name__}), resumed on rerun"
        run(cfg)
    m = json.loads(fs.cat_file("evol-outage/run/round_1/manifest.json"))
    rows = []
    for f in m["files"]:
        with fs.open(f"evol-outage/run/round_1/{f}", "rb") as fh:
            rows += pq.read_table(fh, columns=[C.PARENT_ID]).column(C.PARENT_ID).to_pylist()
    assert sorted(rows) == sorted(seed_ids)
    print(f"s3 outage: {outcome}; rows in {N}, rows out {len(rows)}, resumed {m['rows_resumed']}")
