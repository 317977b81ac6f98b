"""One round: engine phase, then commit phase, each safe to run again; and the pool after it.

1. `engine_phase`: pool rows without an attempt in `round_N/_attempts/` go through the engine
   stage (`evol_ray.evolve.engine_stages`), whose rows the attempt writers (`io/attempt_files`)
   write there as they end, flushed by size and by time; after a crash, a rerun finds the files
   written and sends only the missing rows again;
2. `commit_phase`: the attempts (through the CPU checks, `evol_ray.checks.where`) into
   `round_N/`, counted (`count_in_ray`), the manifest written last (`evol_ray.io.commit`), then
   `_attempts/` removed.

The seeds' answers (`pipeline/seed_answers.py`) are the same two phases on another stage.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from evol_ray import columns as C
from evol_ray import config as config_mod
from evol_ray.checks import text, where
from evol_ray.config import Config
from evol_ray.counts import row_counts
from evol_ray.engine.base import EngineUnavailable
from evol_ray import progress
from evol_ray.evolve import engine_stages
from evol_ray.io import attempt_files, commit, layout
from evol_ray.io.datasets import read_files, read_round
from evol_ray.io.storage import Location, remove
from evol_ray.pipeline.pool import NEXT_POOL, REPEAT_ATTEMPTS
from evol_ray.stage import WHOLE_BLOCK, Stage, by_partition

log = logging.getLogger("evol_ray")

_COUNTED = [C.STATUS, C.REASON, C.OP, C.PROMPT_TOKENS, C.GENERATED_TOKENS, C.ENGINE_SECONDS]


class RunError(RuntimeError):
    """A problem that stops the run, with a message meant for the user (a round that cannot be
    committed names the round and where it was left)."""


COUNT_THREADS = 8


def _file_counts(t: pa.Table) -> Dict[str, object]:
    """One file's partial counts (`count_files`), by Arrow kernels: no per-row Python."""
    return {
        "rows": t.num_rows,
        **row_counts(t),
        "prompt_tokens": pc.sum(t[C.PROMPT_TOKENS]).as_py() or 0,
        "generated_tokens": pc.sum(t[C.GENERATED_TOKENS]).as_py() or 0,
        "row_engine_seconds": pc.sum(t[C.ENGINE_SECONDS]).as_py() or 0.0,
    }


def _no_counts() -> Dict[str, object]:
    return {"rows": 0, "status_counts": Counter(), "reason_counts": Counter(), "op_counts": Counter(),
            "op_kept_counts": Counter(), "prompt_tokens": 0, "generated_tokens": 0, "row_engine_seconds": 0.0}


def _add(total: Dict[str, object], part: Dict[str, object]) -> Dict[str, object]:
    for k, v in part.items():
        if isinstance(total[k], Counter):
            total[k].update(v)  # a task's counts come back as plain dicts
        else:
            total[k] += v
    return total


def count_files(loc: Location, files: List[str]) -> Dict[str, object]:
    """Counts of a round's written files: read back from storage, never by re-running the stage.
    Each file is counted on its own (a few threads; Arrow reads and kernels release the GIL) and
    the partial counts are added in file order (the same sums on every run), so what is held is a
    few files' counted columns at a time. The body of `count_in_ray`'s tasks."""
    def one(path: str) -> Dict[str, object]:
        return _file_counts(next(layout.read_tables(loc, [path], _COUNTED)))

    total = _no_counts()
    with ThreadPoolExecutor(max(1, min(COUNT_THREADS, len(files)))) as threads:
        for part in threads.map(one, files):
            _add(total, part)
    return _sorted(total)


def _sorted(total: Dict[str, object]) -> Dict[str, object]:
    return {k: dict(sorted(v.items())) if isinstance(v, Counter) else v for k, v in total.items()}


_count_files_task = ray.remote(num_cpus=1)(count_files)
COUNT_FILES_PER_TASK = 16


