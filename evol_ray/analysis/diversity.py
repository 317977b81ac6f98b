"""Lexical diversity of a sample of texts: pure functions, no Ray, no engine.

- distinct-n (Li et al., 2016, "A Diversity-Promoting Objective Function for Neural Conversation
  Models"): distinct n-grams over all n-grams of the sample, for n = 1 and 2. Distinct-n falls as
  a sample grows longer whatever its diversity (Heaps' law: new words get rarer), so on texts that
  grow round after round it measures length. The report therefore measures it on an equal budget
  (`equal_budget`): every round's sample has the same number of rows, each text contributes at
  most its first `words_per_text` words (the smallest median length of the rounds' samples), and
  each sample is cut to the same total of words (the smallest sample's). What is left to differ
  is the words themselves.
- near-duplicate share: rows with at least one other row of the same sample whose word-shingle
  MinHash estimate of Jaccard similarity is >= threshold: the signatures, banding and n-gram size
  of dedup itself (`evol_ray.checks.minhash`), so the report and dedup agree on what a
  near-duplicate is.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

import pyarrow as pa

from evol_ray.checks import text as text_mod
from evol_ray.checks.minhash import Params, choose_banding, near_duplicate_pairs


def distinct_n(texts: Sequence[str | None], n: int) -> float:
    """Distinct n-grams / all n-grams over `texts`; 0.0 when there is no n-gram at all."""
    total = 0
    seen = set()
    for w in _word_lists(texts):
        grams = [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
        total += len(grams)
        seen.update(grams)
    return len(seen) / total if total else 0.0


def equal_budget(samples: Sequence[Sequence[str | None]]) -> Tuple[int, int]:
    """(words per text, words per sample) that every one of `samples` can fill: the smallest
    median text length, and the smallest total once each text is cut to it."""
    lengths = [[len(w) for w in _word_lists(t)] for t in samples if len(t)]
    if not lengths:
        return 0, 0
    per_text = max(1, int(min(np.median(x) for x in lengths)))
    total = min(sum(min(n, per_text) for n in x) for x in lengths)
    return per_text, total


def budget_distinct_n(texts: Sequence[str | None], n: int, words_per_text: int, total_words: int) -> float:
    """distinct-n over the first `words_per_text` words of each text, taking texts in order until
    `total_words` words are used (n-grams never cross two texts)."""
    left, grams = total_words, []
    for w in _word_lists(texts):
        if left <= 0:
            break
        w = w[:min(words_per_text, left)]
        left -= len(w)
        grams += [tuple(w[i:i + n]) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def _word_lists(texts: Sequence[str | None]) -> List[List[str]]:
    return text_mod.words(text_mod.normalize(pa.array(list(texts), pa.string()))).to_pylist()


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


def diversity(texts: Sequence[str | None], threshold: float, params: Optional[Params] = None,
              budget: Optional[Tuple[int, int]] = None) -> Dict[str, float]:
    """distinct-1, distinct-2 and the near-duplicate share of one sample; with `budget`
    (words per text, words per sample, from `equal_budget`) distinct-n is measured on it, and
    the plain distinct-n of the whole texts is kept as `distinct_1_all` / `distinct_2_all`."""
    flags = near_duplicate_flags(texts, threshold, params) if texts else []
    out = {
        "rows": len(texts),
        "distinct_1": distinct_n(texts, 1),
        "distinct_2": distinct_n(texts, 2),
        "near_duplicate_share": sum(flags) / len(flags) if flags else 0.0,
    }
    if budget is not None:
        out["distinct_1_all"], out["distinct_2_all"] = out["distinct_1"], out["distinct_2"]
        out["distinct_1"] = budget_distinct_n(texts, 1, *budget)
        out["distinct_2"] = budget_distinct_n(texts, 2, *budget)
        out["words_per_text"], out["words"] = budget
    return out
