import asyncio

import pytest

from evol_ray import columns as C
from evol_ray import identity
from evol_ray.evolve import recipes
from evol_ray.evolve.chain import evolve_row
from evol_ray.config import load_config
from tests.fakes import ScriptedGenerator

CFG = load_config(["input.path=x", "output.path=y", "model.source=m", "elimination.judge_threshold=0.5", "elimination.coherence.enabled=false"])
ROW = {C.ID: "p1", C.ROOT_ID: "r1", C.INSTRUCTION: "Name a migratory bird.", C.RESPONSE: "The swallow."}


def run(gen, row=ROW, cfg=CFG, round_no=1):
    return asyncio.run(evolve_row(gen, row, round_no, cfg))


def steps(gen):
    return [s for s, _ in gen.calls]


def test_kept_row_has_lineage_and_all_columns():
    gen = ScriptedGenerator()
    out = run(gen)
    assert set(out) == set(C.ROUND_SCHEMA.names)
    assert out[C.STATUS] == C.KEPT and out[C.REASON] is None
    assert out[C.ID] == identity.child_id("p1", 1)
    assert (out[C.PARENT_ID], out[C.ROOT_ID], out[C.ROUND]) == ("p1", "r1", 1)
    assert out[C.PARENT_INSTRUCTION] == ROW[C.INSTRUCTION]
    assert out[C.INSTRUCTION] == gen.evolved and out[C.RESPONSE] == gen.answer
    assert out[C.OP] == recipes.choose_op(0, "p1", 1, CFG.evolution.op_weights)
    assert steps(gen) == ["evolve", "judge", "judge", "answer"]  # the judge asked in both orders
    assert out[C.GENERATED_TOKENS] > 0 and out[C.PROMPT_TOKENS] > 0
    # The answer prompt is the evolved instruction itself; the judge sees parent and child, each
    # first once.
    first, second = gen.calls[1][1], gen.calls[2][1]
    assert first.index(ROW[C.INSTRUCTION]) < first.index(gen.evolved)
    assert second.index(gen.evolved) < second.index(ROW[C.INSTRUCTION])
    assert gen.calls[3][1] == gen.evolved
    one = ScriptedGenerator()
    run(one, cfg=load_config(["input.path=x", "output.path=y", "model.source=m", "elimination.judge_threshold=0.5",
                              "elimination.coherence.enabled=false", "elimination.judge_both_orders=false"]))
    assert steps(one) == ["evolve", "judge", "answer"]


def test_copied_prompt_words_skip_judge_and_answer():
    gen = ScriptedGenerator(evolved="#Rewritten Prompt#: name two birds")
    out = run(gen)
    assert (out[C.STATUS], out[C.REASON]) == (C.ELIMINATED, C.R_COPIED_PROMPT)
    assert steps(gen) == ["evolve"]


def test_no_information_gain_skips_the_answer():
    gen = ScriptedGenerator(verdict="Equal")
    out = run(gen)
    assert (out[C.STATUS], out[C.REASON]) == (C.ELIMINATED, C.R_NO_GAIN)
    assert steps(gen) == ["evolve", "judge", "judge"]
    assert out[C.RESPONSE] is None


def test_judge_can_be_switched_off():
    cfg = load_config(["input.path=x", "output.path=y", "model.source=m", "elimination.judge_threshold=0.5", "elimination.coherence.enabled=false", "elimination.judge=false"])
    gen = ScriptedGenerator(verdict="Equal")
    assert run(gen, cfg=cfg)[C.STATUS] == C.KEPT
    assert steps(gen) == ["evolve", "answer"]


@pytest.mark.parametrize("answer, reason", [
    ("Sorry, I cannot answer that.", C.R_SORRY),
    ("It is what it is.", C.R_STOPWORDS),
    ("", C.R_STOPWORDS),
])
def test_answer_rules(answer, reason):
    out = run(ScriptedGenerator(answer=answer))
    assert (out[C.STATUS], out[C.REASON]) == (C.ELIMINATED, reason)
    assert out[C.RESPONSE] == answer


def test_empty_evolution_is_eliminated():
    out = run(ScriptedGenerator(evolved='  ""  '))
    assert (out[C.STATUS], out[C.REASON]) == (C.ELIMINATED, C.R_EMPTY_EVOLUTION)


@pytest.mark.parametrize("step", ["evolve", "judge", "answer"])
def test_engine_error_marks_only_this_row(step):
    out = run(ScriptedGenerator(fail_on=step))
    assert (out[C.STATUS], out[C.REASON]) == (C.ERROR_STATUS, C.R_ENGINE_ERROR)
    assert f"engine failed during {step}" in out[C.ERROR]
    assert out[C.PARENT_INSTRUCTION] == ROW[C.INSTRUCTION]


@pytest.mark.parametrize("blank", ["", "   \n", None])
def test_blank_instruction_is_invalid_input_without_engine_calls(blank):
    gen = ScriptedGenerator()
    out = run(gen, row={**ROW, C.INSTRUCTION: blank})
    assert (out[C.STATUS], out[C.REASON]) == (C.INVALID_INPUT, C.R_EMPTY_INSTRUCTION)
    assert gen.calls == []


def test_an_evolution_that_answers_the_parent_is_eliminated_before_the_judge():
    gen = ScriptedGenerator(evolved="```python\ndef fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)\n```")
    out = asyncio.run(evolve_row(gen, ROW, 1, CFG))
    assert (out[C.STATUS], out[C.REASON]) == (C.ELIMINATED, C.R_ANSWERS_PARENT)
    assert [step for step, _ in gen.calls] == ["evolve"]
    off = load_config(["input.path=x", "output.path=y", "model.source=m", "elimination.judge_threshold=0.5", "elimination.coherence.enabled=false", "elimination.not_instruction=false"])
    assert asyncio.run(evolve_row(ScriptedGenerator(evolved=gen.evolved), ROW, 1, off))[C.REASON] != C.R_ANSWERS_PARENT


