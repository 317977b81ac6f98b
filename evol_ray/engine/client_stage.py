"""The Ray Data stage in front of the run's engines: `RowStage`, a light CPU actor that builds its
`TextGenerator` with the run's `Engines.generator_factory` (a client of the warm engine actors, or
of an OpenAI-compatible server) and runs one row function on every row of a batch concurrently.

Its `__call__` is an async generator, so Ray Data runs it on the actor's event loop with several
batches at once (`resources.client_stage_args`). Rows run in the actor's row slots
(`engine.rows_in_flight` per engine, `resources.rows_per_actor` per actor): a row whose chain ends
hands its slot to a waiting row of any batch at once, so the engines' continuous batching stays
full however long-tailed the rows are. Each actor meters its requests and reports to the round's
`EngineStats`.

With a `sink` (an engine phase's `io/attempt_files.AttemptWriter`s) a row leaves the stage as its
chain ends: the actor hands its ended rows to its writer every HAND_OVER_S (and before a batch
leaves), and the stage's own output is one count per batch. Without one (scores, selection) a
batch's rows leave together when its last row has ended; only that row holds a slot meanwhile.

A row function's failure is that row's business (it records an error status); `EngineUnavailable`
ends the stage (and so the round), leaving the rows already written for the rerun.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections import Counter
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, List, Optional, Sequence

import pyarrow as pa
import ray

from evol_ray import columns as C
from evol_ray.engine.base import TextGenerator
from evol_ray.engine.meter import EngineMeter, MeteredGenerator
from evol_ray.engine.resources import rows_per_actor
from evol_ray.io.attempt_files import HAND_OVER_S
from evol_ray.stage import Stage

Row = Dict[str, Any]
RowFn = Callable[[TextGenerator, Row], Awaitable[Row]]
SENT_SCHEMA = pa.schema([("rows", pa.int64())])  # a sink's stage output: the rows of each batch


class RowStage:
    """Reads `columns` of each batch (all when None); writes `schema`, one row per input row,
    made by `fn(generator, row)` (a module-level function or a partial of one: it is pickled), or
    hands them to one of `sink` (writer actors) and writes `SENT_SCHEMA`."""

    def __init__(self, factory: Callable[[], TextGenerator], fn: RowFn, schema: pa.Schema,
                 columns: Optional[Sequence[str]] = None, stats: Optional[object] = None,
                 slots: int = 1 << 30, sink: Optional[Sequence[object]] = None) -> None:
        self.meter = EngineMeter()
        self.slots = asyncio.Semaphore(slots)  # rows whose chains run at once
        self.gen = MeteredGenerator(factory(), self.meter)
        self.fn, self.schema, self.columns, self.stats = fn, schema, columns, stats
        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self.niceness = os.nice(0)
        self.rows = 0
        self.statuses: Counter = Counter()  # of the rows written so far, for the phase's progress
        self.reasons: Counter = Counter()
        # a sink: the writer this actor hands to (by its name: no shared random state), the rows
        # ended and not yet handed over, and the hand-over's clock and first error
        self.sink = sink[zlib.crc32(self.name.encode()) % len(sink)] if sink else None
        self.ended: List[Row] = []
        self.handing = asyncio.Lock()
        self.clock: Optional[asyncio.Task] = None
        self.failed: Optional[BaseException] = None

    async def __call__(self, batch: pa.Table) -> AsyncIterator[pa.Table]:
        rows = (batch.select(list(self.columns)) if self.columns else batch).to_pylist()
        if self.sink is not None and self.clock is None:
            self.clock = asyncio.get_running_loop().create_task(self._hand_over_by_time())

        async def in_slot(row: Row) -> Row:
            async with self.slots:
                done = await self.fn(self.gen, row)
            if self.sink is not None:
                self.ended.append(done)  # leaves with the next hand-over, not with its batch
            return done

        out = await asyncio.gather(*(in_slot(r) for r in rows))
        if self.sink is None:
            self._done(out)
            yield pa.Table.from_pylist(list(out), schema=self.schema)
            return
        await self._hand_over()  # this batch's rows are with the writer before the batch leaves
        yield pa.table({"rows": [len(out)]}, schema=SENT_SCHEMA)

    def _done(self, rows: List[Row]) -> None:
        """Rows done (with the writer, or leaving with their batch): counted with their statuses and
        reasons, and the actor's figures reported to the phase's stats (its progress line)."""
        self.rows += len(rows)
        self.statuses.update(r[C.STATUS] for r in rows if r.get(C.STATUS) is not None)
        self.reasons.update(r[C.REASON] for r in rows if r.get(C.REASON))
        if self.stats is not None:
            snap = self.meter.snapshot()
            snap.update(rows=self.rows, niceness=self.niceness, statuses=dict(self.statuses), reasons=dict(self.reasons))
            self.stats.report.remote(self.name, snap)

    async def _hand_over(self) -> None:
        async with self.handing:
            if self.failed is not None:
                raise self.failed
            if self.ended:
                rows, self.ended = self.ended, []
                await self.sink.add.remote(pa.Table.from_pylist(rows, schema=self.schema))
                self._done(rows)  # counted as they reach the writer: progress moves mid-batch

    async def _hand_over_by_time(self) -> None:
        while True:
            await asyncio.sleep(HAND_OVER_S)
            try:
                await self._hand_over()
            except Exception as e:  # the next batch to leave raises it
                self.failed = e
                return


def map_rows(ds: ray.data.Dataset, engines, fn: RowFn, schema: pa.Schema, *,
             columns: Optional[Sequence[str]] = None, stats: Optional[object] = None,
             sink: Optional[Sequence[object]] = None) -> ray.data.Dataset:
    """`ds` -> `fn` on every row, on `engines` (`evol_ray.engine.service.Engines`), started here
    if they were not yet; with `sink`, the rows go to those writers and the result is one count
    per batch (`SENT_SCHEMA`)."""
    engines.start()
    stage = Stage(RowStage, engines.cfg.engine.batch_size, engines.stage_args())
    return stage(ds, constructor={"factory": engines.generator_factory, "fn": fn, "schema": schema,
                                  "columns": columns, "stats": stats,
                                  "slots": rows_per_actor(engines.cfg.engine), "sink": sink})
