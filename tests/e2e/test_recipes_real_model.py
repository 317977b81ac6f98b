"""End to end with real text per recipe: `evol-ray run conf/code.yaml` and conf/math.yaml on a
handful of their seeds (one round), SmolLM2-135M-Instruct (the `real_model` fixture) through the
real vLLM CPU engine on local Ray, then `evol-ray report` (and, for the code recipe, `evol-ray
export`).

Asserted: every row is accounted for with a counted reason, the operations are the recipe's own
(and the report shows them), and the recipe's rule was applied to every row that got an answer:
a kept row of a code task holds code and a kept math answer holds a number, while a row the rule
dropped holds none. The seeds (tasks without answers) are answered by the run under the same
rules, and the exported training file holds them with their answers."""

import json
from collections import Counter
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from evol_ray import columns as C
from evol_ray.cli import main
from evol_ray.config import load_config
from evol_ray.evolve import recipe_rules, recipes
from tests.conftest import SMOLLM2

pytestmark = pytest.mark.real_model

CONF = Path(__file__).resolve().parents[2] / "conf"
N_SEEDS = 12


def one_round(name, tmp_path):
    out = tmp_path / name
    args = [f"input.limit={N_SEEDS}", "evolution.rounds=1", f"output.path={out}", "engine.device=cpu", *SMOLLM2]
    assert main(["run", str(CONF / f"{name}.yaml"), *args]) == 0
    cfg = load_config([CONF / f"{name}.yaml", *args])
    m = json.loads((out / "round_1" / "manifest.json").read_text())
    rows = pq.read_table([str(out / "round_1" / f) for f in m["files"]]).to_pylist()
    assert main(["report", str(out)]) == 0
    fig = json.loads((out / "report" / "figures.json").read_text())
    return cfg, m, rows, fig


def check_accounted(name, m, rows, fig):
    assert m["rows_in"] == N_SEEDS == len(rows) == sum(m["status_counts"].values())
    assert len({x[C.ID] for x in rows}) == len(rows)
    dropped = [x for x in rows if x[C.STATUS] != C.KEPT]
    assert all(x[C.REASON] for x in dropped)
    assert m["reason_counts"] == dict(Counter(x[C.REASON] for x in dropped))
    ops = set(recipes.RECIPES[name].ops)
    assert {x[C.OP] for x in rows} <= ops and set(m["op_counts"]) <= ops
    assert set(fig["ops"]) == set(m["op_counts"])  # the report's operation table is the recipe's
    assert fig["per_round"][0]["op_counts"] == m["op_counts"]
    answered = [x for x in rows if x[C.RESPONSE] is not None]
    print(f"{name}: reasons {m['reason_counts']}, ops {m['op_counts']}, kept {m['op_kept_counts']}, "
          f"answered {len(answered)}")
    return answered


@pytest.fixture(scope="module")
def code_run(real_model, ray_local, tmp_path_factory):
    d = tmp_path_factory.mktemp("recipes")
    return d / "code", one_round("code", d)


def test_code_recipe_one_round_applies_the_code_rule(code_run):
    cfg, m, rows, fig = code_run[1]
    assert cfg.elimination.code_answer
    answered = check_accounted("code", m, rows, fig)
    assert answered  # the rule had answers to judge
    for x in answered:
        if x[C.REASON] == C.R_NO_CODE:
            assert recipe_rules.asks_for_code(x[C.INSTRUCTION]) and not recipe_rules.has_code(x[C.RESPONSE])
        elif x[C.STATUS] == C.KEPT and recipe_rules.asks_for_code(x[C.INSTRUCTION]):
            assert recipe_rules.has_code(x[C.RESPONSE]), x[C.ID]


def test_code_seeds_are_answered_and_exported_with_their_answers(code_run):
    out = code_run[0]
    sa = json.loads((out / "seed_answers" / "manifest.json").read_text())
    answers = pq.read_table([str(out / "seed_answers" / f) for f in sa["files"]]).to_pylist()
    assert sa["rows_in"] == N_SEEDS == len(answers)  # data/code_seeds.json has no answers
    assert sa["rows_kept"] > 0, sa["reason_counts"]
    for x in answers:  # the code rule judged the seeds' answers too
        if x[C.STATUS] == C.KEPT and recipe_rules.asks_for_code(x[C.INSTRUCTION]):
            assert recipe_rules.has_code(x[C.RESPONSE]), x[C.ID]
        elif x[C.STATUS] != C.KEPT:
            assert x[C.REASON] in sa["reason_counts"]
    final = json.loads((out / "final" / "manifest.json").read_text())
    assert final["seed_answers"]["kept"] == sa["rows_kept"]

    assert main(["export", str(out), "--format", "alpaca", "--split", "0"]) == 0
    exported = [json.loads(line) for line in (out / "export" / "alpaca" / "train.jsonl").read_text().splitlines()]
    by_instruction = {r["instruction"]: r["output"] for r in exported}
    final_rows = pq.read_table([str(out / "final" / f) for f in final["files"]]).to_pylist()
    seeds_in_final = {x[C.INSTRUCTION]: x[C.RESPONSE] for x in final_rows if x[C.ROUND] == 0}
    assert seeds_in_final and all(by_instruction.get(q) == a and a.strip() for q, a in seeds_in_final.items())
    kept = {x[C.INSTRUCTION] for x in answers if x[C.STATUS] == C.KEPT}
    assert set(seeds_in_final) <= kept  # only seeds the run answered and kept (minus the final checks')


def test_math_recipe_one_round_applies_the_number_rule(real_model, ray_local, tmp_path):
    cfg, m, rows, fig = one_round("math", tmp_path)
    assert cfg.elimination.math_answer and not cfg.elimination.code_answer
    answered = check_accounted("math", m, rows, fig)
    assert answered
    for x in answered:
        if x[C.REASON] == C.R_NO_NUMBER:
            assert recipe_rules.answer_without_number(x[C.RESPONSE]) == C.R_NO_NUMBER
        elif x[C.STATUS] == C.KEPT:
            assert recipe_rules.answer_without_number(x[C.RESPONSE]) is None, x[C.ID]
