"""End to end: the seed files real sets are (exact duplicates, blank rows, control bytes, a seed too
long for the context, bytes that are not UTF-8, a cut JSON line) through the real pipeline (Ray
Data, vLLM CPU engine, tiny model): each gives a counted reason or a clear error before Ray, and
a bad file never costs what a run already produced."""

import json
import re

import pyarrow.parquet as pq
import pytest

from evol_ray import columns as C
from evol_ray.checks.text import normalize_one
from evol_ray.cli import main
from evol_ray.config import load_config
from evol_ray.pipeline.driver import run
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.e2e

NORMAL = [f"Explain topic number {i} in simple words." for i in range(6)]
SEEDS = NORMAL + [
    "Explain topic number 0 in simple words.",  # exact repeat
    "explain TOPIC number 0, in simple words!",  # the same after normalization
    "   ", "",  # two blank rows
    "Describe a lamp.\x00 It glows.",  # a control byte in a seed (kept as a seed, never in final/)
    "Summarize this text. " + "word " * 5000,  # cannot fit model.max_model_len=4096
]
CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")


def rows_of(out, r):
    m = json.loads((out / f"round_{r}" / "manifest.json").read_text())
    return m, pq.read_table([str(out / f"round_{r}" / f) for f in m["files"]]).to_pylist()


@pytest.fixture(scope="module")
def seeded_run(tmp_path_factory, tiny_model, ray_local):
    d = tmp_path_factory.mktemp("seeds")
    seeds = d / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": t, "input": "", "output": f"answer {i}"}) + "\n"
                             for i, t in enumerate(SEEDS)))
    out = d / "out"
    cfg = load_config(tiny_overrides(tiny_model, seeds, out) + ["output.include_seeds=true"])
    summary = run(cfg)
    return seeds, out, summary


def test_repeated_seeds_are_counted_once_evolved_never_and_ids_stay_unique(seeded_run):
    _, out, _ = seeded_run
    m1, rows = rows_of(out, 1)
    assert m1["rows_in"] == len(SEEDS) and len({x[C.ID] for x in rows}) == len(rows)
    assert len({x[C.PARENT_ID] for x in rows}) == len(SEEDS)  # every seed has its own id
    dups = [x for x in rows if x[C.REASON] == C.R_DUPLICATE_SEED]
    assert len(dups) == 2 and m1["reason_counts"][C.R_DUPLICATE_SEED] == 2
    first = {x[C.PARENT_ID]: x for x in rows}
    for x in dups:
        assert x[C.STATUS] == C.ELIMINATED and x[C.GENERATED_TOKENS] == 0 and x[C.PROMPT_TOKENS] == 0
        assert normalize_one(first[x[C.DUPLICATE_OF]][C.PARENT_INSTRUCTION]) == normalize_one(x[C.PARENT_INSTRUCTION])
        assert first[x[C.DUPLICATE_OF]][C.REASON] != C.R_DUPLICATE_SEED
    blanks = [x for x in rows if x[C.STATUS] == C.INVALID_INPUT]
    assert len(blanks) == 2 and len({x[C.PARENT_ID] for x in blanks}) == 2
    m2, rows2 = rows_of(out, 2)  # neither blank rows nor repeats reach round 2
    assert m2["rows_in"] == len(SEEDS) - 4
    assert not {x[C.PARENT_ID] for x in dups} & {x[C.PARENT_ID] for x in rows2}


def test_a_seed_too_long_for_the_context_is_prompt_too_long_not_an_engine_error(seeded_run):
    _, out, _ = seeded_run
    for r in (1, 2):
        m, rows = rows_of(out, r)
        long = [x for x in rows if len(x[C.PARENT_INSTRUCTION] or "") > 20000]
        assert [x[C.REASON] for x in long] == [C.R_PROMPT_TOO_LONG]
        assert "model.max_model_len 4096" in long[0][C.ERROR] and long[0][C.GENERATED_TOKENS] == 0
        assert C.R_ENGINE_ERROR not in m["reason_counts"]


def test_final_holds_each_seed_once_and_no_control_bytes(seeded_run):
    _, out, _ = seeded_run
    final = json.loads((out / "final" / "manifest.json").read_text())
    rows = pq.read_table([str(out / "final" / f) for f in final["files"]]).to_pylist()
    assert len({x[C.ID] for x in rows}) == len(rows)
    seeds = [x for x in rows if x[C.ROUND] == 0]
    assert len(seeds) == len({normalize_one(x[C.INSTRUCTION]) for x in seeds})
    assert all(not CONTROL.search(x[C.INSTRUCTION] or "") and not CONTROL.search(x[C.RESPONSE] or "")
               for x in rows)
    assert final["removed_counts"].get(C.R_NON_PRINTABLE, 0) >= 1  # the seed with a NUL, counted


def test_a_broken_seed_file_fails_before_ray_and_keeps_what_was_produced(seeded_run, capsys):
    seeds, out, _ = seeded_run
    manifests = [out / d / "manifest.json" for d in ("round_1", "round_2", "final")]
    before = [p.read_bytes() for p in manifests]
    good = seeds.read_bytes()
    try:
        seeds.write_bytes(good + '{"instruction": "Caf\xe9"}\n'.encode("latin-1"))
        assert main(["run", "conf/local.yaml", *tiny_overrides("unused", seeds, out)]) == 2
        err = capsys.readouterr().err
        at = len(good) + len('{"instruction": "Caf')
        assert f"{seeds}: not valid utf-8 at byte {at} (line {len(SEEDS) + 1})" in err
        assert "input.encoding" in err
        seeds.write_bytes(good + b'{"instruction": "cut\n')
        assert main(["run", "conf/local.yaml", *tiny_overrides("unused", seeds, out)]) == 2
        assert f"{seeds}: line {len(SEEDS) + 1} column" in capsys.readouterr().err
    finally:
        seeds.write_bytes(good)
    assert [p.read_bytes() for p in manifests] == before
