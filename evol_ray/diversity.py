"""Lexical diversity of a sample of texts: pure functions, no Ray, no engine.

- distinct-n (Li et al., 2016, "A Diversity-Promoting Objective Function for Neural Conversation
  Models"): distinct n-grams over all n-grams of the sample, for n = 1 and 2. Comparable across
  rounds only on samples of equal size, which is how the report calls it.
- near-duplicate share: rows with at least one other row of the same sample whose word 3-gram
  shingles have a Jaccard similarity >= threshold. Candidates come from datasketch's MinHash LSH;
  each candidate pair is then confirmed on its MinHash estimate, so LSH misses are the only error.
"""

from __future__ import annotations

from typing import Dict, List, Sequence

import pyarrow as pa
from datasketch import MinHash, MinHashLSH

from evol_ray import text as text_mod

NUM_PERM = 128
SHINGLE = 3


def words(text: str | None) -> List[str]:
    """Words after the project's one normalization (`evol_ray.text`), as dedup sees them."""
    return text_mod.words(text_mod.normalize(pa.array([text], pa.string())))[0].as_py()


def distinct_n(texts: Sequence[str | None], n: int) -> float:
    """Distinct n-grams / all n-grams over `texts`; 0.0 when there is no n-gram at all."""
    total = 0
    seen = set()
    for t in texts:
        w = words(t)
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def shingles(text: str | None, k: int = SHINGLE) -> set:
    """Word k-grams; a text shorter than k words is one shingle of all its words."""
    w = words(text)
    if len(w) < k:
        return {" ".join(w)}
    return {" ".join(w[i:i + k]) for i in range(len(w) - k + 1)}


def near_duplicate_flags(texts: Sequence[str | None], threshold: float, seed: int = 1) -> List[bool]:
    """For each text: does another text of `texts` look like a near-duplicate of it?"""
    hashes = []
    for t in texts:
        m = MinHash(num_perm=NUM_PERM, seed=seed)
        m.update_batch([s.encode("utf-8") for s in shingles(t)])
        hashes.append(m)
    lsh = MinHashLSH(threshold=threshold, num_perm=NUM_PERM)
    for i, m in enumerate(hashes):
        lsh.insert(i, m)
    flags = []
    for i, m in enumerate(hashes):
        flags.append(any(j != i and m.jaccard(hashes[j]) >= threshold for j in lsh.query(m)))
    return flags


def diversity(texts: Sequence[str | None], threshold: float) -> Dict[str, float]:
    """distinct-1, distinct-2 and the near-duplicate share of one sample."""
    flags = near_duplicate_flags(texts, threshold) if texts else []
    return {
        "rows": len(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "near_duplicate_share": sum(flags) / len(flags) if flags else 0.0,
    }
