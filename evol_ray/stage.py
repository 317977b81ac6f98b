"""A Ray Data stage stated once: its batch function (or actor class) and its `map_batches` settings.

Every stage of evol-ray is a pure function on an Arrow batch (or, where it holds an engine, a
callable class), plus the settings Ray Data needs to run it: batch size and resources. `Stage`
keeps the two together, in the spirit of Ray Data LLM's `StatefulStage`, so that the function's
module states its batch size once and the wiring reads `STAGE(ds, key=value)`. Batches are always
Arrow tables. Nothing here is a framework: `Stage.__call__` is one `map_batches` call.
`by_partition` is the one hash-partition shuffle; `without_empty_blocks` and
`shuffle_map_batches` fit a dataset to Ray Data's hash shuffle.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

import ray

BATCH_ROWS = 4096  # Ray Data's default (1024) lets per-batch costs dominate on CPU stages
WHOLE_BLOCK = None  # batch_size=None: one batch per block (cheap, vectorized stages)


@dataclass(frozen=True)
class Stage:
    """`fn`: a batch function `(pa.Table, **kwargs) -> pa.Table`, or a class whose instances are
    such callables (then Ray Data runs it on actors: give `compute` in `ray_args`).
    `batch_size`: rows per batch, or None for one batch per block.
    `ray_args`: any other `map_batches` argument (num_cpus, num_gpus, compute, runtime_env, ...)."""

    fn: Callable[..., Any]
    batch_size: Optional[int] = BATCH_ROWS
    ray_args: Mapping[str, Any] = field(default_factory=dict)

    def __call__(self, ds: ray.data.Dataset, *, constructor: Optional[Mapping[str, Any]] = None,
                 **fn_kwargs: Any) -> ray.data.Dataset:
        """`ds` through this stage. `fn_kwargs` go to each call of `fn`; `constructor`, for a
        class, to its constructor."""
        args = dict(self.ray_args)
        if fn_kwargs:
            args["fn_kwargs"] = fn_kwargs
        if constructor is not None:
            args["fn_constructor_kwargs"] = dict(constructor)
        return ds.map_batches(self.fn, batch_format="pyarrow", batch_size=self.batch_size, **args)


def without_empty_blocks(ds: ray.data.Dataset) -> ray.data.Dataset:
    """`ds`, materialized, without its empty blocks: what a map feeding a hash shuffle reads.

    Ray Data (2.60) turns a map over a bundle of empty blocks into one empty block without
    columns; the hash shuffle writes that block's shards with its column-less schema and the
    reduce then fails to concatenate them with the others ("Schema at index N was different").
    Signature blocks of the final set's round rows (no item there: only the seeds are compared)
    did it at 20k rows. The blocks stay where they are; only the list of them changes."""
    ds = ds.materialize()
    entries = [e for bundle in ds.iter_internal_ref_bundles() for e in bundle.blocks]
    rows = [e.ref for e in entries if e.metadata.num_rows]
    if len(rows) == len(entries) or not rows:  # nothing to drop, or nothing left (no shuffle then)
        return ds
    return ray.data.from_arrow_refs(rows)


def by_partition(rows: ray.data.Dataset, column: str, parts: int, stage: Stage, *, drop_empty: bool = True,
                 **fn_kwargs: Any) -> ray.data.Dataset:
    """`stage`'s function on all rows of each value of `column` (a shuffle partition number the
    caller wrote, from a hash of its key): Ray Data's hash shuffle, or, for `parts` 1, every row in
    one block (the hash shuffle would start its aggregator actors for a single group: about 4 s on
    2 cores, longer than the work). The one hash-partition shuffle of dedup, resume and repeats.
    `drop_empty`: drop `rows`' empty blocks first (`without_empty_blocks`, which materializes);
    False where the stages before make none (dedup's)."""
    if parts == 1:
        return stage(rows.repartition(1), **fn_kwargs)
    return (without_empty_blocks(rows) if drop_empty else rows).groupby(column, num_partitions=parts).map_groups(
        stage.fn, batch_format="pyarrow", fn_kwargs=fn_kwargs or None)


MAP_TASKS_PER_CPU = 4


@contextlib.contextmanager
def shuffle_map_batches(ds: ray.data.Dataset, key_bytes: int):
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
