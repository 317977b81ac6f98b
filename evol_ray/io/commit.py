"""The one commit protocol for everything evol-ray writes: rounds, final set, scores, report.

    1. files are written under `DEST/_staging/` (a Ray Data write, or plain files);
    2. they are moved into `DEST/` (in parallel: on S3 a move is a copy and a delete);
    3. `DEST/manifest.json` is written last, with `complete: true`, the file list and a timestamp.

A reader trusts `DEST/` only through its manifest (`layout.read_manifest`), so a crash at any step
leaves something that is redone, never something taken for finished. `begin` clears what an
earlier, unfinished attempt left (all of `DEST/` but the folders named in `keep`), so each step is
safe to run twice. `readable_parts` is the resume side: Parquet files written while an engine
phase ran (`io/attempt_files`), minus any cut short by a crash.
"""

from __future__ import annotations

import logging
import posixpath
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Mapping, Optional, Sequence

import pyarrow as pa
import pyarrow.parquet as pq

from evol_ray.io import layout
from evol_ray.io.storage import Location, describe_error, list_files, remove, write_json

log = logging.getLogger("evol_ray")

MOVE_THREADS = 16


def begin(dest: Location, keep: Sequence[str] = ()) -> None:
    """Clear `dest` for a new attempt, keeping the sub-folders named in `keep` (e.g. `_attempts`,
    whose finished blocks a resumed round reuses)."""
    if not dest.fs.exists(dest.path):
        return
    if not keep:
        remove(dest)
        return
    for path in dest.fs.ls(dest.path, detail=False):
        if posixpath.basename(path.rstrip("/")) not in keep:
            dest.fs.rm(path, recursive=True)


def move_into(files: Sequence[str], dest: Location) -> List[str]:
    """Move `files` (paths on `dest`'s filesystem) directly under `dest`; returns the new paths."""
    targets = [posixpath.join(dest.path, posixpath.basename(src)) for src in files]
    if files:
        dest.fs.makedirs(dest.path, exist_ok=True)
        with ThreadPoolExecutor(min(MOVE_THREADS, len(files))) as pool:
            list(pool.map(dest.fs.mv, files, targets))
    return sorted(targets)


def write_dataset(ds, dest: Location, rows_per_file: int) -> List[str]:
    """Ray Data write of `ds` into `dest` through `dest/_staging/`; returns the files' paths."""
    staging = dest.join(layout.STAGING)
    remove(staging)
    ds.write_parquet(staging.path, filesystem=dest.arrow_fs, max_rows_per_file=rows_per_file)
    files = move_into(list_files(staging), dest)
    remove(staging)
    return files


def write_tables(tables: Dict[str, object], dest: Location) -> List[str]:
    """Plain files into `dest` through `dest/_staging/`: name -> a pyarrow Table (Parquet) or
    bytes. Returns the files' paths."""
    staging = dest.join(layout.STAGING)
    remove(staging)
    dest.fs.makedirs(staging.path, exist_ok=True)
    written = []
    for name, data in tables.items():
        path = staging.join(name).path
        with dest.fs.open(path, "wb") as f:
            if isinstance(data, (bytes, bytearray)):
                f.write(data)
            else:
                pq.write_table(data, f)
        written.append(path)
    files = move_into(written, dest)
    remove(staging)
    return files


def commit(dest: Location, manifest: dict, files: Sequence[str]) -> dict:
    """Write `dest/manifest.json` last: `manifest` plus `complete`, `files` (relative to `dest`)
    and `finished`. Returns what was written."""
    if dest.guard is not None:  # a run that lost its output's lease commits nothing
        dest.guard()
    m = {**manifest, "complete": True, "files": sorted(posixpath.relpath(f, dest.path) for f in files),
         "finished": layout.timestamp()}
    write_json(dest.join(layout.MANIFEST), m)
    return m


def readable_parts(loc: Location, known: Optional[Mapping[str, int]] = None) -> Dict[str, int]:
    """Parquet files under `loc` whose footer reads, with their rows (path -> rows), the footers
    read in parallel (MOVE_THREADS at a time: on S3 each is a request); a file in `known` (rows
    written by this process's writers, or read before) is taken as it is, its footer not read again.
    A file whose bytes are not a whole Parquet file (pyarrow's ArrowInvalid: too short, or no footer
    magic, which is what a write cut short by a crash leaves) is removed: its rows were never
    counted, so they are produced again. Any other error (the store not answering past its retries,
    access denied) is raised as an OSError naming the file, and nothing is removed: a good file is
    never deleted because the store was away for a moment."""
    known = known or {}

    def footer(path: str) -> Optional[int]:
        if path in known:
            return known[path]
        try:
            with loc.fs.open(path, "rb") as f:
                return pq.read_metadata(f).num_rows
        except pa.ArrowInvalid:
            log.warning("removing unreadable partial file %s", loc.url_of(path))
            loc.fs.rm(path)
            return None
        except Exception as e:
            raise OSError(f"cannot read the footer of {describe_error(e, loc.url_of(path))} "
                          "(the file is kept)") from None

    paths = list_files(loc)
    with ThreadPoolExecutor(max(1, min(MOVE_THREADS, len(paths)))) as threads:
        rows = list(threads.map(footer, paths))
    return {p: n for p, n in zip(paths, rows) if n is not None}
