"""The stage in front of the run's engines: `RowClient`s, light CPU actors started once with the
run's engines and kept for every phase (rounds, seed answers, calibration, Auto Evol's steps,
scores), each running one row function on the rows of the batches it is given, concurrently.

Ray Data's actor pool starts its actors anew for every dataset it runs: about 2 s per round on a
2-core machine (a worker process, `ray.data` imported), while the engines waited
(`bench/throughput.py`). So a phase's input is a Ray Data dataset as before, and `map_rows` hands
its blocks, one engine batch each, from the driver to the run's clients, each batch to the client
with the fewest in flight, holding `calls_per_client` batches on each.

A client runs a phase's rows in a `RowStage`: its row slots (`engine.rows_in_flight` per engine,
`resources.rows_per_actor` per client) are shared by every batch it holds, so a row whose chain
ends hands its slot to a waiting row of any batch at once, and the engines' continuous batching
stays full however long-tailed the rows are. Each client meters its phase's requests and reports
to the phase's `EngineStats`.

With a `sink` (an engine phase's `io/attempt_files.AttemptWriter`s) a row leaves the stage as its
chain ends: the client hands its ended rows to its writer every HAND_OVER_S and when the phase
ends (`RowClient.end`), and a batch's call returns its count as soon as its rows have ended.
Without one (scores, selection, calibration) a batch's rows come back together when its last row
has ended; only that row holds a slot meanwhile.

A row function's failure is that row's business (it records an error status); `EngineUnavailable`
ends the phase (and so the round), leaving the rows already written for the rerun, and the clients
are dropped (the next phase starts new ones), so nothing of a failed phase goes on sending.
"""

from __future__ import annotations

import asyncio
import os
import zlib
from collections import Counter
from typing import Any, AsyncIterator, Awaitable, Callable, Dict, Iterable, List, Optional, Sequence

import pyarrow as pa
import ray

from evol_ray import columns as C
from evol_ray.engine.base import TextGenerator
from evol_ray.engine.meter import EngineMeter, MeteredGenerator
from evol_ray.engine.resources import calls_per_client
from evol_ray.io.attempt_files import HAND_OVER_S

Row = Dict[str, Any]
RowFn = Callable[[TextGenerator, Row], Awaitable[Row]]
SENT_SCHEMA = pa.schema([("rows", pa.int64())])  # a sink's stage output: the rows of each batch


class RowStage:
    """Reads `columns` of each batch (all when None); writes `schema`, one row per input row,
    made by `fn(generator, row)` (a module-level function or a partial of one: it is pickled), or
    hands them to one of `sink` (writer actors) and writes `SENT_SCHEMA`."""

    def __init__(self, factory: Callable[[], TextGenerator], fn: RowFn, schema: pa.Schema,
                 columns: Optional[Sequence[str]] = None, stats: Optional[object] = None,
                 slots: int = 1 << 30, sink: Optional[Sequence[object]] = None, phase: int = 0) -> None:
        self.meter = EngineMeter()
        self.slots = asyncio.Semaphore(slots)  # rows whose chains run at once
        self.gen = MeteredGenerator(factory(), self.meter)
        self.fn, self.schema, self.columns, self.stats = fn, schema, columns, stats
        # what it reports under: a client's process serves many phases, and phases that share a
        # stats actor (Auto Evol's) must not overwrite each other's figures
        self.name = f"{os.uname().nodename}:{os.getpid()}" + (f"#{phase}" if phase else "")
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
        self.reported: Optional[Any] = None  # the last report sent to `stats` (awaited at `close`)

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
        if self.failed is not None:  # a hand-over failed: the phase stops
            raise self.failed
        # the batch leaves without waiting for the writer (a writer still starting would hold the
        # next batches back); its rows go with the next hand-over, the last ones at `close`
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
            self.reported = self.stats.report.remote(self.name, snap)

    async def _hand_over(self) -> None:
        async with self.handing:
            if self.failed is not None:
                raise self.failed
            if self.ended:
                rows, self.ended = self.ended, []
                await self.sink.add.remote(pa.Table.from_pylist(rows, schema=self.schema))
                self._done(rows)  # counted as they reach the writer: progress moves mid-batch

    async def close(self) -> None:
        """The phase ended: the hand-over clock stopped (a hand-over under way finishes first), and
        the last rows handed over (all have ended once every batch's call returned), and the last
        report to the phase's stats landed."""
        if self.clock is not None:
            async with self.handing:
                self.clock.cancel()
            self.clock = None
        if self.sink is not None:
            await self._hand_over()
        if self.reported is not None:
            # the driver reads the stats actor once every client's `end` returned: the last report
            # must have landed by then (a call from this actor and one from the driver are not
            # ordered; a phase read too early had no figures)
            await self.reported

    async def _hand_over_by_time(self) -> None:
        while True:
            await asyncio.sleep(HAND_OVER_S)
            try:
                await self._hand_over()
            except Exception as e:  # the next batch to leave raises it
                self.failed = e
                return


