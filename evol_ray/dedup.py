"""Exact and near-duplicate dedup of instructions, global over a round, earlier rounds and seeds.

Exact: the xxh3-64 hash of the `evol_ray.text.normalize`d instruction. Near: MinHash (the `rensa`
library's RMinHash, Rust) over word n-gram shingles, then LSH banding (Broder 1997; Leskovec,
Rajaraman, Ullman, "Mining of Massive Datasets", ch. 3), then every candidate pair is confirmed on
its MinHash estimate of Jaccard similarity, so a pair below `threshold` is never flagged.

As Ray Data stages, on "items" (`id`, `round`, `instruction`, `response`, `dedup_target`):
  1. `signature_rows` (map_batches, the hot path): per item a node id (uint64 of the id), the
     normalized-text hash, and the MinHash signature; materialized, since two stages read it;
  2. `key_rows` (map_batches): one uint64 key per LSH band (or, without near dedup, the exact-text
     key), exploded to (`dedup_key`, `dedup_node`, `dedup_part`) rows;
  3. groupby(`dedup_part`).map_groups(`bucket_edges`): Ray Data's hash shuffle brings every key to
     one group; rows sharing a key become candidate edges (a vectorized sort, no per-row Python);
  4. `candidate_rows` (map_batches): the signature rows of nodes in some edge;
  5. on the driver (`resolve`): same text hash = exact duplicate; other edges are kept where the
     signatures agree on at least `threshold` of their values; clusters are SciPy's connected
     components over integer positions (a union-find); one kept row per cluster. Candidate pairs
     are few (about bands x duplicates), so the driver holds only them and their rows'
     signatures, never the whole dataset;
  6. `mark` (map_batches): the rows to drop get status `eliminated`, reason `duplicate` (same
     normalized text as the kept row) or `near_duplicate`, and `duplicate_of` = the kept row's id.

The kept row of a cluster: the earliest round, then the longest answer, then the smallest id. Rows
whose `dedup_target` is false (seeds, earlier rounds) are compared against but never marked.
"""

from __future__ import annotations

import array
import contextlib
import itertools
import logging
import math
import time
from dataclasses import dataclass, replace
from typing import List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray
from rensa import RMinHash

from evol_ray import columns as C
from evol_ray import text

log = logging.getLogger("evol_ray")

_MUL = np.uint64(0x100000001B3)  # FNV-1a 64 prime: folds a band's values into one key
_EXACT_SALT = np.uint64(0x45584143544B4559)  # keeps exact keys apart from band keys
# Rows per batch of every stage here: Ray Data's default (1024) lets per-batch costs dominate.
BATCH_ROWS = 16384


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

def _mix(x: np.ndarray) -> np.ndarray:
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
            h = np.full(sig.shape[0], _mix(np.array([seed * 1_000_003 + b + 1], np.uint64))[0])
            for c in sig[:, b * rows:(b + 1) * rows].T:
                h = (h ^ c.astype(np.uint64)) * _MUL
            keys[:, b] = _mix(h)
    return keys


# --- stages -------------------------------------------------------------------------------------

def to_items(batch: pa.Table, target: bool) -> pa.Table:
    """Round attempts (or final rows) -> items: only `kept` rows (or all, for final rows without a
    status). Reads `id`, `round`, `instruction`, `response`, `status`; writes the items columns."""
    if C.STATUS in batch.column_names:
        batch = batch.filter(pc.equal(batch[C.STATUS], C.KEPT))
    return pa.table({
        C.ID: batch[C.ID],
        C.ROUND: batch[C.ROUND].cast(pa.int32()),
        C.INSTRUCTION: batch[C.INSTRUCTION],
        C.RESPONSE: batch[C.RESPONSE],
        C.DEDUP_TARGET: pa.array(np.full(batch.num_rows, target)),
    })


