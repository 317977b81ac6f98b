"""Progress while the engines work, read as a Ray job's log reads it (the output is not a
terminal): a round of the tiny model through the real vLLM CPU engine prints plain lines with
rows done of the total, the rate and the time left before the phase ends, and rows done never
go down."""

import json
import logging
import re

import pytest

from evol_ray.config import load_config
from evol_ray.pipeline.driver import run
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.e2e

N = 48
LINE = re.compile(r"^round 1: (\d+) of (\d+) \(\d+%\) rows, [\d.]+ rows/s")


def test_a_round_prints_progress_lines_with_rows_total_and_estimate(tmp_path, tiny_model, ray_local, caplog):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": f"List {i} facts about the moon."}) + "\n" for i in range(N)))
    # small batches and long answers (as test_failures' slow round): the phase lasts many progress
    # intervals, on a fast machine too
    cfg = load_config(tiny_overrides(tiny_model, seeds, tmp_path / "out", rounds=1)
                      + ["output.progress_every_s=0.5", "engine.batch_size=2", "engine.rows_in_flight=2",
                         "evolution.answer_sampling.max_tokens=384", "elimination.judge=false"])
    with caplog.at_level(logging.INFO, logger="evol_ray"):
        run(cfg)
    said = [r.getMessage() for r in caplog.records]
    end = next(i for i, m in enumerate(said) if m.startswith("round 1: engine phase done"))
    progress = [(i, LINE.match(m)) for i, m in enumerate(said) if LINE.match(m)]
    assert progress, said
    assert all(int(m.group(2)) == N for _, m in progress)  # the total: the rows to evolve
    rows = [int(m.group(1)) for _, m in progress]
    assert rows == sorted(rows)
    before = [said[i] for i, m in progress if i < end and int(m.group(1)) < N]
    assert any("left" in m for m in before), before  # an estimate while rows were still to come
