"""Seed input: find the files, check them before any engine starts, and map them to pool rows.

Accepts Parquet, JSON (an array of objects, as Alpaca ships) or JSONL; one file, a directory or a
glob; local or `s3://`. The Alpaca layout (`instruction`, `input`, `output`) works as is: the
instruction and its input are joined into one instruction, as WizardLM did.
"""

from __future__ import annotations

import json
import posixpath
from typing import Dict, List, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from evol_ray import columns as C
from evol_ray import identity
from evol_ray.config import Config, InputConfig
from evol_ray.io.storage import Location, describe_error, locate
from evol_ray.stage import WHOLE_BLOCK, Stage

_EXT = {".parquet": "parquet", ".pq": "parquet", ".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl"}


class InputError(ValueError):
    """Bad seed input; the message names the file and what was expected."""


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


def _json_records(fs, path: str, fmt: str, n: int = 100) -> List[dict]:
    with fs.open(path, "rb") as f:
        head = f.read(1 << 20)
    text = head.decode("utf-8", errors="replace")
    if fmt == "json" and text.lstrip().startswith("["):
        with fs.open(path, "rb") as f:
            data = json.load(f)
        if not isinstance(data, list):
            raise ValueError("expected a JSON array of objects")
        return data[:n]
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(head) == 1 << 20 and lines:
        lines = lines[:-1]  # may be cut in the middle
    return [json.loads(ln) for ln in lines[:n]]


def _file_schema(fs, path: str, fmt: str) -> Dict[str, pa.DataType]:
    if fmt == "parquet":
        with fs.open(path, "rb") as f:
            schema = pq.read_schema(f)
        return {name: schema.field(name).type for name in schema.names}
    records = _json_records(fs, path, fmt)
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
            schema = _file_schema(loc.fs, path, fmt)
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
    """Seed rows -> pool rows (`columns.POOL_SCHEMA`).

    Reads the mapped input columns; writes `id`, `root_id`, `instruction`, `response`. The id is the
    id column as text, or a hash of the joined instruction. A blank instruction stays blank here and
    gets status `invalid_input` in round 1, so it is counted, not lost.
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
        i = "" if i is None else str(i)
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
    return pa.table(
        {C.ID: ids, C.ROOT_ID: ids, C.INSTRUCTION: joined, C.RESPONSE: [None if r is None else str(r) for r in resp]},
        schema=C.POOL_SCHEMA,
    )


TO_POOL = Stage(to_pool, WHOLE_BLOCK)


def json_array_rows(batch: pa.Table) -> pa.Table:
    """Files read as bytes (`bytes`) -> their records: each file is one JSON array of objects, as
    Alpaca ships (pyarrow reads only JSON Lines; Ray's own fallback warns on every file)."""
    records = [r for blob in batch.column("bytes").to_pylist() for r in json.loads(blob)]
    return pa.Table.from_pylist(records)


JSON_ARRAY_ROWS = Stage(json_array_rows, WHOLE_BLOCK)


def read_seeds(cfg: Config, urls: List[str], fmt: str, cols: List[str]):
    """The checked seed files (`check_input`'s result) -> the pool dataset of round 1."""
    import ray

    from evol_ray.io.datasets import read_parquet

    loc = locate(cfg.input.path, cfg.storage)
    paths = [u.split("://", 1)[1] if "://" in u else u for u in urls]
    if fmt == "parquet":
        ds = read_parquet(paths, loc.arrow_fs).select_columns(cols)
    elif fmt == "json" and _is_json_array(loc.fs, paths[0]):
        ds = JSON_ARRAY_ROWS(ray.data.read_binary_files(paths, filesystem=loc.arrow_fs))
    else:
        ds = ray.data.read_json(paths, filesystem=loc.arrow_fs)  # pyarrow: JSON Lines
    if cfg.input.limit:
        ds = ds.limit(cfg.input.limit)
    return TO_POOL(ds, ic=cfg.input)


def _is_json_array(fs, path: str) -> bool:
    with fs.open(path, "rb") as f:
        return f.read(4096).decode("utf-8", errors="replace").lstrip().startswith("[")
