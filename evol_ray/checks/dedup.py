"""Exact and near-duplicate dedup of instructions, global over a round, earlier rounds and seeds.

Exact: the xxh3-64 hash of the `evol_ray.checks.text.normalize`d instruction. Near: MinHash
signatures and LSH banding from `evol_ray.checks.minhash`, then every candidate pair is confirmed on
its MinHash estimate of Jaccard similarity, so a pair below `threshold` is never flagged.

As Ray Data stages, on "items" (`id`, `round`, `instruction`, `response`, `dedup_target`):
  1. `signature_rows` (map_batches, the hot path): per item a node id (uint64 of the id), the
     normalized-text hash, and the MinHash signature; materialized, since later stages read it;
  2. `key_rows` (map_batches): one uint64 key per LSH band (or, without near dedup, the exact-text
     key), exploded to (`dedup_key`, `dedup_node`, `dedup_part`) rows;
  3. pass 1, groupby(`dedup_part`).map_groups(`shared_keys`): Ray Data's hash shuffle brings every
     key to one group; the rows of keys that repeat (a vectorized sort, no per-row Python) are the
     buckets to check and the items in them;
  4. pass 2, each bucket's star of candidate edges (from its smallest node) checked (`_holds`):
     on the driver if the candidates' signatures fit `DRIVER_CHECK_BYTES` (`verified_on_driver`),
     else `candidate_key_rows` then groupby(`dedup_part`).map_groups(`verified_edges`);
  5. on the driver (`checks.clusters.components`): the verified edges and a few signature-less
     columns of their nodes; connected components (SciPy, a union-find), one kept row per
     cluster. Driver memory grows with the duplicates, not the data (signatures: bounded);
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
from evol_ray.checks.clusters import MARK_SCHEMA, components
from evol_ray.checks.minhash import (EXACT_SALT, Params, agreeing_values, band_keys, mix64, node_ids,
                                     params_from, signatures)
from evol_ray.stage import WHOLE_BLOCK, Stage

log = logging.getLogger("evol_ray")

BATCH_ROWS = 16384  # rows per batch of every stage here: Ray Data's 1024 lets per-batch costs dominate

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


def _item_keys(sigs: pa.Table, p: Params) -> np.ndarray:
    """The keys of each signature row, shape (rows, keys_per_item(p))."""
    if p.near:
        return band_keys(_sig_matrix(sigs, p), p.bands, p.rows, p.seed)
    return mix64(sigs["text_hash"].to_numpy() ^ EXACT_SALT)[:, None]


def key_rows(sigs: pa.Table, p: Params) -> pa.Table:
    """Signature rows -> one row per (item, key): one key per LSH band for near dedup (exact
    copies share every band, and the check tells them apart by `text_hash`), else the exact-text
    key alone. Writes `dedup_key`, `dedup_node`, `dedup_part`."""
    nodes = sigs[C.DEDUP_NODE].to_numpy()
    keys = _item_keys(sigs, p)
    key = keys.ravel()
    return pa.table({
        C.DEDUP_KEY: key,
        C.DEDUP_NODE: np.repeat(nodes, keys.shape[1]),
        C.DEDUP_PART: (key % np.uint64(p.partitions)).astype(np.int32),
    })


EDGE_SCHEMA = pa.schema([("a", pa.uint64()), ("b", pa.uint64())])


SHARED_SCHEMA = pa.schema([(C.DEDUP_KEY, pa.uint64()), (C.DEDUP_NODE, pa.uint64())])


def _repeated(key: np.ndarray) -> np.ndarray:
    """Mask of the entries of `key` whose value occurs more than once. Most keys occur once: a
    sort of the keys alone and a binary search, so later sorts run on the few shared buckets."""
    s = np.sort(key)
    shared = np.unique(s[1:][s[1:] == s[:-1]])
    if len(shared) == 0:
        return np.zeros(len(key), bool)
    return shared[np.minimum(np.searchsorted(shared, key), len(shared) - 1)] == key


def _stars(key: np.ndarray, node: np.ndarray):
    """Rows sharing a key -> (root, member) row positions: within each run of equal key, the run's
    smallest node to each other node (a star: enough for connected components, and size-linear
    where a bucket is large)."""
    order = np.lexsort((node, key))
    key, node = key[order], node[order]
    new_run = np.ones(len(key), bool)
    new_run[1:] = key[1:] != key[:-1]
    run_start = np.maximum.accumulate(np.where(new_run, np.arange(len(key)), 0))
    take = ~new_run & (node != node[run_start])
    return order[run_start[take]], order[take]


def shared_keys(group: pa.Table) -> pa.Table:
    """Pass 1, all key rows of one shuffle partition -> the rows of keys that repeat
    (`dedup_key`, `dedup_node`): which buckets pass 2 checks, and which items are in one."""
    sel = pa.array(_repeated(group[C.DEDUP_KEY].to_numpy()))
    return group.select([C.DEDUP_KEY, C.DEDUP_NODE]).filter(sel)


def candidate_key_rows(sigs: pa.Table, nodes: np.ndarray, keys: np.ndarray, p: Params) -> pa.Table:
    """Pass 2, signature rows -> one row per (candidate item, shared key), carrying what the check
    needs (`dedup_key`, `dedup_node`, `dedup_part`, `text_hash` and, for near dedup, `sig`), so
    that each bucket is checked where it lands and no process holds every candidate's signature.
    `nodes`, `keys`: sorted, unique (from pass 1)."""
    sigs = candidate_rows(sigs, nodes)
    k = _item_keys(sigs, p)
    key = k.ravel()
    hit = keys[np.minimum(np.searchsorted(keys, key), len(keys) - 1)] == key  # keys: not empty
    row = np.repeat(np.arange(sigs.num_rows), k.shape[1])[hit]
    key = key[hit]
    cols = {C.DEDUP_KEY: key, C.DEDUP_NODE: sigs[C.DEDUP_NODE].to_numpy()[row],
            C.DEDUP_PART: (key % np.uint64(p.partitions)).astype(np.int32),
            "text_hash": sigs["text_hash"].to_numpy()[row]}
    if p.near:
        cols["sig"] = pa.FixedSizeListArray.from_arrays(pa.array(_sig_matrix(sigs, p)[row].ravel()), p.num_perm)
    return pa.table(cols)


def _holds(a: np.ndarray, b: np.ndarray, th: np.ndarray, sig: Optional[np.ndarray], p: Params) -> np.ndarray:
    """Which pairs of row positions (a, b) are duplicates: the same `text_hash`, or (near dedup)
    signatures agreeing on at least `threshold` of their values."""
    accept = th[a] == th[b]
    if p.near:
        todo = np.flatnonzero(~accept)
        for i in range(0, len(todo), 65536):  # chunks bound the memory of the comparison
            idx = todo[i:i + 65536]
            accept[idx] = (sig[a[idx]] == sig[b[idx]]).sum(axis=1) >= agreeing_values(p)
    return accept


def verified_edges(group: pa.Table, p: Params) -> pa.Table:
    """Pass 2, the candidate key rows of one shuffle partition -> the candidate edges (`_stars`,
    the same as pass 1's buckets give) that hold (`_holds`). A pair sharing several bands comes
    out once per band; the driver collapses them."""
    key = group[C.DEDUP_KEY].to_numpy()
    node = group[C.DEDUP_NODE].to_numpy()
    a, b = _stars(key, node)
    accept = _holds(a, b, group["text_hash"].to_numpy(), _sig_matrix(group, p) if p.near else None, p)
    return pa.table({"a": node[a[accept]], "b": node[b[accept]]}, schema=EDGE_SCHEMA)


def verified_on_driver(shared: pa.Table, cands: pa.Table, p: Params) -> pa.Table:
    """Pass 2 without a shuffle, for few candidates: pass 1's shared key rows and the candidate
    rows (with signatures) -> the same edges as `verified_edges` gives, each pair checked once."""
    key, node = shared[C.DEDUP_KEY].to_numpy(), shared[C.DEDUP_NODE].to_numpy()
    a, b = _stars(key, node)
    pairs = np.unique(np.stack([node[a], node[b]], axis=1), axis=0).reshape(-1, 2)
    cnode = cands[C.DEDUP_NODE].to_numpy()
    order = np.argsort(cnode)
    at_a = order[np.searchsorted(cnode[order], pairs[:, 0])]
    at_b = order[np.searchsorted(cnode[order], pairs[:, 1])]
    accept = _holds(at_a, at_b, cands["text_hash"].to_numpy(), _sig_matrix(cands, p) if p.near else None, p)
    return pa.table({"a": pairs[accept, 0], "b": pairs[accept, 1]}, schema=EDGE_SCHEMA)


def candidate_rows(sigs: pa.Table, nodes: np.ndarray) -> pa.Table:
    """Signature rows -> those in some candidate edge (`nodes`: sorted, unique). A binary search
    per row: `np.isin` re-sorts `nodes` on every batch (90 ms vs 2.5 ms per batch at 1M rows)."""
    x = sigs[C.DEDUP_NODE].to_numpy()
    if len(nodes) == 0:
        return sigs.slice(0, 0)
    at = np.minimum(np.searchsorted(nodes, x), len(nodes) - 1)
    return sigs.filter(pa.array(nodes[at] == x))


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
SHARED_KEYS = Stage(shared_keys, WHOLE_BLOCK)
CANDIDATE_KEYS = Stage(candidate_key_rows, BATCH_ROWS)
VERIFIED_EDGES = Stage(verified_edges, WHOLE_BLOCK)
CANDIDATES = Stage(candidate_rows, BATCH_ROWS)
# what `components` reads of a candidate row: everything but its signature
_NODE_COLUMNS = [C.DEDUP_NODE, C.ID, C.ROUND, "answer_len", "text_hash", C.DEDUP_TARGET]
MARK = Stage(mark, BATCH_ROWS)

def _collect(ds: ray.data.Dataset, schema: Optional[pa.Schema] = None) -> pa.Table:
    tables = [t for t in ds.iter_batches(batch_format="pyarrow", batch_size=WHOLE_BLOCK) if t.num_rows]
    if not tables:
        return schema.empty_table() if schema is not None else pa.table({})
    return pa.concat_tables(tables)


KEY_ROWS_PER_PARTITION = 250_000
KEY_ROW_BYTES = 20  # dedup_key, dedup_node (uint64), dedup_part (int32)
PASS2_BYTES_PER_PARTITION = 256 << 20
# Candidates' signatures up to this size are checked on the driver (one collect, no second shuffle:
# 1M items, 275k candidates, 140 MB); above it, in pass 2's shuffle. A bound, not a share of the data.
DRIVER_CHECK_BYTES = 256 << 20
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


def keys_per_item(p: Params) -> int:  # key rows `key_rows` writes per item
    return p.bands if p.near else 1


def shuffle_partitions(items: int, p: Params) -> int:
    """Shuffle partitions for `items` items: about KEY_ROWS_PER_PARTITION key rows each, at most
    `p.partitions`. A round of a few thousand rows then groups in one partition instead of paying
    for dozens of near-empty reduce tasks (9 s of 64 partitions for 256 items on 2 cores)."""
    key_rows = items * keys_per_item(p)
    return max(1, min(p.partitions, math.ceil(key_rows / KEY_ROWS_PER_PARTITION)))


def target_count(batch: pa.Table) -> pa.Table:  # signature rows -> how many are targets
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
    with _shuffle_map_batches(sigs, n * keys_per_item(p) * KEY_ROW_BYTES):
        shared = _collect(_by_part(KEYS(sigs, p=p), p.partitions, SHARED_KEYS), SHARED_SCHEMA)
    t_shared = time.perf_counter()
    keys = np.unique(shared[C.DEDUP_KEY].to_numpy())
    nodes = np.unique(shared[C.DEDUP_NODE].to_numpy())
    pass2_bytes = shared.num_rows * (KEY_ROW_BYTES + 8 + (4 * p.num_perm if p.near else 0))
    on_driver = len(nodes) * (4 * p.num_perm if p.near else 8) <= DRIVER_CHECK_BYTES
    if not len(keys):
        edges = EDGE_SCHEMA.empty_table()
    elif on_driver:  # few candidates: their signatures fit a fixed budget, no second shuffle
        edges = verified_on_driver(shared, _collect(CANDIDATES(sigs, nodes=nodes)), p)
    else:
        # pass 2 partitions by bytes: its rows carry signatures, and are few (items in a bucket)
        p2 = replace(p, partitions=max(1, min(p.partitions, math.ceil(pass2_bytes / PASS2_BYTES_PER_PARTITION))))
        verified = _by_part(CANDIDATE_KEYS(sigs, nodes=nodes, keys=keys, p=p2), p2.partitions, VERIFIED_EDGES, p=p2)
        with _shuffle_map_batches(verified, pass2_bytes):
            edges = _collect(verified, EDGE_SCHEMA)
    del shared
    t_edges = time.perf_counter()
    in_edges = np.unique(np.concatenate([edges["a"].to_numpy(), edges["b"].to_numpy()]))
    cands = (_collect(CANDIDATES(sigs.select_columns(_NODE_COLUMNS), nodes=in_edges))
             if len(in_edges) else pa.table({}))
    t_cands = time.perf_counter()
    marks = components(edges, cands, p.exact)  # no edges or no candidates: no marks
    log.info("dedup: %d items; signatures %.1fs; %d items in %d shared buckets from %d shuffle "
             "partition(s) %.1fs; %d verified edges (checked %s) %.1fs; %d rows in them %.1fs; %d marked %.1fs",
             n, t_sig - t0, len(nodes), len(keys), p.partitions, t_shared - t_sig, edges.num_rows,
             "on the driver" if on_driver else "in the shuffle",
             t_edges - t_shared, cands.num_rows, t_cands - t_edges, marks.num_rows,
             time.perf_counter() - t_cands)
    return marks


def _by_part(rows: ray.data.Dataset, partitions: int, stage: Stage, **kwargs) -> ray.data.Dataset:
    """`stage` on all rows of each `dedup_part`: Ray Data's hash shuffle, or, for small data,
    every row in one block (the hash shuffle would start its aggregator actors for a single
    group: about 4 s on 2 cores, longer than the work)."""
    if partitions == 1:
        return stage(rows.repartition(1), **kwargs)
    return rows.groupby(C.DEDUP_PART, num_partitions=partitions).map_groups(
        stage.fn, batch_format="pyarrow", fn_kwargs=kwargs or None)


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
