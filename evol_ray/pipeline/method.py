"""Auto Evol-Instruct before round 1 (`evolution.auto.enabled`): the dev set and the mini-batches
drawn from the seeds, the optimizer loop of `evol_ray.evolve.auto` on the run's engines (each
engine pass a Ray Data job through `RowStage`), every step committed, and the chosen method handed
to the rounds as operation `auto`.

    OUTPUT/method/
      step_T/           trials.parquet (every dev row tried with every new candidate, TRIAL_SCHEMA),
                        trajectories.parquet and proposals.parquet (steps >= 1), manifest.json
      methods.parquet   every candidate of every step with its failure rate (METHODS_SCHEMA)
      manifest.json     written last: the candidates by step, the chosen method

A rerun reuses a complete `method/` made with the same config; else each committed step in
order, until one is missing (it and the steps after it are run again).
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from typing import Dict, Optional

import pyarrow as pa
import pyarrow.compute as pc
import ray

from evol_ray import columns as C
from evol_ray import config as config_mod
from evol_ray import identity
from evol_ray.config import Config
from evol_ray.engine.meter import start_engine_stats
from evol_ray.engine.client_stage import table_through
from evol_ray.evolve import auto
from evol_ray.evolve.prompts import AUTO_OP
from evol_ray.figures import shown
from evol_ray.io import commit, layout
from evol_ray.io.storage import Location
from evol_ray.pipeline.round import RunError
from evol_ray.stage import WHOLE_BLOCK, Stage

log = logging.getLogger("evol_ray")

METHODS_FILE = "methods.parquet"
# The chosen method's digest, in method/manifest.json and in every round manifest made with it:
# the method is left out of the config hash (it is what the auto keys make), so this is what ties
# a committed round to the method it ran.
DIGEST = "auto_method_digest"
_SUMMARY = (C.STEP, C.CANDIDATE, C.SOURCE, C.METHOD, C.FAILURE_RATE, C.EVALUATED, C.FAILED, C.ERRORS,
            C.CHOSEN, "reason_counts", auto.ORIGIN, auto.MEASURED_AS)


def dev_key(seed: int, row_id: str) -> float:
    """Rank of a seed in Auto Evol's draw: a hash of seed and id, never random state."""
    return identity.unit_float("auto-dev", seed, row_id)


def smallest_keys(batch: pa.Table, n: int, seed: int) -> pa.Table:
    """Pool rows -> the `n` non-blank ones with the smallest `dev_key`, in that order."""
    text = pc.fill_null(batch[C.INSTRUCTION], "")
    batch = batch.filter(pc.not_equal(pc.utf8_trim_whitespace(text), "")).select(C.POOL_SCHEMA.names)
    keys = pa.array([dev_key(seed, i) for i in batch[C.ID].to_pylist()], pa.float64())
    return batch.take(pc.sort_indices(keys)[:n])


SMALLEST_KEYS = Stage(smallest_keys, WHOLE_BLOCK)


def draw(seeds: ray.data.Dataset, n: int, seed: int) -> pa.Table:
    """The `n` seeds of smallest `dev_key` of a dataset of any size: each block keeps its own `n`
    (a Ray Data stage), the driver the `n` of those."""
    parts = [t for t in ray.get(SMALLEST_KEYS(seeds, n=n, seed=seed).to_arrow_refs()) if t.num_rows]
    table = pa.concat_tables([t.cast(C.POOL_SCHEMA) for t in parts]) if parts else C.POOL_SCHEMA.empty_table()
    return smallest_keys(table, n, seed)


def split(drawn: pa.Table, dev_size: int, batch_size: int, steps: int):
    """The drawn seeds -> (dev set, one mini-batch per step): the dev set first, the mini-batches
    from the rest in turn (again from its start when it runs out); with no rest (seeds no more
    than `dev_size`), from the dev set, with a warning."""
    dev, rest = drawn.slice(0, dev_size), drawn.slice(dev_size)
    if drawn.num_rows == 0:  # the caller stops: nothing to measure on
        return dev, [rest] * steps
    if rest.num_rows == 0 and steps:
        log.warning("auto evol: %d seeds, none beyond evolution.auto.dev_size (%d): the mini-batches "
                    "are drawn from the dev set", drawn.num_rows, dev_size)
        rest = dev
    b = min(batch_size, rest.num_rows)
    batches = [rest.take([(t * b + i) % rest.num_rows for i in range(b)]) for t in range(steps)]
    return dev, batches


