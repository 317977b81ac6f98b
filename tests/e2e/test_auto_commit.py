"""Auto Evol through the real commit-and-log path (`pipeline/method.py`) on real Ray, with a scripted
engine whose optimizer proposes an empty method (issue 27): the step is committed with that method
unrated, a rerun reuses the committed steps and sends nothing, and the summary and the report show
the missing rate as "-"."""

import functools
import json
import logging

import pytest

from evol_ray import columns as C
from evol_ray.analysis.report import report
from evol_ray.cli import format_summary
from evol_ray.config import load_config
from evol_ray.pipeline.driver import run
from tests import fakes

pytestmark = pytest.mark.e2e


def test_an_empty_proposal_is_committed_unrated_reused_and_reported(tmp_path, ray_local, caplog):
    import ray

    ray.cloudpickle.register_pickle_by_value(fakes)
    seeds = tmp_path / "seeds.json"
    seeds.write_text(json.dumps([{"instruction": f"Describe the habitat of forest animal number {i}.",
                                  "output": f"It lives in the forest, zone {i}."} for i in range(10)]))
    out, calls = tmp_path / "out", tmp_path / "calls.txt"
    cfg = load_config([f"input.path={seeds}", f"output.path={out}", "model.source=scripted",
                       "evolution.rounds=1", "evolution.auto.enabled=true", "evolution.auto.steps=1",
                       "evolution.auto.candidates=2", "evolution.auto.dev_size=6",
                       "evolution.auto.batch_size=2", "elimination.judge_threshold=0.5",
                       "elimination.coherence.enabled=false",
                       "engine.batch_size=4"])
    factory = functools.partial(fakes.AutoScripted, cfg.seed,
                                ("Improved method:", "Add a table that the answer must fill in."), str(calls))
    with caplog.at_level(logging.INFO, logger="evol_ray"):
        summary = run(cfg, generator_factory=factory)

    step1 = json.loads((out / "method" / "step_1" / "manifest.json").read_text())
    empty = next(e for e in step1["methods"] if e[C.CANDIDATE] == 1)
    assert (empty[C.METHOD], empty[C.EVALUATED], empty[C.FAILURE_RATE]) == ("", 0, None)
    assert step1[C.CHOSEN][C.FAILURE_RATE] is not None
    committed = [r.getMessage() for r in caplog.records if "step 1 committed" in r.getMessage()]
    assert len(committed) == 1 and "1: -" in committed[0], committed
    assert summary["rounds"][0]["rows_in"] == 10
    assert "auto evol: 1 step(s) on 6 dev seeds" in format_summary(summary)

    # a rerun reuses each committed step (the method's own manifest gone, so the steps are loaded
    # one by one, the unrated one among them) and the round, and sends nothing to the engine
    sent = calls.read_text()
    step1_bytes = (out / "method" / "step_1" / "manifest.json").read_bytes()
    (out / "method" / "manifest.json").unlink()
    again = run(cfg, generator_factory=factory)
    assert calls.read_text() == sent
    assert (out / "method" / "step_1" / "manifest.json").read_bytes() == step1_bytes
    methods = again["method"]["by_step"][1]["methods"]
    assert [e[C.FAILURE_RATE] is None for e in methods] == [False, True, False]
    assert again["rounds"][0] == summary["rounds"][0]

    text = report(str(out))
    assert "auto evol: dev-set failure rate" in text
    page = (out / "report" / "report.html").read_text()
    # the methods' table: step 1, candidate 1, proposed by the optimizer, no failure rate, 0 tried
    assert "<tr><td>1</td><td>1</td><td>optimizer</td><td>step 1 #1</td><td>-</td><td>0</td>" in page
