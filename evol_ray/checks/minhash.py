"""MinHash signatures and LSH banding of normalized text: what dedup decides with and the report
measures with, so the two can never disagree on what "near-duplicate" means.

Signatures: MinHash (the `rensa` library's RMinHash, Rust) over word n-gram shingles of
`evol_ray.checks.text`'s words. Banding: Broder 1997; Leskovec, Rajaraman, Ullman, "Mining of
Massive Datasets", ch. 3. A pair is a near-duplicate when its signatures agree on at least
`threshold` of their values (the MinHash estimate of Jaccard similarity); banding only finds
candidates. `near_duplicate_pairs` does it in one process for a sample (the report); the Ray Data
stages in `evol_ray.checks.dedup` do it at scale.
"""

from __future__ import annotations

import array
import itertools
import math
from dataclasses import dataclass
from typing import Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from rensa import RMinHash

from evol_ray.checks import text

_MUL = np.uint64(0x100000001B3)  # FNV-1a 64 prime: folds a band's values into one key
EXACT_SALT = np.uint64(0x45584143544B4559)  # keeps exact keys apart from band keys

@dataclass(frozen=True)
class Params:
    """What the stages need, resolved once from `config.DedupConfig` (bands/rows chosen)."""

    exact: bool = True
    near: bool = True
    threshold: float = 0.7
    num_perm: int = 128
    bands: int = 21
    rows: int = 6
    ngram: int = 3
    partitions: int = 64
    seed: int = 0


def candidate_probability(s: float, bands: int, rows: int) -> float:
    """P(a pair of Jaccard similarity s shares at least one band) = 1 - (1 - s^rows)^bands."""
    return 1.0 - (1.0 - s**rows) ** bands


