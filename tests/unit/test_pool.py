import pyarrow as pa

from evol_ray import columns as C
from evol_ray.pipeline.final import final_rows, seed_rows
from evol_ray.pipeline.pool import next_pool


def attempts(rows):
    base = {name: None for name in C.ROUND_SCHEMA.names}
    return pa.Table.from_pylist([{**base, C.ROUND: 1, **r} for r in rows], schema=C.ROUND_SCHEMA)


ROWS = [
    {C.ID: "c1", C.PARENT_ID: "p1", C.ROOT_ID: "r1", C.STATUS: C.KEPT, C.INSTRUCTION: "new1",
     C.RESPONSE: "ans1", C.PARENT_INSTRUCTION: "old1", C.PARENT_RESPONSE: "pans1", C.OP: "deepen"},
    {C.ID: "c2", C.PARENT_ID: "p2", C.ROOT_ID: "r2", C.STATUS: C.ELIMINATED, C.REASON: C.R_SORRY,
     C.INSTRUCTION: "new2", C.RESPONSE: "sorry", C.PARENT_INSTRUCTION: "old2", C.PARENT_RESPONSE: None},
    {C.ID: "c3", C.PARENT_ID: "p3", C.ROOT_ID: "r3", C.STATUS: C.ERROR_STATUS, C.REASON: C.R_ENGINE_ERROR,
     C.PARENT_INSTRUCTION: "old3", C.PARENT_RESPONSE: "pans3"},
    {C.ID: "c4", C.PARENT_ID: "p4", C.ROOT_ID: "r4", C.STATUS: C.INVALID_INPUT,
     C.REASON: C.R_EMPTY_INSTRUCTION, C.PARENT_INSTRUCTION: ""},
]


def test_next_pool_keeps_evolved_or_hands_parent_on():
    pool = next_pool(attempts(ROWS)).to_pylist()
    assert pool == [
        {C.ID: "c1", C.ROOT_ID: "r1", C.INSTRUCTION: "new1", C.RESPONSE: "ans1"},
        {C.ID: "p2", C.ROOT_ID: "r2", C.INSTRUCTION: "old2", C.RESPONSE: None},
        {C.ID: "p3", C.ROOT_ID: "r3", C.INSTRUCTION: "old3", C.RESPONSE: "pans3"},
    ]


def test_final_rows_are_the_kept_ones():
    out = final_rows(attempts(ROWS))
    assert out.column_names == list(C.FINAL_COLUMNS)
    assert out.column(C.ID).to_pylist() == ["c1"]


def test_seed_rows_skip_blank_seeds():
    pool = pa.table({C.ID: ["a", "b"], C.ROOT_ID: ["a", "b"], C.INSTRUCTION: ["x", "  "],
                     C.RESPONSE: ["y", None]}, schema=C.POOL_SCHEMA)
    out = seed_rows(pool).to_pylist()
    assert out == [{C.ID: "a", C.PARENT_ID: None, C.ROOT_ID: "a", C.ROUND: 0, C.OP: None,
                    C.INSTRUCTION: "x", C.RESPONSE: "y"}]
