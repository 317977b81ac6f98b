"""Recipes (`evolution.recipe`): operation choice under recipe weights and user overrides, a user's
own operation from YAML through config load and the chain, the recipe rules in the chain and in a
round's counts, and config errors that name the key."""

import asyncio
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evol_ray import columns as C
from evol_ray import config as cfgmod
from evol_ray.config import ConfigError, load_config, load_saved_config
from evol_ray.evolve import prompts, recipes
from evol_ray.evolve.chain import evolve_row
from tests.fakes import ScriptedGenerator

BASE = ["input.path=x", "output.path=y", "model.source=m", "elimination.judge_threshold=0.5", "elimination.coherence.enabled=false"]
ROW = {C.ID: "p1", C.ROOT_ID: "r1", C.INSTRUCTION: "Write a Python function that reverses a string.",
       C.RESPONSE: None}
PROSE = "To reverse a string you walk over its characters from the end and collect each one in turn."
CODE = "```python\ndef reverse(s):\n    return s[::-1]\n```"


def choices(cfg, n=4000, round_no=1):
    ev = cfg.evolution
    return Counter(recipes.choose_op(cfg.seed, f"row-{i}", round_no, ev.op_weights, recipes.op_order(ev))
                   for i in range(n))


def test_each_recipe_chooses_among_its_own_ops_by_its_weights():
    for name, recipe in recipes.RECIPES.items():
        cfg = load_config(BASE + [f"evolution.recipe={name}"])
        assert cfg.evolution.op_weights == {op: o.weight for op, o in recipe.ops.items()}
        got = choices(cfg)
        assert set(got) == set(recipe.ops)
        total = sum(o.weight for o in recipe.ops.values())
        for op, o in recipe.ops.items():  # within 4 standard deviations of the expected share
            p = o.weight / total
            assert abs(got[op] - 4000 * p) < 4 * (4000 * p * (1 - p)) ** 0.5, (name, op)
        assert got == choices(load_config(BASE + [f"evolution.recipe={name}"]))  # deterministic


def test_general_recipe_chooses_as_before_recipes():
    cfg = load_config(BASE)
    old = {op: 1.0 for op in prompts.OPS}
    for i in range(500):
        assert (recipes.choose_op(0, f"r{i}", 2, cfg.evolution.op_weights, recipes.op_order(cfg.evolution))
                == recipes.choose_op(0, f"r{i}", 2, old, prompts.OPS))


def test_zero_weights_are_never_chosen_and_user_weights_win():
    cfg = load_config(BASE + ["evolution.recipe=code", "evolution.op_weights.code_misdirection=0",
                              "evolution.op_weights.code_complexity=3"])
    got = choices(cfg)
    assert "code_misdirection" not in got and set(got) == set(recipes.RECIPES["code"].ops) - {"code_misdirection"}
    assert got["code_complexity"] > max(v for k, v in got.items() if k != "code_complexity")


def test_a_users_own_operation_from_yaml_runs_through_the_chain(tmp_path):
    (tmp_path / "mine.yaml").write_text(
        "evolution:\n"
        "  recipe: code\n"
        "  op_weights: {code_constraints: 0, code_rare_requirement: 0, code_reasoning: 0,\n"
        "               code_misdirection: 0, code_complexity: 0, code_port: 1}\n"
        "  templates:\n"
        "    ops:\n"
        "      code_port: \"Port this task to another language: {method}\\n#Original Instruction#\\n{instruction}\"\n"
        "    methods:\n"
        "      code_port: Ask for the same program in Rust.\n")
    cfg = load_config(BASE + [str(tmp_path / "mine.yaml")])
    assert cfg.evolution.op_weights["code_port"] == 1.0 and recipes.op_order(cfg.evolution)[-1] == "code_port"
    gen = ScriptedGenerator(evolved="Write a Rust function that reverses a string without allocating.",
                            answer="```rust\nfn rev(s: &str) -> String { s.chars().rev().collect() }\n```")
    out = asyncio.run(evolve_row(gen, ROW, 1, cfg))
    assert out[C.OP] == "code_port" and out[C.STATUS] == C.KEPT
    assert gen.calls[0] == ("evolve", "Port this task to another language: Ask for the same program in Rust.\n"
                                      f"#Original Instruction#\n{ROW[C.INSTRUCTION]}")
    assert [s for s, _ in gen.calls] == ["evolve", "judge", "judge", "answer"]
    # a method alone fills the recipe's in-depth frame; the saved config loads back the same
    only = load_config(BASE + ["evolution.recipe=math", "evolution.op_weights.math_units=2",
                               "evolution.templates.methods.math_units='Ask for the answer in other units.'"])
    text = recipes.evolve_prompt(only.evolution, "math_units", "A train goes 60 km in an hour.")
    assert text == recipes.MATH_DEPTH_TEMPLATE.format(method="Ask for the answer in other units.",
                                                      instruction="A train goes 60 km in an hour.")
    assert load_saved_config(cfgmod.to_container(only), "saved") == only


