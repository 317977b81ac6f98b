"""Dedup past one process: the Ray tasks and Ray Data passes that `evol_ray.checks.dedup` routes a
large round to (its module doc has the whole method), after pass 1 has found the candidate pairs.

- `nodes_task`: the nodes in the candidate pairs, in one task, kept in the object store;
- `CANDIDATES`: the candidates' signature rows, picked in the workers by those nodes;
- `marks_task`: pass 2 (each pair checked on its two signatures) and the clusters in one Ray
  task, while the candidates' signatures fit `dedup.CHECK_BYTES`;
- beyond that, `verified_in_joins` (pass 2 as two hash joins by node with the candidates'
  signature rows, `evol_ray.checks.buckets`) and `clusters_in_ray` (min-label propagation and the
  kept row of each cluster, `evol_ray.checks.clusters`).

Each returns what it made as references to the object store: the driver holds no per-item data.
"""

from __future__ import annotations

import logging
import math
from typing import Optional, Tuple

import numpy as np
import pyarrow as pa
import ray

from evol_ray import columns as C
from evol_ray.checks.buckets import (OTHER, candidate_rows, pair_nodes, pair_rows, signature_side, verified_pairs,
                                     with_root_signature)
from evol_ray.checks.clusters import (MARK_SCHEMA, changed_count, cluster_marks, edge_rows, first_proposals,
                                      node_join_rows, pair_marks, propose, take_min, with_labels)
from evol_ray.checks.minhash import Params
from evol_ray.stage import WHOLE_BLOCK, Stage, by_partition, shuffle_map_batches, without_empty_blocks

log = logging.getLogger("evol_ray")

BATCH_ROWS = 16384  # rows per batch of every dedup stage: Ray Data's 1024 lets per-batch costs dominate
PASS2_BYTES_PER_PARTITION = 128 << 20  # pass 2's join rows carry signatures: partitions by bytes


def candidates_from_store(sigs: pa.Table, nodes_ref: ray.ObjectRef) -> pa.Table:
    """`candidate_rows`, with the candidate nodes read from the object store in the worker, as
    the marks are (`dedup.mark_from_store`)."""
    return candidate_rows(sigs, ray.get(nodes_ref))


PAIR_ROWS = Stage(pair_rows, BATCH_ROWS)
SIGNATURE_SIDE = Stage(signature_side, BATCH_ROWS)
WITH_ROOT_SIGNATURE = Stage(with_root_signature, WHOLE_BLOCK)
VERIFIED_PAIRS = Stage(verified_pairs, WHOLE_BLOCK)
CANDIDATES = Stage(candidates_from_store, BATCH_ROWS)
EDGE_ROWS = Stage(edge_rows, BATCH_ROWS)
FIRST_PROPOSALS = Stage(first_proposals, BATCH_ROWS)
TAKE_MIN = Stage(take_min, WHOLE_BLOCK)
PROPOSE = Stage(propose, WHOLE_BLOCK)
CHANGED_COUNT = Stage(changed_count, WHOLE_BLOCK)
NODE_JOIN_ROWS = Stage(node_join_rows, BATCH_ROWS)
WITH_LABELS = Stage(with_labels, WHOLE_BLOCK)
CLUSTER_MARKS = Stage(cluster_marks, WHOLE_BLOCK)


def collect(ds: ray.data.Dataset, schema: Optional[pa.Schema] = None) -> pa.Table:
    tables = [t for t in ds.iter_batches(batch_format="pyarrow", batch_size=WHOLE_BLOCK) if t.num_rows]
    if not tables:
        return schema.empty_table() if schema is not None else pa.table({})
    return pa.concat_tables(tables)


def by_part(rows: ray.data.Dataset, parts: int, stage: Stage, **kwargs) -> ray.data.Dataset:
    """`stage` on all rows of each `dedup_part` (`stage.by_partition`)."""
    return by_partition(rows, C.DEDUP_PART, parts, stage, drop_empty=False, **kwargs)


def sig_row_bytes(p: Params) -> int:
    return 64 + (4 * p.num_perm if p.near else 0)


def _tables(refs: list) -> Optional[pa.Table]:
    """The blocks behind `refs` as one table, or None when they hold no row."""
    tables = [t for t in ray.get(refs) if t.num_rows]
    return pa.concat_tables(tables) if tables else None


