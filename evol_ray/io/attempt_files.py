"""Attempt files: an engine phase's results written as the rows end, flushed by size and by time.

An engine phase (`pipeline/round.engine_phase`) writes through one `AttemptWriter` actor per stage
actor (no CPU, spread over the cluster), started by the run's first phase and kept for the next
(`Writers`). Each stage actor (`engine/client_stage.RowStage`) hands the rows
whose chains have ended to its writer every HAND_OVER_S, and before a batch leaves it (rows made
without the engines, repeated seeds, go by `TO_WRITERS`). A writer
buffers them and writes one Parquet file into `_attempts/` when it holds `output.flush_rows` rows
or FLUSH_BYTES, or when its oldest row has waited `output.flush_s`; `close` writes the rest and
returns every file it wrote with its rows, so the driver never reads their footers.

So a round of any size leaves about one file per `flush_rows` rows (not one per block of a few
hundred, whose footers a driver would read one request at a time), and a crash (the driver killed:
its writers die with it) loses at most the rows of the last `flush_s` (plus HAND_OVER_S): the files
already written are what the rerun resumes from. A file cut short by a crash is not a whole Parquet
file, and `commit.readable_parts` removes it. A write that fails (a full disk, the store away past
its retries) fails the writer's next call, and so the phase, with the error.
"""

from __future__ import annotations

import asyncio
import contextlib
import posixpath
import time
import uuid
import zlib
from typing import Dict, Iterator, List, Optional, Tuple

import pyarrow as pa
import pyarrow.parquet as pq
import ray

from evol_ray import columns as C
from evol_ray.io.storage import Location
from evol_ray.stage import WHOLE_BLOCK, Stage

FLUSH_BYTES = 64 << 20  # a file is written once its rows hold this much Arrow memory (~ an S3 part's worth)
HAND_OVER_S = 0.5  # how often a stage actor hands its ended rows to its writer
CLOSE_TIMEOUT_S = 120.0


