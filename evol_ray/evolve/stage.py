"""The engine stage of a round: engine actors, every row's chain running concurrently.

`EvolveStage` is an `EngineActor` (`evol_ray.engine.actor`): one engine per actor serves all three
steps of every row's chain (evolve, judge, answer), several batches in flight per actor.

Reads pool columns (`columns.POOL_SCHEMA`); writes attempt rows (`columns.ROUND_SCHEMA`).
"""

from __future__ import annotations

from typing import AsyncIterator, Optional

import pyarrow as pa
import ray

from evol_ray import columns as C
from evol_ray.config import Config
from evol_ray.engine.actor import EngineActor
from evol_ray.engine.base import TextGenerator
from evol_ray.engine.resources import engine_actor_args
from evol_ray.evolve.chain import evolve_row
from evol_ray.stage import Stage


class EvolveStage(EngineActor):
    def __init__(self, cfg: Config, round_no: int, device: str, stats: Optional[object] = None,
                 generator: Optional[TextGenerator] = None) -> None:
        super().__init__(cfg.model, cfg.engine, device, cfg.seed, stats, generator)
        self.cfg = cfg
        self.round_no = round_no

    async def __call__(self, batch: pa.Table) -> AsyncIterator[pa.Table]:
        rows = batch.select([C.ID, C.ROOT_ID, C.INSTRUCTION, C.RESPONSE]).to_pylist()
        out = await self.map_rows(lambda r: evolve_row(self.gen, r, self.round_no, self.cfg), rows)
        yield pa.Table.from_pylist(out, schema=C.ROUND_SCHEMA)


def evolve(ds: ray.data.Dataset, cfg: Config, round_no: int, device: str,
           stats: Optional[object] = None) -> ray.data.Dataset:
    """Pool dataset -> attempt dataset for one round, on `engine.replicas` engine actors."""
    stage = Stage(EvolveStage, cfg.engine.batch_size, engine_actor_args(cfg.engine, device, cfg.engine.replicas))
    return stage(ds, constructor={"cfg": cfg, "round_no": round_no, "device": device, "stats": stats})
