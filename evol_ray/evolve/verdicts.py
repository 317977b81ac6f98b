"""The requests behind the run's LLM decisions, one function each, shared by the chain, the
calibration and the benchmarks so that what is calibrated is exactly what the rounds ask.

`judge`: rule 1's P(Equal) of a (parent, evolution) pair, in one order or both (`p_equal`: one
order, renormalized over its two answers and read as `engine.choice_scoring` says,
`engine/base.py`).
`p_incoherent`: the coherence gate, P(No) of "is this text coherent?" for an instruction or an
answer (its first `prompts.COHERENCE_TEXT_LIMIT` characters), read the same way.
"""

from __future__ import annotations

import asyncio

from evol_ray.engine.base import TextGenerator, choice_distribution
from evol_ray.evolve import prompts


async def judge(gen: TextGenerator, el, parent: str, evolution: str) -> float:
    """Rule 1's P(Equal) as the rounds ask it: (parent, evolution), and with
    `elimination.judge_both_orders` also (evolution, parent), the mean of the two. The question is
    symmetric, so any difference between the orders is position bias, which the mean cancels (a
    1.5B judge flipped 17% of its verdicts when the order swapped; bench/judge.py)."""
    if not el.judge_both_orders:
        return await p_equal(gen, el.judge_template, parent, evolution)
    a, b = await asyncio.gather(p_equal(gen, el.judge_template, parent, evolution),
                                p_equal(gen, el.judge_template, evolution, parent))
    return (a + b) / 2


async def p_equal(gen: TextGenerator, template: str, first: str, second: str) -> float:
    lp = await gen.score_choices(template.format(first=first, second=second),
                                 (prompts.JUDGE_EQUAL, prompts.JUDGE_NOT_EQUAL))
    return choice_distribution(lp)[prompts.JUDGE_EQUAL]


async def p_incoherent(gen: TextGenerator, template: str, role: str, text: str) -> float:
    prompt = template.format(what=prompts.COHERENCE_WHAT[role], text=(text or "")[:prompts.COHERENCE_TEXT_LIMIT])
    lp = await gen.score_choices(prompt, (prompts.COHERENT_YES, prompts.COHERENT_NO))
    return choice_distribution(lp)[prompts.COHERENT_NO]
