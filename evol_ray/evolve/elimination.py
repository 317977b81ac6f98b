"""The chain's elimination rules, as `rule.Rule` objects, in the order the chain applies them
(WizardLM, arXiv 2304.12244, section 3.3, and the rules real models made necessary).

After the rewrite (EVOLVED), cheapest first, the LLM decisions last:
  empty_evolution     the rewriter wrote nothing usable                         always on
  copied_prompt       rule 4: the evolution copies words of the evolving prompt  elimination.copied_phrases
  not_instruction     it asks for nothing: meta talk, a bare title, an answer    elimination.not_instruction
  lost_input          it points at data it no longer carries                     elimination.lost_input
  language_drift      it slips into another writing system than its parent's    elimination.language_drift
  coherence           the gate: the evolution does not make sense (LLM)          elimination.coherence
  judge               rule 1: the judge finds it Equal to its parent (LLM)       elimination.judge
After the answer (ANSWERED):
  short_apology       rule 2: a short answer with "sorry"                         elimination.sorry_phrases
  only_stopwords      rule 3: only punctuation and stop words                    elimination.stopwords_only
  code_answer         the code recipe's: a code task answered without code       elimination.code_answer
  math_answer         the math recipe's: a word problem answered with no number  elimination.math_answer
  language_drift      the answer drifts from its instruction's writing system    elimination.language_drift
  coherence           the gate: the answer does not make sense (LLM)             elimination.coherence

A row's working values (the rewrite's and the answer's texts, the parent) are its attempt columns;
each rule reads the columns it declares.
"""

from __future__ import annotations

from typing import Optional

from evol_ray import columns as C
from evol_ray.config import threshold_of
from evol_ray.evolve import drift, lost_input, recipe_rules, rules, verdicts
from evol_ray.rule import ANSWERED, EVOLVED, Rule


def _on(flag: str):
    return lambda cfg: getattr(cfg.elimination, flag) or None


async def _judge(gen, row: dict, el) -> Optional[str]:
    """Rule 1 reads the judge's probabilities of its two answers, not one sampled token: P(Equal)
    is kept per row (column judge_p_equal), so a user can re-threshold after the run."""
    threshold = threshold_of(el.judge_threshold)
    if threshold is None:  # the rounds run with the calibrated number (`pipeline/calibrate.py`)
        raise RuntimeError("elimination.judge_threshold is auto and no calibration gave it a number")
    row[C.JUDGE_P_EQUAL] = await verdicts.judge(gen, el, row[C.PARENT_INSTRUCTION], row[C.INSTRUCTION])
    return C.R_NO_GAIN if rules.judge_says_equal(row[C.JUDGE_P_EQUAL], threshold) else None


def _gate(text_col: str, p_col: str):
    async def check(gen, row: dict, el) -> Optional[str]:
        """The coherence gate on one text: its P(incoherent) kept per row, eliminated at the threshold."""
        threshold = threshold_of(el.coherence.threshold)
        if threshold is None:
            raise RuntimeError("elimination.coherence.threshold is auto and no calibration gave it a number")
        role = "instruction" if text_col == C.INSTRUCTION else "response"
        row[p_col] = await verdicts.p_incoherent(gen, el.coherence.template, role, row[text_col])
        return C.R_INCOHERENT if row[p_col] >= threshold else None
    return check


def _coherence_on(cfg):
    return cfg.elimination if cfg.elimination.coherence.enabled else None


CHAIN_RULES = (
    Rule("empty_evolution", (C.R_EMPTY_EVOLUTION,), (C.INSTRUCTION,), EVOLVED,
         lambda row, _: None if row[C.INSTRUCTION] else C.R_EMPTY_EVOLUTION, lambda cfg: True,
         doc="the rewriter wrote nothing usable"),
    Rule("copied_prompt", (C.R_COPIED_PROMPT,), (C.INSTRUCTION,), EVOLVED,
         lambda row, phrases: rules.copied_prompt_words(row[C.INSTRUCTION], phrases),
         lambda cfg: cfg.elimination.copied_phrases or None,
         doc="rule 4: the evolution copies words of the evolving prompt"),
    Rule("not_instruction", (C.R_META_TALK, C.R_BARE_TITLE, C.R_ANSWERS_PARENT), (C.INSTRUCTION,), EVOLVED,
         lambda row, _: rules.not_an_instruction(row[C.INSTRUCTION]), _on("not_instruction"),
         doc="it asks for nothing: talk about the rewriting, a bare title, or an answer"),
    Rule("lost_input", (C.R_LOST_INPUT,), (C.INSTRUCTION,), EVOLVED,
         lambda row, _: lost_input.lost_input(row[C.INSTRUCTION]), _on("lost_input"),
         doc="it points at data ('the following sentence') it no longer carries"),
    Rule("language_drift", (C.R_LANGUAGE_DRIFT,), (C.INSTRUCTION, C.PARENT_INSTRUCTION), EVOLVED,
         lambda row, _: drift.instruction_drifts(row[C.INSTRUCTION], row[C.PARENT_INSTRUCTION]),
         _on("language_drift"), doc="it slips into another writing system than its parent's"),
    Rule("coherence", (C.R_INCOHERENT,), (C.INSTRUCTION,), EVOLVED,
         _gate(C.INSTRUCTION, C.INSTRUCTION_P_INCOHERENT), _coherence_on, judged=True,
         doc="the coherence gate: an LLM finds the evolution does not make sense"),
    Rule("judge", (C.R_NO_GAIN,), (C.PARENT_INSTRUCTION, C.INSTRUCTION), EVOLVED, _judge,
         lambda cfg: cfg.elimination if cfg.elimination.judge else None, judged=True,
         doc="rule 1: an LLM judges the evolution Equal to its parent (no information gain)"),
    Rule("short_apology", (C.R_SORRY,), (C.RESPONSE,), ANSWERED,
         lambda row, el: rules.short_apology(row[C.RESPONSE], el.sorry_phrases, el.sorry_max_words),
         lambda cfg: cfg.elimination if cfg.elimination.sorry_phrases else None,
         doc="rule 2: the answer is short and holds 'sorry'"),
    Rule("only_stopwords", (C.R_STOPWORDS,), (C.RESPONSE,), ANSWERED,
         lambda row, _: rules.only_stopwords(row[C.RESPONSE]), _on("stopwords_only"),
         doc="rule 3: the answer is only punctuation and stop words"),
    Rule("code_answer", (C.R_NO_CODE,), (C.INSTRUCTION, C.RESPONSE), ANSWERED,
         lambda row, _: recipe_rules.answer_without_code(row[C.INSTRUCTION], row[C.RESPONSE]),
         _on("code_answer"), doc="code recipe: the task asks for code, the answer has none"),
    Rule("math_answer", (C.R_NO_NUMBER,), (C.RESPONSE,), ANSWERED,
         lambda row, _: recipe_rules.answer_without_number(row[C.RESPONSE]), _on("math_answer"),
         doc="math recipe: the answer to a word problem holds no number"),
    Rule("language_drift", (C.R_LANGUAGE_DRIFT,), (C.RESPONSE, C.INSTRUCTION), ANSWERED,
         lambda row, _: drift.answer_drifts(row[C.RESPONSE], row[C.INSTRUCTION]), _on("language_drift"),
         doc="the answer slips into another writing system than its instruction's"),
    Rule("coherence", (C.R_INCOHERENT,), (C.RESPONSE,), ANSWERED,
         _gate(C.RESPONSE, C.RESPONSE_P_INCOHERENT), _coherence_on, judged=True,
         doc="the coherence gate: an LLM finds the answer does not make sense"),
)
