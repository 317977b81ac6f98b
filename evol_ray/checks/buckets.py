"""LSH buckets and their candidate pairs, as pure functions on Arrow tables: the passes of
`evol_ray.checks.dedup` between the signatures and the clusters (its module doc has the whole
method). No Ray here: the wiring is dedup's.

  pass 1: `key_rows` (one row per item and LSH band), then, per shuffle partition,
          `shared_keys` (the rows of keys that repeat: the buckets to check);
  pass 2: each bucket's star of candidate edges checked on the signatures (`_holds`), either per
          shuffle partition (`candidate_key_rows`, then `verified_edges`) or, for few
          candidates, in one place (`verified_on_driver`); both give the same edges.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa

from evol_ray import columns as C
from evol_ray.checks.minhash import EXACT_SALT, Params, agreeing_values, band_keys, mix64


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
