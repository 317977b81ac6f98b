"""LSH buckets, their candidate pairs and the check of each pair, as pure functions on Arrow
tables: the passes of `evol_ray.checks.dedup` between the signatures and the clusters (its module
doc has the whole method). No Ray here: the wiring is dedup's.

  pass 1: `key_rows` (one row per item and LSH band), then, per shuffle partition of the keys,
          `bucket_pairs`: each bucket's star of candidate pairs (root: its smallest node);
  pass 2: each pair checked on the two signatures (`_holds`). Distributed, by two joins that
          share the shuffle with the candidates' signature rows (`signature_side`): on the
          root (`pair_rows`, then `with_root_signature`: each pair once, with the root's
          signature), then on the member (`verified_pairs`). In one process: `verified_here`.
          Both give the same edges; no process holds every candidate's signature.
"""
from __future__ import annotations

from typing import Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

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
OTHER = "dedup_other"  # a pair row's other node (its `dedup_node` is the one it is joined on)


def part_of(nodes: np.ndarray, partitions: int) -> np.ndarray:
    """The shuffle partition of each node id (ids are hashes already: mixed once more so a
    partition count never lines up with structure in them)."""
    return (mix64(nodes) % np.uint64(partitions)).astype(np.int32)


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


def _unique_pairs(a: np.ndarray, b: np.ndarray):
    o = np.lexsort((b, a))
    a, b = a[o], b[o]
    first = np.ones(len(a), bool)
    first[1:] = (a[1:] != a[:-1]) | (b[1:] != b[:-1])
    return a[first], b[first]


def star_pairs(key: np.ndarray, node: np.ndarray):
    """Key rows -> the candidate pairs (root node, member node) of the buckets (keys) that more
    than one item shares, each pair once however many buckets it shares."""
    sel = _repeated(key)
    key, node = key[sel], node[sel]
    a, b = _stars(key, node)
    return _unique_pairs(node[a], node[b])


def bucket_pairs(group: pa.Table) -> pa.Table:
    """Pass 1, all key rows of one shuffle partition -> its buckets' candidate pairs (root
    `dedup_node`, member `dedup_other`). A pair sharing bands in several partitions comes out of
    each; the first join collapses them."""
    a, b = star_pairs(group[C.DEDUP_KEY].to_numpy(), group[C.DEDUP_NODE].to_numpy())
    return pa.table({C.DEDUP_NODE: a, OTHER: b})


def pair_nodes(pairs: pa.Table) -> pa.Table:
    """Candidate pairs -> the nodes in them, each once per block."""
    nodes = np.unique(np.concatenate([pairs[C.DEDUP_NODE].to_numpy(), pairs[OTHER].to_numpy()]))
    return pa.table({C.DEDUP_NODE: nodes})


# Join rows carry a signature as a variable-size list: a null one then costs 4 bytes, not num_perm
# values (a fixed-size list keeps its values' room for null entries, and the pair rows outnumber
# the signature rows several times).
JOIN_SIG = pa.list_(pa.uint32())


def _side_columns(n: int, p: Params) -> dict:
    cols = {"text_hash": pa.nulls(n, pa.uint64())}
    if p.near:
        cols["sig"] = pa.nulls(n, JOIN_SIG)
    return cols


def pair_rows(pairs: pa.Table, p: Params, partitions: int) -> pa.Table:
    """Candidate pairs -> rows of the first join, on their root (no signature yet), in the
    signature rows' shape (`signature_side`), so the two can share a shuffle."""
    a = pairs[C.DEDUP_NODE].to_numpy()
    return pa.table({C.DEDUP_NODE: a, OTHER: pairs[OTHER], **_side_columns(len(a), p),
                     C.DEDUP_PART: part_of(a, partitions)})


def signature_side(sigs: pa.Table, p: Params, partitions: int) -> pa.Table:
    """The candidates' signature rows (`candidate_rows`) -> the same in the join rows' shape:
    (`dedup_node`, `dedup_other` null, `text_hash`, `sig`, `dedup_part`)."""
    node = sigs[C.DEDUP_NODE].to_numpy()
    cols = {C.DEDUP_NODE: node, OTHER: pa.nulls(len(node), pa.uint64()), "text_hash": sigs["text_hash"]}
    if p.near:
        cols["sig"] = sigs["sig"].cast(JOIN_SIG)
    return pa.table({**cols, C.DEDUP_PART: part_of(node, partitions)})


