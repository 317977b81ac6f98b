"""Ray Data reads of committed Parquet files (rounds, seeds): the one place that calls the reader."""

from __future__ import annotations

from typing import Sequence

import ray

from evol_ray.io import layout
from evol_ray.io.storage import Location


def read_parquet(paths: Sequence[str], fs) -> ray.data.Dataset:
    """Ray Data's V1 Parquet reader. The V2 reader, the default in Ray 2.60, starts 32 footer
    reading actors for every read (`RAY_DATA_PARQUET_FOOTER_NUM_ACTORS`); a round reads its files
    back several times, and on a 2-CPU node each read of a few files took 1.3-2.4 s instead of
    0.3-0.4 s. Our reads name their files, so there is nothing for V2's listing to scale out."""
    ctx = ray.data.DataContext.get_current()
    before = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(list(paths), filesystem=fs)
    finally:
        ctx.use_datasource_v2 = before


def read_files(loc: Location, files: Sequence[str]) -> ray.data.Dataset:
    return read_parquet(files, loc.arrow_fs)


def read_round(out: Location, manifest: dict) -> ray.data.Dataset:
    """The committed files of the round `manifest` describes."""
    return read_files(out, layout.round_files(out, manifest))
