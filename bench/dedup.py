"""Benchmark: exact + near-duplicate dedup through the real Ray Data stages vs a single-process
datasketch baseline, on the same synthetic data in the same run.

    python bench/dedup.py --rows 1000000
    python bench/dedup.py --rows 1000 --warm      # a 1k-row round's fixed cost, on warm workers

Data: instructions of 50 words drawn from a 50,000-word vocabulary. A share of rows are planted
copies of an earlier row: exact copies (with case and punctuation changed, which normalization
folds), near copies (one word, or two adjacent words, replaced: word 3-gram Jaccard about 0.85-0.88)
and far copies (14 words replaced: Jaccard well below 0.5). The true Jaccard of every planted pair
is computed exactly; recall counts planted pairs of Jaccard >= 0.8 (exact copies included) that end
up in one cluster, the false-positive rate planted pairs of Jaccard <= 0.5 that do.

The baseline: normalize and shingle in Python, `datasketch.MinHash.bulk` for signatures,
`MinHashLSH` with the same bands and rows (insert, then query every row), candidates confirmed
on the same estimate and threshold, union-find on the driver: the way one would do it in one
process with datasketch.

Prints rows per second for both, the speedup, recall and false-positive rate, peak memory (RSS of
this process and its children, Ray's workers included); the last line is
`speedup=<x> recall=<r> fpr=<f> rows=<N> seconds=<s>` (seconds: the Ray Data dedup).
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

import numpy as np
import psutil
import pyarrow as pa
import pyarrow.compute as pc

os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")

from evol_ray import columns as C  # noqa: E402
from evol_ray.checks import dedup  # noqa: E402
from evol_ray.checks import text  # noqa: E402
from evol_ray.config import DedupConfig  # noqa: E402

WORDS = 50
VOCAB = 50_000


class PeakRSS:
    """Samples the RSS of this process and all its children (Ray's raylet and workers)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        me = psutil.Process()
        while not self._stop.is_set():
            total = 0
            for p in [me] + me.children(recursive=True):
                try:
                    total += p.memory_info().rss
                except psutil.Error:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(0.25)

    def __enter__(self):
        self.peak = 0
        self._stop.clear()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._t.join()


def generate(n: int, seed: int, exact_share: float, near_share: float, far_share: float):
    """Word-id matrix (n, WORDS), the planted pairs (copy, original, kind) and case/punctuation
    flags for exact copies."""
    rng = np.random.default_rng(seed)
    words = rng.integers(0, VOCAB, size=(n, WORDS), dtype=np.int32)
    kinds = rng.random(n)
    kind = np.zeros(n, np.int8)  # 0 original, 1 exact, 2 near, 3 far
    kind[kinds < exact_share] = 1
    kind[(kinds >= exact_share) & (kinds < exact_share + near_share)] = 2
    kind[(kinds >= exact_share + near_share) & (kinds < exact_share + near_share + far_share)] = 3
    kind[: max(1, n // 100)] = 0  # the first rows are originals, so every copy has one earlier
    copies = np.flatnonzero(kind > 0)
    originals = np.flatnonzero(kind == 0)
    # each copy copies a random original that comes before it
    pos = np.searchsorted(originals, copies)
    src = originals[(rng.random(len(copies)) * pos).astype(np.int64)]
    words[copies] = words[src]
    near = copies[kind[copies] == 2]
    at = rng.integers(1, WORDS - 2, size=len(near))
    words[near, at] = VOCAB + rng.integers(0, VOCAB, size=len(near))
    two = rng.random(len(near)) < 0.5
    words[near[two], at[two] + 1] = VOCAB + rng.integers(0, VOCAB, size=int(two.sum()))
    far = copies[kind[copies] == 3]
    for i in range(14):  # every 3rd position: each replacement kills 3 shingles
        words[far, 1 + 3 * i] = VOCAB + rng.integers(0, VOCAB, size=len(far))
    return words, np.stack([copies, src], 1), kind[copies]


def texts_of(words: np.ndarray, kind_of_row: np.ndarray) -> pa.Array:
    """Word ids -> strings, vectorized in Arrow; exact copies get upper case and a '!' appended."""
    vocab = pa.array([f"w{i}" for i in range(2 * VOCAB)])
    flat = vocab.take(pa.array(words.ravel()))
    lists = pa.ListArray.from_arrays(pa.array(np.arange(0, words.size + 1, WORDS, dtype=np.int32)), flat)
    t = pc.binary_join(lists, " ")
    loud = pa.array(kind_of_row == 1)
    return pc.if_else(loud, pc.binary_join_element_wise(pc.utf8_upper(t), "!", ""), t)


def true_jaccard(words: np.ndarray, pairs: np.ndarray) -> np.ndarray:
    def sh(row):
        return {(row[i], row[i + 1], row[i + 2]) for i in range(WORDS - 2)}

    out = np.empty(len(pairs))
    for k, (a, b) in enumerate(pairs):
        x, y = sh(words[a].tolist()), sh(words[b].tolist())
        out[k] = len(x & y) / len(x | y)
    return out


def score(rep: np.ndarray, pairs: np.ndarray, jac: np.ndarray):
    together = rep[pairs[:, 0]] == rep[pairs[:, 1]]
    hi, lo = jac >= 0.8, jac <= 0.5
    return together[hi].mean() if hi.any() else float("nan"), together[lo].mean() if lo.any() else 0.0


def run_ray(items: pa.Table, p: dedup.Params, blocks: int):
    import ray

    bounds = [i * len(items) // blocks for i in range(blocks + 1)]
    ds = ray.data.from_arrow([items.slice(a, b - a) for a, b in zip(bounds, bounds[1:])])
    t0 = time.perf_counter()
    marked = dedup.dedup(ds, p).select_columns([C.ID, C.STATUS, C.REASON, C.DUPLICATE_OF])
    out = pa.concat_tables(list(marked.iter_batches(batch_format="pyarrow", batch_size=None)))
    return out, time.perf_counter() - t0


def run_baseline(texts: pa.Array, p: dedup.Params):
    """datasketch in one process, at the same num_perm, bands, rows, threshold and shingles."""
    from datasketch import MinHash, MinHashLSH
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    t0 = time.perf_counter()
    norm = text.normalize(texts).to_pylist()
    n = len(norm)
    # exact dedup: first row of each normalized text
    first: dict = {}
    exact_rep = np.array([first.setdefault(t, i) for i, t in enumerate(norm)])
    shingles = []
    for t in norm:
        w = t.split()
        shingles.append([" ".join(w[i:i + p.ngram]).encode() for i in range(max(len(w) - p.ngram + 1, 1))])
    sigs = MinHash.bulk(shingles, num_perm=p.num_perm, seed=p.seed)
    lsh = MinHashLSH(num_perm=p.num_perm, params=(p.bands, p.rows))
    for i, m in enumerate(sigs):
        lsh.insert(i, m, check_duplication=False)
    a, b = [], []
    for i, m in enumerate(sigs):
        for j in lsh.query(m):
            if j < i and sigs[i].jaccard(sigs[j]) >= p.threshold:
                a.append(i)
                b.append(j)
    a = np.array(a + list(range(n)), np.int64)
    b = np.array(b + exact_rep.tolist(), np.int64)
    _, label = connected_components(coo_matrix((np.ones(len(a)), (a, b)), shape=(n, n)), directed=False)
    return label, time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=100_000)
    ap.add_argument("--exact-share", type=float, default=0.05)
    ap.add_argument("--near-share", type=float, default=0.10)
    ap.add_argument("--far-share", type=float, default=0.02)
    ap.add_argument("--threshold", type=float, default=DedupConfig.threshold)
    ap.add_argument("--num-perm", type=int, default=DedupConfig.num_perm)
    ap.add_argument("--partitions", type=int, default=DedupConfig.partitions)
    ap.add_argument("--blocks", type=int, default=0, help="input blocks (0: one per 20,000 rows)")
    ap.add_argument("--baseline-rows", type=int, default=None,
                    help="run datasketch on only the first N rows (default: all; its rate is per row)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--warm", action="store_true",
                    help="time a second Ray Data run (the first starts Ray's workers): a round's fixed cost")
    args = ap.parse_args()

    n = args.rows
    t = time.perf_counter()
    words, pairs, pair_kind = generate(n, args.seed, args.exact_share, args.near_share, args.far_share)
    kind_of_row = np.zeros(n, np.int8)
    kind_of_row[pairs[:, 0]] = pair_kind
    texts = texts_of(words, kind_of_row)
    jac = np.where(pair_kind == 1, 1.0, 0.0)
    check = pair_kind != 1
    jac[check] = true_jaccard(words, pairs[check])
    ids = pa.array([f"r{i:09d}" for i in range(n)])
    items = pa.table({C.ID: ids, C.ROUND: pa.array(np.zeros(n, np.int32)), C.INSTRUCTION: texts,
                      C.RESPONSE: pa.array(["an answer"] * n), C.STATUS: pa.array([C.KEPT] * n),
                      C.REASON: pa.nulls(n, pa.string())})
    print(f"data: {n} rows, {len(pairs)} planted pairs ({(jac >= 0.8).sum()} with J>=0.8, "
          f"{(jac <= 0.5).sum()} with J<=0.5), generated in {time.perf_counter() - t:.1f}s", flush=True)

    p = dedup.params_from(DedupConfig(threshold=args.threshold, num_perm=args.num_perm,
                                      partitions=args.partitions), seed=args.seed)
    print(f"params: num_perm={p.num_perm} bands={p.bands} rows={p.rows} ngram={p.ngram} "
          f"threshold={p.threshold} partitions={p.partitions}", flush=True)

    import logging

    import ray

    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("evol_ray").setLevel(logging.INFO)  # dedup's phase times
    t = time.perf_counter()
    ray.init(address="local", num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    print(f"ray: started in {time.perf_counter() - t:.1f}s with {os.cpu_count()} CPUs", flush=True)
    blocks = args.blocks or max(2, n // 20_000)
    if args.warm:  # a round's dedup runs on a warm cluster: its workers are up, its code imported
        _, cold = run_ray(items, p, blocks)
        print(f"ray data, first run (workers starting): {cold:.2f}s", flush=True)
    with PeakRSS() as mem:
        out, secs = run_ray(items, p, blocks)
    ray.shutdown()
    status = out[C.STATUS].to_numpy(zero_copy_only=False)
    counts = out[C.REASON].value_counts().to_pylist()
    by_reason = ", ".join(f"{c['values']}={c['counts']}" for c in counts if c["values"])
    row = np.searchsorted(ids.to_numpy(zero_copy_only=False), out[C.ID].to_numpy(zero_copy_only=False))
    rep = np.arange(n)
    dup = out[C.DUPLICATE_OF].to_numpy(zero_copy_only=False)
    marked = status == C.ELIMINATED
    rep[row[marked]] = np.searchsorted(ids.to_numpy(zero_copy_only=False), dup[marked].astype(str))
    recall, fpr = score(rep, pairs, jac)
    rate = n / secs
    print(f"ray data: {secs:.1f}s, {rate:,.0f} rows/s, peak RSS {mem.peak / 2**30:.2f} GiB, "
          f"recall {recall:.4f}, fpr {fpr:.4f}, marked {int(marked.sum())} "
          f"({by_reason})", flush=True)

    nb = min(n, args.baseline_rows or n)
    inside = (pairs[:, 0] < nb) & (pairs[:, 1] < nb)
    with PeakRSS() as bmem:
        label, bsecs = run_baseline(texts.slice(0, nb), p)
    brecall, bfpr = score(label, pairs[inside], jac[inside])
    brate = nb / bsecs
    print(f"datasketch baseline ({nb} rows, one process): {bsecs:.1f}s, {brate:,.0f} rows/s, "
          f"peak RSS {bmem.peak / 2**30:.2f} GiB, recall {brecall:.4f}, fpr {bfpr:.4f}", flush=True)
    print(f"speedup={rate / brate:.2f} recall={recall:.4f} fpr={fpr:.4f} rows={n} seconds={secs:.1f}")


if __name__ == "__main__":
    sys.exit(main())
