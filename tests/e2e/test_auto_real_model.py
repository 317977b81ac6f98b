"""Auto Evol-Instruct end to end with real text: `conf/local.yaml` with `evolution.auto.enabled`,
one optimization step of two candidates on a dev set of the seeds, SmolLM2-135M-Instruct (the
`real_model` fixture) through the real vLLM CPU engine on local Ray, then one round, the report,
and a rerun.

Asserted: `method/manifest.json` names every candidate with its failure rate (step 0's initial
method, step 1's incumbent and two proposals), and each rate is what its trial rows say; every
committed file is listed; the chosen method is the lowest rate; round 1's rows all carry op `auto`
(their engines already warm: round 1 starts none); the report shows the section; a rerun reuses the
method and the round without an engine request, and so does one after a crash that left the steps
committed but not `method/` itself."""

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from evol_ray import columns as C
from evol_ray.cli import main
from evol_ray.config import load_config
from evol_ray.evolve import auto
from evol_ray.evolve.prompts import AUTO_OP
from evol_ray.pipeline.driver import run
from tests.conftest import SMOLLM2

pytestmark = pytest.mark.real_model

CONF = Path(__file__).resolve().parents[2] / "conf"
DEV, BATCH, SEEDS = 4, 2, 8


def test_auto_evol_one_step_two_candidates_then_a_round(real_model, ray_local, tmp_path):
    out = tmp_path / "auto"
    args = [CONF / "local.yaml", f"input.limit={SEEDS}", "evolution.rounds=1", f"output.path={out}",
            "engine.device=cpu", "evolution.auto.enabled=true", "evolution.auto.steps=1",
            "evolution.auto.candidates=2", f"evolution.auto.dev_size={DEV}", f"evolution.auto.batch_size={BATCH}",
            "evolution.evolve_sampling.max_tokens=128", "evolution.answer_sampling.max_tokens=128", *SMOLLM2]
    summary = run(load_config(args))
    mdir = out / "method"
    m = json.loads((mdir / "manifest.json").read_text())
    assert m["complete"] and m["op"] == AUTO_OP and m["dev_size"] == DEV and m["batch_size"] == BATCH
    assert all((mdir / f).is_file() for f in m["files"])
    assert m["engine"]["engine_starts"] == 1 and m["engine"]["requests"] > 0  # the run's one start-up
    assert [s[C.STEP] for s in m["by_step"]] == [0, 1]
    assert [(e[C.CANDIDATE], e[C.SOURCE]) for s in m["by_step"] for e in s["methods"]] == [
        (0, "initial"), (0, "incumbent"), (1, "optimizer"), (2, "optimizer")]

    # each rate is its trials' own count
    for s in m["by_step"]:
        trials = pq.read_table(mdir / f"step_{s[C.STEP]}" / "trials.parquet").to_pylist()
        assert {t[C.OP] for t in trials} == {AUTO_OP} and len({t[C.ID] for t in trials}) == len(trials)
        for e in s["methods"]:
            if e[C.SOURCE] == "incumbent":
                continue
            mine = [(t[C.STATUS], t[C.REASON]) for t in trials if t[C.CANDIDATE] == e[C.CANDIDATE]]
            assert len(mine) == (DEV if e[C.EVALUATED] + e[C.ERRORS] else 0)
            want = auto.failure_counts(mine)
            assert (e[C.FAILURE_RATE], e[C.FAILED], e["reason_counts"]) == (
                want[C.FAILURE_RATE], want[C.FAILED], want["reason_counts"])
    traj = pq.read_table(mdir / "step_1" / "trajectories.parquet").to_pylist()
    assert len(traj) == BATCH and not {t[C.PARENT_ID] for t in traj} & set(m["dev_ids"])
    assert any(t[C.FEEDBACK] for t in traj)  # the analysis LLM wrote something
    methods = pq.read_table(mdir / "methods.parquet").to_pylist()
    assert len(methods) == 4 and sum(x[C.CHOSEN] for x in methods) == 2  # one winner per step
    step1 = m["by_step"][1]["methods"]
    best = min(e[C.FAILURE_RATE] for e in step1)
    assert m[C.CHOSEN][C.FAILURE_RATE] == best
    print("auto evol:", [(e[C.CANDIDATE], e[C.SOURCE], e[C.FAILURE_RATE], e["reason_counts"]) for e in step1],
          "chosen:", m[C.CHOSEN][C.METHOD][:200])

    # round 1 ran the chosen method as op `auto`, on the run's (warm) engines
    r1 = summary["rounds"][0]
    assert r1["op_counts"] == {AUTO_OP: SEEDS} and r1["engine"]["engine_starts"] == 0
    assert r1["auto_method_digest"] == m["auto_method_digest"]  # the round names the method it ran
    rows = pq.read_table([str(out / "round_1" / f) for f in r1["files"]]).to_pylist()
    assert {x[C.OP] for x in rows} == {AUTO_OP} and len(rows) == SEEDS
    assert r1["reason_counts"] == dict(Counter(x[C.REASON] for x in rows if x[C.STATUS] != C.KEPT))

    assert main(["report", str(out)]) == 0
    fig = json.loads((out / "report" / "figures.json").read_text())
    assert fig["method"]["by_step"] == m["by_step"] and "methods" in fig["plots"]
    page = (out / "report" / "report.html").read_text()
    assert "Auto Evol-Instruct" in page and 'id="plot-methods"' in page

    finished = m["finished"]
    again = run(load_config(args))  # everything committed: reused, nothing sent to an engine
    assert json.loads((mdir / "manifest.json").read_text())["finished"] == finished
    assert again["rounds"][0]["finished"] == r1["finished"]

    # a crash after the last step's commit, before method/'s: the steps are reused, not redone
    steps_done = [json.loads((mdir / f"step_{t}" / "manifest.json").read_text())["finished"] for t in (0, 1)]
    (mdir / "manifest.json").unlink()
    (mdir / "methods.parquet").unlink()
    run(load_config(args))
    redone = json.loads((mdir / "manifest.json").read_text())
    assert redone["by_step"] == m["by_step"] and redone[C.CHOSEN] == m[C.CHOSEN]
    assert redone["engine"] == {}  # no engine request: every step came from its commit
    assert [json.loads((mdir / f"step_{t}" / "manifest.json").read_text())["finished"]
            for t in (0, 1)] == steps_done
