"""Pure batch functions between rounds: which row goes on to the next round.

`next_pool` implements WizardLM's rule that a failed evolution hands its parent on unchanged
(arXiv 2304.12244, sec. 3.3): reads `status`, `id`/`instruction`/`response` and their `parent_*`
twins and `root_id`; writes pool rows (`columns.POOL_SCHEMA`).
`repeat_attempts` records repeated seeds in round 1 without an engine request.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from evol_ray import columns as C
from evol_ray import identity
from evol_ray.stage import WHOLE_BLOCK, Stage


def next_pool(batch: pa.Table) -> pa.Table:
    """Round attempts -> next round's pool: the evolved row where it was kept, else its parent.
    Rows of status `invalid_input` and repeated seeds (`duplicate_seed`) have nothing to hand on
    and leave the pool (they stay counted in the round that flagged them)."""
    batch = batch.filter(pc.and_(pc.not_equal(batch[C.STATUS], C.INVALID_INPUT),
                                 pc.not_equal(pc.fill_null(batch[C.REASON], ""), C.R_DUPLICATE_SEED)))
    kept = pc.equal(batch[C.STATUS], C.KEPT)
    return pa.table(
        {
            C.ID: pc.if_else(kept, batch[C.ID], batch[C.PARENT_ID]),
            C.ROOT_ID: batch[C.ROOT_ID],
            C.INSTRUCTION: pc.if_else(kept, batch[C.INSTRUCTION], batch[C.PARENT_INSTRUCTION]),
            C.RESPONSE: pc.if_else(kept, batch[C.RESPONSE], batch[C.PARENT_RESPONSE]),
        },
        schema=C.POOL_SCHEMA,
    )


def repeat_attempts(batch: pa.Table) -> pa.Table:
    """Repeated seeds (`columns.SEED_SCHEMA` rows with `duplicate_of`) -> round-1 attempt rows:
    status `eliminated`, reason `duplicate_seed`, no engine request made."""
    n = batch.num_rows
    nulls = pa.nulls(n, pa.string())
    cols = {
        C.ID: pa.array([identity.child_id(x, 1) for x in batch[C.ID].to_pylist()], pa.string()),
        C.PARENT_ID: batch[C.ID], C.ROOT_ID: batch[C.ROOT_ID], C.ROUND: pa.array([1] * n, pa.int32()),
        C.OP: nulls, C.INSTRUCTION: nulls, C.RESPONSE: nulls,
        C.PARENT_INSTRUCTION: batch[C.INSTRUCTION], C.PARENT_RESPONSE: batch[C.RESPONSE],
        C.STATUS: pa.array([C.ELIMINATED] * n, pa.string()),
        C.REASON: pa.array([C.R_DUPLICATE_SEED] * n, pa.string()), C.ERROR: nulls,
        C.PROMPT_TOKENS: pa.array([0] * n, pa.int64()), C.GENERATED_TOKENS: pa.array([0] * n, pa.int64()),
        C.ENGINE_SECONDS: pa.array([0.0] * n, pa.float64()),
        C.DUPLICATE_OF: batch[C.DUPLICATE_OF], C.JUDGE_P_EQUAL: pa.nulls(n, pa.float64()),
        C.INSTRUCTION_P_INCOHERENT: pa.nulls(n, pa.float64()), C.RESPONSE_P_INCOHERENT: pa.nulls(n, pa.float64()),
    }
    return pa.table(cols, schema=C.ROUND_SCHEMA)


NEXT_POOL = Stage(next_pool, WHOLE_BLOCK)
REPEAT_ATTEMPTS = Stage(repeat_attempts, WHOLE_BLOCK)