def count_in_ray(loc: Location, files: List[str]) -> Dict[str, object]:
    """`count_files` in Ray tasks of COUNT_FILES_PER_TASK files each, their partial counts added
    in file order: the driver holds only the counts (its reading threads once kept 60-150 MB of
    freed Arrow memory in the driver at 1M rows)."""
    chunks = [files[i:i + COUNT_FILES_PER_TASK] for i in range(0, len(files), COUNT_FILES_PER_TASK)]
    total = _no_counts()
    for part in ray.get([_count_files_task.remote(loc, c) for c in chunks]):
        _add(total, part)
    return _sorted(total)


# Resume: pool rows that already have an attempt are left out by an anti-join in Ray Data (a hash
# shuffle of the pool rows and the attempted ids by a hash of the id), so no node holds every
# attempted id. Ray's own `Dataset.join(join_type="left_anti")` needs polars, which nothing else
# here does; the shuffle is the one dedup uses.
RESUME_ROWS_PER_PARTITION = 250_000
RESUME_MAX_PARTITIONS = 64
_DONE, _PART = "_resume_done", "_resume_part"


def resume_partitions(rows: int) -> int:
    """Shuffle partitions of the resume anti-join for `rows` rows (pool + attempts)."""
    return max(1, min(RESUME_MAX_PARTITIONS, math.ceil(rows / RESUME_ROWS_PER_PARTITION)))


def _part_of(ids, partitions: int) -> pa.Array:
    return pa.array((text.hash64(ids) % np.uint64(partitions)).astype(np.int32))


def tag_pool(batch: pa.Table, partitions: int) -> pa.Table:
    """Pool rows -> the same with their shuffle partition and `_resume_done` false (reads `id`)."""
    return (batch.append_column(_DONE, pa.array(np.zeros(batch.num_rows, bool)))
            .append_column(_PART, _part_of(batch[C.ID], partitions)))


def tag_attempted(batch: pa.Table, partitions: int) -> pa.Table:
    """Attempt rows -> the pool id each was made from (`parent_id`, as `id`), its shuffle
    partition and `_resume_done` true."""
    ids = batch[C.PARENT_ID]
    return pa.table({C.ID: ids, _DONE: pa.array(np.ones(batch.num_rows, bool)),
                     _PART: _part_of(ids, partitions)})


def drop_attempted(group: pa.Table) -> pa.Table:
    """One shuffle partition of tagged pool rows and attempted ids -> its pool rows without an
    attempt, untagged. (Ray fills the pool's columns with nulls on the attempted-id rows.)"""
    done = pc.fill_null(group[_DONE], False)
    attempted = group[C.ID].filter(done)
    keep = pc.invert(done)
    if len(attempted):
        keep = pc.and_(keep, pc.invert(pc.is_in(group[C.ID], value_set=attempted.combine_chunks())))
    return group.filter(keep).drop_columns([_DONE, _PART])


TAG_POOL = Stage(tag_pool, WHOLE_BLOCK)
TAG_ATTEMPTED = Stage(tag_attempted, WHOLE_BLOCK)
DROP_ATTEMPTED = Stage(drop_attempted, WHOLE_BLOCK)


def without_attempted(pool: ray.data.Dataset, attempts: ray.data.Dataset, partitions: int) -> ray.data.Dataset:
    """`pool` rows whose id is not the `parent_id` of any row of `attempts`."""
    tagged = TAG_POOL(pool, partitions=partitions).union(
        TAG_ATTEMPTED(attempts.select_columns([C.PARENT_ID]), partitions=partitions))
    return by_partition(tagged, _PART, partitions, DROP_ATTEMPTED)


def reusable_commit(m: Optional[dict], accepted, about: dict) -> bool:
    """A committed phase (a round, the seed answers) is this run's: made under a config hash of
    `accepted` and with the same `about` (calibrated thresholds, Auto Evol's method)."""
    return m is not None and m.get("config_hash") in accepted and all(m.get(k) == v for k, v in about.items())


@dataclass
class EnginePhase:
    """What an engine phase left for its commit: the attempt files, their rows, the rows a crashed
    earlier try had already written, the engines' figures, and when the phase began and ended."""
    parts: List[str]
    attempts: int
    resumed: int
    figures: dict
    started: float
    done: float


