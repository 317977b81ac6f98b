"""Exact and near-duplicate dedup of instructions, global over a round, earlier rounds and seeds.

Exact: the xxh3-64 hash of the `evol_ray.checks.text.normalize`d instruction. Near: MinHash
signatures and LSH banding from `evol_ray.checks.minhash`, then every candidate pair is confirmed on
its MinHash estimate of Jaccard similarity, so a pair below `threshold` is never flagged.

As Ray Data stages, on "items" (`id`, `round`, `instruction`, `response`, `dedup_target`), made
from each source's rows (`to_items`: a round's kept rows; `seed_items`) in the same call:
  1. `signature_rows` (map_batches, the hot path): per item a node id (uint64 of the id), the
     normalized-text hash, and the MinHash signature; materialized, since later stages read it;
  2. `key_rows` (map_batches; it and the passes below are pure functions in
     `evol_ray.checks.buckets`): one uint64 key per LSH band (or, without near dedup, the exact-text
     key), exploded to (`dedup_key`, `dedup_node`, `dedup_part`) rows;
  3. pass 1, groupby(`dedup_part`).map_groups(`bucket_pairs`): Ray Data's hash shuffle brings
     every key to one group; each key that repeats (a vectorized sort, no per-row Python) is a
     bucket, and its star of candidate pairs (its smallest node to each other) is what is checked;
  4. pass 2, each pair checked on the two signatures, and 5. the clusters
     (`checks.clusters.pair_marks`: connected components of the edges that hold, SciPy's
     union-find, one kept row per cluster). Past one process they run in
     `evol_ray.checks.dedup_pass2`: in one Ray task while the candidates' signatures fit
     CHECK_BYTES, else pass 2 as two hash joins by node with the candidates' signature rows
     (`pair_rows` + `signature_side` -> `with_root_signature`, then -> `verified_pairs`) and the
     clusters by label propagation (`checks.clusters`). The driver holds no per-item data: the
     candidate nodes (which pick the candidates' rows) and the marks go from the task that makes
     them to the stages that read them through the object store; small data (LOCAL_BYTES) runs
     every pass in the driver's process instead;
  6. `mark` (map_batches): the rows to drop get status `eliminated`, reason `duplicate` (same
     normalized text as the kept row) or `near_duplicate`, and `duplicate_of` = the kept row's id.

The kept row of a cluster: the earliest round, then the longest answer, then the smallest id. Rows
whose `dedup_target` is false (seeds, earlier rounds) are compared against but never marked.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import replace
from typing import List, Optional, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from evol_ray import columns as C
from evol_ray.checks import text
from evol_ray.checks.buckets import bucket_pairs, candidate_rows, key_rows, star_pairs
from evol_ray.checks.clusters import MARK_SCHEMA, NODE_COLUMNS, pair_marks
from evol_ray.checks.dedup_pass2 import (BATCH_ROWS, CANDIDATES, by_part, clusters_in_ray, collect, marks_task,
                                         nodes_task, sig_row_bytes, verified_in_joins)
from evol_ray.checks.minhash import Params, node_ids, params_from, signatures
from evol_ray.stage import WHOLE_BLOCK, Stage, shuffle_map_batches, without_empty_blocks

log = logging.getLogger("evol_ray")


__all__ = ["Params", "params_from", "dedup", "reference_signatures", "find_duplicates"]

# --- stages -------------------------------------------------------------------------------------

def to_items(batch: pa.Table, target: bool, only_round: Optional[int] = None) -> pa.Table:
    """Round attempts (or final rows) -> items: only `kept` rows (or all, for final rows without a
    status), and only those of round `only_round` where given. Reads `id`, `round`, `instruction`,
    `response`, `status`; writes the items columns."""
    if C.STATUS in batch.column_names:
        batch = batch.filter(pc.equal(batch[C.STATUS], C.KEPT))
    if only_round is not None:
        batch = batch.filter(pc.equal(batch[C.ROUND], only_round))
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


def round_signature_rows(batch: pa.Table, p: Params, target: bool, only_round: Optional[int] = None) -> pa.Table:
    """Round attempts (or final rows) -> signature rows of their items (`to_items`), in one call."""
    return signature_rows(to_items(batch, target, only_round), p)


def seed_signature_rows(batch: pa.Table, p: Params) -> pa.Table:
    """Seed pool rows -> signature rows of their items (`seed_items`), in one call."""
    return signature_rows(seed_items(batch), p)


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


def mark_from_store(batch: pa.Table, marks_ref: ray.ObjectRef) -> pa.Table:
    """`mark`, with the marks read from the object store in the worker (zero-copy): the driver
    hands on a reference, never the marks themselves."""
    return mark(batch, ray.get(marks_ref))


# --- wiring ------------------------------------------------------------------------------------

ROUND_SIGNATURES = Stage(round_signature_rows, BATCH_ROWS)
SEED_SIGNATURES = Stage(seed_signature_rows, BATCH_ROWS)
KEYS = Stage(key_rows, BATCH_ROWS)
BUCKET_PAIRS = Stage(bucket_pairs, WHOLE_BLOCK)
MARK = Stage(mark_from_store, BATCH_ROWS)

KEY_ROWS_PER_PARTITION = 250_000
KEY_ROW_BYTES = 20  # dedup_key, dedup_node (uint64), dedup_part (int32)
# Signature rows up to this size (about 28k items) are deduped in one process on the driver: a
# 1k-row round then costs three Ray Data passes instead of seven, and no shuffle. Kept small, so
# the driver's memory for it (with the band keys and sorts, about 4x) stays near 60 MB.
LOCAL_BYTES = 16 << 20
# Candidates' signature rows up to this size are checked, and their clusters found, in one Ray task
# (1M items: 275k candidates, 160 MB; about 2x faster than the joins); beyond it, in two joins.
CHECK_BYTES = 256 << 20
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
    return sum(collect(TARGET_COUNT(sigs))["n"].to_pylist())


def find_duplicates(sigs: ray.data.Dataset, p: Params) -> pa.Table:
    """Signature rows (`signature_rows` of the items) -> marks (`id`, `reason`, `duplicate_of`) for
    the target rows to drop (`_find_marks`, fetched)."""
    return ray.get(_find_marks(sigs, p)[1])


def _find_marks(sigs: ray.data.Dataset, p: Params) -> Tuple[int, ray.ObjectRef]:
    """Signature rows -> (how many marks, a reference to the marks table in the object store).
    Three ways, by size, each with the same functions and marks:

      * signature rows that fit LOCAL_BYTES: collected once, every pass in this process (a
        shuffle's start-up and more Ray Data passes would cost more than the work);
      * else pass 1 in Ray Data; then, while the candidates' signatures fit CHECK_BYTES, pass 2
        and the clusters in one Ray task (`dedup_pass2.marks_task`), off the driver;
      * beyond that, pass 2 as two joins in Ray Data, the clusters by label propagation.

    The candidate nodes and the marks stay in the object store, made there by a task, except on
    the one-process path (small data): the driver holds no per-item data. Logs each phase's
    seconds and sizes (logger `evol_ray`, INFO)."""
    t0 = time.perf_counter()
    sigs = without_empty_blocks(sigs)  # materialized: every later stage reads it
    n = sigs.count()
    local = collect(sigs) if 0 < sigs.size_bytes() <= LOCAL_BYTES else None
    t_sig = time.perf_counter()
    # Nothing that could be marked (no kept row this round): no shuffle at all. (Ray's hash shuffle
    # also cannot sort a schema-less empty input.)
    if n == 0 or not (pc.any(local[C.DEDUP_TARGET]).as_py() if local is not None else _targets(sigs)):
        log.info("dedup: %d items, none to check; signatures %.1fs", n, time.perf_counter() - t0)
        return 0, ray.put(MARK_SCHEMA.empty_table())
    if local is not None:
        keyed = key_rows(local, p)
        a, b = star_pairs(keyed[C.DEDUP_KEY].to_numpy(), keyed[C.DEDUP_NODE].to_numpy())
        nodes = np.unique(np.concatenate([a, b]))
        n_nodes, t_pairs = len(nodes), time.perf_counter()
        marks = pair_marks(a, b, candidate_rows(local, nodes), p)
        n_marks, marks, where = marks.num_rows, ray.put(marks), "in this process"
    else:
        p = replace(p, partitions=shuffle_partitions(n, p))
        with shuffle_map_batches(sigs, n * keys_per_item(p) * KEY_ROW_BYTES):
            pairs = without_empty_blocks(by_part(KEYS(sigs, p=p), p.partitions, BUCKET_PAIRS))
        n_nodes, nodes = nodes_task.remote(pairs.to_arrow_refs())
        n_nodes, t_pairs = ray.get(n_nodes), time.perf_counter()
        if not n_nodes:
            n_marks, marks, where = 0, ray.put(MARK_SCHEMA.empty_table()), "-"
        elif n_nodes * sig_row_bytes(p) <= CHECK_BYTES:
            cands = CANDIDATES(sigs, nodes_ref=nodes)
            n_marks, marks = marks_task.remote(pairs.to_arrow_refs(), cands.to_arrow_refs(), p, False)
            n_marks, where = ray.get(n_marks), "in one task"
        else:
            edges = verified_in_joins(sigs, pairs, n_nodes, nodes, p)
            cands = CANDIDATES(sigs.select_columns(NODE_COLUMNS), nodes_ref=nodes)
            n_marks, marks = clusters_in_ray(edges, cands, p)
            where = "in two joins and label propagation"
    log.info("dedup: %d items; signatures %.1fs; pass 1 %s: %d items in candidate pairs %.1fs; pass 2 "
             "and clusters %s: %d marked %.1fs", n, t_sig - t0,
             "in this process" if local is not None else f"on {p.partitions} shuffle partition(s)",
             n_nodes, t_pairs - t_sig, where, n_marks, time.perf_counter() - t_pairs)
    return n_marks, marks


def dedup(ds: ray.data.Dataset, p: Params, reference: Optional[ray.data.Dataset] = None,
          target: bool = True, only_round: Optional[int] = None) -> ray.data.Dataset:
    """Round attempts (or final rows) -> the same rows, duplicates among their `kept` rows, and of
    `reference` (signature rows of the seeds and earlier rounds, `reference_signatures`),
    eliminated with a reason and `duplicate_of`. `only_round`: only that round's rows are
    compared (and can be marked)."""
    ds = ds.materialize()  # read twice below (items, then marking): upstream stages run once
    sigs = ROUND_SIGNATURES(ds, p=p, target=target, only_round=only_round)
    if reference is not None:
        sigs = sigs.union(reference)
    _, marks = _find_marks(sigs, p)  # materializes the signatures, read by two stages
    return MARK(ds, marks_ref=marks)


def reference_signatures(seeds: Optional[ray.data.Dataset], earlier: List[ray.data.Dataset],
                         p: Params) -> Optional[ray.data.Dataset]:
    """Seeds (pool rows) and earlier rounds' attempts -> signature rows of the items a round is
    compared against (never marked)."""
    parts = []
    if seeds is not None:
        parts.append(SEED_SIGNATURES(seeds, p=p))
    parts += [ROUND_SIGNATURES(d, p=p, target=False) for d in earlier]
    if not parts:
        return None
    return parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
