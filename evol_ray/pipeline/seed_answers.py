"""The seeds' answers: a seed with no answer gets one from the run's engines (`output.answer_seeds`,
when `output.include_seeds`), once, so that `final/` and every export hold the seeds with answers,
as WizardLM trains on them.

It is a phase like a round (`pipeline/round.py`: engine phase, then commit phase, both safe to run
again) written to `seed_answers/`: one attempt row per unanswered seed (`evolve/chain.answer_seed`:
the answer prompt, then the rules that read an answer), kept or eliminated with its reason,
counted in its manifest. A committed one is reused under the same config and thresholds; more or
fewer rounds never redo it. Seeds given with an answer are taken as they are.

Stages here read seed rows (`columns.SEED_SCHEMA`) and write pool rows (`columns.POOL_SCHEMA`).
"""

from __future__ import annotations

import logging
import time
from typing import Optional, Set

import pyarrow as pa
import pyarrow.compute as pc
import ray

from evol_ray import columns as C
from evol_ray.config import Config
from evol_ray.evolve import engine_stages
from evol_ray.io import commit, layout
from evol_ray.io.datasets import read_files
from evol_ray.io.storage import Location
from evol_ray.pipeline.round import EnginePhase, commit_phase, engine_phase, reusable_commit
from evol_ray.stage import WHOLE_BLOCK, Stage

log = logging.getLogger("evol_ray")

LABEL = "seed answers"


def _has_text(values) -> pa.Array:
    return pc.fill_null(pc.not_equal(pc.utf8_trim_whitespace(values), ""), False)


def unanswered(batch: pa.Table) -> pa.Table:
    """Seeds with an instruction and no answer (null or blank): what the engines answer."""
    return batch.filter(pc.and_(_has_text(batch[C.INSTRUCTION]), pc.invert(_has_text(batch[C.RESPONSE]))))


def answered(batch: pa.Table) -> pa.Table:
    """Seeds given with an answer, as pool rows: into `final/` as they are."""
    return batch.filter(_has_text(batch[C.RESPONSE])).select(list(C.POOL_SCHEMA.names)).cast(C.POOL_SCHEMA)


def kept_answers(batch: pa.Table) -> pa.Table:
    """Committed seed-answer rows -> the kept ones as pool rows (the seed's id, its answer)."""
    kept = batch.filter(pc.equal(batch[C.STATUS], C.KEPT))
    return kept.select(list(C.POOL_SCHEMA.names)).cast(C.POOL_SCHEMA)


UNANSWERED = Stage(unanswered, WHOLE_BLOCK)
ANSWERED = Stage(answered, WHOLE_BLOCK)
KEPT_ANSWERS = Stage(kept_answers, WHOLE_BLOCK)


def wanted(cfg: Config) -> bool:
    return cfg.output.include_seeds and cfg.output.answer_seeds


def answer_seeds(cfg: Config, out: Location, seeds: ray.data.Dataset, engines, accepted: Set[str],
                 about: dict) -> Optional[dict]:
    """`seed_answers/`'s manifest, committed here unless it was under a config hash of `accepted`
    and the same `about` (calibrated thresholds); None when the seeds are not answered."""
    if not wanted(cfg):
        return None
    sdir = out.join(layout.SEED_ANSWERS)
    m = layout.read_manifest(sdir)
    if reusable_commit(m, accepted, about):
        log.info("%s: complete in %s, skipped", LABEL, sdir.url)
        return m
    todo = UNANSWERED(seeds).materialize()
    n = todo.count()
    fields = {"seed_answers": True, **about}
    if n == 0:  # nothing to ask the engines (or start them for): an empty commit, read as done
        commit.begin(sdir)
        now = time.monotonic()
        m = commit_phase(cfg, sdir, EnginePhase([], 0, 0, {}, now, now), None, fields)
    else:
        phase = engine_phase(cfg, sdir, LABEL, todo, engines, n,
                             lambda rows, stats, sink: engine_stages.answer(rows, cfg, engines, stats, sink))
        m = commit_phase(cfg, sdir, phase, None, {**fields, "device": engines.device})
    log.info("%s: committed in %s: %d seeds without an answer, %d answered and kept; %s", LABEL, sdir.url,
             m["rows_in"], m["rows_kept"],
             ", ".join(f"{k} {v}" for k, v in m["reason_counts"].items()) or "nothing dropped")
    return m


def seed_final_rows(out: Location, seeds: ray.data.Dataset, manifest: Optional[dict]) -> ray.data.Dataset:
    """The seeds as pool rows for `final/`: all of them when they are not answered (`manifest`
    None), else those given with an answer and those answered and kept."""
    if manifest is None:
        return seeds
    given = ANSWERED(seeds)
    if not manifest["rows_in"]:
        return given
    sdir = out.join(layout.SEED_ANSWERS)
    return given.union(KEPT_ANSWERS(read_files(out, layout.committed_files(sdir, manifest), manifest["rows_in"])))
