"""End to end: seeds without an answer answered by the run's engines (`output.answer_seeds`, on by
default with `output.include_seeds`) through the real pipeline (Ray Data, vLLM CPU engine, tiny
model): committed to `seed_answers/` like a round, every seed counted, `final/` holding the seeds
with answers, a rerun reusing the commit, a crashed phase resumed, and the key off giving the
seeds as they came."""

import json
import shutil

import pyarrow.parquet as pq
import pytest

from evol_ray import columns as C
from evol_ray.config import load_config
from evol_ray.pipeline.driver import run
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.e2e

GIVEN = {"Name a use of a hammer.": "Driving nails into wood.",
         "Why is the sky blue at noon?": "Air scatters blue light more than red light.",
         "Give a synonym of happy.": "Glad."}
UNANSWERED = [f"Describe animal number {i} in one sentence." for i in range(5)]


def manifest(folder):
    return json.loads((folder / "manifest.json").read_text())


def rows(folder, m=None):
    m = m or manifest(folder)
    return pq.read_table([str(folder / f) for f in m["files"]]).to_pylist() if m["files"] else []


@pytest.fixture(scope="module")
def answered_run(tmp_path_factory, tiny_model, ray_local):
    d = tmp_path_factory.mktemp("seed_answers")
    seeds = d / "seeds.jsonl"
    lines = [{"instruction": q, "output": a} for q, a in GIVEN.items()]
    lines += [{"instruction": q, "output": ""} for q in UNANSWERED[:3]]
    lines += [{"instruction": q} for q in UNANSWERED[3:]]  # no answer column at all
    lines += [{"instruction": "   ", "output": ""}]  # blank: never answered, never in final/
    seeds.write_text("".join(json.dumps(x) + "\n" for x in lines))
    out = d / "out"
    overrides = tiny_overrides(tiny_model, seeds, out, rounds=1)
    summary = run(load_config(overrides))  # include_seeds and answer_seeds by default
    return out, overrides, summary


def test_unanswered_seeds_are_answered_counted_and_reach_final(answered_run):
    out, _, summary = answered_run
    m = manifest(out / "seed_answers")
    answers = rows(out / "seed_answers", m)
    assert m["rows_in"] == len(UNANSWERED) == len(answers) == sum(m["status_counts"].values())
    assert {x[C.INSTRUCTION] for x in answers} == set(UNANSWERED)
    assert all(x[C.ROUND] == 0 and x[C.OP] is None and x[C.ID] == x[C.PARENT_ID] for x in answers)
    assert m["generated_tokens"] > 0 and m["rows_kept"] == m["status_counts"].get(C.KEPT, 0)
    dropped = [x for x in answers if x[C.STATUS] != C.KEPT]
    assert all(x[C.REASON] for x in dropped)
    assert m["reason_counts"] == {r: sum(x[C.REASON] == r for x in dropped) for r in {x[C.REASON] for x in dropped}}
    assert summary["seed_answers"]["rows_in"] == len(UNANSWERED)

    final_m = manifest(out / "final")
    final = rows(out / "final", final_m)
    removed = pq.read_table([str(out / "final" / f) for f in final_m["removed_files"]]).to_pylist() \
        if final_m["removed_files"] else []
    assert all(x[C.REASON] for x in removed)  # the final checks (random text's control bytes) say why
    seeds = {x[C.INSTRUCTION]: x for x in final + removed if x[C.ROUND] == 0}
    kept = {x[C.INSTRUCTION]: x[C.RESPONSE] for x in answers if x[C.STATUS] == C.KEPT}
    assert {q: x[C.RESPONSE] for q, x in seeds.items()} == {**GIVEN, **kept}  # given answers as they came
    assert all(x[C.PARENT_ID] is None for x in seeds.values())
    assert not {x[C.INSTRUCTION] for x in dropped} & set(seeds)  # a failed answer is left out
    assert final_m["seed_answers"] == {"unanswered": len(UNANSWERED), "kept": len(kept),
                                       "reason_counts": m["reason_counts"]}
    # a round-1 evolution of an answered seed names it as parent: ids line up across the two
    r1 = rows(out / "round_1")
    assert {x[C.PARENT_ID] for x in r1} >= {x[C.ID] for x in answers}
    assert len({x[C.ID] for x in final}) == len(final)


def test_a_rerun_reuses_the_commit_and_a_crash_resumes(answered_run, caplog):
    out, overrides, _ = answered_run
    sdir = out / "seed_answers"
    before = (sdir / "manifest.json").read_bytes()
    with caplog.at_level("INFO", logger="evol_ray"):
        run(load_config(overrides))
    assert (sdir / "manifest.json").read_bytes() == before  # reused byte for byte
    assert "seed answers: complete" in caplog.text

    # a crash mid-phase: two answers written, no manifest; the rerun asks only for the rest
    m = json.loads(before)
    done = rows(sdir, m)
    (sdir / "manifest.json").unlink()
    attempts = sdir / "_attempts"
    attempts.mkdir()
    import pyarrow as pa

    pq.write_table(pa.Table.from_pylist(done[:2], schema=C.ROUND_SCHEMA), attempts / "part-0.parquet")
    for f in m["files"]:
        (sdir / f).unlink()
    caplog.clear()
    with caplog.at_level("INFO", logger="evol_ray"):
        run(load_config(overrides))
    again = manifest(sdir)
    assert again["rows_resumed"] == 2 and again["rows_in"] == len(UNANSWERED)
    assert "seed answers: resuming, 2 rows" in caplog.text
    now = rows(sdir, again)
    assert sorted(x[C.ID] for x in now) == sorted(x[C.ID] for x in done)  # each seed once
    assert not attempts.exists()


def test_answer_seeds_off_gives_the_seeds_as_they_came(answered_run):
    out, overrides, _ = answered_run
    kept_dir = out / "kept_seed_answers"
    shutil.copytree(out / "seed_answers", kept_dir)
    summary = run(load_config(overrides + ["output.answer_seeds=false"]))
    assert summary["seed_answers"] is None and summary["final"]["seed_answers"] is None
    seeds = {x[C.INSTRUCTION]: x[C.RESPONSE] for x in rows(out / "final") if x[C.ROUND] == 0}
    assert set(seeds) == set(GIVEN) | set(UNANSWERED)
    assert all(not (seeds[q] or "").strip() for q in UNANSWERED)
    # the committed answers stay in place: turning the key on again reuses them
    assert manifest(out / "seed_answers") == manifest(kept_dir)
