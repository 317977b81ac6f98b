"""conf/quickstart.yaml runs as the README shows it, with the tiny model in place of the 1.5B one
(the 1.5B runs conf/local.yaml in tests/e2e/test_calibrated_real_model.py): its keys only, plus
what points the run at the test's model, seeds and output."""

import json
from pathlib import Path

import pytest

from evol_ray.cli import main

pytestmark = pytest.mark.e2e

QUICKSTART = Path(__file__).resolve().parents[2] / "conf" / "quickstart.yaml"


def test_the_quickstart_config_runs(tmp_path, tiny_model, ray_local):
    out = tmp_path / "out"
    rc = main(["run", str(QUICKSTART), f"model.source={tiny_model}", f"output.path={out}", "input.limit=8",
               "elimination.judge_threshold=0.5", "elimination.coherence.enabled=false", "engine.enforce_eager=true",
               "evolution.evolve_sampling.max_tokens=24", "evolution.answer_sampling.max_tokens=24"])
    assert rc == 0
    m = json.loads((out / "round_1" / "manifest.json").read_text())
    assert m["rows_in"] == 8 and sum(m["status_counts"].values()) == 8
    assert json.loads((out / "final" / "manifest.json").read_text())["rounds"] == [1]
