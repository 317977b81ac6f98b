"""Clusters of verified duplicate pairs, and the one row each cluster keeps: the last step of
`evol_ray.checks.dedup` (its module doc has the whole method), run in one process. Pure NumPy and
SciPy, no Ray.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from evol_ray import columns as C
from evol_ray.checks.buckets import EDGE_SCHEMA, OTHER, candidate_rows, part_of, verified_here
from evol_ray.checks.minhash import Params

MARK_SCHEMA = pa.schema([(C.ID, pa.string()), (C.REASON, pa.string()), (C.DUPLICATE_OF, pa.string())])
# what `components` reads of a candidate row: everything but its signature
NODE_COLUMNS = [C.DEDUP_NODE, C.ID, C.ROUND, "answer_len", "text_hash", C.DEDUP_TARGET]


def pair_marks(a: np.ndarray, b: np.ndarray, cands: pa.Table, p: Params, checked: bool = False) -> pa.Table:
    """Candidate pairs (a[i], b[i]) and the rows of their nodes -> marks: the pairs checked on
    their signatures (`verified_here`; `checked`: they are verified edges already, and `cands`
    need no signature), then `components` of the edges that hold."""
    edges = pa.table({"a": a, "b": b}, schema=EDGE_SCHEMA) if checked else verified_here(a, b, cands, p)
    in_edges = np.unique(np.concatenate([edges["a"].to_numpy(), edges["b"].to_numpy()]))
    return components(edges, candidate_rows(cands.select(NODE_COLUMNS), in_edges), p.exact)


def components(edges: pa.Table, cands: pa.Table, exact: bool = True) -> pa.Table:
    """Verified edges and the rows of their nodes (no signature needed) -> marks (`id`, `reason`,
    `duplicate_of`), in one process.

    Repeated edges collapse, clusters are SciPy's connected components (a union-find over integer
    positions), and the kept row of each cluster follows the rule in the module doc
    (`marks_by_label`). What is held is the verified edges and a few columns per node in one:
    no signatures, nothing per row of the data. `cluster_labels` and `labelled_rows` are the
    same in Ray Data, for more edges than one process should hold."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    if edges.num_rows == 0 or cands.num_rows == 0:
        return MARK_SCHEMA.empty_table()
    order = np.argsort(cands[C.DEDUP_NODE].to_numpy())
    cands = cands.take(pa.array(order))
    node = cands[C.DEDUP_NODE].to_numpy()
    a = np.searchsorted(node, edges["a"].to_numpy())
    b = np.searchsorted(node, edges["b"].to_numpy())
    n = len(node)
    _, label = connected_components(coo_matrix((np.ones(len(a), np.int8), (a, b)), shape=(n, n)),
                                    directed=False)  # repeated edges add up, harmlessly
    return marks_by_label(label, cands, exact)


def marks_by_label(label: np.ndarray, cands: pa.Table, exact: bool) -> pa.Table:
    """Rows of nodes and each one's cluster label -> marks: in each cluster, the kept row is the
    earliest round, then the longest answer, then the smallest id; every other target row is
    marked, a `duplicate` when it has the kept row's normalized text (and `exact` is on), else a
    `near_duplicate`. A node alone in its label marks nothing."""
    n = cands.num_rows
    if n == 0:
        return MARK_SCHEMA.empty_table()
    label = np.unique(label, return_inverse=True)[1].reshape(-1)
    th = cands["text_hash"].to_numpy()
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
        return MARK_SCHEMA.empty_table()
    same = pa.array((th[marked] == th[rep[marked]]) & exact)
    return pa.table({C.ID: ids.take(pa.array(marked)).cast(pa.string()),
                     C.REASON: pc.if_else(same, C.R_DUPLICATE, C.R_NEAR_DUPLICATE),
                     C.DUPLICATE_OF: ids.take(pa.array(rep[marked])).cast(pa.string())})


# --- the same in Ray Data: labels by min-label propagation, then the kept row of each label -------
# Every shuffle of the labels shares one row shape: `dedup_node` (what a row is grouped on),
# `dedup_other` (an edge's other end), `dedup_label`, `dedup_own` (the node's current label, not
# a proposal), `dedup_changed` (the label went down in this step), `dedup_part`.
LABEL, OWN, CHANGED = "dedup_label", "dedup_own", "dedup_changed"
PROP_SCHEMA = pa.schema([(C.DEDUP_NODE, pa.uint64()), (OTHER, pa.uint64()), (LABEL, pa.uint64()),
                         (OWN, pa.bool_()), (CHANGED, pa.bool_()), (C.DEDUP_PART, pa.int32())])
# the kept-row step: node rows (`NODE_COLUMNS`) and label rows in one shape
NODE_JOIN_SCHEMA = pa.schema([(C.DEDUP_NODE, pa.uint64()), (C.ID, pa.string()), (C.ROUND, pa.int32()),
                              ("answer_len", pa.int64()), ("text_hash", pa.uint64()), (C.DEDUP_TARGET, pa.bool_()),
                              (LABEL, pa.uint64()), (C.DEDUP_PART, pa.int32())])


def _rows(node, partitions: int, **cols) -> pa.Table:
    """Proposal-shaped rows (`PROP_SCHEMA`) for `node`, with the given columns (others null)."""
    node = np.asarray(node, np.uint64)
    out = {C.DEDUP_NODE: node, C.DEDUP_PART: part_of(node, partitions)}
    return pa.table({f.name: out[f.name] if f.name in out else
                     (pa.array(cols[f.name], f.type) if f.name in cols else pa.nulls(len(node), f.type))
                     for f in PROP_SCHEMA}, schema=PROP_SCHEMA)


