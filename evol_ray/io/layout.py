"""The output layout: every name under `output.path`, spelled once, and reading what is committed.

    run.json                config hash and the values it covers (a rerun must agree)
    config.yaml             the resolved config, secrets masked
    method/                 Auto Evol-Instruct (evolution.auto): step_T/ and methods.parquet, the
      manifest.json         candidates' failure rates by step and the chosen method (written last)
    round_N/                every attempted evolution of round N, kept or not, as Parquet
      _attempts/            engine results while the round runs (resume reads them)
      manifest.json         written last: the commit marker, with counts and the file list
    seed_answers/           answers to the seeds that had none (output.answer_seeds), as a round's
      _attempts/            files: kept or eliminated with a reason; manifest.json written last
      manifest.json
    final/                  the training set: every kept row of every round (+ seeds if configured)
      _removed/             rows the final checks rejected, with their reason
      manifest.json
    scores/                 `evol-ray score`: scores.parquet + manifest.json
    report/                 `evol-ray report`: report.html + figures.json + manifest.json

Something is committed only when its `manifest.json` says `complete`; `evol_ray.io.commit` writes
them. This module only names and reads. No Ray here: `evol-ray report` reads a run without it.
"""

from __future__ import annotations

import posixpath
from datetime import datetime, timezone
from typing import Iterator, List, Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.parquet as pq

from evol_ray.io.storage import Location, read_json

MANIFEST = "manifest.json"
RUN_FILE = "run.json"
CONFIG_FILE = "config.yaml"
ATTEMPTS = "_attempts"
STAGING = "_staging"
FINAL = "final"
SEED_ANSWERS = "seed_answers"
REMOVED = "_removed"
METHOD = "method"
SCORES = "scores"
SELECTED = "selected"
REPORT = "report"


def timestamp() -> str:
    """The one clock of every manifest and report: UTC, ISO 8601, to the second."""
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def round_dir(out: Location, round_no: int) -> Location:
    return out.join(f"round_{round_no}")


def read_manifest(loc: Location) -> Optional[dict]:
    """The manifest of the committed output at `loc`, or None if it is not (yet) complete."""
    m = read_json(loc.join(MANIFEST))
    return m if m and m.get("complete") else None


def committed_files(loc: Location, manifest: dict, key: str = "files") -> List[str]:
    """Paths of the files a manifest at `loc` lists under `key` (relative there)."""
    return [posixpath.join(loc.path, f) for f in manifest.get(key, [])]


def round_manifests(out: Location, rounds: int) -> Tuple[List[dict], List[int]]:
    """Complete round manifests in order, and the numbers of rounds 1..`rounds` not complete."""
    done, missing = [], []
    for r in range(1, rounds + 1):
        m = read_manifest(round_dir(out, r))
        (done if m else missing).append(m if m else r)
    return done, missing


def round_files(out: Location, manifest: dict) -> List[str]:
    return committed_files(round_dir(out, manifest["round"]), manifest)


def read_tables(loc: Location, files: Sequence[str], columns: Optional[Sequence[str]] = None) -> Iterator[pa.Table]:
    """One table per file, so a large round never has to fit in memory at once."""
    for path in files:
        with loc.fs.open(path, "rb") as f:
            yield pq.read_table(f, columns=list(columns) if columns is not None else None)


def row_count(loc: Location, files: Sequence[str]) -> int:
    """Rows in `files`, from their footers alone."""
    n = 0
    for path in files:
        with loc.fs.open(path, "rb") as f:
            n += pq.read_metadata(f).num_rows
    return n
