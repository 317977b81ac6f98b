"""How good is an LLM decision, and where does its threshold go? Pure functions over a decision's
scores on a labelled set.

A decision eliminates a row when its score reaches a threshold: the judge's P(Equal) (rule 1: no
information gain), the coherence gate's P(incoherent). The positive class is what it eliminates
(Equal pairs, incoherent texts). Balanced accuracy, the mean of the recall of each class, is what a
threshold is chosen by: plain accuracy on an unbalanced set rewards calling everything the larger
class, and a judge at chance reads 0.5 whatever the set's mix.
"""

from __future__ import annotations

from typing import Dict, List, Optional, Sequence


def confusion(labels: Sequence[bool], scores: Sequence[float], threshold: float) -> Dict[str, int]:
    """True/false positives/negatives of the verdict `score >= threshold` (`labels`: positive)."""
    m = {"tp": 0, "fp": 0, "tn": 0, "fn": 0}
    for y, s in zip(labels, scores):
        hit = s >= threshold
        m[("t" if hit == y else "f") + ("p" if hit else "n")] += 1
    return m


def _ratio(a: int, b: int) -> Optional[float]:
    return a / b if b else None


def measures(labels: Sequence[bool], scores: Sequence[float], threshold: float) -> Dict[str, object]:
    """Accuracy, balanced accuracy, precision and recall of the positive class, and the confusion
    counts, of the verdict `score >= threshold`. A class with no row has no recall (None); the
    balanced accuracy is then the other class's."""
    m = confusion(labels, scores, threshold)
    tpr, tnr = _ratio(m["tp"], m["tp"] + m["fn"]), _ratio(m["tn"], m["tn"] + m["fp"])
    known = [x for x in (tpr, tnr) if x is not None]
    return {
        "rows": len(labels),
        "threshold": threshold,
        "accuracy": _ratio(m["tp"] + m["tn"], len(labels)),
        "balanced_accuracy": sum(known) / len(known) if known else None,
        "precision": _ratio(m["tp"], m["tp"] + m["fp"]),
        "recall": tpr,
        "specificity": tnr,
        "confusion": m,
    }


def candidate_thresholds(scores: Sequence[float]) -> List[float]:
    """The thresholds that separate the scores differently: the midpoint between each two
    neighbouring distinct scores, one just above the highest (nothing positive) and the lowest
    score itself (everything positive)."""
    xs = sorted(set(float(s) for s in scores))
    if not xs:
        return [0.5]
    mids = [(a + b) / 2 for a, b in zip(xs, xs[1:])]
    return [xs[0]] + mids + [xs[-1] + 1e-9]


def best_threshold(labels: Sequence[bool], scores: Sequence[float]) -> float:
    """The threshold with the best balanced accuracy on (labels, scores); among thresholds that tie,
    the middle one (the lower middle of an even count), so the choice sits inside the best range
    rather than on its edge."""
    cands = candidate_thresholds(scores)
    ba = [measures(labels, scores, t)["balanced_accuracy"] or 0.0 for t in cands]
    top = max(ba)
    best = [t for t, b in zip(cands, ba) if b >= top - 1e-12]
    return best[(len(best) - 1) // 2]


def position_flips(forward: Sequence[float], swapped: Sequence[float], threshold: float) -> Dict[str, float]:
    """A symmetric question asked in both orders: the share of verdicts that change when the two
    texts swap places, and the mean |difference| of the scores. Any difference is position bias."""
    n = len(forward)
    if not n:
        return {"share": 0.0, "mean_abs_diff": 0.0}
    flips = sum((a >= threshold) != (b >= threshold) for a, b in zip(forward, swapped))
    return {"share": flips / n, "mean_abs_diff": sum(abs(a - b) for a, b in zip(forward, swapped)) / n}


def mean_score(labels: Sequence[bool], scores: Sequence[float]) -> Dict[str, Optional[float]]:
    """Mean score of the positive and of the negative rows (None where a class has none)."""
    pos = [s for y, s in zip(labels, scores) if y]
    neg = [s for y, s in zip(labels, scores) if not y]
    return {"positive": sum(pos) / len(pos) if pos else None, "negative": sum(neg) / len(neg) if neg else None}