def choose_banding(threshold: float, num_perm: int, min_recall: float = 0.9) -> Tuple[int, int]:
    """The most selective banding (most rows per band) of at most `num_perm` values under which a
    pair exactly at `threshold` is still a candidate with probability >= `min_recall`, with the
    fewest bands that reach it. Pairs above the threshold are then found more often still;
    candidates below it are removed on their signature estimate, so selectivity only saves work.
    Every band costs one shuffled key row per item, so bands past the recall target are left out
    (128 values at 0.7: 19 bands x 6 rows, not 21; the estimate still uses all 128)."""
    best = (num_perm, 1)
    for rows in range(1, num_perm + 1):
        for bands in range(1, num_perm // rows + 1):
            if candidate_probability(threshold, bands, rows) >= min_recall:
                best = (bands, rows)
                break
    return best


def params_from(dcfg, seed: int) -> Params:
    """`config.DedupConfig` -> Params; bands and rows picked from the threshold where not set."""
    bands, rows = dcfg.bands, dcfg.rows
    if bands is None and rows is None:
        bands, rows = choose_banding(dcfg.threshold, dcfg.num_perm)
    elif rows is None:
        rows = dcfg.num_perm // bands
    elif bands is None:
        bands = dcfg.num_perm // rows
    return Params(exact=dcfg.exact, near=dcfg.near, threshold=dcfg.threshold,
                  num_perm=dcfg.num_perm, bands=bands, rows=rows, ngram=dcfg.ngram,
                  partitions=dcfg.partitions, seed=seed)


# --- hashing helpers (NumPy, vectorized) ------------------------------------------------------

def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer: spreads keys evenly, so `key % partitions` balances the shuffle."""
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint64(30))
        x = x * np.uint64(0xBF58476D1CE4E5B9)
        x = x ^ (x >> np.uint64(27))
        x = x * np.uint64(0x94D049BB133111EB)
        return x ^ (x >> np.uint64(31))


def node_ids(ids: pa.Array) -> np.ndarray:
    """A uint64 per row id: what the shuffle and the union-find carry instead of strings."""
    return text.hash64(ids)


def shingle_hashes(normalized: pa.Array, ngram: int, fallback: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Word n-gram shingles of each normalized text, as one flat uint64 buffer and row offsets.

    Each distinct word of the batch is hashed once (Arrow dictionary-encodes the words), and the
    hashes of n consecutive words are folded into one shingle hash. A text shorter than n words is
    one shingle of all its words; a text without words gets `fallback` (its own node id), so it
    resembles nothing."""
    lists = text.words(normalized)
    lengths = pc.list_value_length(lists).to_numpy(zero_copy_only=False).astype(np.int64)
    flat = pc.list_flatten(lists)
    enc = pc.dictionary_encode(flat).combine_chunks() if isinstance(flat, pa.ChunkedArray) \
        else pc.dictionary_encode(flat)
    word_h = text.hash64(enc.dictionary)[enc.indices.to_numpy(zero_copy_only=False)]
    n_rows = len(lengths)
    starts = np.zeros(n_rows + 1, np.int64)
    np.cumsum(lengths, out=starts[1:])
    row = np.repeat(np.arange(n_rows), lengths)
    pos = np.arange(len(word_h)) - starts[row]
    full = pos <= lengths[row] - ngram  # a full n-gram starts here
    padded = np.concatenate([word_h, np.zeros(ngram, np.uint64)])
    with np.errstate(over="ignore"):
        g = word_h.copy()
        for j in range(1, ngram):
            g = (g * _MUL) ^ padded[j:j + len(word_h)]
        # short texts (1 <= words < ngram): fold what there is, starting at the row's first word
        short = np.flatnonzero((lengths > 0) & (lengths < ngram))
        s = word_h[starts[short]].copy()
        for j in range(1, ngram - 1):
            has = lengths[short] > j
            s[has] = (s[has] * _MUL) ^ word_h[starts[short][has] + j]
    counts = np.where(lengths >= ngram, lengths - ngram + 1, 1)
    out = np.empty(int(counts.sum()), np.uint64)
    offsets = np.zeros(n_rows + 1, np.int64)
    np.cumsum(counts, out=offsets[1:])
    is_full_row = lengths >= ngram
    # full rows: their shingles in order; the others: one shingle each
    full_dest = np.repeat(is_full_row, counts)
    out[full_dest] = g[full & np.repeat(is_full_row, lengths)]
    single = np.zeros(n_rows, np.uint64)
    single[short] = s
    empty = lengths == 0
    single[empty] = fallback[empty]
    out[offsets[:-1][~is_full_row]] = single[~is_full_row]
    return out, offsets


def signatures(normalized: pa.Array, nodes: np.ndarray, p: Params) -> np.ndarray:
    """MinHash signatures, shape (rows, num_perm), uint32, from rensa's RMinHash matrix API."""
    flat, offsets = shingle_hashes(normalized, p.ngram, nodes)
    if len(nodes) == 0:
        return np.zeros((0, p.num_perm), np.uint32)
    m = RMinHash.digest_matrix_from_flat_token_hashes(flat, offsets.astype(np.uint64), p.num_perm, p.seed)
    # rensa hands rows back as Python lists; array.array is the fastest way into a flat buffer
    buf = array.array("I", itertools.chain.from_iterable(m.to_rows()))
    return np.frombuffer(buf, dtype=np.uint32).reshape(len(nodes), p.num_perm)


def band_keys(sig: np.ndarray, bands: int, rows: int, seed: int) -> np.ndarray:
    """One uint64 per (row, band): the band's `rows` signature values folded, then mixed."""
    keys = np.empty((sig.shape[0], bands), np.uint64)
    with np.errstate(over="ignore"):
        for b in range(bands):
            h = np.full(sig.shape[0], mix64(np.array([seed * 1_000_003 + b + 1], np.uint64))[0])
            for c in sig[:, b * rows:(b + 1) * rows].T:
                h = (h ^ c.astype(np.uint64)) * _MUL
            keys[:, b] = mix64(h)
    return keys


def agreeing_values(p: Params) -> int:
    """Signature values two rows must share for an estimated Jaccard similarity >= threshold."""
    return math.ceil(p.threshold * p.num_perm)


def near_duplicate_pairs(texts: pa.Array, p: Params) -> np.ndarray:
    """Index pairs (i < j), shape (k, 2), of `texts` that are near-duplicates under `p`: same
    normalized text, or candidates of some band whose signatures agree on `agreeing_values(p)`.
    In one process: for samples of a few thousand rows."""
    norm = text.normalize(texts)
    nodes = np.arange(len(norm), dtype=np.uint64) + np.uint64(1)  # textless rows resemble nothing
    if len(norm) < 2:
        return np.zeros((0, 2), np.int64)
    sig = signatures(norm, nodes, p)
    keys = band_keys(sig, p.bands, p.rows, p.seed)
    pairs = set()
    for b in range(keys.shape[1]):
        order = np.argsort(keys[:, b], kind="stable")
        k = keys[order, b]
        for start, end in _runs(k):
            members = order[start:end]
            pairs.update(itertools.combinations(sorted(members.tolist()), 2))
    th = text.hash64(norm)
    need = agreeing_values(p)
    keep = [(a, b) for a, b in sorted(pairs)
            if th[a] == th[b] or (sig[a] == sig[b]).sum() >= need]
    return np.array(keep, np.int64).reshape(-1, 2)


def _runs(sorted_keys: np.ndarray):
    """(start, end) of each run of 2+ equal values in a sorted array."""
    if len(sorted_keys) < 2:
        return
    edges = np.flatnonzero(sorted_keys[1:] != sorted_keys[:-1]) + 1
    bounds = np.concatenate([[0], edges, [len(sorted_keys)]])
    for s, e in zip(bounds[:-1], bounds[1:]):
        if e - s > 1:
            yield int(s), int(e)
