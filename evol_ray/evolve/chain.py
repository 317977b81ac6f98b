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

`answer_seed` is the chain's second half alone, for a seed without an answer
(`output.answer_seeds`): answer -> the rules that read the answer.

Reads the pool columns (`id`, `root_id`, `instruction`, `response`); returns one attempt row with
every column of `columns.ROUND_SCHEMA`. An engine error becomes status `error` on that row only.
"""

from __future__ import annotations

import time
from typing import Any, Awaitable, Callable, Dict

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


class _Chain:
    """One row's requests and rules: meters every request into the attempt row `out`, runs the
    rules of a place in the chain, and turns a row's failure into its status."""

    def __init__(self, gen: TextGenerator, out: Dict[str, Any], cfg: Config, row_id: str, round_no: int) -> None:
        self.gen, self.out, self.cfg, self.row_id, self.round_no = gen, out, cfg, row_id, round_no

    async def ask(self, step: str, prompt: str, sampling, choices=None) -> Completion:
        seed = identity.request_seed(self.cfg.seed, self.row_id, self.round_no, step)
        c = await self.gen.generate(prompt, sampling, seed=seed, choices=choices)
        self.out[C.PROMPT_TOKENS] += c.prompt_tokens
        self.out[C.GENERATED_TOKENS] += c.generated_tokens
        return c

    def eliminate(self, reason: str) -> Dict[str, Any]:
        self.out.update({C.STATUS: C.ELIMINATED, C.REASON: reason})
        return self.out

    async def passes(self, where: str) -> bool:
        """The active rules of `where` in order; False (the row eliminated) at the first that fails."""
        for rule, settings in active(CHAIN_RULES, self.cfg, where):
            if reason := await rule.apply(self.gen, self.out, settings):
                self.eliminate(reason)
                return False
        return True

    async def answer(self) -> None:
        """The instruction answered (the answer prompt is the instruction itself), then the rules
        that read the answer."""
        answer = await self.ask("answer", self.out[C.INSTRUCTION], self.cfg.evolution.answer_sampling)
        self.out[C.RESPONSE] = answer.text
        await self.passes(ANSWERED)

    async def run(self, body: Callable[[], Awaitable[None]]) -> Dict[str, Any]:
        """`body` run with the row's failures recorded on the row: a prompt too long for the model
        is the input's fault (eliminated, counted apart, nothing sent); any other engine error is
        this row's status `error`; a dead engine ends the stage."""
        started = time.monotonic()
        try:
            await body()
        except PromptTooLong as e:
            self.out[C.ERROR] = str(e)[:2000]
            self.eliminate(C.R_PROMPT_TOO_LONG)
        except Exception as e:  # one row's engine failure must not end the round
            if engine_is_dead(e):
                raise
            self.out.update({C.STATUS: C.ERROR_STATUS, C.REASON: C.R_ENGINE_ERROR,
                             C.ERROR: f"{type(e).__name__}: {e}"[:2000]})
        finally:
            self.out[C.ENGINE_SECONDS] = time.monotonic() - started
        return self.out


async def evolve_row(gen: TextGenerator, row: Dict[str, Any], round_no: int, cfg: Config, *,
                     op: str | None = None, method: str | None = None) -> Dict[str, Any]:
    """One pool row's chain in round `round_no`. `op` and `method` (Auto Evol's trials, round 0:
    `evolve/auto.py`): the operation and its method text given, instead of chosen and configured."""
    parent = row[C.INSTRUCTION]
    if parent is None or not parent.strip():
        out = _attempt(row, round_no, None)
        out.update({C.STATUS: C.INVALID_INPUT, C.REASON: C.R_EMPTY_INSTRUCTION})
        return out

    op = op or recipes.choose_op(cfg.seed, row[C.ID], round_no, cfg.evolution.op_weights,
                                  recipes.op_order(cfg.evolution))
    out = _attempt(row, round_no, op)
    chain = _Chain(gen, out, cfg, row[C.ID], round_no)

    async def body() -> None:
        evolved = await chain.ask("evolve", recipes.evolve_prompt(cfg.evolution, op, parent, method),
                                  cfg.evolution.evolve_sampling)
        out[C.INSTRUCTION] = rules.clean_evolution(evolved.text)
        if await chain.passes(EVOLVED):
            await chain.answer()

    return await chain.run(body)


SEED_ANSWER_ROUND = 0  # the round a seed's answer is counted in: the seeds' own


async def answer_seed(gen: TextGenerator, row: Dict[str, Any], cfg: Config) -> Dict[str, Any]:
    """A seed without an answer (`output.answer_seeds`): answered as an evolution is, then the
    rules that read an answer (rules 2 and 3, the recipe's, language drift, the coherence gate).
    The attempt row keeps the seed's id (a round-1 evolution names it as parent); `parent_id` is
    the seed too, the pool row it was made from (what a resume matches); round 0, no operation."""
    out = _attempt(row, SEED_ANSWER_ROUND, None)
    out.update({C.ID: row[C.ID], C.INSTRUCTION: row[C.INSTRUCTION], C.PARENT_INSTRUCTION: None,
                C.PARENT_RESPONSE: None})
    chain = _Chain(gen, out, cfg, row[C.ID], SEED_ANSWER_ROUND)
    return await chain.run(chain.answer)
