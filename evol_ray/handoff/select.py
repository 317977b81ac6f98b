"""`evol-ray select OUTPUT --budget N`: the best N rows of the final set, kept diverse.

As distilabel's DEITA step does: each final row gets a difficulty score (the instruction, with
`score.template`) and an answer-quality score (instruction and answer, `select.quality_template`),
both read as expected values over the ten answers' probabilities (`analysis.score.expected_score`:
no bias from "1" prefixing "10"). Rows are then taken greedily by difficulty x quality, highest
first (ties by a hash of `seed` and id), skipping a row whose instruction is too close to one
already taken: with `select.embedding_model`, cosine similarity >= `select.embedding_threshold`
of that model's embeddings (DEITA's measure; vLLM's pooling runner, or the endpoint's
/v1/embeddings); otherwise MinHash Jaccard >= `select.diversity_threshold` with dedup's signatures.

Writes OUTPUT/selected/: `ratings.parquet` (every rated row, `columns.RATINGS_SCHEMA`),
`selected.parquet` (the chosen rows with their score parts and rank, `columns.SELECTED_SCHEMA`),
`embeddings.parquet` (with an embedding model), `manifest.json` last. Ratings and embeddings made
for the same final set and settings are reused, so a new budget costs no engine work.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
from collections import Counter
from dataclasses import replace
from typing import Any, Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from evol_ray import columns as C
from evol_ray import config as config_mod
from evol_ray.analysis import runread
from evol_ray.analysis.score import SCORES, expected_score
from evol_ray.checks import minhash
from evol_ray.config import Config, ModelConfig
from evol_ray.engine.base import TextGenerator, engine_is_dead
from evol_ray.engine.client_stage import table_through
from evol_ray.engine.service import engines_for
from evol_ray.io import commit, layout, lease
from evol_ray.io.storage import Location

log = logging.getLogger("evol_ray")
RATINGS_FILE = "ratings.parquet"
SELECTED_FILE = "selected.parquet"
EMBEDDINGS_FILE = "embeddings.parquet"


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


def select_model(cfg: Config) -> ModelConfig:
    return config_mod.model_named(cfg, cfg.select.model)


async def embed_row(gen: TextGenerator, row: Dict[str, Any]) -> Dict[str, Any]:
    """One row (`id`, `instruction`) -> `id` and the instruction's `embedding` (unit length), or
    null with `error`."""
    try:
        v = np.asarray(await gen.embed(row[C.INSTRUCTION]), np.float32)
    except Exception as e:
        if engine_is_dead(e):
            raise
        return {C.ID: row[C.ID], C.EMBEDDING: None, C.ERROR: f"{type(e).__name__}: {e}"[:2000]}
    return {C.ID: row[C.ID], C.EMBEDDING: (v / max(float(np.linalg.norm(v)), 1e-12)).tolist(), C.ERROR: None}


class PairSkip:
    """Near-duplicates as index pairs (MinHash LSH): a row is too close when it is paired with a
    row already taken."""

    def __init__(self, pairs: np.ndarray) -> None:
        self.near: Dict[int, List[int]] = {}
        for a, b in pairs:
            self.near.setdefault(int(a), []).append(int(b))
            self.near.setdefault(int(b), []).append(int(a))
        self.chosen: set = set()

    def too_close(self, i: int) -> bool:
        return any(j in self.chosen for j in self.near.get(i, ()))

    def take(self, i: int) -> None:
        self.chosen.add(i)


class CosineSkip:
    """Near-duplicates by embedding: a row is too close when its cosine similarity to a row
    already taken is >= `threshold` (a row without an embedding is never too close). Compares
    each candidate with the taken rows only: budget x rows products, never rows x rows."""

    def __init__(self, vectors: List[Optional[List[float]]], threshold: float) -> None:
        dim = next((len(v) for v in vectors if v is not None), 0)
        self.vectors = [None if v is None else np.asarray(v, np.float32) for v in vectors]
        self.taken = np.zeros((0, dim), np.float32)
        self.threshold = threshold

    def too_close(self, i: int) -> bool:
        v = self.vectors[i]
        return v is not None and len(self.taken) > 0 and float(np.max(self.taken @ v)) >= self.threshold

    def take(self, i: int) -> None:
        if self.vectors[i] is not None:
            self.taken = np.vstack([self.taken, self.vectors[i][None, :]])


def choose(ratings: pa.Table, budget: int, skip, seed: int) -> pa.Table:
    """Rated rows -> up to `budget` of them with `select_score` and `select_rank`: greedy by
    difficulty x quality (unrated rows never), skipping any row that `skip` (`PairSkip` or
    `CosineSkip`, by row index) finds too close to a row already taken."""
    score = pc.multiply(ratings[C.DIFFICULTY], ratings[C.QUALITY]).to_numpy(zero_copy_only=False)
    ids = ratings[C.ID].to_pylist()
    rated = [i for i in range(ratings.num_rows) if not np.isnan(score[i])]
    order = sorted(rated, key=lambda i: (-score[i], runread.sample_key(seed, ids[i])))
    taken: List[int] = []
    for i in order:
        if len(taken) == budget:
            break
        if skip.too_close(i):
            continue
        taken.append(i)
        skip.take(i)
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


def _key(cfg: Config, final_manifest: dict, embedding: bool = False) -> str:
    """What the ratings (or, with `embedding`, the embeddings) depend on."""
    what = {"final": final_manifest.get("finished")}
    if embedding:
        what["embedding_model"] = cfg.select.embedding_model
    else:
        what.update(model=select_model(cfg).source, difficulty=cfg.score.template,
                    quality=cfg.select.quality_template)
    return hashlib.sha256(json.dumps(what, sort_keys=True).encode()).hexdigest()[:16]


def ratings_of(out: Location, cfg: Config, rows: pa.Table, key: str) -> tuple[pa.Table, bool]:
    """Every row rated: from a committed selected/ with the same key, else on one engine actor."""
    sdir = out.join(layout.SELECTED)
    old = layout.read_manifest(sdir)
    if old and old.get("ratings_key") == key:
        t = next(layout.read_tables(sdir, [sdir.join(RATINGS_FILE).path], C.RATINGS_SCHEMA.names))
        log.info("select: ratings of this final set reused from %s", sdir.url)
        return t, True
    log.info("select: rating %d rows with %s", rows.num_rows, select_model(cfg).source)
    full = rows.select([c for c in C.RATINGS_SCHEMA.names if c in rows.column_names])
    fn = functools.partial(rate_pair, difficulty_t=cfg.score.template, quality_t=cfg.select.quality_template)
    with engines_for(cfg, select_model(cfg)) as eng:
        t = table_through(full, eng, fn, C.RATINGS_SCHEMA, label="select: ratings")
    return t.sort_by([(C.ID, "ascending")]), False


def embeddings_of(out: Location, cfg: Config, ratings: pa.Table, key: str) -> pa.Table:
    """Every rated row's embedding: from a committed selected/ with the same key, else computed
    on an engine started for `select.embedding_model`."""
    sdir = out.join(layout.SELECTED)
    old = layout.read_manifest(sdir)
    if old and old.get("embeddings_key") == key:
        log.info("select: embeddings reused from %s", sdir.url)
        return next(layout.read_tables(sdir, [sdir.join(EMBEDDINGS_FILE).path], C.EMBEDDINGS_SCHEMA.names))
    log.info("select: embedding %d instructions with %s", ratings.num_rows, cfg.select.embedding_model)
    with engines_for(cfg, config_mod.model_named(cfg, cfg.select.embedding_model), pooling=True) as eng:
        return table_through(ratings.select([C.ID, C.INSTRUCTION]), eng, embed_row, C.EMBEDDINGS_SCHEMA,
                             label="select: embeddings")


def diversity_skip(cfg: Config, ratings: pa.Table, emb: Optional[pa.Table]) -> tuple[object, dict]:
    """How "too close" is judged: by embedding when `emb` is given (`select.embedding_model`:
    `select.embedding_threshold` on cosine similarity), else by MinHash Jaccard
    (`select.diversity_threshold`, dedup's signatures)."""
    s = cfg.select
    if emb is not None:
        by_id = dict(zip(emb[C.ID].to_pylist(), emb[C.EMBEDDING].to_pylist()))
        vectors = [by_id.get(i) for i in ratings[C.ID].to_pylist()]
        return CosineSkip(vectors, s.embedding_threshold), {
            "measure": "embedding cosine", "model": s.embedding_model, "threshold": s.embedding_threshold,
            "rows_without_embedding": sum(v is None for v in vectors)}
    p = minhash.params_from(cfg.dedup, cfg.seed)
    bands, rws = minhash.choose_banding(s.diversity_threshold, p.num_perm)
    p = replace(p, threshold=s.diversity_threshold, bands=bands, rows=rws)
    return PairSkip(minhash.near_duplicate_pairs(ratings[C.INSTRUCTION], p)), {
        "measure": "minhash jaccard", "threshold": s.diversity_threshold}


def select_run(url: str, budget: int, overrides: List[str] = ()) -> dict:
    """`evol-ray select`: rate (or reuse ratings), choose, commit OUTPUT/selected/."""
    if budget < 1:
        raise SelectError(f"--budget {budget}: expected a positive number of rows")
    out, cfg = runread.open_run(url, overrides)
    with lease.held(out, cfg.output.wait_for_lease_s) as out:
        return _select(out, cfg, budget)


def _select(out: Location, cfg: Config, budget: int) -> dict:
    fm, rows = _final(out)
    if rows.num_rows == 0:
        raise SelectError(f"{out.join(layout.FINAL).url}: no row with an instruction and an answer")
    key = _key(cfg, fm)
    ratings, reused = ratings_of(out, cfg, rows, key)
    emb_key = _key(cfg, fm, embedding=True) if cfg.select.embedding_model else None
    emb = embeddings_of(out, cfg, ratings, emb_key) if emb_key else None
    skip, diversity = diversity_skip(cfg, ratings, emb)
    chosen = choose(ratings, budget, skip, cfg.seed)
    rated = ratings.num_rows - ratings[C.DIFFICULTY].null_count
    sdir = out.join(layout.SELECTED)
    commit.begin(sdir)
    tables = {RATINGS_FILE: ratings, SELECTED_FILE: chosen, **({EMBEDDINGS_FILE: emb} if emb is not None else {})}
    files = commit.write_tables(tables, sdir)

    def by(col: str) -> Dict[str, int]:
        return dict(sorted(Counter("seed" if x is None else str(x) for x in chosen[col].to_pylist()).items()))

    return commit.commit(sdir, {
        "ratings_key": key, "ratings_reused": reused, "embeddings_key": emb_key, "config_hash": config_mod.config_hash(cfg),
        "model": select_model(cfg).source, "budget": budget, "rows_rated": rated,
        "rows_unrated": ratings.num_rows - rated, "selected": chosen.num_rows,
        "near_duplicate_threshold": diversity["threshold"], "diversity": diversity,
        "selected_by_round": by(C.ROUND), "selected_by_op": by(C.OP),
    }, files)
