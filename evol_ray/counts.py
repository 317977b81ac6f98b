"""The one way rows are counted: by Arrow kernels over a table's columns, never per row in Python.

`value_counts` counts one column's values; `row_counts` the counts every round manifest and the
report hold (by status, by reason, by operation, and by operation of the kept rows). Used where a
round is committed (`pipeline/round.py`), where the final set is (`pipeline/final.py`) and where
a run is read back (`analysis/report.py`, `analysis/runread.py`).
"""

from __future__ import annotations

from collections import Counter
from typing import Dict

import pyarrow as pa
import pyarrow.compute as pc

from evol_ray import columns as C


def value_counts(values) -> Counter:
    """`Counter` of an Arrow column's values, nulls and empty strings left out."""
    if len(values) == 0:
        return Counter()
    vc = pc.value_counts(values)
    return Counter({v: n for v, n in zip(vc.field("values").to_pylist(), vc.field("counts").to_pylist()) if v})


def row_counts(t: pa.Table) -> Dict[str, Counter]:
    """Attempt rows (`status`, `reason`, `op`) -> status_counts, reason_counts, op_counts and
    op_kept_counts."""
    kept_ops = t[C.OP].filter(pc.fill_null(pc.equal(t[C.STATUS], C.KEPT), False))
    return {"status_counts": value_counts(t[C.STATUS]), "reason_counts": value_counts(t[C.REASON]),
            "op_counts": value_counts(t[C.OP]), "op_kept_counts": value_counts(kept_ops)}
