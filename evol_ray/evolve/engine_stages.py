"""The engine stages of a run, through `evol_ray.engine.client_stage.RowStage` on the run's engines:

- `evolve`: a round, every pool row's chain (`evol_ray.evolve.chain.evolve_row`: evolve, judge,
  answer) running concurrently;
- `answer`: the seeds without an answer (`chain.answer_seed`: answer, the answer rules).

Both read pool columns (`id`, `root_id`, `instruction`, `response`) in blocks of
ENGINE_BLOCK_BATCHES x `engine.batch_size` rows and make attempt rows (`columns.ROUND_SCHEMA`):
handed to `sink` (the phase's attempt writers, `io/attempt_files`) as each row's chain ends, the
stage then giving one count per batch; or, without a sink, as the stage's output.
"""

from __future__ import annotations

import functools
from typing import Optional, Sequence

import ray

from evol_ray import columns as C
from evol_ray.config import Config
from evol_ray.engine.client_stage import map_rows
from evol_ray.evolve.chain import answer_seed, evolve_row

READS = (C.ID, C.ROOT_ID, C.INSTRUCTION, C.RESPONSE)
# Engine batches per block of a phase's input: what Ray Data hands the stage actors at a time.
ENGINE_BLOCK_BATCHES = 4


def evolve(ds: ray.data.Dataset, cfg: Config, round_no: int, engines, stats: Optional[object] = None,
           sink: Optional[Sequence[object]] = None) -> ray.data.Dataset:
    """Pool dataset -> one round's attempts, on `engines` (`evol_ray.engine.service`)."""
    return _through(ds, cfg, engines, functools.partial(evolve_row, round_no=round_no, cfg=cfg), stats, sink)


def answer(ds: ray.data.Dataset, cfg: Config, engines, stats: Optional[object] = None,
           sink: Optional[Sequence[object]] = None) -> ray.data.Dataset:
    """Seeds without an answer -> their attempts (answered, or eliminated with a reason)."""
    return _through(ds, cfg, engines, functools.partial(answer_seed, cfg=cfg), stats, sink)


def _through(ds: ray.data.Dataset, cfg: Config, engines, fn, stats: Optional[object],
             sink: Optional[Sequence[object]]) -> ray.data.Dataset:
    ds = ds.repartition(target_num_rows_per_block=cfg.engine.batch_size * ENGINE_BLOCK_BATCHES)
    return map_rows(ds, engines, fn, C.ROUND_SCHEMA, columns=READS, stats=stats, sink=sink)
