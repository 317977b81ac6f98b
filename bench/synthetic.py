"""Benchmarks only: a zero-cost text generator behind the engine seam, and synthetic seeds.

`SyntheticGenerator` is an `evol_ray.engine.base.TextGenerator` that makes deterministic text from
the prompt alone (a hash of it seeds a `random.Random`; no global random state), with lengths
drawn from log-normal distributions, so that every elimination rule and dedup has work:

  * `equal_share` of judge prompts get a confident "Equal" (rule 1, no_information_gain);
  * `sorry_share` of answers are a short apology (rule 2, short_apology);
  * `echo_share` of evolutions are the parent with one word appended (a near-duplicate of a seed
    or of an earlier round's row: dedup against the reference);
  * `cluster_share` of evolutions are one of `clusters` base texts, three in four with one word
    appended (near-duplicates and exact copies within the round, and across rounds).

Long-tailed mode (`latency_s` > 0): every request takes a log-normal time (median `latency_s`,
`latency_sigma`), drawn from its prompt's hash, as a GPU engine's replies do when answers' lengths
vary: a few requests take many times the median (`bench/in_flight.py`).

Lengths (words): instructions median 24 (sigma 0.5), answers median 60 (sigma 0.7), capped; about
what Alpaca-style seeds and their evolutions look like, kept modest so a million rows fit a 24 GiB
machine. Token counts are characters / 4.

`write_seeds` writes N seed rows as Parquet files with planted exact duplicates (case and
punctuation changed: the same normalized text, so `duplicate_seed`) and near duplicates (one word
appended). Never imported by evol_ray: this lives in bench/, out of every user's path.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import random
from dataclasses import dataclass
from typing import Dict, Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from evol_ray.engine.base import Completion
from evol_ray.evolve import prompts

_SYLLABLES = ("ka", "lo", "mi", "ve", "tu", "ra", "sen", "dor", "pil", "qua", "bex", "nor", "fi",
              "gal", "zu", "hem", "tor", "vin", "sa", "ple", "cro", "mu", "dex", "lan")
VOCAB_SIZE = 20_000
OPENERS = ("Explain", "Describe", "Compare", "Summarize", "List", "Write", "Design", "Outline",
           "Analyze", "Propose")


def vocabulary(size: int = VOCAB_SIZE) -> list:
    """Pseudo-words of 2-4 syllables, all distinct, none of them an English stop word."""
    n = len(_SYLLABLES)
    words = []
    for i in range(size):
        k, w = i, []
        for _ in range(2 + i % 3):
            w.append(_SYLLABLES[k % n])
            k //= n
        words.append("".join(w) + ("" if i < n ** 2 else str(i % 97)))
    return list(dict.fromkeys(words))[:size]


def _h(text: str) -> int:
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=8).digest(), "little")


def _length(rng: random.Random, median: float, sigma: float, cap: int) -> int:
    return max(3, min(cap, int(median * math.exp(sigma * rng.gauss(0.0, 1.0)))))


def _parent_of(prompt: str) -> str:
    at = prompt.rfind(prompts.ORIGINAL_MARKER)
    rest = prompt[at + len(prompts.ORIGINAL_MARKER):]
    for end in (prompts.REWRITTEN_MARKER, prompts.NEW_MARKER):
        if end in rest:
            rest = rest[:rest.rfind(end)]
    return rest.strip()


@dataclass
class SyntheticGenerator:
    """See the module doc. Picklable: only its settings travel; the vocabulary is built lazily."""

    equal_share: float = 0.10
    sorry_share: float = 0.05
    echo_share: float = 0.04
    cluster_share: float = 0.04
    clusters: int = 1000
    seed: int = 0
    latency_s: float = 0.0  # median seconds per request; 0: none
    latency_sigma: float = 1.0

    async def _wait(self, h: int) -> None:
        if self.latency_s > 0:
            rng = random.Random(h ^ self.seed ^ 0x7E7E)
            await asyncio.sleep(self.latency_s * math.exp(self.latency_sigma * rng.gauss(0.0, 1.0)))

    def _vocab(self) -> list:
        v = getattr(self, "_v", None)
        if v is None:
            v = self._v = vocabulary()
        return v

    def _words(self, rng: random.Random, k: int) -> str:
        return " ".join(rng.choices(self._vocab(), k=k))

    def _evolution(self, prompt: str, h: int) -> str:
        rng = random.Random(h ^ self.seed)
        u = rng.random()
        if u < self.echo_share:
            parent = _parent_of(prompt)
            if len(parent.split()) >= 6:  # one word appended: Jaccard s/(s+1) of s shingles
                return f"{parent} {self._words(rng, 1)}"
        elif u < self.echo_share + self.cluster_share:
            c = random.Random(f"cluster-{self.seed}-{h % self.clusters}")
            base = f"{c.choice(OPENERS)} {self._words(c, max(8, _length(c, 24, 0.4, 200)))}"
            if rng.random() < 0.75:  # one word appended: Jaccard >= 0.8 to the others; else a copy
                return f"{base} {self._words(rng, 1)}."
            return base + "."
        return f"{rng.choice(OPENERS)} {self._words(rng, _length(rng, 24, 0.5, 300))}."

    def _answer(self, h: int) -> str:
        rng = random.Random(h ^ self.seed ^ 0x5A5A)
        if rng.random() < self.sorry_share:
            return "Sorry, I cannot answer that."
        n = _length(rng, 60, 0.7, 1500)
        return self._words(rng, n).capitalize() + "."

    async def generate(self, prompt: str, sampling, *, seed: int, choices=None) -> Completion:
        h = _h(prompt)
        await self._wait(h)
        if choices:
            text = choices[h % len(choices)]
        elif prompts.ORIGINAL_MARKER in prompt:
            text = self._evolution(prompt, h)
        else:
            text = self._answer(h)
        return Completion(text, prompt_tokens=len(prompt) // 4, generated_tokens=len(text) // 4 + 1)

    async def score_choices(self, prompt: str, choices: Sequence[str]) -> Dict[str, float]:
        await self._wait(_h(prompt))
        equal = (_h(prompt) % 10_000) < self.equal_share * 10_000
        return {c: (-0.05 if (c == prompts.JUDGE_EQUAL) == equal else -3.0) for c in choices}


def _texts(rng: np.random.Generator, n: int, median: float, sigma: float, cap: int,
           vocab: pa.Array) -> pa.Array:
    lengths = np.clip((median * np.exp(sigma * rng.standard_normal(n))).astype(np.int64), 3, cap)
    offsets = np.zeros(n + 1, np.int64)
    np.cumsum(lengths, out=offsets[1:])
    flat = vocab.take(pa.array(rng.integers(0, len(vocab), int(offsets[-1]))))
    return pc.binary_join(pa.LargeListArray.from_arrays(pa.array(offsets), flat), " ").cast(pa.string())


def write_seeds(folder: str, n: int, exact_share: float, near_share: float, seed: int = 0,
                rows_per_file: int = 100_000) -> Dict[str, int]:
    """N seed rows (`instruction`, `output`) as Parquet files under `folder`: a share are exact
    copies of an earlier row (upper case, '!' appended: the same normalized text) and a share
    near copies (one word appended: Jaccard s/(s+1) over s word 3-grams, at least 0.75). Returns
    the planted counts."""
    rng = np.random.default_rng(seed)
    vocab = pa.array(vocabulary())
    opener = pa.array(list(OPENERS)).take(pa.array(rng.integers(0, len(OPENERS), n)))
    instr = pc.binary_join_element_wise(opener, _texts(rng, n, 14, 0.5, 120, vocab), " ")
    output = _texts(rng, n, 50, 0.7, 1000, vocab)
    kind = rng.random(n)
    exact = np.flatnonzero(kind < exact_share)
    near = np.flatnonzero((kind >= exact_share) & (kind < exact_share + near_share))
    exact, near = exact[exact > 0], near[near > 0]
    text = instr.to_numpy(zero_copy_only=False).astype(object)
    src_e = (rng.random(len(exact)) * exact).astype(np.int64)  # an earlier row
    src_n = (rng.random(len(near)) * near).astype(np.int64)
    planted_exact = {int(i): int(s) for i, s in zip(exact, src_e)}
    for i, s in zip(near, src_n):  # in row order: a copy of a copy stays a copy
        text[i] = f"{text[planted_exact.get(int(s), s)]} zq{int(rng.integers(0, 1 << 30))}"
    for i, s in sorted(planted_exact.items()):
        text[i] = str(text[s]).upper() + "!"
    os.makedirs(folder, exist_ok=True)
    table = pa.table({"instruction": pa.array(text.tolist(), pa.string()), "output": output})
    for k, start in enumerate(range(0, n, rows_per_file)):
        pq.write_table(table.slice(start, rows_per_file), os.path.join(folder, f"seeds-{k:05d}.parquet"))
    return {"rows": n, "exact": len(exact), "near": len(near)}
