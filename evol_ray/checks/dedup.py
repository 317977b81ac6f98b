"""Exact and near-duplicate dedup of instructions, global over a round, earlier rounds and seeds.

Exact: the xxh3-64 hash of the `evol_ray.checks.text.normalize`d instruction. Near: MinHash
signatures and LSH banding from `evol_ray.checks.minhash`, then every candidate pair is confirmed on
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

import contextlib
import logging
import math
import time
from dataclasses import replace
from typing import List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from evol_ray import columns as C
from evol_ray.checks import text
from evol_ray.checks.minhash import (EXACT_SALT, Params, agreeing_values, band_keys, mix64, node_ids,
                                     params_from, signatures)
from evol_ray.stage import WHOLE_BLOCK, Stage

log = logging.getLogger("evol_ray")

# Rows per batch of every stage here: Ray Data's default (1024) lets per-batch costs dominate.
BATCH_ROWS = 16384

__all__ = ["Params", "params_from", "dedup", "reference_items", "find_duplicates"]

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
        keys = mix64(sigs["text_hash"].to_numpy() ^ EXACT_SALT)[:, None]
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
        need = agreeing_values(p)
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

ITEMS = Stage(to_items, BATCH_ROWS)
SEED_ITEMS = Stage(seed_items, BATCH_ROWS)
SIGNATURES = Stage(signature_rows, BATCH_ROWS)
KEYS = Stage(key_rows, BATCH_ROWS)
EDGES = Stage(bucket_edges, WHOLE_BLOCK)
CANDIDATES = Stage(candidate_rows, BATCH_ROWS)
MARK = Stage(mark, BATCH_ROWS)

def _collect(ds: ray.data.Dataset, schema: Optional[pa.Schema] = None) -> pa.Table:
    tables = [t for t in ds.iter_batches(batch_format="pyarrow", batch_size=WHOLE_BLOCK) if t.num_rows]
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


TARGET_COUNT = Stage(target_count, WHOLE_BLOCK)


def _targets(sigs: ray.data.Dataset) -> int:
    # A map and a tiny collect: Ray Data's own `sum` starts a hash aggregation (4 s on 2 cores).
    return sum(_collect(TARGET_COUNT(sigs))["n"].to_pylist())


def find_duplicates(items: ray.data.Dataset, p: Params) -> pa.Table:
    """Items dataset -> marks (`id`, `reason`, `duplicate_of`) for the target rows to drop.
    Logs each phase's seconds and sizes (logger `evol_ray`, INFO)."""
    t0 = time.perf_counter()
    sigs = SIGNATURES(items, p=p).materialize()
    n = sigs.count()
    t_sig = time.perf_counter()
    # Nothing that could be marked (no kept row this round): no shuffle at all. (Ray's hash shuffle
    # also cannot sort a schema-less empty input.)
    if n == 0 or not _targets(sigs):
        log.info("dedup: %d items, none to check; signatures %.1fs", n, time.perf_counter() - t0)
        return MARK_SCHEMA.empty_table()
    p = replace(p, partitions=shuffle_partitions(n, p))
    keys = KEYS(sigs, p=p)
    if p.partitions == 1:
        # Small data: every key row in one block. Ray's hash shuffle would start its aggregator
        # actors for a single group (about 4 s on 2 cores, longer than the work).
        grouped = EDGES(keys.repartition(1))
    else:
        grouped = keys.groupby(C.DEDUP_PART, num_partitions=p.partitions).map_groups(
            bucket_edges, batch_format="pyarrow")
    with _shuffle_map_batches(grouped, n * keys_per_item(p) * KEY_ROW_BYTES):
        edges = _collect(grouped, EDGE_SCHEMA)
    t_edges = time.perf_counter()
    nodes = np.unique(np.concatenate([edges["a"].to_numpy(), edges["b"].to_numpy()]))
    cands = _collect(CANDIDATES(sigs, nodes=nodes)) if len(nodes) else pa.table({})
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
    items = ITEMS(ds, target=target)
    if reference is not None:
        items = items.union(reference)
    marks = find_duplicates(items, p)  # materializes the items' signatures, read by two stages
    return MARK(ds, marks=marks)


def reference_items(seeds: Optional[ray.data.Dataset], earlier: List[ray.data.Dataset]) -> Optional[ray.data.Dataset]:
    """Seeds (pool rows) and earlier rounds' attempts -> the items a round is compared against."""
    parts = []
    if seeds is not None:
        parts.append(SEED_ITEMS(seeds))
    parts += [ITEMS(d, target=False) for d in earlier]
    if not parts:
        return None
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