class AttemptWriter:
    """Buffers attempt rows (`schema`) and writes them to `loc` as `<name>-<n>.parquet`. Run as a
    Ray actor (`WriterActor`), kept from one phase to the next (`begin` points it at the next
    phase's folder); a plain object in tests."""

    def __init__(self, loc: Optional[Location] = None, schema: Optional[pa.Schema] = None, name: str = "",
                 flush_rows: int = 1, flush_s: float = 60.0) -> None:
        self.lock = asyncio.Lock()  # one write at a time; rows keep coming meanwhile
        self._reset(loc, schema, name, flush_rows, flush_s)

    async def begin(self, loc: Location, schema: pa.Schema, name: str, flush_rows: int, flush_s: float) -> None:
        """A new phase: its folder, schema and file names (the last phase was closed)."""
        if self.buffer:
            raise RuntimeError(f"attempt writer {self.name}: {self.rows} rows of the last phase were never written")
        self._reset(loc, schema, name, flush_rows, flush_s)

    def _reset(self, loc, schema, name, flush_rows, flush_s) -> None:
        self.loc, self.schema, self.name = loc, schema, name
        self.flush_rows, self.flush_s = flush_rows, flush_s
        self.buffer: List[pa.Table] = []
        self.rows = self.nbytes = 0
        self.oldest: Optional[float] = None  # when the oldest buffered row came
        self.files: Dict[str, int] = {}
        self.failed: Optional[BaseException] = None
        self.timer: Optional[asyncio.Task] = None

    async def add(self, table: pa.Table) -> None:
        """Rows whose chains have ended; written when the buffer is full (this call waits then)."""
        self._raise_failed()
        if self.timer is None:
            self.timer = asyncio.get_running_loop().create_task(self._by_time())
        if not table.num_rows:
            return
        if table.schema != self.schema:  # rows made by another stage (repeated seeds): same columns
            table = table.select(self.schema.names).cast(self.schema)
        self.buffer.append(table)
        self.rows += table.num_rows
        self.nbytes += table.nbytes
        if self.oldest is None:
            self.oldest = time.monotonic()
        if self.rows >= self.flush_rows or self.nbytes >= FLUSH_BYTES:
            await self._flush()

    async def close(self) -> Dict[str, int]:
        """Writes what is buffered; returns every file written (path -> rows)."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        self._raise_failed()
        await self._flush()
        return dict(self.files)

    async def _by_time(self) -> None:
        while True:
            await asyncio.sleep(min(1.0, self.flush_s / 4))
            if self.oldest is not None and time.monotonic() - self.oldest >= self.flush_s:
                try:
                    await self._flush()
                except Exception as e:  # the next add or close raises it
                    self.failed = e
                    return

    async def _flush(self) -> None:
        async with self.lock:
            if not self.buffer:
                return
            table = pa.concat_tables(self.buffer)
            self.buffer, self.rows, self.nbytes, self.oldest = [], 0, 0, None
            path = posixpath.join(self.loc.path, f"{self.name}-{len(self.files):05d}.parquet")
            await asyncio.to_thread(self._write, path, table)
            self.files[path] = table.num_rows

    def _write(self, path: str, table: pa.Table) -> None:
        with self.loc.fs.open(path, "wb") as f:
            pq.write_table(table, f)

    def _raise_failed(self) -> None:
        if self.failed is not None:
            raise self.failed


WriterActor = ray.remote(num_cpus=0, scheduling_strategy="SPREAD")(AttemptWriter)


class Writers:
    """The run's attempt writers (`n` of them, one per stage actor), started by the first phase
    and kept for the next, so that a phase starts no process of its own (on a fast engine a
    writer's start is a visible part of a round). `stop()` ends them; a phase that fails ends them
    too (the next starts new ones)."""

    def __init__(self) -> None:
        self.actors: List = []

    def begin(self, loc: Location, schema: pa.Schema, n: int, flush_rows: int, flush_s: float) -> List:
        """The writers of a phase into `loc`, their files named apart from any earlier try's."""
        loc.fs.makedirs(loc.path, exist_ok=True)
        if len(self.actors) != max(1, n):
            self.stop()
            self.actors = [WriterActor.remote() for _ in range(max(1, n))]
        run = uuid.uuid4().hex[:12]
        ray.get([w.begin.remote(loc, schema, f"{run}-{i}", flush_rows, flush_s) for i, w in enumerate(self.actors)])
        return list(self.actors)

    def stop(self) -> None:
        actors, self.actors = self.actors, []
        for w in actors:
            ray.kill(w)


@contextlib.contextmanager
def writing(kept: Writers, loc: Location, schema: pa.Schema, n: int, flush_rows: int,
            flush_s: float) -> Iterator[Tuple[List, Dict[str, int]]]:
    """`n` of the run's writers (`kept`) into `loc` for the body, and the files they wrote (path ->
    rows), filled when it ends. When the body fails or is stopped, what the writers hold is written
    first and they are ended; a write that failed (a full disk) is raised as itself, since it is
    why the stage stopped and Ray Data's wrapper of the stage's error keeps only the text of its
    cause."""
    written: Dict[str, int] = {}
    closed = False
    try:
        writers = kept.begin(loc, schema, n, flush_rows, flush_s)  # a writer lost since the last phase fails here
        try:
            yield writers, written
        except BaseException as e:
            try:
                close_writers(writers)
            except Exception as failed:
                if isinstance(e, Exception) and isinstance(getattr(failed, "cause", failed), OSError):
                    raise failed from None
            raise
        written.update(close_writers(writers))
        closed = True
    finally:
        if not closed:
            kept.stop()  # the next phase starts new ones


def to_writers(batch: pa.Table, writers: List) -> pa.Table:
    """Attempt rows made without the engines (repeated seeds) -> one of `writers` (by the batch's
    first id), so they share the engine rows' files; writes the batch's count (`rows`)."""
    if batch.num_rows:
        ray.get(writers[zlib.crc32(batch[C.ID][0].as_py().encode()) % len(writers)].add.remote(batch))
    return pa.table({"rows": [batch.num_rows]})


TO_WRITERS = Stage(to_writers, WHOLE_BLOCK)


def close_writers(writers: List, timeout: float = CLOSE_TIMEOUT_S) -> Dict[str, int]:
    """Every writer's rest written; the files they wrote (path -> rows)."""
    written: Dict[str, int] = {}
    for files in ray.get([w.close.remote() for w in writers], timeout=timeout):
        written.update(files)
    return written