def seed_items(batch: pa.Table) -> pa.Table:
    """Seed pool rows -> items of round 0 that are compared against, never marked. Blank seeds
    are left out (round 1 flags them `invalid_input`)."""
    batch = batch.filter(pc.not_equal(pc.utf8_trim_whitespace(batch[C.INSTRUCTION]), ""))
    return pa.table({
        C.ID: batch[C.ID],
        C.ROUND: pa.array(np.zeros(batch.num_rows, np.int32)),
        C.INSTRUCTION: batch[C.INSTRUCTION],
        C.RESPONSE: batch[C.RESPONSE],
        C.DEDUP_TARGET: pa.array(np.zeros(batch.num_rows, bool)),
    })


def signature_rows(batch: pa.Table, p: Params) -> pa.Table:
    """Items -> what the later stages need per item, computed once: reads `id`, `round`,
    `instruction`, `response`, `dedup_target`; writes `dedup_node`, `id`, `round`, `answer_len`,
    `text_hash` (of the normalized instruction), `dedup_target` and, for near dedup, `sig`."""
    ids = batch[C.ID].combine_chunks() if isinstance(batch[C.ID], pa.ChunkedArray) else batch[C.ID]
    norm = text.normalize(batch[C.INSTRUCTION])
    nodes = node_ids(ids)
    cols = {
        C.DEDUP_NODE: nodes,
        C.ID: ids,
        C.ROUND: batch[C.ROUND],
        "answer_len": pc.fill_null(pc.utf8_length(batch[C.RESPONSE]), 0),
        "text_hash": text.hash64(norm),
        C.DEDUP_TARGET: batch[C.DEDUP_TARGET],
    }
    if p.near:
        sig = signatures(norm, nodes, p)
        cols["sig"] = pa.FixedSizeListArray.from_arrays(pa.array(sig.ravel()), p.num_perm)
    return pa.table(cols)


def _sig_matrix(table: pa.Table, p: Params) -> np.ndarray:
    col = table["sig"]
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return col.flatten().to_numpy().reshape(-1, p.num_perm)


def key_rows(sigs: pa.Table, p: Params) -> pa.Table:
    """Signature rows -> one row per (item, key): one key per LSH band for near dedup (exact
    copies share every band, and `resolve` tells them apart by `text_hash`), else the exact-text
    key alone. Writes `dedup_key`, `dedup_node`, `dedup_part`."""
    nodes = sigs[C.DEDUP_NODE].to_numpy()
    if p.near:
        keys = band_keys(_sig_matrix(sigs, p), p.bands, p.rows, p.seed)
    else:
        keys = _mix(sigs["text_hash"].to_numpy() ^ _EXACT_SALT)[:, None]
    key = keys.ravel()
    return pa.table({
        C.DEDUP_KEY: key,
        C.DEDUP_NODE: np.repeat(nodes, keys.shape[1]),
        C.DEDUP_PART: (key % np.uint64(p.partitions)).astype(np.int32),
    })


EDGE_SCHEMA = pa.schema([("a", pa.uint64()), ("b", pa.uint64())])
MARK_SCHEMA = pa.schema([(C.ID, pa.string()), (C.REASON, pa.string()), (C.DUPLICATE_OF, pa.string())])


def bucket_edges(group: pa.Table) -> pa.Table:
    """All key rows of one shuffle partition -> candidate edges: within each run of equal
    `dedup_key`, an edge from the run's smallest node to each other node (a star: enough for
    connected components, and size-linear where a bucket is large)."""
    key = group[C.DEDUP_KEY].to_numpy()
    node = group[C.DEDUP_NODE].to_numpy()
    # Most keys occur once. Keep only rows whose key repeats (a sort of the keys alone and a
    # binary search), so the two-column sort below runs on the few shared buckets: 4x faster.
    s = np.sort(key)
    shared = np.unique(s[1:][s[1:] == s[:-1]])
    if len(shared) == 0:
        return EDGE_SCHEMA.empty_table()
    sel = shared[np.minimum(np.searchsorted(shared, key), len(shared) - 1)] == key
    key, node = key[sel], node[sel]
    order = np.lexsort((node, key))
    key, node = key[order], node[order]
    new_run = np.ones(len(key), bool)
    new_run[1:] = key[1:] != key[:-1]
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(len(key)), 0))
    take = ~new_run & (node != node[run_start])
    return pa.table({"a": node[run_start][take], "b": node[take]}, schema=EDGE_SCHEMA)


