"""How a figure that may be missing is shown: the one formatter for the rates, scores and
probabilities that evol-ray documents as possibly null (a method never tried has no failure rate,
an unrated row no difficulty, a row stopped before the judge no P(Equal)). Log lines, the run
summary and the report format them here, so a null reads "-" instead of stopping the run."""

from __future__ import annotations

from typing import Optional

MISSING = "-"


def shown(value: Optional[float], spec: str = ".2f") -> str:
    """`value` formatted with `spec` (a format spec such as ".2f" or ".0%"), or "-" when None."""
    return MISSING if value is None else format(value, spec)
