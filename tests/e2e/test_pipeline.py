"""End to end: seeds -> rounds -> final, through real Ray Data and the real vLLM engine (CPU build)
with a tiny random model built by the fixture."""

import json
import os
import time

import psutil
import pyarrow.parquet as pq
import pytest

from evol_ray import columns as C
from evol_ray.io import commit as commit_mod
from evol_ray.config import load_config
from evol_ray.engine.service import VLLMEngines
from evol_ray.pipeline.driver import RunError, run
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.e2e

N_SEEDS = 36


def write_seeds(path):
    rows = [{"instruction": f"Explain topic number {i} in simple words.", "input": "" if i % 3 else f"context {i}",
             "output": f"answer {i}"} for i in range(N_SEEDS - 1)]
    rows.append({"instruction": "   ", "input": "", "output": ""})  # invalid_input, counted not dropped
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def engine_processes():
    """vLLM's engine-core and worker processes on this machine (vLLM titles them `VLLM::...`)."""
    titles = []
    for p in psutil.process_iter(["cmdline"]):
        cmd = p.info["cmdline"] or []
        if cmd and cmd[0].startswith("VLLM::"):
            titles.append(f"{cmd[0]} (pid {p.pid})")
    return titles


def read_round(out, r, manifest=None):
    manifest = manifest or json.load(open(out / f"round_{r}" / "manifest.json"))
    return pq.read_table([str(out / f"round_{r}" / f) for f in manifest["files"]]).to_pylist()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_model, ray_local):
    d = tmp_path_factory.mktemp("run")
    seeds = write_seeds(d / "seeds.jsonl")
    out = d / "out"
    cfg = load_config(tiny_overrides(tiny_model, seeds, out) + ["output.include_seeds=true"])
    at_commit = {}  # round -> vLLM processes alive as its manifest is written
    write_json = commit_mod.write_json

    def noting_write_json(loc, obj):
        if "round" in obj:
            at_commit[obj["round"]] = engine_processes()
        return write_json(loc, obj)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(commit_mod, "write_json", noting_write_json)
        summary = run(cfg)
    return cfg, out, summary, at_commit


def test_every_row_accounted_for_in_every_round(finished_run):
    cfg, out, summary, _ = finished_run
    assert [m["round"] for m in summary["rounds"]] == [1, 2]
    prev_pool_ids = None
    for r in (1, 2):
        m = json.load(open(out / f"round_{r}" / "manifest.json"))
        rows = read_round(out, r, m)
        assert m["complete"] and m["round"] == r
        assert len(rows) == m["rows_in"] == sum(m["status_counts"].values())
        assert set(m["status_counts"]) <= set(C.STATUSES)
        assert sum(m["reason_counts"].values()) == m["rows_in"] - m["status_counts"].get(C.KEPT, 0)
        attempted = [x for x in rows if x[C.OP]]
        assert sum(m["op_counts"].values()) == len(attempted)
        assert m["generated_tokens"] > 0 and m["engine"]["requests"] > 0
        assert 0 < m["engine"]["busy_share"] <= 1
        # the stage's rows in flight until its last request (engine.rows_in_flight=32, 8 seeds)
        assert 0 < m["engine"]["mean_in_flight_sending"] <= 32
        # engines run at normal priority, not at Ray's worker niceness of 15
        assert {a["niceness"] for a in m["engine"]["per_engine"].values()} == {0}
        assert set(m["phase_seconds"]) == {"engine", "commit"}
        assert m["phase_seconds"]["engine"] + m["phase_seconds"]["commit"] <= m["wall_seconds"] + 0.01
        assert len({x[C.PARENT_ID] for x in rows}) == len(rows), "one attempt per pool row"
        if r == 1:
            assert m["rows_in"] == N_SEEDS
            assert m["status_counts"].get(C.INVALID_INPUT) == 1
        else:
            assert {x[C.PARENT_ID] for x in rows} == prev_pool_ids
        prev_pool_ids = {x[C.ID] if x[C.STATUS] == C.KEPT else x[C.PARENT_ID]
                         for x in rows if x[C.STATUS] != C.INVALID_INPUT}
        for x in rows:
            assert (x[C.REASON] is None) == (x[C.STATUS] == C.KEPT)
            if x[C.STATUS] == C.ERROR_STATUS:
                assert x[C.ERROR]