def candidate_rows(sigs: pa.Table, nodes: np.ndarray) -> pa.Table:
    """Signature rows -> those in some candidate edge (`nodes`: sorted, unique). A binary search
    per row: `np.isin` re-sorts `nodes` on every batch (90 ms vs 2.5 ms per batch at 1M rows)."""
    x = sigs[C.DEDUP_NODE].to_numpy()
    if len(nodes) == 0:
        return sigs.slice(0, 0)
    at = np.minimum(np.searchsorted(nodes, x), len(nodes) - 1)
    return sigs.filter(pa.array(nodes[at] == x))


def resolve(edges: pa.Table, cands: pa.Table, p: Params) -> pa.Table:
    """Driver side: candidate edges and candidate rows -> marks (`id`, `reason`, `duplicate_of`).

    Duplicate edges collapse, near edges are kept only where the signatures agree on at least
    `threshold` of their values, clusters are SciPy's connected components (a union-find over
    integer positions), and the kept row of each cluster follows the rule in the module doc."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    empty = MARK_SCHEMA.empty_table()
    if edges.num_rows == 0 or cands.num_rows == 0:
        return empty
    order = np.argsort(cands[C.DEDUP_NODE].to_numpy())
    cands = cands.take(pa.array(order))
    node = cands[C.DEDUP_NODE].to_numpy()
    a = np.searchsorted(node, edges["a"].to_numpy())
    b = np.searchsorted(node, edges["b"].to_numpy())
    # collapse repeated edges (one per shared band)
    o = np.lexsort((b, a))
    a, b = a[o], b[o]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    a, b = a[first], b[first]
    th = cands["text_hash"].to_numpy()
    exact = th[a] == th[b]
    accept = exact.copy()
    if p.near:
        sig = _sig_matrix(cands, p)
        todo = np.flatnonzero(~exact)
        need = math.ceil(p.threshold * p.num_perm)  # agreeing values for an estimate >= threshold
        for i in range(0, len(todo), 65536):  # chunks bound the driver's memory
            idx = todo[i:i + 65536]
            agree = (sig[a[idx]] == sig[b[idx]]).sum(axis=1)
            accept[idx] = agree >= need
    a, b = a[accept], b[accept]
    n = len(node)
    _, label = connected_components(coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)),
                                    directed=False)
    rnd = cands[C.ROUND].to_numpy()
    alen = cands["answer_len"].to_numpy()
    ids = cands[C.ID].combine_chunks() if isinstance(cands[C.ID], pa.ChunkedArray) else cands[C.ID]
    rank = np.empty(n, np.int64)
    rank[pc.sort_indices(ids).to_numpy()] = np.arange(n)  # smallest id first
    o = np.lexsort((rank, -alen, rnd, label))
    is_first = np.ones(n, bool)
    is_first[1:] = label[o][1:] != label[o][:-1]
    rep_of_label = np.empty(label.max() + 1, np.int64)
    rep_of_label[label[o][is_first]] = o[is_first]
    rep = rep_of_label[label]
    target = cands[C.DEDUP_TARGET].to_numpy(zero_copy_only=False)
    marked = np.flatnonzero(target & (rep != np.arange(n)))
    if len(marked) == 0:
        return empty
    same = pa.array((th[marked] == th[rep[marked]]) & p.exact)
    return pa.table({C.ID: ids.take(pa.array(marked)).cast(pa.string()),
                     C.REASON: pc.if_else(same, C.R_DUPLICATE, C.R_NEAR_DUPLICATE),
                     C.DUPLICATE_OF: ids.take(pa.array(rep[marked])).cast(pa.string())})


def mark(batch: pa.Table, marks: pa.Table) -> pa.Table:
    """Attempt rows -> the same rows, those in `marks` eliminated: reads `id`; writes `status`,
    `reason`, `duplicate_of`."""
    if C.DUPLICATE_OF not in batch.column_names:
        batch = batch.append_column(C.DUPLICATE_OF, pa.nulls(batch.num_rows, pa.string()))
    if marks.num_rows == 0 or batch.num_rows == 0:
        return batch
    idx = pc.index_in(batch[C.ID], value_set=marks[C.ID].combine_chunks())
    hit = pc.is_valid(idx)
    reason = pc.take(marks[C.REASON].combine_chunks(), idx)
    dup = pc.take(marks[C.DUPLICATE_OF].combine_chunks(), idx)
    out = batch
    for name, value in ((C.STATUS, pa.scalar(C.ELIMINATED)), (C.REASON, reason), (C.DUPLICATE_OF, dup)):
        out = out.set_column(out.schema.get_field_index(name), name,
                             pc.if_else(hit, value, out[name]).cast(out.schema.field(name).type))
    return out


# --- wiring ------------------------------------------------------------------------------------

def _collect(ds: ray.data.Dataset, schema: Optional[pa.Schema] = None) -> pa.Table:
    tables = [t for t in ds.iter_batches(batch_format="pyarrow", batch_size=None) if t.num_rows]
    if not tables:
        return schema.empty_table() if schema is not None else pa.table({})
    return pa.concat_tables(tables)


KEY_ROWS_PER_PARTITION = 250_000
KEY_ROW_BYTES = 20  # dedup_key, dedup_node (uint64), dedup_part (int32)
MAP_TASKS_PER_CPU = 4


@contextlib.contextmanager
def _shuffle_map_batches(ds: ray.data.Dataset, key_bytes: int):
    """While `ds` runs: its shuffle's map tasks each take about key_bytes / (MAP_TASKS_PER_CPU x
    cluster CPUs), at least 16 MiB, at most Ray's own setting. Ray Data coalesces a node's input
    blocks into one map task up to `shuffle_input_batch_bytes` (1 GiB), so below that the whole
    map side ran as one serial task after the last key block (1M items: 3 s of 14 s saved). The
    setting lives on the context `ds` shares with the datasets it derives from, so it is restored."""
    ctx = ds.context
    before = ctx.shuffle_input_batch_bytes
    cpus = max(1.0, ray.cluster_resources().get("CPU", 1.0))
    want = int(key_bytes / (MAP_TASKS_PER_CPU * cpus))
    ctx.shuffle_input_batch_bytes = max(16 << 20, min(before, want)) if before > 0 else before
    try:
        yield
    finally:
        ctx.shuffle_input_batch_bytes = before


def keys_per_item(p: Params) -> int:
    """Key rows `key_rows` writes per item: one per band, or the exact-text key alone."""
    return p.bands if p.near else 1


def shuffle_partitions(items: int, p: Params) -> int:
    """Shuffle partitions for `items` items: about KEY_ROWS_PER_PARTITION key rows each, at most
    `p.partitions`. A round of a few thousand rows then groups in one partition instead of paying
    for dozens of near-empty reduce tasks (9 s of 64 partitions for 256 items on 2 cores)."""
    key_rows = items * keys_per_item(p)
    return max(1, min(p.partitions, math.ceil(key_rows / KEY_ROWS_PER_PARTITION)))


def target_count(batch: pa.Table) -> pa.Table:
    """Signature rows -> one row: how many are targets (reads `dedup_target`)."""
    return pa.table({"n": [pc.sum(batch[C.DEDUP_TARGET].cast(pa.int64())).as_py() or 0]})


def _targets(sigs: ray.data.Dataset) -> int:
    # A map and a tiny collect: Ray Data's own `sum` starts a hash aggregation (4 s on 2 cores).
    return sum(_collect(sigs.map_batches(target_count, batch_format="pyarrow", batch_size=None))["n"].to_pylist())


def find_duplicates(items: ray.data.Dataset, p: Params) -> pa.Table:
    """Items dataset -> marks (`id`, `reason`, `duplicate_of`) for the target rows to drop.
    Logs each phase's seconds and sizes (logger `evol_ray`, INFO)."""
    t0 = time.perf_counter()
    sigs = items.map_batches(signature_rows, fn_kwargs={"p": p}, batch_format="pyarrow",
                             batch_size=BATCH_ROWS).materialize()
    n = sigs.count()
    t_sig = time.perf_counter()
    # Nothing that could be marked (no kept row this round): no shuffle at all. (Ray's hash shuffle
    # also cannot sort a schema-less empty input.)
    if n == 0 or not _targets(sigs):
        log.info("dedup: %d items, none to check; signatures %.1fs", n, time.perf_counter() - t0)
        return MARK_SCHEMA.empty_table()
    p = replace(p, partitions=shuffle_partitions(n, p))
    keys = sigs.map_batches(key_rows, fn_kwargs={"p": p}, batch_format="pyarrow", batch_size=BATCH_ROWS)
    if p.partitions == 1:
        # Small data: every key row in one block. Ray's hash shuffle would start its aggregator
        # actors for a single group (about 4 s on 2 cores, longer than the work).
        grouped = keys.repartition(1).map_batches(bucket_edges, batch_format="pyarrow", batch_size=None)
    else:
        grouped = keys.groupby(C.DEDUP_PART, num_partitions=p.partitions).map_groups(
            bucket_edges, batch_format="pyarrow")
    with _shuffle_map_batches(grouped, n * keys_per_item(p) * KEY_ROW_BYTES):
        edges = _collect(grouped, EDGE_SCHEMA)
    t_edges = time.perf_counter()
    nodes = np.unique(np.concatenate([edges["a"].to_numpy(), edges["b"].to_numpy()]))
    cands = _collect(sigs.map_batches(candidate_rows, fn_kwargs={"nodes": nodes}, batch_format="pyarrow",
                                      batch_size=BATCH_ROWS)) if len(nodes) else pa.table({})
    t_cands = time.perf_counter()
    marks = resolve(edges, cands, p)  # no edges or no candidates: no marks
    log.info("dedup: %d items; signatures %.1fs; %d candidate edges from %d shuffle partition(s) %.1fs; "
             "%d candidate rows %.1fs; %d marked %.1fs", n, t_sig - t0, edges.num_rows, p.partitions,
             t_edges - t_sig, cands.num_rows, t_cands - t_edges, marks.num_rows, time.perf_counter() - t_cands)
    return marks