def engine_phase(cfg: Config, rdir: Location, label: str, pool: ray.data.Dataset, engines,
                 expected_rows: Optional[int], attempt: Callable[..., object],
                 extra: Optional[ray.data.Dataset] = None) -> EnginePhase:
    """Pool rows without an attempt in `rdir/_attempts/` through `attempt(rows, stats, sink)` (the
    engine stage, which returns when every row is with `sink`), whose rows the phase's attempt
    writers (`io/attempt_files`) write into that folder as they end, flushed by size and by time,
    with progress; `extra` (rows of
    `ROUND_SCHEMA` made without the engines: repeated seeds) through the same writers. Safe to run
    again: a rerun sends only the rows still without an attempt. A stop or a failure writes what
    the writers hold before it is raised. `label` names the phase ("round 2", "seed answers") in
    logs, progress and errors."""
    attempts_dir = rdir.join(layout.ATTEMPTS)
    commit.begin(rdir, keep=[layout.ATTEMPTS])  # a half-committed phase is never taken for a finished one
    started = time.monotonic()
    done_parts = _readable_parts(attempts_dir, label)
    resumed = sum(done_parts.values())  # one attempt per pool row
    if resumed:
        log.info("%s: resuming, %d rows already have a result", label, resumed)
    attempted = read_files(attempts_dir, list(done_parts), resumed) if resumed else None
    partitions = resume_partitions(resumed + (expected_rows or resumed))

    def todo(ds: ray.data.Dataset) -> ray.data.Dataset:  # the rows still to attempt
        return ds if attempted is None else without_attempted(ds, attempted, partitions)

    on = (f"{engines.replicas} engine(s) ({engines.device})" if cfg.engine.backend == "vllm"
          else f"{engines.stage_actors} stage actor(s) to {cfg.engine.endpoint.base_url}")
    total = None if expected_rows is None else expected_rows - resumed
    log.info("%s: engine phase: %s rows on %s%s", label, "?" if total is None else total, on,
             f", {resumed} resumed" if resumed else "")
    try:
        stats = engines.stats.begin(label)  # the run's, as its writers: a phase starts no actor
        engines.round_begin()
        with attempt_files.writing(engines.writers, attempts_dir, C.ROUND_SCHEMA, engines.stage_actors,
                                   cfg.output.flush_rows, cfg.output.flush_s) as (writers, written):
            try:
                with progress.shown(label, total, stats, cfg.output.progress_every_s, fresh=True):
                    attempt(todo(pool), stats, writers)  # returns when every row is with the writers
                    if extra is not None:
                        for _ in attempt_files.TO_WRITERS(todo(extra), writers=writers).iter_internal_ref_bundles():
                            pass
            except Exception as e:
                if (why := _engine_unavailable(e)) is None:
                    raise
                raise RunError(f"{label}: the engine stopped serving: {why}. The rows already "
                               f"answered are kept in {attempts_dir.url}; run again to resume") from None
        figures = engines.round_figures(ray.get(stats.get.remote()))
    except BaseException:
        engines.stats.stop()  # a failed phase's late reports never reach the next one's figures (or it was lost)
        raise
    done = time.monotonic()
    parts = _readable_parts(attempts_dir, label, {**done_parts, **written})
    n_attempts = sum(parts.values())  # the counts come from the files' footers, each read once
    log.info("%s: engine phase done in %.0f s (engine start-up %.0f s): %d attempts in %d files; commit phase",
             label, done - started, figures.get("startup_s", 0.0), n_attempts, len(parts))
    if expected_rows is not None and n_attempts != expected_rows:
        raise RunError(f"{label}: {n_attempts} attempts for {expected_rows} input rows; "
                       f"it is left uncommitted in {attempts_dir.url}")
    return EnginePhase(list(parts), n_attempts, resumed, figures, started, done)