class RowClient:
    """One of the run's stage actors (`Engines.clients`): its `TextGenerator` made once (a client
    of the warm engine actors, or of an OpenAI-compatible server), and a `RowStage` per phase
    (`begin`), whose batches `run` takes."""

    def __init__(self, factory: Callable[[], TextGenerator], slots: int) -> None:
        self.gen = factory()
        self.slots = slots
        self.phase: Optional[RowStage] = None
        self.phases = 0

    async def begin(self, fn: RowFn, schema: pa.Schema, columns: Optional[Sequence[str]],
                    stats: Optional[object], sink: Optional[Sequence[object]]) -> None:
        await self.end()
        gen = self.gen
        self.phases += 1
        self.phase = RowStage(lambda: gen, fn, schema, columns, stats, self.slots, sink, phase=self.phases)

    async def run(self, batch: pa.Table) -> pa.Table:
        """One batch of the phase: its rows (or, with a sink, its count, once they have ended;
        they reach the writer with the next hand-over)."""
        if self.phase is None:
            raise RuntimeError("RowClient.run before begin")
        return [t async for t in self.phase(batch)][0]

    async def end(self) -> None:
        phase, self.phase = self.phase, None
        if phase is not None:
            await phase.close()


def blocks_of(ds: ray.data.Dataset, rows: int) -> Iterable[ray.ObjectRef]:
    """`ds` in blocks of at most `rows` rows (its object refs, as Ray Data makes them), without
    its empty ones."""
    for bundle in ds.repartition(target_num_rows_per_block=rows).iter_internal_ref_bundles():
        for entry in bundle.blocks:
            if entry.metadata.num_rows:
                yield entry.ref


def map_rows(batches: Iterable[Any], engines, fn: RowFn, schema: pa.Schema, *,
             columns: Optional[Sequence[str]] = None, stats: Optional[object] = None,
             sink: Optional[Sequence[object]] = None) -> List[ray.ObjectRef]:
    """`fn` on every row of `batches` (Arrow tables of up to `engine.batch_size` rows, or their
    object refs: `blocks_of`) on the run's clients (`engines.clients()`, started with the
    engines if they were not yet): each batch to the client with the fewest batches in flight,
    at most `calls_per_client` on each. Returns each batch's result in input order, as object refs
    already computed: its rows of `schema`, or with `sink` its count (`SENT_SCHEMA`). A failed
    batch raises here, once the clients are dropped."""
    clients = engines.clients()
    cap = calls_per_client(engines.cfg.engine)
    load = [0] * len(clients)
    pending: Dict[ray.ObjectRef, int] = {}
    out: List[ray.ObjectRef] = []

    def wait_one() -> None:
        done, _ = ray.wait(list(pending), num_returns=1)
        for ref in done:
            load[pending.pop(ref)] -= 1
            ray.get(ref)  # a failed batch stops the phase now

    try:
        ray.get([c.begin.remote(fn, schema, columns, stats, sink) for c in clients])
        for batch in batches:
            while min(load) >= cap:
                wait_one()
            i = min(range(len(clients)), key=load.__getitem__)
            ref = clients[i].run.remote(batch)
            pending[ref] = i
            load[i] += 1
            out.append(ref)
        while pending:
            wait_one()
        ray.get([c.end.remote() for c in clients])
    except BaseException:
        engines.drop_clients()
        raise
    return out


def table_through(table: pa.Table, engines, fn: RowFn, schema: pa.Schema,
                  columns: Optional[List[str]] = None, stats: Optional[object] = None,
                  label: Optional[str] = None) -> pa.Table:
    """Every row of `table` through `fn` on `engines` (`map_rows`), collected; the stage
    reports to `stats` (an `EngineStats`) when given. `label`: the phase's progress is shown
    under it (`evol_ray.progress`; a stats actor is started for it when none is given)."""
    from evol_ray import progress
    from evol_ray.engine.meter import EngineStats

    own = label is not None and stats is None
    if own:
        stats = EngineStats.remote()
    try:
        size = engines.cfg.engine.batch_size
        batches = (table.slice(i, size) for i in range(0, table.num_rows, size))
        with progress.shown(label, table.num_rows, stats if label else None, engines.cfg.output.progress_every_s,
                           fresh=own):
            done = map_rows(batches, engines, fn, schema, columns=columns, stats=stats)
            parts = [t.cast(schema) for t in ray.get(done)]
    finally:
        if own:
            ray.kill(stats)
    return pa.concat_tables(parts) if parts else schema.empty_table()
