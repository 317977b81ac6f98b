import re

import pytest

from evol_ray.config import load_config
from evol_ray.evolve import prompts, recipes

BASE = ["input.path=x", "output.path=y", "model.source=m"]
CFGS = {name: load_config(BASE + [f"evolution.recipe={name}"]) for name in recipes.RECIPES}
ALL_OPS = [(name, op) for name, r in recipes.RECIPES.items() for op in r.ops]
SEED = "Sort the table | a | b |"


@pytest.mark.parametrize("recipe, op", ALL_OPS)
def test_every_recipe_prompt_follows_the_papers_structure(recipe, op):
    """Rewriter role, non-text parts kept, a length limit, the template's markers forbidden and
    closing the prompt, as WizardLM's in-depth and in-breadth prompts (and WizardCoder's and
    WizardMath's after them) are built."""
    cfg = CFGS[recipe]
    frame = recipes.RECIPES[recipe].ops[op].frame
    text = recipes.evolve_prompt(cfg.evolution, op, SEED)
    assert SEED in text and "{" not in text
    assert re.match(r"You are an? [a-z ]*(rewriter|creator)\.", text)
    method = recipes.RECIPES[recipe].ops[op].method
    assert (method in text) if frame in recipes.METHOD_FRAMES else method == ""
    limit = {"depth": "may add only 10 to 20 words", "downward": "must not be longer than the original",
             "breadth": "Keep its length and difficulty close"}[frame]
    assert limit in text
    if frame != "breadth":  # a new instruction keeps nothing of the original's parts
        assert re.search(r"Keep every (non-text part|number, formula, table)", text)
    markers = re.findall(r"#[A-Z][A-Za-z ]+#", text)
    assert prompts.ORIGINAL_MARKER in markers and len(set(markers)) == 2
    phrases = {p.lower() for p in cfg.elimination.copied_phrases}
    assert all(m.lower() in phrases for m in markers)  # rule 4 catches an echo of any of them
    assert "Do not write the words" in text
    assert text.rstrip().endswith((prompts.REWRITTEN_MARKER, prompts.NEW_MARKER))


def test_recipe_op_names_are_unique_and_prefixed():
    seen = [op for r in recipes.RECIPES.values() for op in r.ops]
    assert len(seen) == len(set(seen))
    for name in ("code", "math"):
        assert all(op.startswith(f"{name}_") for op in recipes.RECIPES[name].ops)
    assert tuple(recipes.RECIPES["general"].ops) == prompts.OPS


def test_general_prompts_are_the_texts_of_before_recipes():
    ev = CFGS["general"].evolution
    for op in prompts.DEPTH_OPS:
        assert recipes.evolve_prompt(ev, op, SEED) == prompts.DEPTH_TEMPLATE.format(
            method=prompts.METHODS[op], instruction=SEED)
    assert recipes.evolve_prompt(ev, prompts.BREADTH, SEED) == prompts.BREADTH_TEMPLATE.format(instruction=SEED)


def test_code_recipe_carries_the_five_heuristics_and_asks_rarely_for_complexity():
    ops = recipes.RECIPES["code"].ops
    assert len(ops) == 5 and ops["code_complexity"].weight < min(o.weight for k, o in ops.items() if k != "code_complexity")
    assert "mistake" in ops["code_misdirection"].method and "big-O" in ops["code_complexity"].method
    assert CFGS["code"].elimination.code_answer and not CFGS["code"].elimination.math_answer


def test_math_recipe_evolves_up_and_down():
    ops = recipes.RECIPES["math"].ops
    assert {o.frame for o in ops.values()} == {"depth", "downward"}
    assert [op for op, o in ops.items() if o.frame == "downward"] == ["math_easier", "math_easier_new"]
    assert "different" in ops["math_easier_new"].method
    assert CFGS["math"].elimination.math_answer and not CFGS["math"].elimination.code_answer
    assert not CFGS["general"].elimination.code_answer and not CFGS["general"].elimination.math_answer


def test_user_templates_replace_defaults():
    cfg = load_config(BASE + ["evolution.templates.depth='D {method} :: {instruction}'",
                              "evolution.templates.methods.deepen=DEEPER"])
    assert recipes.evolve_prompt(cfg.evolution, prompts.DEEPEN, "x") == "D DEEPER :: x"
    assert recipes.evolve_prompt(cfg.evolution, prompts.CONCRETIZE, "x") == f"D {prompts.METHODS['concretize']} :: x"
    code = load_config(BASE + ["evolution.recipe=code", "evolution.templates.ops.code_reasoning='Think: {instruction}'"])
    assert recipes.evolve_prompt(code.evolution, "code_reasoning", "x") == "Think: x"
    assert recipes.evolve_prompt(code.evolution, "code_constraints", "x").startswith("You are a programming task rewriter")


def test_markers_of_the_templates_are_forbidden_words():
    phrases = [p.lower() for p in prompts.COPIED_PROMPT_PHRASES]
    for marker in (prompts.ORIGINAL_MARKER, prompts.REWRITTEN_MARKER, prompts.NEW_MARKER):
        assert marker.lower() in phrases
