"""`evol-ray select OUTPUT --budget N`: the best N rows of the final set, kept diverse.

As distilabel's DEITA step does: each final row gets a difficulty score (the instruction, with
`score.template`) and an answer-quality score (instruction and answer, `select.quality_template`),
both read as expected values over the ten answers' probabilities (`analysis.score.expected_score`:
no bias from "1" prefixing "10"). Rows are then taken greedily by difficulty x quality, highest
first (ties by a hash of `seed` and id), skipping a row whose instruction is a near-duplicate of
one already taken: MinHash Jaccard >= `select.diversity_threshold` with dedup's own signatures.
(Embedding distance, DEITA's other option, is not built: MinHash is the one diversity measure.)

Writes OUTPUT/selected/: `ratings.parquet` (every rated row, `columns.RATINGS_SCHEMA`),
`selected.parquet` (the chosen rows with their score parts and rank, `columns.SELECTED_SCHEMA`),
`manifest.json` last. Ratings made for the same final set and rating settings are reused, so a
new budget costs no engine work.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
from collections import Counter
from dataclasses import replace
from typing import Any, AsyncIterator, Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import ray

from evol_ray import columns as C
from evol_ray import config as config_mod
from evol_ray.analysis import runread
from evol_ray.analysis.score import SCORES, expected_score
from evol_ray.checks import minhash
from evol_ray.config import Config, ModelConfig
from evol_ray.engine.actor import EngineActor
from evol_ray.engine.base import TextGenerator, engine_is_dead
from evol_ray.engine.resources import connect, engine_actor_args
from evol_ray.engine.sizing import check_cpu_kv_cache, prepare_models
from evol_ray.io import commit, layout
from evol_ray.io.storage import Location
from evol_ray.stage import Stage

log = logging.getLogger("evol_ray")
RATINGS_FILE = "ratings.parquet"
SELECTED_FILE = "selected.parquet"


class SelectError(ValueError):
    """Nothing to select from, or a bad budget; the message names it."""


async def rate_pair(gen: TextGenerator, row: Dict[str, Any], difficulty_t: str, quality_t: str) -> Dict[str, Any]:
    """One final row -> the same with `difficulty` and `quality` (expected scores), or `error`."""
    out = {k: row.get(k) for k in C.RATINGS_SCHEMA.names}
    out.update({C.DIFFICULTY: None, C.QUALITY: None, C.ERROR: None})
    try:
        d, q = await asyncio.gather(
            gen.score_choices(difficulty_t.format(instruction=row[C.INSTRUCTION]), SCORES),
            gen.score_choices(quality_t.format(instruction=row[C.INSTRUCTION], response=row[C.RESPONSE]), SCORES))
    except Exception as e:
        if engine_is_dead(e):
            raise
        out[C.ERROR] = f"{type(e).__name__}: {e}"[:2000]
        return out
    out[C.DIFFICULTY], out[C.QUALITY] = expected_score(d)[0], expected_score(q)[0]
    return out


class RateStage(EngineActor):
    """`map_batches` actor holding one engine; rates every row of a batch concurrently.
    Reads `columns.RATINGS_SCHEMA`'s text columns; writes `columns.RATINGS_SCHEMA`."""

    def __init__(self, model: ModelConfig, cfg: Config, device: str,
                 generator: Optional[TextGenerator] = None) -> None:
        super().__init__(model, cfg.engine, device, cfg.seed, generator=generator)
        self.templates = (cfg.score.template, cfg.select.quality_template)

    async def __call__(self, batch: pa.Table) -> AsyncIterator[pa.Table]:
        out = await self.map_rows(lambda r: rate_pair(self.gen, r, *self.templates), batch.to_pylist())
        yield pa.Table.from_pylist(out, schema=C.RATINGS_SCHEMA)


def select_model(cfg: Config) -> ModelConfig:
    if cfg.select.model is None:
        return cfg.model
    return dataclasses.replace(cfg.model, source=cfg.select.model, tokenizer=None)


def choose(ratings: pa.Table, budget: int, pairs: np.ndarray, seed: int) -> pa.Table:
    """Rated rows -> up to `budget` of them with `select_score` and `select_rank`: greedy by
    difficulty x quality (unrated rows never), skipping any row that `pairs` (index pairs of
    near-duplicates) links to a row already taken."""
    score = pc.multiply(ratings[C.DIFFICULTY], ratings[C.QUALITY]).to_numpy(zero_copy_only=False)
    ids = ratings[C.ID].to_pylist()
    rated = [i for i in range(ratings.num_rows) if not np.isnan(score[i])]
    order = sorted(rated, key=lambda i: (-score[i], runread.sample_key(seed, ids[i])))
    near: Dict[int, List[int]] = {}
    for a, b in pairs:
        near.setdefault(int(a), []).append(int(b))
        near.setdefault(int(b), []).append(int(a))
    taken: List[int] = []
    chosen = set()
    for i in order:
        if len(taken) == budget:
            break
        if any(j in chosen for j in near.get(i, ())):
            continue
        taken.append(i)
        chosen.add(i)
    t = ratings.take(pa.array(taken, pa.int64()))
    return (t.append_column(C.SELECT_SCORE, pa.array(score[taken] if taken else [], pa.float64()))
            .append_column(C.SELECT_RANK, pa.array(range(1, len(taken) + 1), pa.int64())))