@ray.remote(num_cpus=1, num_returns=2)
def nodes_task(pair_refs: list) -> Tuple[int, np.ndarray]:
    """The nodes in the candidate pairs (sorted, unique), from their blocks: (how many, nodes).
    One task, since the work is tiny (a Ray Data pass over pass 1's partitions cost 2.5 s at 1M
    items); the nodes stay in the object store for the stages that read them."""
    pairs = _tables(pair_refs)
    nodes = pair_nodes(pairs)[C.DEDUP_NODE].to_numpy() if pairs is not None else np.zeros(0, np.uint64)
    return len(nodes), nodes


@ray.remote(num_cpus=1, num_returns=2)
def marks_task(pair_refs: list, cand_refs: list, p: Params, checked: bool) -> Tuple[int, pa.Table]:
    """Pass 2 and the clusters in one worker (`clusters.pair_marks`), from the blocks of the
    candidate pairs (or verified edges) and of the candidates' rows: (how many marks, marks)."""
    pairs, cands = _tables(pair_refs), _tables(cand_refs)
    a, b = (pairs[C.DEDUP_NODE], pairs[OTHER]) if not checked else (pairs["a"], pairs["b"])
    marks = pair_marks(a.to_numpy(), b.to_numpy(), cands, p, checked)
    return marks.num_rows, marks


@ray.remote(num_cpus=1, num_returns=2)
def _concat_task(refs: list) -> Tuple[int, pa.Table]:
    """Blocks of marks -> (how many, one table): made in a worker, so the driver never holds them."""
    marks = _tables(refs)
    marks = marks if marks is not None else MARK_SCHEMA.empty_table()
    return marks.num_rows, marks


def clusters_in_ray(edges: ray.data.Dataset, cands: ray.data.Dataset, p: Params) -> Tuple[int, ray.ObjectRef]:
    """The clusters in Ray Data (`evol_ray.checks.clusters`): each node's label is the least node
    it is connected to, by min-label propagation (a node offers its label to its neighbours and
    takes the least offered) until no label goes down; then node rows and labels joined on the
    node, and each label's kept row chosen where its rows land. Returns (how many marks, a
    reference to them)."""
    edges = without_empty_blocks(edges)
    jp = max(1, min(p.partitions, math.ceil(edges.count() * 64 / PASS2_BYTES_PER_PARTITION)))
    both_ways = without_empty_blocks(EDGE_ROWS(edges, partitions=jp))
    labels = by_part(FIRST_PROPOSALS(edges, partitions=jp), jp, TAKE_MIN, partitions=jp).materialize()
    steps = 1
    while sum(collect(CHANGED_COUNT(labels))["n"].to_pylist()):
        proposals = by_part(both_ways.union(labels), jp, PROPOSE, partitions=jp)
        labels = by_part(proposals, jp, TAKE_MIN, partitions=jp).materialize()
        steps += 1
    rows = NODE_JOIN_ROWS(without_empty_blocks(cands), partitions=jp).union(NODE_JOIN_ROWS(labels, partitions=jp))
    marks = by_part(by_part(rows, jp, WITH_LABELS, partitions=jp), jp, CLUSTER_MARKS, exact=p.exact)
    n_marks, marks = _concat_task.remote(marks.to_arrow_refs())
    log.info("dedup: clusters of %d edges in %d label step(s) on %d partition(s)", edges.count(), steps, jp)
    return ray.get(n_marks), marks


def verified_in_joins(sigs: ray.data.Dataset, pairs: ray.data.Dataset, n_nodes: int, nodes: ray.ObjectRef,
                       p: Params) -> ray.data.Dataset:
    """Pass 2 in Ray Data: candidate pairs joined with their nodes' signature rows on the root,
    then on the member (`evol_ray.checks.buckets`); returns the edges that hold, materialized."""
    join_bytes = 2 * n_nodes * sig_row_bytes(p) + pairs.size_bytes()
    jp = max(1, min(p.partitions, math.ceil(join_bytes / PASS2_BYTES_PER_PARTITION)))
    side = without_empty_blocks(SIGNATURE_SIDE(CANDIDATES(sigs, nodes_ref=nodes), p=p, partitions=jp))
    with shuffle_map_batches(side, join_bytes):
        carried = by_part(PAIR_ROWS(pairs, p=p, partitions=jp).union(side), jp, WITH_ROOT_SIGNATURE,
                           p=p, partitions=jp)
        return by_part(carried.union(side), jp, VERIFIED_PAIRS, p=p).materialize()