def commit_phase(cfg: Config, rdir: Location, phase: EnginePhase, checked: Optional[ray.data.Dataset],
                 fields: dict) -> dict:
    """The attempts (or `checked`, the CPU checks' rows made from them) committed into `rdir`
    with their counts, `fields` and the phase's figures; `_attempts/` removed after. Returns the
    manifest."""
    if checked is None:  # no CPU check: the attempts are the result
        files = commit.move_into(phase.parts, rdir)
    else:
        files = commit.write_dataset(checked, rdir, cfg.output.rows_per_file)
    counts = count_in_ray(rdir, files)
    manifest = commit.commit(rdir, {
        **fields,
        "config_hash": config_mod.config_hash(cfg),
        "rows_in": counts["rows"],
        "rows_kept": counts["status_counts"].get(C.KEPT, 0),
        "rows_resumed": phase.resumed,
        "attempt_files": len(phase.parts),  # what the engine phase wrote (and the commit read): object-store requests
        **{k: v for k, v in counts.items() if k != "rows"},
        "wall_seconds": round(time.monotonic() - phase.started, 3),
        # engine phase: from the start (actors launched, engines starting) to the last attempt
        # written; commit phase: CPU checks (dedup, quality), files moved, manifest.
        "phase_seconds": {"engine": round(phase.done - phase.started, 3),
                          "commit": round(time.monotonic() - phase.done, 3)},
        "engine": phase.figures,
    }, files)
    remove(rdir.join(layout.ATTEMPTS))
    return manifest


def run_round(cfg: Config, out: Location, round_no: int, pool: ray.data.Dataset, engines,
              expected_rows: Optional[int], seeds: Optional[ray.data.Dataset] = None,
              manifests: List[dict] = (), repeats: Optional[ray.data.Dataset] = None,
              about: Optional[dict] = None) -> dict:
    """Round `round_no` from `pool` into `round_N/` on the run's `engines`
    (`evol_ray.engine.service.Engines`, started here if not yet); returns its manifest. Dedup
    compares against `seeds` and the rounds of `manifests` (the earlier ones). `repeats` (round 1:
    repeated seeds) are written as `duplicate_seed` attempts beside the evolved ones, with no
    engine request. `about`: more manifest fields (Auto Evol's method digest)."""
    rdir = layout.round_dir(out, round_no)
    phase = engine_phase(cfg, rdir, f"round {round_no}", pool, engines, expected_rows,
                         lambda rows, stats, sink: engine_stages.evolve(rows, cfg, round_no, engines, stats, sink),
                         None if repeats is None else REPEAT_ATTEMPTS(repeats))
    earlier = [read_round(out, m) for m in manifests]
    checked = where.round_checks(read_files(rdir.join(layout.ATTEMPTS), phase.parts, phase.attempts), cfg, seeds, earlier)
    manifest = commit_phase(cfg, rdir, phase, checked,
                            {"round": round_no, **(about or {}), "device": engines.device})
    log.info("round %d: committed in %s: in %d, kept %d; %s", round_no, rdir.url, manifest["rows_in"],
             manifest["rows_kept"], ", ".join(f"{k} {v}" for k, v in manifest["reason_counts"].items()) or "nothing dropped")
    return manifest


def _readable_parts(attempts_dir: Location, label: str, known: Optional[Dict[str, int]] = None) -> Dict[str, int]:
    try:
        return commit.readable_parts(attempts_dir, known)
    except OSError as e:
        raise RunError(f"{label}: {e}; the rows already answered are kept in "
                       f"{attempts_dir.url}; run again to resume") from None


def _engine_unavailable(e: BaseException) -> Optional[str]:
    """The message of an `EngineUnavailable` that stopped the stage, or None. Ray Data re-raises a
    stage's exception wrapped (`UserCodeException` in a `RayTaskError`) whose remote cause keeps
    only its text, so the remote traceback is searched too."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, EngineUnavailable) and not isinstance(e, ray.exceptions.RayTaskError):
            return str(e)
        text = f"{e}\n{getattr(e, 'traceback_str', '')}"
        if found := re.search(r"EngineUnavailable: (.+)", text):
            return found.group(1).strip()
        e = e.__cause__ or e.__context__ or getattr(e, "cause", None)
    return None


def pool_after(out: Location, manifest: dict) -> ray.data.Dataset:
    """The next round's pool: a kept row goes on evolved, a failed one hands its parent on."""
    return NEXT_POOL(read_round(out, manifest))


def pool_size_after(manifest: dict) -> int:
    """Rows of the next pool: every row but blank and repeated seeds (`next_pool`)."""
    return (manifest["rows_in"] - manifest["status_counts"].get(C.INVALID_INPUT, 0)
            - manifest["reason_counts"].get(C.R_DUPLICATE_SEED, 0))