def test_judge_probability_is_kept_per_row_and_thresholded():
    out = asyncio.run(evolve_row(ScriptedGenerator(verdict="Not Equal"), ROW, 1, CFG))
    assert out[C.STATUS] == C.KEPT and 0 <= out[C.JUDGE_P_EQUAL] < 0.5
    eq = asyncio.run(evolve_row(ScriptedGenerator(verdict="Equal"), ROW, 1, CFG))
    assert eq[C.REASON] == C.R_NO_GAIN and eq[C.JUDGE_P_EQUAL] > 0.99
    strict = load_config(["input.path=x", "output.path=y", "model.source=m", "elimination.judge_threshold=1.0", "elimination.coherence.enabled=false"])
    assert asyncio.run(evolve_row(ScriptedGenerator(verdict="Equal"), ROW, 1, strict))[C.STATUS] == C.KEPT


def test_a_prompt_that_cannot_fit_is_its_own_reason_and_sends_nothing():
    # a 3000-word seed: its evolve prompt cannot fit a 4096-token context with 2048 to answer
    long_row = dict(ROW, **{C.INSTRUCTION: "Summarize this text. " + "word " * 3000})
    gen = ScriptedGenerator(context=4096)
    out = run(gen, row=long_row)
    assert (out[C.STATUS], out[C.REASON]) == (C.ELIMINATED, C.R_PROMPT_TOO_LONG)
    assert "prompt of" in out[C.ERROR] and gen.calls == []  # no request was sent
    assert run(ScriptedGenerator(context=4096))[C.STATUS] == C.KEPT  # a short one fits


def test_an_evolution_whose_answer_cannot_fit_is_prompt_too_long():
    gen = ScriptedGenerator(evolved="Explain " + "this " * 3000, context=4096)
    out = run(gen, cfg=load_config(["input.path=x", "output.path=y", "model.source=m", "elimination.judge_threshold=0.5", "elimination.coherence.enabled=false",
                                    "elimination.not_instruction=false", "elimination.judge=false"]))
    assert out[C.REASON] == C.R_PROMPT_TOO_LONG and steps(gen) == ["evolve"]


GATE = load_config(["input.path=x", "output.path=y", "model.source=m", "elimination.judge_threshold=0.5",
                    "elimination.coherence.threshold=0.5"])


def test_the_coherence_gate_eliminates_an_incoherent_evolution_before_the_judge_and_the_answer():
    gen = ScriptedGenerator(coherent=lambda p: "No" if "migration routes" in p else "Yes")
    out = asyncio.run(evolve_row(gen, ROW, 1, GATE))
    assert (out[C.STATUS], out[C.REASON]) == (C.ELIMINATED, C.R_INCOHERENT)
    assert out[C.INSTRUCTION_P_INCOHERENT] > 0.99 and out[C.RESPONSE_P_INCOHERENT] is None
    assert [k for k, _ in gen.calls] == ["evolve", "coherence"]  # no judge, no answer asked for


def test_the_coherence_gate_reads_the_answer_too_and_keeps_both_probabilities():
    gen = ScriptedGenerator(coherent=lambda p: "No" if "flyways" in p else "Yes")
    out = asyncio.run(evolve_row(gen, ROW, 1, GATE))
    assert (out[C.STATUS], out[C.REASON]) == (C.ELIMINATED, C.R_INCOHERENT)
    assert out[C.INSTRUCTION_P_INCOHERENT] < 0.01 and out[C.RESPONSE_P_INCOHERENT] > 0.99
    assert [k for k, _ in gen.calls] == ["evolve", "coherence", "judge", "judge", "answer", "coherence"]
    kept = asyncio.run(evolve_row(ScriptedGenerator(), ROW, 1, GATE))
    assert kept[C.STATUS] == C.KEPT and kept[C.RESPONSE_P_INCOHERENT] < 0.01


@pytest.mark.parametrize("evolved,reason", [
    ("Summarize the following paragraph in two sentences.", C.R_LOST_INPUT),
    ("Write a short poem about a lighthouse keeper, celebrating the duty of坚守 and dedication.", C.R_LANGUAGE_DRIFT),
])
def test_the_text_rules_run_before_any_llm_decision(evolved, reason):
    gen = ScriptedGenerator(evolved=evolved)
    out = asyncio.run(evolve_row(gen, ROW, 1, GATE))
    assert (out[C.STATUS], out[C.REASON]) == (C.ELIMINATED, reason)
    assert [k for k, _ in gen.calls] == ["evolve"]
    off = load_config(["input.path=x", "output.path=y", "model.source=m", "elimination.judge_threshold=0.5",
                       "elimination.coherence.enabled=false", "elimination.lost_input=false",
                       "elimination.language_drift=false"])
    assert asyncio.run(evolve_row(ScriptedGenerator(evolved=evolved), ROW, 1, off))[C.STATUS] == C.KEPT


def test_an_auto_threshold_that_reached_the_chain_is_an_error_not_a_verdict():
    auto = load_config(["input.path=x", "output.path=y", "model.source=m", "elimination.coherence.enabled=false"])
    out = asyncio.run(evolve_row(ScriptedGenerator(), ROW, 1, auto))
    assert out[C.STATUS] == C.ERROR_STATUS and "judge_threshold is auto" in out[C.ERROR]