def dedup(ds: ray.data.Dataset, p: Params, reference: Optional[ray.data.Dataset] = None,
          target: bool = True) -> ray.data.Dataset:
    """Round attempts (or final rows) -> the same rows, duplicates among their `kept` rows, and of
    `reference` items (seeds, earlier rounds), eliminated with a reason and `duplicate_of`."""
    ds = ds.materialize()  # read twice below (items, then marking): upstream stages run once
    items = ds.map_batches(to_items, fn_kwargs={"target": target}, batch_format="pyarrow",
                           batch_size=BATCH_ROWS)
    if reference is not None:
        items = items.union(reference)
    marks = find_duplicates(items, p)  # materializes the items' signatures, read by two stages
    return ds.map_batches(mark, fn_kwargs={"marks": marks}, batch_format="pyarrow", batch_size=BATCH_ROWS)


def reference_items(seeds: Optional[ray.data.Dataset], earlier: List[ray.data.Dataset]) -> Optional[ray.data.Dataset]:
    """Seeds (pool rows) and earlier rounds' attempts -> the items a round is compared against."""
    parts = []
    if seeds is not None:
        parts.append(seeds.map_batches(seed_items, batch_format="pyarrow", batch_size=BATCH_ROWS))
    parts += [d.map_batches(to_items, fn_kwargs={"target": False}, batch_format="pyarrow",
                            batch_size=BATCH_ROWS) for d in earlier]
    if not parts:
        return None
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