def test_engines_start_once_serve_both_rounds_and_end_with_the_run(finished_run):
    """Warm engines: the same vLLM processes serve round 1 and round 2 (alive at both commits),
    each engine's start-up is paid once (round 1's manifest), and none is left once the run
    returns, holding memory (GPU memory, on a GPU) that something else needs."""
    cfg, out, summary, at_commit = finished_run
    assert at_commit[1] and at_commit[1] == at_commit[2], at_commit
    m1, m2 = summary["rounds"]
    assert m1["engine"]["engine_starts"] == 1 and m1["engine"]["startup_s"] > 0
    assert m2["engine"]["engine_starts"] == 0 and m2["engine"]["startup_s"] == 0
    # vLLM's own statistics of each round, from the engine's steps
    for m in (m1, m2):
        v = m["engine"]["vllm"]
        assert v["engines"] == 1 and 0 < v["mean_running"] <= cfg.engine.max_num_seqs
        assert 0 < v["mean_kv_cache_usage"] <= 1 and v["prompt_tokens_per_s"] > 0 and v["generated_tokens_per_s"] > 0
        # the evolution prompts share their template's opening: read from the prefix cache
        assert v["prefix_cache_hit_rate"] is not None and v["prefix_cache_hit_rate"] > 0
        [per] = m["engine"]["per_engine"].values()
        assert per["vllm"]["prompt_tokens"] > 0 and per["vllm"]["steps"] > 0
    assert set(m1["engine"]["per_engine"]) == set(m2["engine"]["per_engine"])
    end = time.monotonic() + 30
    while engine_processes() and time.monotonic() < end:
        time.sleep(0.5)
    assert engine_processes() == []


def test_final_holds_exactly_the_kept_rows_plus_seeds(finished_run):
    cfg, out, summary, _ = finished_run
    kept = set()
    for r in (1, 2):
        kept |= {x[C.ID] for x in read_round(out, r) if x[C.STATUS] == C.KEPT}
    fm = json.load(open(out / "final" / "manifest.json"))
    final = pq.read_table([str(out / "final" / f) for f in fm["files"]]).to_pylist()
    evolved = [x for x in final if x[C.ROUND] > 0]
    seeds = [x for x in final if x[C.ROUND] == 0]
    assert sorted(x[C.ID] for x in evolved) == sorted(kept)
    assert len(seeds) == N_SEEDS - 1  # the blank seed is not training data
    assert fm["rows"] == len(final)
    assert all(x[C.INSTRUCTION] and x[C.RESPONSE] is not None for x in evolved)


def test_resolved_config_saved_with_output(finished_run):
    cfg, out, _, _ = finished_run
    saved = load_config([str(out / "config.yaml")])
    assert saved == cfg


def test_rerun_skips_complete_rounds_and_redoes_a_half_written_one(finished_run, tmp_path):
    cfg, out, _, _ = finished_run
    before = {r: json.load(open(out / f"round_{r}" / "manifest.json")) for r in (1, 2)}
    mtimes = {p: os.stat(p).st_mtime_ns for p in (out / "round_1").iterdir()}
    launched = []  # engines created: every start goes through `launch`
    launch = VLLMEngines.launch
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(VLLMEngines, "launch", lambda self: (launch(self), launched.append(len(self.handles))))
        again = run(cfg)
    assert again["rounds"] == [before[1], before[2]]  # nothing recomputed
    assert {p: os.stat(p).st_mtime_ns for p in (out / "round_1").iterdir()} == mtimes
    assert launched == []  # every round committed: no engine loads its model

    # A crash between writing round 2's data and its manifest leaves no manifest: it is redone.
    os.remove(out / "round_2" / "manifest.json")
    (out / "round_2" / "stray-partial.parquet").write_bytes(b"half a file")
    redone = run(cfg)
    assert redone["rounds"][0] == before[1]
    m2 = redone["rounds"][1]
    assert m2["finished"] >= before[2]["finished"] and m2["rows_in"] == before[2]["rows_in"]
    assert not (out / "round_2" / "stray-partial.parquet").exists()


def test_rerun_with_other_config_refuses_and_names_keys(finished_run):
    cfg, out, _, _ = finished_run
    other = load_config([str(out / "config.yaml"), "seed=99", "evolution.rounds=3"])
    with pytest.raises(RunError, match=r"keys that differ: seed\. "):  # the round count may change
        run(other)