def edge_rows(edges: pa.Table, partitions: int) -> pa.Table:
    """Verified edges -> each edge both ways, keyed on its first end (self-loops left out)."""
    a, b = edges["a"].to_numpy(), edges["b"].to_numpy()
    a, b = a[a != b], b[a != b]
    return _rows(np.concatenate([a, b]), partitions, **{OTHER: np.concatenate([b, a])})


def first_proposals(edges: pa.Table, partitions: int) -> pa.Table:
    """Verified edges -> the first step's proposals: each end offers itself to the other, and its
    own label is itself."""
    a, b = edges["a"].to_numpy(), edges["b"].to_numpy()
    ends = np.concatenate([a, b])
    return pa.concat_tables([_rows(ends, partitions, **{LABEL: np.concatenate([b, a]), OWN: np.zeros(len(ends), bool)}),
                             _rows(ends, partitions, **{LABEL: ends, OWN: np.ones(len(ends), bool)})])


def take_min(group: pa.Table, partitions: int) -> pa.Table:
    """One shuffle partition of proposals (by node) -> each node's new label, the least it was
    offered (its own included), as own-label rows, `dedup_changed` where it went down."""
    node, label = group[C.DEDUP_NODE].to_numpy(), group[LABEL].to_numpy()
    own = group[OWN].to_numpy(zero_copy_only=False)
    o = np.lexsort((label, node))
    node, label, own = node[o], label[o], own[o]
    first = np.ones(len(node), bool)
    first[1:] = node[1:] != node[:-1]
    seg = np.cumsum(first) - 1
    was = np.zeros(int(first.sum()), np.uint64)
    was[seg[own]] = label[own]  # a node's own rows all hold one label
    new = label[first]  # sorted by label within a node: the least first
    return _rows(node[first], partitions, **{LABEL: new, OWN: np.ones(len(new), bool), CHANGED: new < was})


def propose(group: pa.Table, partitions: int) -> pa.Table:
    """One shuffle partition of edge rows and own-label rows (by node) -> the next proposals: each
    node's label offered to each neighbour, and its own label kept."""
    own = pc.fill_null(group[OWN], False).to_numpy(zero_copy_only=False)
    have, lab = group[C.DEDUP_NODE].to_numpy()[own], group[LABEL].to_numpy(zero_copy_only=False)[own]
    o = np.argsort(have)
    have, lab = have[o], lab[o]
    edges = group.filter(pa.array(~own))
    u, v = edges[C.DEDUP_NODE].to_numpy(), edges[OTHER].to_numpy()
    at = np.minimum(np.searchsorted(have, u), max(len(have) - 1, 0))
    found = (have[at] == u) if len(have) else np.zeros(len(u), bool)
    return pa.concat_tables([_rows(v[found], partitions, **{LABEL: lab[at[found]], OWN: np.zeros(int(found.sum()), bool)}),
                             _rows(have, partitions, **{LABEL: lab, OWN: np.ones(len(have), bool)})])


def changed_count(batch: pa.Table) -> pa.Table:
    """Own-label rows -> how many labels went down in the step that made them."""
    return pa.table({"n": [pc.sum(batch[CHANGED].cast(pa.int64())).as_py() or 0]})


def node_join_rows(rows: pa.Table, partitions: int) -> pa.Table:
    """Node rows (`NODE_COLUMNS`) or own-label rows -> the kept-row step's shape, keyed on node."""
    node = rows[C.DEDUP_NODE].to_numpy()
    have = {f.name: rows[f.name] for f in NODE_JOIN_SCHEMA if f.name in rows.column_names and f.name != C.DEDUP_PART}
    return pa.table({f.name: (pa.array(part_of(node, partitions)) if f.name == C.DEDUP_PART else
                              have[f.name].cast(f.type) if f.name in have else pa.nulls(len(node), f.type))
                     for f in NODE_JOIN_SCHEMA}, schema=NODE_JOIN_SCHEMA)


def with_labels(group: pa.Table, partitions: int) -> pa.Table:
    """One shuffle partition (by node) of node rows and their final labels -> the node rows with
    their label, keyed on it for the kept-row step."""
    is_label = group[C.ID].is_null().to_numpy(zero_copy_only=False)
    labels = group.filter(pa.array(is_label))
    rows = group.filter(pa.array(~is_label))
    have, lab = labels[C.DEDUP_NODE].to_numpy(), labels[LABEL].to_numpy()
    o = np.argsort(have)
    have, lab = have[o], lab[o]
    node = rows[C.DEDUP_NODE].to_numpy()
    at = np.minimum(np.searchsorted(have, node), max(len(have) - 1, 0))
    found = (have[at] == node) if len(have) else np.zeros(len(node), bool)  # in no edge: alone
    rows, lab = rows.filter(pa.array(found)), lab[at[found]]
    return rows.set_column(rows.schema.get_field_index(LABEL), LABEL, pa.array(lab, pa.uint64())).set_column(
        rows.schema.get_field_index(C.DEDUP_PART), C.DEDUP_PART, pa.array(part_of(lab, partitions)))


def cluster_marks(group: pa.Table, exact: bool) -> pa.Table:
    """One shuffle partition (by label) of labelled node rows -> their marks (`marks_by_label`)."""
    return marks_by_label(group[LABEL].to_numpy(), group, exact)
