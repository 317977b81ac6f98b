"""Lexical diversity of a sample of texts: pure functions, no Ray, no engine.

- distinct-n (Li et al., 2016, "A Diversity-Promoting Objective Function for Neural Conversation
  Models"): distinct n-grams over all n-grams of the sample, for n = 1 and 2. Comparable across
  rounds only on samples of equal size, which is how the report calls it.
- near-duplicate share: rows with at least one other row of the same sample whose word-shingle
  MinHash estimate of Jaccard similarity is >= threshold: the signatures, banding and n-gram size
  of dedup itself (`evol_ray.checks.minhash`), so the report and dedup agree on what a
  near-duplicate is.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Optional, Sequence

import pyarrow as pa

from evol_ray.checks import text as text_mod
from evol_ray.checks.minhash import Params, choose_banding, near_duplicate_pairs


def distinct_n(texts: Sequence[str | None], n: int) -> float:
    """Distinct n-grams / all n-grams over `texts`; 0.0 when there is no n-gram at all."""
    total = 0
    seen = set()
    for w in text_mod.words(text_mod.normalize(pa.array(list(texts), pa.string()))).to_pylist():
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def near_duplicate_flags(texts: Sequence[str | None], threshold: float,
                         params: Optional[Params] = None) -> List[bool]:
    """For each text: does another text of `texts` look like a near-duplicate of it? `params`:
    dedup's MinHash settings (default: dedup's defaults), with `threshold` and its banding."""
    p = params or Params()
    bands, rows = choose_banding(threshold, p.num_perm)
    p = replace(p, threshold=threshold, bands=bands, rows=rows)
    flags = [False] * len(texts)
    for a, b in near_duplicate_pairs(pa.array(list(texts), pa.string()), p):
        flags[a] = flags[b] = True
    return flags


def diversity(texts: Sequence[str | None], threshold: float,
              params: Optional[Params] = None) -> Dict[str, float]:
    """distinct-1, distinct-2 and the near-duplicate share of one sample."""
    flags = near_duplicate_flags(texts, threshold, params) if texts else []
    return {
        "rows": len(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "near_duplicate_share": sum(flags) / len(flags) if flags else 0.0,
    }
