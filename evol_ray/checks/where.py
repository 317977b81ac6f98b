"""Where the CPU checks run: quality filters first, then dedup, on a round's attempts before the
round is committed, and on the final set; both places switched by config (`quality.in_rounds`,
`quality.in_final`, `dedup.in_rounds`, `dedup.in_final`). Wiring only: the stages are
`evol_ray.checks.quality.check` and the stages of `evol_ray.checks.dedup`.

Quality runs first so that a row it rejects is never the kept row of a duplicate cluster.
"""

from __future__ import annotations

from typing import List, Optional

import pyarrow as pa
import pyarrow.compute as pc
import ray

from evol_ray import columns as C
from evol_ray.checks import dedup as dedup_mod
from evol_ray.checks import quality
from evol_ray.config import Config
from evol_ray.stage import Stage


def _dedup_on(cfg: Config) -> bool:
    return cfg.dedup.exact or cfg.dedup.near


def round_checks(ds: ray.data.Dataset, cfg: Config, seeds: Optional[ray.data.Dataset],
                 earlier: List[ray.data.Dataset]) -> Optional[ray.data.Dataset]:
    """Round attempts -> the same rows with statuses/reasons changed, or None if nothing is
    configured. `seeds` (pool rows) and `earlier` (earlier rounds' attempts) are compared against."""
    q = cfg.quality.in_rounds and bool(quality.enabled_rules(cfg.quality))
    d = cfg.dedup.in_rounds and _dedup_on(cfg)
    if not (q or d):
        return None
    if q:
        ds = quality.filter_rows(ds, cfg.quality)
    if d:
        p = dedup_mod.params_from(cfg.dedup, cfg.seed)
        ds = dedup_mod.dedup(ds, p, dedup_mod.reference_signatures(seeds, earlier, p))
    return ds


def with_status(batch: pa.Table) -> pa.Table:
    """Final rows -> the same with `status` kept, `reason` and `duplicate_of` null, so the round
    checks apply to them."""
    n = batch.num_rows
    return (batch.append_column(C.STATUS, pa.array([C.KEPT] * n, pa.string()))
            .append_column(C.REASON, pa.nulls(n, pa.string()))
            .append_column(C.DUPLICATE_OF, pa.nulls(n, pa.string())))


WITH_STATUS = Stage(with_status, dedup_mod.BATCH_ROWS)


def removed_rows(batch: pa.Table) -> pa.Table:
    """Checked final rows -> those the checks rejected, with their reason and `duplicate_of`."""
    return batch.filter(pc.not_equal(batch[C.STATUS], C.KEPT))


REMOVED_ROWS = Stage(removed_rows)


def final_checks(ds: ray.data.Dataset, cfg: Config) -> Optional[ray.data.Dataset]:
    """Final rows (`columns.FINAL_COLUMNS`) -> the same rows with `status`, `reason`,
    `duplicate_of` (materialized: the caller writes kept and removed rows from it), or None if no
    final check is configured. The text-hygiene rule (`non_printable`) runs here whenever it is
    on, `quality.in_final` or not.

    Dedup: where the rounds deduped their kept rows (`dedup.in_rounds`), each round's kept rows
    were already compared with the seeds, the earlier rounds' kept rows and each other, and none
    is a duplicate of any of them; what no round compared is the seeds with each other. So the
    final dedup then compares the seeds (round 0) alone: the same marks as comparing every
    final row, for the seeds' share of the work (at 1M seeds and 2 rounds, 1M items, not 2.5M)."""
    rules = cfg.quality if cfg.quality.in_final else quality.final_only(cfg.quality)
    q = bool(quality.enabled_rules(rules))
    rounds_deduped = cfg.dedup.in_rounds and _dedup_on(cfg)
    d = cfg.dedup.in_final and _dedup_on(cfg)
    if not (q or d):
        return None
    ds = WITH_STATUS(ds)
    if q:
        ds = quality.filter_rows(ds, rules)
    if d:
        ds = dedup_mod.dedup(ds, dedup_mod.params_from(cfg.dedup, cfg.seed), only_round=0 if rounds_deduped else None)
    return ds.materialize()
