"""How good is the equality judge (elimination rule 1)? Pure functions over its verdicts on a
labelled set of (parent, evolution) pairs (`data/judge_pairs.jsonl`; `bench/judge.py` runs it).

Each pair is judged twice, as (parent, evolution) and swapped: the judge is asked whether two
instructions are equal, a symmetric question, so any difference between the two orders is
position bias, not information.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

EQUAL, NOT_EQUAL = "Equal", "Not Equal"
KEYS = ("id", "label", "kind", "parent", "evolution")


def load_pairs(path: str | Path) -> List[dict]:
    """The labelled pairs; a bad line fails naming the file, the line and what was expected."""
    pairs = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}, line {n}: not JSON ({e.msg})") from None
        missing = [k for k in KEYS if k not in row]
        if missing or row["label"] not in (EQUAL, NOT_EQUAL):
            raise ValueError(f"{path}, line {n}: expected keys {list(KEYS)} and label Equal or Not Equal")
        pairs.append(row)
    return pairs


def evaluate(labels: Sequence[str], p_forward: Sequence[float], p_swapped: Sequence[float],
             threshold: float) -> Dict[str, object]:
    """Accuracy and confusion matrix of the verdict P(Equal) >= threshold (forward order, as the
    pipeline asks), the same for the mean of both orders, and the position bias."""
    def verdicts(ps):
        return [EQUAL if p >= threshold else NOT_EQUAL for p in ps]

    def confusion(vs):
        m = {t: {v: 0 for v in (EQUAL, NOT_EQUAL)} for t in (EQUAL, NOT_EQUAL)}
        for t, v in zip(labels, vs):
            m[t][v] += 1
        return m

    def accuracy(vs):
        return sum(t == v for t, v in zip(labels, vs)) / len(labels) if labels else 0.0

    fwd, swp = verdicts(p_forward), verdicts(p_swapped)
    both = verdicts([(a + b) / 2 for a, b in zip(p_forward, p_swapped)])
    n = len(labels)
    return {
        "pairs": n,
        "threshold": threshold,
        "accuracy": accuracy(fwd),
        "confusion": confusion(fwd),  # true label -> verdict -> count
        "accuracy_both_orders": accuracy(both),
        "position_flips": sum(a != b for a, b in zip(fwd, swp)) / n if n else 0.0,
        "position_mean_abs_diff": sum(abs(a - b) for a, b in zip(p_forward, p_swapped)) / n if n else 0.0,
        "mean_p_equal": {t: _mean([p for lab, p in zip(labels, p_forward) if lab == t]) for t in (EQUAL, NOT_EQUAL)},
    }


def _mean(xs: List[float]):
    return sum(xs) / len(xs) if xs else None
