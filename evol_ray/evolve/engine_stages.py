"""The engine stages of a run, on the run's stage actors (`evol_ray.engine.client_stage.map_rows`):

- `evolve`: a round, every pool row's chain (`evol_ray.evolve.chain.evolve_row`: evolve, judge,
  answer) running concurrently;
- `answer`: the seeds without an answer (`chain.answer_seed`: answer, the answer rules).

Both read pool columns (`id`, `root_id`, `instruction`, `response`) in batches of
`engine.batch_size` rows and make attempt rows (`columns.ROUND_SCHEMA`), handed to `sink` (the
phase's attempt writers, `io/attempt_files`) as each row's chain ends; they return when every row
is with the writers (the batches' counts).
"""

from __future__ import annotations

import functools
from typing import List, Optional, Sequence

import ray

from evol_ray import columns as C
from evol_ray.config import Config
from evol_ray.engine.client_stage import blocks_of, map_rows
from evol_ray.evolve.chain import answer_seed, evolve_row

READS = (C.ID, C.ROOT_ID, C.INSTRUCTION, C.RESPONSE)

def evolve(ds: ray.data.Dataset, cfg: Config, round_no: int, engines, stats: Optional[object] = None,
           sink: Optional[Sequence[object]] = None) -> List[ray.ObjectRef]:
    """Pool dataset -> one round's attempts, on `engines` (`evol_ray.engine.service`)."""
    return _through(ds, cfg, engines, functools.partial(evolve_row, round_no=round_no, cfg=cfg), stats, sink)


def answer(ds: ray.data.Dataset, cfg: Config, engines, stats: Optional[object] = None,
           sink: Optional[Sequence[object]] = None) -> List[ray.ObjectRef]:
    """Seeds without an answer -> their attempts (answered, or eliminated with a reason)."""
    return _through(ds, cfg, engines, functools.partial(answer_seed, cfg=cfg), stats, sink)


def _through(ds: ray.data.Dataset, cfg: Config, engines, fn, stats: Optional[object],
             sink: Optional[Sequence[object]]) -> List[ray.ObjectRef]:
    return map_rows(blocks_of(ds, cfg.engine.batch_size), engines, fn, C.ROUND_SCHEMA, columns=READS,
                    stats=stats, sink=sink)
