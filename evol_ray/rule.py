"""One kind of object for every rule that eliminates a row, in the chain or on a batch.

A rule is its name, the reasons it gives (`columns.R_*`), the columns it reads, its settings
(read from the config; None: the rule is off), where it runs, and its check, which returns a
reason or None (keep). Where it runs:

  EVOLVED   in a row's chain (`evolve/chain.py`), after the rewrite and before the answer is asked
            for, so a failed evolution costs no answer;
  ANSWERED  in the chain, after the answer;
  BATCH     vectorized on a batch of attempt rows (`checks/quality.py`): the check takes the
            batch's `Texts` and returns a mask of the rows that fail.

A rule that asks the model (`judged`: the judge of rule 1, the coherence gate) has an async check
that gets the engine too. The chain, the quality stage and the report iterate the rule lists
(`evolve/elimination.py`, `checks/quality.py`); a recipe names the rules it turns on by name.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

EVOLVED, ANSWERED, BATCH = "evolved", "answered", "batch"


@dataclass(frozen=True)
class Rule:
    name: str  # its config key under `elimination.` (chain) or `quality.` (batch)
    reasons: Tuple[str, ...]  # what it names a row it eliminates
    reads: Tuple[str, ...]  # the columns it reads
    where: str  # EVOLVED | ANSWERED | BATCH
    check: Callable[..., Any]  # (row, settings) -> reason | None; judged: async (gen, row, settings)
    settings: Callable[[Any], Any]  # config -> the rule's settings, None when it is off
    judged: bool = False  # asks the model (an LLM decision: calibrated, `pipeline/calibrate.py`)
    doc: str = ""  # one line for the report

    def settings_of(self, cfg) -> Optional[Any]:
        return self.settings(cfg)

    async def apply(self, gen, row: dict, settings: Any) -> Optional[str]:
        """The reason this rule eliminates `row` for, or None."""
        if self.judged:
            return await self.check(gen, row, settings)
        out = self.check(row, settings)
        return await out if inspect.isawaitable(out) else out


def active(rules, cfg, where: str):
    """(rule, settings) of each rule of `rules` that runs at `where` and is on under `cfg`."""
    out = []
    for r in rules:
        if r.where != where:
            continue
        s = r.settings_of(cfg)
        if s is not None and s is not False:
            out.append((r, s))
    return out