def find_method(cfg: Config, out: Location, seeds: ray.data.Dataset, engines, decided: Optional[dict] = None) -> dict:
    """`method/`'s manifest: the committed one when it was made with this config (and the same
    calibrated thresholds, `decided`: its trials apply the rules), else made now on `engines`
    (started here if they are not yet)."""
    a, h = cfg.evolution.auto, config_mod.config_hash(cfg)
    if decided:
        h += "-" + hashlib.sha256(json.dumps(decided, sort_keys=True).encode()).hexdigest()[:8]
    mdir = out.join(layout.METHOD)
    done = layout.read_manifest(mdir)
    if done is not None and done.get("config_hash") == h:
        log.info("auto evol: method complete in %s, reused (failure rate %s)", mdir.url,
                 shown(done["chosen"][C.FAILURE_RATE]))
        return done
    started = time.monotonic()
    commit.begin(mdir, keep=[f"step_{t}" for t in range(a.steps + 1)])
    dev, batches = split(draw(seeds, a.dev_size + a.steps * a.batch_size, cfg.seed),
                         a.dev_size, a.batch_size, a.steps)
    if dev.num_rows == 0:
        raise RunError("auto evol (evolution.auto.enabled): no seed with an instruction to measure "
                       "methods on")
    log.info("auto evol: %d step(s) of %d candidate(s) on a dev set of %d seeds, mini-batches of %d",
             a.steps, a.candidates, dev.num_rows, batches[0].num_rows if batches else 0)

    stats = None  # engine figures as a round's (start-up paid here, busy share), once one step runs

    def through(fn, table: pa.Table, schema: pa.Schema) -> pa.Table:
        nonlocal stats
        if stats is None:
            stats = start_engine_stats("auto evol")
            engines.round_begin()
        return table_through(table, engines, fn, schema, stats=stats, label="auto evol")

    def load(t: int) -> Optional[dict]:
        m = layout.read_manifest(mdir.join(f"step_{t}"))
        return m if m is not None and m.get("config_hash") == h else None

    def save(t: int, summary: dict, tables: Dict[str, pa.Table]) -> dict:
        sdir = mdir.join(f"step_{t}")
        commit.begin(sdir)
        files = commit.write_tables({f"{name}.parquet": tab for name, tab in tables.items()}, sdir)
        m = commit.commit(sdir, {"config_hash": h, **summary}, files)
        chosen = m[C.CHOSEN]
        # a method never tried (an empty proposal) has no rate: shown as "-"
        log.info("auto evol: step %d committed: %s; chosen candidate %d (failure rate %s)", t,
                 ", ".join(f"{e[C.CANDIDATE]}: {shown(e[C.FAILURE_RATE])}" for e in m["methods"]),
                 chosen[C.CANDIDATE], shown(chosen[C.FAILURE_RATE]))
        return m

    try:
        steps = auto.optimize(cfg, dev, batches, through, load, save)
        engine_figures = {} if stats is None else engines.round_figures(ray.get(stats.get.remote()))
    finally:
        if stats is not None:
            ray.kill(stats)
    entries = [e for s in steps for e in s["methods"]]
    files = commit.write_tables({METHODS_FILE: pa.Table.from_pylist(entries, schema=C.METHODS_SCHEMA)}, mdir)
    for t in range(len(steps)):
        sdir = mdir.join(f"step_{t}")
        files += layout.committed_files(sdir, steps[t])
    return commit.commit(mdir, {
        "config_hash": h,
        "recipe": cfg.evolution.recipe,
        "dev_size": dev.num_rows,
        "dev_ids": dev[C.ID].to_pylist(),
        "batch_size": batches[0].num_rows if batches else 0,
        "steps": a.steps,
        "candidates": a.candidates,
        **summary(steps),
        "wall_seconds": round(time.monotonic() - started, 3),
        "engine": engine_figures,
        "device": engines.device,
    }, files)


def summary(steps) -> dict:
    """The steps' summaries (`auto.optimize`) -> what `method/manifest.json` says of them: every
    candidate by step (its text, source, rate, counts, reasons) and the chosen one."""
    chosen = steps[-1][C.CHOSEN]
    return {
        "op": AUTO_OP,
        DIGEST: hashlib.sha256(chosen[C.METHOD].encode("utf-8")).hexdigest()[:16],
        "by_step": [{C.STEP: s[C.STEP], C.CHOSEN: s[C.CHOSEN][C.CANDIDATE],
                     "methods": [{k: e[k] for k in _SUMMARY} for e in s["methods"]]} for s in steps],
        "initial_failure_rate": steps[0][C.CHOSEN][C.FAILURE_RATE],
        C.CHOSEN: {k: chosen[k] for k in (C.STEP, C.CANDIDATE, C.SOURCE, C.METHOD, C.FAILURE_RATE, auto.ORIGIN)},
        "prompt_tokens": sum(s["prompt_tokens"] for s in steps),
        "generated_tokens": sum(s["generated_tokens"] for s in steps),
    }


def rounds_config(cfg: Config, manifest: dict) -> Config:
    """The config the rounds run with: operation `auto`'s method is the chosen one (its config
    hash is the run's: `run_key` leaves that method out while Auto Evol is on)."""
    c = copy.deepcopy(cfg)
    c.evolution.templates.methods[AUTO_OP] = manifest[C.CHOSEN][C.METHOD]
    return c
