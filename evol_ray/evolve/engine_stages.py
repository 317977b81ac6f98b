"""The engine stages of a run, through `evol_ray.engine.client_stage.RowStage` on the run's engines:

- `evolve`: a round, every pool row's chain (`evol_ray.evolve.chain.evolve_row`: evolve, judge,
  answer) running concurrently;
- `answer`: the seeds without an answer (`chain.answer_seed`: answer, the answer rules).

Both read pool columns (`id`, `root_id`, `instruction`, `response`) and write attempt rows
(`columns.ROUND_SCHEMA`), in blocks of ENGINE_BLOCK_BATCHES x `engine.batch_size` rows.
"""

from __future__ import annotations

import functools
from typing import Optional

import ray

from evol_ray import columns as C
from evol_ray.config import Config
from evol_ray.engine.client_stage import map_rows
from evol_ray.evolve.chain import answer_seed, evolve_row

READS = (C.ID, C.ROOT_ID, C.INSTRUCTION, C.RESPONSE)
# Engine batches per block of a round's input: the round writes its attempts block by block, so a
# crash loses at most the blocks in flight (a few hundred rows per stage actor), never the round.
ENGINE_BLOCK_BATCHES = 4


def evolve(ds: ray.data.Dataset, cfg: Config, round_no: int, engines, stats: Optional[object] = None) -> ray.data.Dataset:
    """Pool dataset -> attempt dataset for one round, on `engines` (`evol_ray.engine.service`),
    in blocks of ENGINE_BLOCK_BATCHES x `engine.batch_size` rows."""
    return _through(ds, cfg, engines, functools.partial(evolve_row, round_no=round_no, cfg=cfg), stats)


def answer(ds: ray.data.Dataset, cfg: Config, engines, stats: Optional[object] = None) -> ray.data.Dataset:
    """Seeds without an answer -> their attempt rows (answered, or eliminated with a reason)."""
    return _through(ds, cfg, engines, functools.partial(answer_seed, cfg=cfg), stats)


def _through(ds: ray.data.Dataset, cfg: Config, engines, fn, stats: Optional[object]) -> ray.data.Dataset:
    ds = ds.repartition(target_num_rows_per_block=cfg.engine.batch_size * ENGINE_BLOCK_BATCHES)
    return map_rows(ds, engines, fn, C.ROUND_SCHEMA, columns=READS, stats=stats)
