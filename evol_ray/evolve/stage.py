"""The engine stage of a round: every pool row's chain (`evol_ray.evolve.chain.evolve_row`: evolve,
judge, answer) running concurrently on the run's engines, through `evol_ray.engine.actor.RowStage`.

Reads pool columns (`id`, `root_id`, `instruction`, `response`); writes attempt rows
(`columns.ROUND_SCHEMA`).
"""

from __future__ import annotations

import functools
from typing import Optional

import ray

from evol_ray import columns as C
from evol_ray.config import Config
from evol_ray.engine.actor import map_rows
from evol_ray.evolve.chain import evolve_row

READS = (C.ID, C.ROOT_ID, C.INSTRUCTION, C.RESPONSE)
# Engine batches per block of a round's input: the round writes its attempts block by block, so a
# crash loses at most the blocks in flight (a few hundred rows per stage actor), never the round.
ENGINE_BLOCK_BATCHES = 4


def evolve(ds: ray.data.Dataset, cfg: Config, round_no: int, engines, stats: Optional[object] = None) -> ray.data.Dataset:
    """Pool dataset -> attempt dataset for one round, on `engines` (`evol_ray.engine.service`),
    in blocks of ENGINE_BLOCK_BATCHES x `engine.batch_size` rows."""
    fn = functools.partial(evolve_row, round_no=round_no, cfg=cfg)
    ds = ds.repartition(target_num_rows_per_block=cfg.engine.batch_size * ENGINE_BLOCK_BATCHES)
    return map_rows(ds, engines, fn, C.ROUND_SCHEMA, columns=READS, stats=stats)