def test_key_order_in_yaml_changes_neither_hash_nor_choice(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    own = "templates: {methods: {x_one: 'One.', x_two: 'Two.'}}"
    a.write_text(f"evolution: {{op_weights: {{x_one: 1, x_two: 1}}, {own}}}\n")
    b.write_text(f"evolution: {{op_weights: {{x_two: 1, x_one: 1}}, {own}}}\n")
    ca, cb = load_config(BASE + [str(a)]), load_config(BASE + [str(b)])
    assert cfgmod.config_hash(ca) == cfgmod.config_hash(cb) and choices(ca) == choices(cb)


def test_saved_configs_load_back_unchanged_and_recipes_hash_apart():
    hashes = set()
    for name in recipes.RECIPES:
        cfg = load_config(BASE + [f"evolution.recipe={name}"])
        assert load_saved_config(cfgmod.to_container(cfg), "saved") == cfg
        hashes.add(cfgmod.config_hash(cfg))
    assert len(hashes) == len(recipes.RECIPES)


def test_code_recipe_eliminates_a_prose_answer_to_a_code_task():
    cfg = load_config(BASE + ["evolution.recipe=code"])
    prose = asyncio.run(evolve_row(ScriptedGenerator(evolved=ROW[C.INSTRUCTION] + " Handle Unicode.", answer=PROSE),
                                   ROW, 1, cfg))
    assert (prose[C.STATUS], prose[C.REASON]) == (C.ELIMINATED, C.R_NO_CODE)
    assert prose[C.OP] in recipes.RECIPES["code"].ops and prose[C.RESPONSE] == PROSE
    code = asyncio.run(evolve_row(ScriptedGenerator(evolved=ROW[C.INSTRUCTION] + " Handle Unicode.", answer=CODE),
                                  ROW, 1, cfg))
    assert code[C.STATUS] == C.KEPT
    off = load_config(BASE + ["evolution.recipe=code", "elimination.code_answer=false"])
    assert asyncio.run(evolve_row(ScriptedGenerator(evolved=ROW[C.INSTRUCTION] + " Now.", answer=PROSE),
                                  ROW, 1, off))[C.STATUS] == C.KEPT
    general = load_config(BASE)  # the rule is the code recipe's, not the general one's
    assert asyncio.run(evolve_row(ScriptedGenerator(evolved=ROW[C.INSTRUCTION] + " Now.", answer=PROSE),
                                  ROW, 1, general))[C.STATUS] == C.KEPT


def test_math_recipe_eliminates_an_answer_without_a_number():
    cfg = load_config(BASE + ["evolution.recipe=math"])
    row = {**ROW, C.INSTRUCTION: "Tom has 3 apples and buys 4 more. How many apples does he have?"}
    gen = ScriptedGenerator(evolved="Tom has 3 apples, buys 4 more and eats 2. How many are left?",
                            answer="He has some apples left after eating a few of them.")
    out = asyncio.run(evolve_row(gen, row, 1, cfg))
    assert (out[C.STATUS], out[C.REASON]) == (C.ELIMINATED, C.R_NO_NUMBER)
    gen.answer = "3 + 4 - 2 = 5, so five apples are left."
    assert asyncio.run(evolve_row(gen, row, 1, cfg))[C.STATUS] == C.KEPT


def test_recipe_reasons_are_declared_and_counted_in_a_round(tmp_path):
    from evol_ray.io.storage import locate
    from evol_ray.pipeline.round import count_files

    assert {C.R_NO_CODE, C.R_NO_NUMBER} <= set(C.ENGINE_REASONS) <= set(C.REASONS)
    cfg = load_config(BASE + ["evolution.recipe=code"])
    rows = [asyncio.run(evolve_row(ScriptedGenerator(evolved=f"Write a function number {i} in Python.",
                                                     answer=PROSE if i % 3 else CODE), {**ROW, C.ID: f"p{i}"}, 1, cfg))
            for i in range(9)]
    pq.write_table(pa.Table.from_pylist(rows, schema=C.ROUND_SCHEMA), tmp_path / "part.parquet")
    counts = count_files(locate(str(tmp_path), cfg.storage), [str(tmp_path / "part.parquet")])
    assert counts["reason_counts"] == {C.R_NO_CODE: 6} and counts["status_counts"] == {C.ELIMINATED: 6, C.KEPT: 3}
    assert set(counts["op_counts"]) <= set(recipes.RECIPES["code"].ops) and sum(counts["op_counts"].values()) == 9


@pytest.mark.parametrize("override, key, words", [
    ("evolution.recipe=poetry", "evolution.recipe", "allowed: general, code, math"),
    ("evolution.op_weights.add_constraints=1", "evolution.op_weights.add_constraints", "unknown operation of recipe 'code'"),
    ("evolution.op_weights.code_reasoning=-1", "evolution.op_weights.code_reasoning", ">= 0"),
    ("evolution.templates.methods.code_speed='Faster.'", "evolution.templates.methods.code_speed", "give it a weight"),
    ("evolution.templates.depth='Harder: {instruction}'", "evolution.templates.depth", "{method}"),
    ("evolution.templates.ops.code_reasoning='Think harder.'", "evolution.templates.ops.code_reasoning", "{instruction}"),
    ("evolution.templates.ops.code_reasoning='{instruction} {langauge}'", "evolution.templates.ops.code_reasoning", "unknown placeholder"),
])
def test_recipe_config_errors_name_the_key(override, key, words):
    with pytest.raises(ConfigError) as e:
        load_config(BASE + ["evolution.recipe=code", override])
    assert f"'{key}'" in str(e.value) and words in str(e.value), str(e.value)


def test_a_users_template_with_a_method_needs_the_method():
    with pytest.raises(ConfigError, match="'evolution.templates.methods.x_mine'.*missing"):
        load_config(BASE + ["evolution.op_weights.x_mine=1", "evolution.templates.ops.x_mine='{method}: {instruction}'"])
    # another recipe's operation is a user's own here: with a method it fills this recipe's frame
    cfg = load_config(BASE + ["evolution.recipe=code", "evolution.op_weights.math_easier=1",
                              "evolution.templates.methods.math_easier=Easier."])
    assert recipes.evolve_prompt(cfg.evolution, "math_easier", "x").startswith("You are a programming task rewriter")


def test_keys_added_with_recipes_leave_the_general_recipes_hash_as_before():
    """Runs written before recipes existed resume: at their old behaviour's values the new keys
    are left out of the hash; any other value is in it."""
    before = ["elimination.lost_input=false", "elimination.language_drift=false",
              "elimination.coherence.enabled=false", "elimination.judge_both_orders=false"]  # the rules that came after recipes, as off
    general = cfgmod.result_values(load_config(BASE + before))
    assert not set(cfgmod.LATER_KEYS) & set(general)
    assert general["evolution.op_weights.breadth"] == 1.0
    assert general["evolution.templates.depth"] == prompts.DEPTH_TEMPLATE
    code = cfgmod.result_values(load_config(BASE + before + ["evolution.recipe=code"]))
    assert code["evolution.recipe"] == "code" and code["elimination.code_answer"] is True
    strict = load_config(BASE + before + ["elimination.code_answer=true"])
    assert cfgmod.differing_keys(general, strict) == ["elimination.code_answer"]


@pytest.mark.parametrize("name", ["code", "math"])
def test_shipped_recipe_configs_and_seed_sets(name):
    import json
    import pathlib

    from evol_ray.evolve import recipe_rules

    root = pathlib.Path(__file__).resolve().parents[2]
    cfg = load_config([root / "conf" / f"{name}.yaml"])
    local = load_config([root / "conf" / "local.yaml"])
    assert cfg.evolution.recipe == name and cfg.model.source == local.model.source  # one model decision
    assert cfg.elimination.judge_threshold == "auto" and cfg.elimination.coherence.enabled
    seeds = json.loads((root / cfg.input.path).read_text())
    texts = [s["instruction"] for s in seeds]
    assert 30 <= len(texts) == len(set(texts))
    if name == "code":  # every seed asks for code, so the code rule applies to each lineage
        assert all(recipe_rules.asks_for_code(f"{s['instruction']}\n{s['input']}") for s in seeds)
    else:  # every problem carries its numbers, and none asks for code
        assert all(any(ch.isdigit() for ch in t) and not recipe_rules.asks_for_code(t) for t in texts)
