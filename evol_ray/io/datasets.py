"""Ray Data reads of committed Parquet files (rounds, seeds): the one place that calls the reader."""

from __future__ import annotations

import math
from typing import Optional, Sequence

import ray

from evol_ray.io import layout
from evol_ray.io.storage import Location


# Rows per block of what the run reads back (round files, attempts): every later stage runs a task
# per block, so blocks are large. Left to itself, Ray Data cut a round of 100k rows into 154
# blocks of about 650 rows, and a map over them cost 7.6 s of task overhead for 0.7 s of work.
BLOCK_ROWS = 16_384


def read_parquet(paths: Sequence[str], fs, rows: Optional[int] = None) -> ray.data.Dataset:
    """Ray Data's V1 Parquet reader, in blocks of about BLOCK_ROWS rows where `rows` (the files'
    rows, from a manifest or the footers) is given, else as Ray Data splits them (seed files).
    The V2 reader, the default in Ray 2.60, starts 32 footer reading actors for every read
    (`RAY_DATA_PARQUET_FOOTER_NUM_ACTORS`); a round reads its files back several times, and on a
    2-CPU node each read of a few files took 1.3-2.4 s instead of 0.3-0.4 s. Our reads name their
    files, so there is nothing for V2's listing to scale out."""
    ctx = ray.data.DataContext.get_current()
    before = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False
    blocks = None if rows is None else max(1, math.ceil(rows / BLOCK_ROWS))
    try:
        return ray.data.read_parquet(list(paths), filesystem=fs, override_num_blocks=blocks)
    finally:
        ctx.use_datasource_v2 = before


def read_files(loc: Location, files: Sequence[str], rows: Optional[int] = None) -> ray.data.Dataset:
    return read_parquet(files, loc.arrow_fs, rows)


def read_round(out: Location, manifest: dict) -> ray.data.Dataset:
    """The committed files of the round `manifest` describes."""
    return read_files(out, layout.round_files(out, manifest), manifest["rows_in"])
