"""Clusters of verified duplicate pairs, and the one row each cluster keeps: the last step of
`evol_ray.checks.dedup` (its module doc has the whole method), run in one process. Pure NumPy and
SciPy, no Ray.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from evol_ray import columns as C
from evol_ray.checks.buckets import EDGE_SCHEMA, candidate_rows, verified_here
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
    `duplicate_of`).

    Repeated edges collapse, clusters are SciPy's connected components (a union-find over integer
    positions), and the kept row of each cluster follows the rule in the module doc; a dropped
    row with the kept row's normalized text is a `duplicate` where `exact` is on. What is held
    is the verified edges and a few columns per node in one: no signatures, nothing per row of
    the data."""
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
    same = pa.array((th[marked] == th[rep[marked]]) & exact)
    return pa.table({C.ID: ids.take(pa.array(marked)).cast(pa.string()),
                     C.REASON: pc.if_else(same, C.R_DUPLICATE, C.R_NEAR_DUPLICATE),
                     C.DUPLICATE_OF: ids.take(pa.array(rep[marked])).cast(pa.string())})
