import pytest

from evol_ray.evolve import prompts
from evol_ray.config import TemplatesConfig


@pytest.mark.parametrize("op", prompts.DEPTH_OPS)
def test_depth_prompts_follow_the_paper_structure(op):
    text = prompts.evolve_prompt(TemplatesConfig(), op, "Sort the table | a | b |")
    assert "Sort the table | a | b |" in text
    assert prompts.METHODS[op] in text
    assert "10 to 20 words" in text
    assert "tables, code" in text  # non-text parts are kept
    assert text.rstrip().endswith(prompts.REWRITTEN_MARKER)
    assert "{" not in text.replace("{}", "")


def test_breadth_prompt_asks_for_a_rarer_instruction_of_similar_length():
    text = prompts.evolve_prompt(TemplatesConfig(), prompts.BREADTH, "Name a bird.")
    assert "rarer" in text and "length and difficulty" in text and "same domain" in text
    assert text.rstrip().endswith(prompts.NEW_MARKER)


def test_markers_of_the_templates_are_forbidden_words():
    phrases = [p.lower() for p in prompts.COPIED_PROMPT_PHRASES]
    for marker in (prompts.ORIGINAL_MARKER, prompts.REWRITTEN_MARKER, prompts.NEW_MARKER):
        assert marker.lower() in phrases


def test_user_templates_replace_defaults():
    t = TemplatesConfig(depth="D {method} :: {instruction}", methods={op: op.upper() for op in prompts.DEPTH_OPS})
    assert prompts.evolve_prompt(t, prompts.DEEPEN, "x") == "D DEEPEN :: x"
