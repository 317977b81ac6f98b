"""Seed input: find the files, check them before any engine starts, and map them to pool rows.

Accepts Parquet, JSON (an array of objects, as Alpaca ships) or JSONL; one file, a directory or a
glob; local or `s3://`. The Alpaca layout (`instruction`, `input`, `output`) works as is: the
instruction and its input are joined into one instruction, as WizardLM did.
"""

from __future__ import annotations

import posixpath
from typing import Dict, List, Tuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from evol_ray import columns as C
from evol_ray import identity
from evol_ray.checks.text import hash64, normalize
from evol_ray.config import Config, InputConfig
from evol_ray.io.datasets import BLOCK_ROWS
from evol_ray.io.json_files import (JSON_FILE_ROWS, InputError, file_encoding, is_json_array, json_records,
                                    read_head)
from evol_ray.io.storage import Location, describe_error, locate
from evol_ray.stage import WHOLE_BLOCK, Stage, by_partition

_EXT = {".parquet": "parquet", ".pq": "parquet", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _format_of(path: str) -> str | None:
    for ext, fmt in _EXT.items():
        if path.endswith(ext):
            return fmt
    return None


def find_input_files(cfg: Config) -> Tuple[Location, List[str], str]:
    """The seed files and their format. Raises InputError naming the path when there are none."""
    loc = locate(cfg.input.path, cfg.storage)
    fs = loc.fs
    try:
        if any(ch in loc.path for ch in "*?["):
            files = sorted(fs.glob(loc.path))
        elif fs.isdir(loc.path):
            files = sorted(p for p in fs.find(loc.path) if _format_of(p)
                           and not posixpath.basename(p).startswith(("_", ".")))
        elif fs.exists(loc.path):
            files = [loc.path]
        else:
            raise InputError(f"input.path {cfg.input.path}: not found")
    except InputError:
        raise
    except Exception as e:
        raise InputError(f"input.path {describe_error(e, cfg.input.path)}") from None
    if not files:
        raise InputError(f"input.path {cfg.input.path}: matched no Parquet, JSON or JSONL files")
    fmt = cfg.input.format
    if fmt == "auto":
        kinds = {_format_of(f) for f in files}
        if None in kinds:
            bad = next(f for f in files if _format_of(f) is None)
            raise InputError(f"{loc.url_of(bad)}: unknown file type; set input.format to parquet, json or jsonl")
        if len(kinds) > 1:
            raise InputError(f"input.path {cfg.input.path}: mixes file types {sorted(kinds)}; keep one type")
        fmt = kinds.pop()
    return loc, files, fmt


def _file_schema(fs, path: str, url: str, fmt: str, encoding: str) -> Dict[str, pa.DataType]:
    if fmt == "parquet":
        with fs.open(path, "rb") as f:
            schema = pq.read_schema(f)
        return {name: schema.field(name).type for name in schema.names}
    records = json_records(fs, path, url, fmt, encoding)
    if not records:
        return {}
    if not all(isinstance(r, dict) for r in records):
        raise ValueError("expected one JSON object per record")
    table = pa.Table.from_pylist(records)
    return {name: table.schema.field(name).type for name in table.column_names}


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_null(t)


def check_input(cfg: Config) -> Tuple[List[str], str, List[str]]:
    """Check every seed file before any engine starts: it must be readable, hold the mapped
    columns with text values, and agree with the other files. Returns (urls, format, columns to
    read)."""
    loc, files, fmt = find_input_files(cfg)
    ic = cfg.input
    required = [("input.instruction_column", ic.instruction_column)]
    if ic.id_column:
        required.append(("input.id_column", ic.id_column))
    optional = [("input.input_column", ic.input_column), ("input.response_column", ic.response_column)]
    first: Dict[str, Tuple[str, pa.DataType]] = {}
    present_optional = set()
    for path in files:
        url = loc.url_of(path)
        try:
            schema = _file_schema(loc.fs, path, url, fmt, ic.encoding)
        except InputError:
            raise
        except Exception as e:
            raise InputError(f"{url}: cannot read as {fmt}: {type(e).__name__}: {e}") from None
        if not schema:
            continue  # an empty file holds no rows; nothing to check
        for key, col in required:
            if col not in schema:
                raise InputError(f"{url}: missing column '{col}' (set by {key}); "
                                 f"columns present: {sorted(schema)}")
        for key, col in required + optional:
            if not col or col not in schema:
                continue
            t = schema[col]
            if key != "input.id_column" and not _is_text(t):
                raise InputError(f"{url}: column '{col}' ({key}) has type {t}, expected text (string)")
            if key in dict(optional):
                present_optional.add(col)
            if pa.types.is_null(t):
                continue
            seen = first.get(col)
            if seen is None:
                first[col] = (url, t)
            elif not _compatible(seen[1], t):
                raise InputError(f"{url}: column '{col}' has type {t}, but {seen[0]} has {seen[1]}; "
                                 "all seed files must agree")
    cols = [c for _, c in required] + [c for _, c in optional if c in present_optional]
    return [loc.url_of(f) for f in files], fmt, cols


def _compatible(a: pa.DataType, b: pa.DataType) -> bool:
    return a == b or (_is_text(a) and _is_text(b))


def to_pool(batch: pa.Table, ic: InputConfig) -> pa.Table:
    """Seed rows -> pool rows (`columns.POOL_SCHEMA`) plus `seed_key`.

    Reads the mapped input columns; writes `id`, `root_id`, `instruction`, `response` and
    `seed_key` (the hash of the normalized instruction, as exact dedup computes it). The id is the
    id column as text, or a hash of the joined instruction; `unique_seeds` then tells repeated
    seeds apart. A blank instruction stays blank here and gets status `invalid_input` in round 1,
    so it is counted, not lost.
    """
    n = batch.num_rows
    names = set(batch.column_names)

    def col(name):
        if name and name in names:
            return batch.column(name).to_pylist()
        return [None] * n

    instr, extra, resp = col(ic.instruction_column), col(ic.input_column), col(ic.response_column)
    joined = []
    for i, x in zip(instr, extra):
        i = "" if i is None else _lf(str(i))
        x = None if x is None else _lf(str(x))
        if not i.strip():
            joined.append("")
        elif x is not None and str(x).strip():
            joined.append(f"{i.strip()}\n{str(x).strip()}")
        else:
            joined.append(i.strip())
    if ic.id_column:
        ids = ["" if v is None else str(v) for v in col(ic.id_column)]
    else:
        ids = [identity.content_id(t) for t in joined]
    resp = [None if r is None else _lf(str(r)) for r in resp]
    text = pa.array(joined, pa.string())
    pool = pa.table(
        {C.ID: ids, C.ROOT_ID: ids, C.INSTRUCTION: text, C.RESPONSE: resp},
        schema=C.POOL_SCHEMA,
    )
    return pool.append_column(C.SEED_KEY, pa.array(hash64(normalize(text)), pa.uint64()))


def _lf(text: str) -> str:
    """CRLF and lone CR line ends as LF: one line end in the training set (a lone CR is a control
    character to the quality rules)."""
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


TO_POOL = Stage(to_pool, WHOLE_BLOCK)

SEED_PART = "seed_part"  # shuffle partition of `seed_key`, between `with_part` and `mark_repeats`
SEEDS_PER_PARTITION = 500_000
# Rows per block of the seeds as the run holds them: dedup and the final set read them whole every
# round, so blocks are large (one batch of dedup's stages); the engine stage cuts its own input
# into small blocks (`evolve.engine_stages.ENGINE_BLOCK_BATCHES`). 256-row blocks here made every later
# pass over 1M seeds schedule 3,900 tasks.
SEED_BLOCK_ROWS = BLOCK_ROWS


def with_part(batch: pa.Table, parts: int) -> pa.Table:
    """Seed rows -> the same with `seed_part` = `seed_key` mod `parts` (reads `seed_key`)."""
    keys = batch[C.SEED_KEY].to_numpy(zero_copy_only=False)
    return batch.append_column(SEED_PART, pa.array((keys % np.uint64(parts)).astype(np.int32)))


WITH_PART = Stage(with_part, WHOLE_BLOCK)


def mark_repeats(batch: pa.Table, content_ids: bool) -> pa.Table:
    """Seed rows holding every row of each `seed_key` they contain -> `columns.SEED_SCHEMA` rows.

    Implements unique seed ids and exact duplicate seeds: rows of one key, ordered by instruction,
    response and id (so the order of files and blocks does not matter), keep the first as the seed
    evolved; each further one gets `duplicate_of` = the first one's id, and, where ids come from the
    content (`content_ids`), its own id (`identity.repeat_id`). Blank rows get distinct ids too but no
    `duplicate_of`: they stay `invalid_input`. Reads and drops `seed_key` (and `seed_part`)."""
    if batch.num_rows == 0:
        return C.SEED_SCHEMA.empty_table()
    order = pc.sort_indices(batch, sort_keys=[(c, "ascending", "at_start") for c in
                                              (C.SEED_KEY, C.INSTRUCTION, C.RESPONSE, C.ID)])
    t = batch.take(order)
    n = t.num_rows
    keys = t[C.SEED_KEY].to_numpy(zero_copy_only=False)
    starts = np.r_[True, keys[1:] != keys[:-1]]
    first = np.maximum.accumulate(np.where(starts, np.arange(n), 0))
    rank = np.arange(n) - first
    ids = t[C.ID].to_pylist()
    first_ids = [ids[i] for i in first]
    if content_ids:
        ids = [x if r == 0 else identity.repeat_id(f, int(r)) for x, f, r in zip(ids, first_ids, rank)]
    blank = pc.equal(t[C.INSTRUCTION], "").to_numpy(zero_copy_only=False)
    dup_of = [f if r and not b else None for f, r, b in zip(first_ids, rank, blank)]
    return pa.table({C.ID: ids, C.ROOT_ID: ids, C.INSTRUCTION: t[C.INSTRUCTION], C.RESPONSE: t[C.RESPONSE],
                     C.DUPLICATE_OF: pa.array(dup_of, pa.string())}, schema=C.SEED_SCHEMA)


MARK_REPEATS = Stage(mark_repeats, WHOLE_BLOCK)


def unique_seeds(ds, rows: int, ic: InputConfig):
    """Pool rows with `seed_key` (`to_pool`) -> seed rows with unique ids and repeats marked
    (`mark_repeats`): Ray Data's hash shuffle brings every row of a key into one group, about
    SEEDS_PER_PARTITION rows per partition; a small input is one block (no shuffle actors).
    The result is cut into blocks of SEED_BLOCK_ROWS rows, so later passes run in parallel."""
    parts = max(1, -(-rows // SEEDS_PER_PARTITION))
    content_ids = not ic.id_column
    marked = by_partition(WITH_PART(ds, parts=parts) if parts > 1 else ds, SEED_PART, parts, MARK_REPEATS,
                          content_ids=content_ids)
    return marked.repartition(target_num_rows_per_block=SEED_BLOCK_ROWS)


def first_repeated_ids(ds, limit: int = 3) -> List[Tuple[str, int]]:
    """(id, rows) of up to `limit` ids that more than one seed row carries (user ids only can)."""
    counts = ds.groupby(C.ID).count()
    return [(r[C.ID], r["count()"]) for r in counts.filter(expr="`count()` > 1").take(limit)]


def only_unique(batch: pa.Table) -> pa.Table:
    """Seed rows -> pool rows of the seeds to evolve (no `duplicate_of`)."""
    return batch.filter(pc.is_null(batch[C.DUPLICATE_OF])).select(C.POOL_SCHEMA.names)


def only_repeats(batch: pa.Table) -> pa.Table:
    """Seed rows -> the repeated seeds (with `duplicate_of`), never evolved."""
    return batch.filter(pc.is_valid(batch[C.DUPLICATE_OF]))


ONLY_UNIQUE = Stage(only_unique, WHOLE_BLOCK)
ONLY_REPEATS = Stage(only_repeats, WHOLE_BLOCK)


def read_seeds(cfg: Config, urls: List[str], fmt: str, cols: List[str]):
    """The checked seed files (`check_input`'s result) -> the pool dataset of round 1."""
    import ray

    from evol_ray.io.datasets import read_parquet

    loc = locate(cfg.input.path, cfg.storage)
    paths = [u.split("://", 1)[1] if "://" in u else u for u in urls]
    if fmt == "parquet":
        ds = read_parquet(paths, loc.arrow_fs).select_columns(cols)
    elif cfg.input.encoding not in ("auto", "utf-8") or (fmt == "json" and is_json_array(loc.fs, paths[0])) \
            or any(file_encoding(read_head(loc.fs, p), "auto", p) != "utf-8" for p in paths):
        ds = JSON_FILE_ROWS(ray.data.read_binary_files(paths, filesystem=loc.arrow_fs),
                            encoding=cfg.input.encoding)
    else:
        ds = ray.data.read_json(paths, filesystem=loc.arrow_fs)  # pyarrow: JSON Lines
    if cfg.input.limit:
        ds = ds.limit(cfg.input.limit)
    return TO_POOL(ds, ic=cfg.input)


def load_seeds(cfg: Config, urls: List[str], fmt: str, cols: List[str]):
    """The checked seed files -> (seed rows with unique ids and repeats marked, materialized once
    for round 1, dedup and the final set; their number). Raises InputError, before any engine
    starts, when `input.id_column` gives two rows one id."""
    raw = read_seeds(cfg, urls, fmt, cols).materialize()
    rows = raw.count()
    seeds = unique_seeds(raw, rows, cfg.input).materialize()
    if cfg.input.id_column and rows:
        repeated = first_repeated_ids(seeds)
        if repeated:
            shown = ", ".join(f"{i!r} on {n} rows" for i, n in repeated)
            raise InputError(f"input.path {cfg.input.path}: input.id_column '{cfg.input.id_column}' must "
                             f"be unique, found {shown}; fix the ids or leave input.id_column unset "
                             "(ids from the content)")
    return seeds, rows