def _final(out: Location) -> tuple[dict, pa.Table]:
    final = out.join(layout.FINAL)
    m = layout.read_manifest(final)
    if m is None:
        raise SelectError(f"{final.url}: no complete final set (manifest.json); finish the run first")
    cols = [c for c in C.RATINGS_SCHEMA.names if c in C.FINAL_COLUMNS]
    tables = list(layout.read_tables(final, layout.committed_files(final, m), cols))
    t = pa.concat_tables(tables) if tables else pa.schema([C.RATINGS_SCHEMA.field(c) for c in cols]).empty_table()
    has_text = pc.and_(pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(t[C.INSTRUCTION], ""))), 0),
                       pc.greater(pc.utf8_length(pc.utf8_trim_whitespace(pc.fill_null(t[C.RESPONSE], ""))), 0))
    return m, t.filter(has_text).sort_by([(C.ID, "ascending")])


def _key(cfg: Config, final_manifest: dict) -> str:
    what = {"final": final_manifest.get("finished"), "model": select_model(cfg).source,
            "difficulty": cfg.score.template, "quality": cfg.select.quality_template}
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def ratings_of(out: Location, cfg: Config, rows: pa.Table, key: str) -> tuple[pa.Table, bool]:
    """Every row rated: from a committed selected/ with the same key, else on one engine actor."""
    sdir = out.join(layout.SELECTED)
    old = layout.read_manifest(sdir)
    if old and old.get("ratings_key") == key:
        t = next(layout.read_tables(sdir, [sdir.join(RATINGS_FILE).path], C.RATINGS_SCHEMA.names))
        log.info("select: ratings of this final set reused from %s", sdir.url)
        return t, True
    prepare_models(replace(cfg, model=select_model(cfg)))
    device = connect(cfg)
    if device == "cpu":
        check_cpu_kv_cache(replace(cfg, model=select_model(cfg)))
    log.info("select: rating %d rows with %s on %s", rows.num_rows, select_model(cfg).source, device)
    stage = Stage(RateStage, cfg.engine.batch_size, engine_actor_args(cfg.engine, device, replicas=1))
    full = rows.select([c for c in C.RATINGS_SCHEMA.names if c in rows.column_names])
    ds = stage(ray.data.from_arrow(full), constructor={"model": select_model(cfg), "cfg": cfg, "device": device})
    t = pa.concat_tables([x.cast(C.RATINGS_SCHEMA) for x in ray.get(ds.to_arrow_refs())])
    return t.sort_by([(C.ID, "ascending")]), False


def select_run(url: str, budget: int, overrides: List[str] = ()) -> dict:
    """`evol-ray select`: rate (or reuse ratings), choose, commit OUTPUT/selected/."""
    if budget < 1:
        raise SelectError(f"--budget {budget}: expected a positive number of rows")
    out, cfg = runread.open_run(url, overrides)
    fm, rows = _final(out)
    if rows.num_rows == 0:
        raise SelectError(f"{out.join(layout.FINAL).url}: no row with an instruction and an answer")
    key = _key(cfg, fm)
    ratings, reused = ratings_of(out, cfg, rows, key)
    p = minhash.params_from(cfg.dedup, cfg.seed)
    bands, rws = minhash.choose_banding(cfg.select.diversity_threshold, p.num_perm)
    p = replace(p, threshold=cfg.select.diversity_threshold, bands=bands, rows=rws)
    pairs = minhash.near_duplicate_pairs(ratings[C.INSTRUCTION], p)
    chosen = choose(ratings, budget, pairs, cfg.seed)
    rated = ratings.num_rows - ratings[C.DIFFICULTY].null_count
    sdir = out.join(layout.SELECTED)
    commit.begin(sdir)
    files = commit.write_tables({RATINGS_FILE: ratings, SELECTED_FILE: chosen}, sdir)

    def by(col: str) -> Dict[str, int]:
        return dict(sorted(Counter("seed" if x is None else str(x) for x in chosen[col].to_pylist()).items()))

    return commit.commit(sdir, {
        "ratings_key": key, "ratings_reused": reused, "config_hash": config_mod.config_hash(cfg),
        "model": select_model(cfg).source, "budget": budget, "rows_rated": rated,
        "rows_unrated": ratings.num_rows - rated, "selected": chosen.num_rows,
        "near_duplicate_threshold": cfg.select.diversity_threshold,
        "selected_by_round": by(C.ROUND), "selected_by_op": by(C.OP),
    }, files)