def _split(group: pa.Table):
    """A join partition -> (pair rows, signature rows sorted by node)."""
    is_pair = group[OTHER].is_valid()
    own = group.filter(pc.invert(is_pair))
    own = own.take(pc.sort_indices(own[C.DEDUP_NODE]))
    return group.filter(is_pair), own


def _lookup(own: pa.Table, nodes: np.ndarray):
    """Positions in `own` (sorted) of `nodes`, and which were found."""
    have = own[C.DEDUP_NODE].to_numpy()
    at = np.minimum(np.searchsorted(have, nodes), max(len(have) - 1, 0))
    return at, (have[at] == nodes) if len(have) else np.zeros(len(nodes), bool)


def with_root_signature(group: pa.Table, p: Params, partitions: int) -> pa.Table:
    """First join, one partition of pair rows (by root) and signature rows -> each pair once,
    carrying its root's `text_hash` and `sig`, keyed for the second join on its member."""
    pairs, own = _split(group)
    a, b = _unique_pairs(pairs[C.DEDUP_NODE].to_numpy(), pairs[OTHER].to_numpy())
    at, found = _lookup(own, a)
    at, a, b = at[found], a[found], b[found]
    take = pa.array(at, pa.int64())
    cols = {C.DEDUP_NODE: b, OTHER: a, "text_hash": own["text_hash"].take(take).combine_chunks()}
    if p.near:
        cols["sig"] = own["sig"].take(take).combine_chunks()
    return pa.table({**cols, C.DEDUP_PART: part_of(b, partitions)})


def verified_pairs(group: pa.Table, p: Params) -> pa.Table:
    """Second join, one partition of pair rows (by member, with the root's signature) and
    signature rows -> the pairs that hold (`_holds`): edges (root `a`, member `b`)."""
    pairs, own = _split(group)
    b, a = pairs[C.DEDUP_NODE].to_numpy(), pairs[OTHER].to_numpy()
    at, found = _lookup(own, b)
    n, idx = len(b), np.flatnonzero(found)
    th = np.concatenate([pairs["text_hash"].to_numpy(), own["text_hash"].to_numpy()])
    sig = np.concatenate([_sig_matrix(pairs, p), _sig_matrix(own, p)]) if p.near else None
    accept = np.zeros(n, bool)
    accept[idx] = _holds(idx, n + at[idx], th, sig, p)
    return pa.table({"a": a[accept], "b": b[accept]}, schema=EDGE_SCHEMA)


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


def verified_here(a: np.ndarray, b: np.ndarray, cands: pa.Table, p: Params) -> pa.Table:
    """Candidate pairs and the signature rows of their nodes, in one process -> the edges that
    hold: what the two joins give."""
    cnode = cands[C.DEDUP_NODE].to_numpy()
    order = np.argsort(cnode)
    at_a = order[np.searchsorted(cnode[order], a)]
    at_b = order[np.searchsorted(cnode[order], b)]
    accept = _holds(at_a, at_b, cands["text_hash"].to_numpy(), _sig_matrix(cands, p) if p.near else None, p)
    return pa.table({"a": a[accept], "b": b[accept]}, schema=EDGE_SCHEMA)


def candidate_rows(sigs: pa.Table, nodes: np.ndarray) -> pa.Table:
    """Signature rows -> those in some candidate edge (`nodes`: sorted, unique). A binary search
    per row: `np.isin` re-sorts `nodes` on every batch (90 ms vs 2.5 ms per batch at 1M rows)."""
    x = sigs[C.DEDUP_NODE].to_numpy()
    if len(nodes) == 0:
        return sigs.slice(0, 0)
    at = np.minimum(np.searchsorted(nodes, x), len(nodes) - 1)
    return sigs.filter(pa.array(nodes[at] == x))
