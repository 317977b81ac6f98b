"""One row's evolution chain, the heart of a round (WizardLM, arXiv 2304.12244, sections 3.1-3.3).

For one pool row: choose the operation, evolve the instruction, then run the elimination rules
(`elimination.CHAIN_RULES`, `rule.Rule` objects), each cheap check before the engine call it
makes unnecessary:

    evolve -> the rules that read the rewrite (empty, rule 4: copied prompt words, not an
              instruction, lost input, language drift, the coherence gate, rule 1: the judge)
           -> answer -> the rules that read the answer (rule 2: short apology, rule 3: only stop
              words, the recipe's rules, language drift, the coherence gate)

The operation comes from `evolution.recipe` (WizardLM's, WizardCoder's or WizardMath's set, see
`recipes.py`) and the user's overrides and operations of their own. Engine requests per row and
round, whatever the recipe: one evolve (`generate`), the LLM decisions (`score_choices`: one
request each with `engine.choice_scoring=first_tokens`), one answer (`generate`); a row
eliminated earlier stops there, and the rules that read text alone cost none.

The judge runs before the answer: its prompt is short and its output one token, while an answer
may run to thousands, so an instruction without information gain costs no answer.

Reads the pool columns (`id`, `root_id`, `instruction`, `response`); returns one attempt row with
every column of `columns.ROUND_SCHEMA`. An engine error becomes status `error` on that row only.
"""

from __future__ import annotations

import time
from typing import Any, Dict

from evol_ray import columns as C
from evol_ray import identity
from evol_ray.config import Config
from evol_ray.engine.base import Completion, PromptTooLong, TextGenerator, engine_is_dead
from evol_ray.evolve import recipes, rules
from evol_ray.evolve.elimination import CHAIN_RULES
from evol_ray.rule import ANSWERED, EVOLVED, active


def _attempt(row: Dict[str, Any], round_no: int, op: str | None) -> Dict[str, Any]:
    return {
        C.ID: identity.child_id(row[C.ID], round_no),
        C.PARENT_ID: row[C.ID],
        C.ROOT_ID: row[C.ROOT_ID],
        C.ROUND: round_no,
        C.OP: op,
        C.INSTRUCTION: None,
        C.RESPONSE: None,
        C.PARENT_INSTRUCTION: row[C.INSTRUCTION],
        C.PARENT_RESPONSE: row.get(C.RESPONSE),
        C.STATUS: C.KEPT,
        C.REASON: None,
        C.ERROR: None,
        C.DUPLICATE_OF: None,  # set later by the dedup stages
        C.JUDGE_P_EQUAL: None,
        C.INSTRUCTION_P_INCOHERENT: None,
        C.RESPONSE_P_INCOHERENT: None,
        C.PROMPT_TOKENS: 0,
        C.GENERATED_TOKENS: 0,
        C.ENGINE_SECONDS: 0.0,
    }


async def evolve_row(gen: TextGenerator, row: Dict[str, Any], round_no: int, cfg: Config, *,
                     op: str | None = None, method: str | None = None) -> Dict[str, Any]:
    """One pool row's chain in round `round_no`. `op` and `method` (Auto Evol's trials, round 0:
    `evolve/auto.py`): the operation and its method text given, instead of chosen and configured."""
    parent = row[C.INSTRUCTION]
    if parent is None or not parent.strip():
        out = _attempt(row, round_no, None)
        out.update({C.STATUS: C.INVALID_INPUT, C.REASON: C.R_EMPTY_INSTRUCTION})
        return out

    op = op or identity.choose_op(cfg.seed, row[C.ID], round_no, cfg.evolution.op_weights,
                                  recipes.op_order(cfg.evolution))
    out = _attempt(row, round_no, op)
    started = time.monotonic()

    async def ask(step: str, prompt: str, sampling, choices=None) -> Completion:
        seed = identity.request_seed(cfg.seed, row[C.ID], round_no, step)
        c = await gen.generate(prompt, sampling, seed=seed, choices=choices)
        out[C.PROMPT_TOKENS] += c.prompt_tokens
        out[C.GENERATED_TOKENS] += c.generated_tokens
        return c

    def eliminate(reason: str) -> Dict[str, Any]:
        out.update({C.STATUS: C.ELIMINATED, C.REASON: reason})
        return out

    ev = cfg.evolution

    async def passes(where: str) -> bool:
        for rule, settings in active(CHAIN_RULES, cfg, where):
            if reason := await rule.apply(gen, out, settings):
                eliminate(reason)
                return False
        return True

    try:
        evolved = await ask("evolve", recipes.evolve_prompt(ev, op, parent, method), ev.evolve_sampling)
        out[C.INSTRUCTION] = rules.clean_evolution(evolved.text)
        if not await passes(EVOLVED):
            return out
        answer = await ask("answer", out[C.INSTRUCTION], ev.answer_sampling)
        out[C.RESPONSE] = answer.text
        await passes(ANSWERED)
        return out
    except PromptTooLong as e:  # the input's fault, not the engine's: counted apart, nothing sent
        out[C.ERROR] = str(e)[:2000]
        return eliminate(C.R_PROMPT_TOO_LONG)
    except Exception as e:  # one row's engine failure must not end the round
        if engine_is_dead(e):
            raise
        out.update({C.STATUS: C.ERROR_STATUS, C.REASON: C.R_ENGINE_ERROR,
                    C.ERROR: f"{type(e).__name__}: {e}"[:2000]})
        return out
    finally:
        out[C.ENGINE_SECONDS] = time.monotonic() - started
