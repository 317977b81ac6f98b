"""The final set: every kept row of every round (plus the seeds if `output.include_seeds`: those
given with an answer and, with `output.answer_seeds`, those answered and kept by the run),
through the final checks, committed to `final/`; rows the checks reject go to `final/_removed/`
with their reason, counted in the manifest (`removed_counts`), never lost.

Reads the committed round files; writes `columns.FINAL_COLUMNS` rows (`final_rows` keeps a round's
`kept` rows, `seed_rows` shapes the seeds alike).
"""

from __future__ import annotations

from collections import Counter
from typing import List, Optional

import pyarrow as pa
import pyarrow.compute as pc
import ray

from evol_ray import columns as C
from evol_ray import config as config_mod
from evol_ray.checks import where
from evol_ray.config import Config
from evol_ray.counts import value_counts
from evol_ray.io import commit, layout
from evol_ray.io.datasets import read_round
from evol_ray.io.storage import Location
from evol_ray.pipeline.seed_answers import seed_final_rows
from evol_ray.stage import WHOLE_BLOCK, Stage


def final_rows(batch: pa.Table) -> pa.Table:
    """Round attempts -> training rows: only `kept` ones."""
    return batch.filter(pc.equal(batch[C.STATUS], C.KEPT)).select(list(C.FINAL_COLUMNS))


def seed_rows(batch: pa.Table) -> pa.Table:
    """Pool rows of the seeds -> training rows (round 0, no parent, no operation). Blank seeds are
    left out: round 1 recorded them as `invalid_input`."""
    batch = batch.filter(pc.not_equal(pc.utf8_trim_whitespace(batch[C.INSTRUCTION]), ""))
    n = batch.num_rows
    return pa.table(
        {
            C.ID: batch[C.ID],
            C.PARENT_ID: pa.nulls(n, pa.string()),
            C.ROOT_ID: batch[C.ROOT_ID],
            C.ROUND: pa.array([0] * n, pa.int32()),
            C.OP: pa.nulls(n, pa.string()),
            C.INSTRUCTION: batch[C.INSTRUCTION],
            C.RESPONSE: batch[C.RESPONSE],
        }
    )


FINAL_ROWS = Stage(final_rows, WHOLE_BLOCK)
SEED_ROWS = Stage(seed_rows, WHOLE_BLOCK)


def write_final(cfg: Config, out: Location, manifests: List[dict], seeds: ray.data.Dataset,
                answers: Optional[dict] = None) -> dict:
    """`final/` from the rounds of `manifests` and (`output.include_seeds`) the seeds, with the
    answers of `answers` (`seed_answers/`'s manifest) where the seeds had none."""
    final = out.join(layout.FINAL)
    commit.begin(final)
    parts = [SEED_ROWS(seed_final_rows(out, seeds, answers))] if cfg.output.include_seeds else []
    parts += [FINAL_ROWS(read_round(out, m)) for m in manifests]
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    removed: Counter = Counter()
    removed_files: List[str] = []
    checked = where.final_checks(ds, cfg)  # final dedup / quality, per config
    if checked is not None:
        gone = final.join(layout.REMOVED)
        removed_files = commit.write_dataset(where.REMOVED_ROWS(checked), gone, cfg.output.rows_per_file)
        for t in layout.read_tables(final, removed_files, [C.REASON]):  # Arrow counts, file by file
            removed.update(value_counts(t.column(C.REASON)))
        ds = FINAL_ROWS(checked)
    files = commit.write_dataset(ds, final, cfg.output.rows_per_file)
    return commit.commit(final, {
        "config_hash": config_mod.config_hash(cfg),
        "rows": layout.row_count(final, files),
        "rounds": [m["round"] for m in manifests],
        "include_seeds": cfg.output.include_seeds,
        "seed_answers": None if answers is None else {
            "unanswered": answers["rows_in"], "kept": answers["rows_kept"],
            "reason_counts": answers["reason_counts"]},
        "removed_counts": dict(sorted(removed.items())),
        "removed_files": sorted(f"{layout.REMOVED}/{p.rsplit('/', 1)[1]}" for p in removed_files),
    }, files)
