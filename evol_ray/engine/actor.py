"""What every engine actor shares (the round's `EvolveStage`, the scorer's `ScoreStage`): one engine
built at start, a meter on it, progress reported to the round's `EngineStats`, and one answer to an
engine that died.

Its stage's `__call__` is an async generator, so Ray Data runs it on the actor's event loop and
keeps several batches in flight per actor (`engine.batches_in_flight`): the engine's continuous
batching stays full and no batch waits for its slowest row.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Awaitable, Callable, Dict, List, Optional

from evol_ray.config import EngineConfig, ModelConfig
from evol_ray.engine.base import TextGenerator, engine_is_dead
from evol_ray.engine.meter import EngineMeter, MeteredGenerator

log = logging.getLogger("evol_ray")

Row = Dict[str, Any]


class EngineActor:
    """Builds the engine (or takes `generator`, a test double) and meters it as `self.gen`."""

    def __init__(self, model: ModelConfig, engine: EngineConfig, device: str, seed: int,
                 stats: Optional[object] = None, generator: Optional[TextGenerator] = None) -> None:
        t0 = time.monotonic()
        if generator is None:
            from evol_ray.engine.vllm_engine import actor_engine

            generator = actor_engine(model, engine, device, seed)
        self.meter = EngineMeter()
        self.gen = MeteredGenerator(generator, self.meter)
        self.stats = stats
        self.startup_s = time.monotonic() - t0
        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self.niceness = os.nice(0)
        self.rows = 0

    async def map_rows(self, fn: Callable[[Row], Awaitable[Row]], rows: List[Row]) -> List[Row]:
        """`fn` on every row concurrently. One row's failure is that row's business (`fn` records
        it); an engine that died ends the actor, so that Ray Data restarts it with a fresh engine
        and retries the batch (whose rows were not written yet)."""
        try:
            out = await asyncio.gather(*(fn(r) for r in rows))
        except Exception as e:
            if engine_is_dead(e):
                log.error("engine died (%s); restarting the actor", e)
                os._exit(1)
            raise
        self.rows += len(rows)
        self._report()
        return list(out)

    def _report(self) -> None:
        if self.stats is not None:
            snap = self.meter.snapshot()
            snap.update(startup_s=self.startup_s, rows=self.rows, niceness=self.niceness)
            self.stats.report.remote(self.name, snap)
