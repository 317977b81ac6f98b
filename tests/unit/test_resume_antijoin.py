"""Resume: the anti-join that leaves out pool rows already attempted, run here without Ray: the
tagged rows are partitioned the way the hash shuffle partitions them, then each partition is
resolved by `drop_attempted`."""

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from evol_ray import columns as C
from evol_ray.pipeline.round import (_PART, drop_attempted, resume_partitions, tag_attempted,
                                     tag_pool)


def pool(n):
    return pa.table({C.ID: [f"s{i}" for i in range(n)], C.ROOT_ID: [f"s{i}" for i in range(n)],
                     C.INSTRUCTION: [f"do {i}" for i in range(n)], C.RESPONSE: [None] * n},
                    schema=C.POOL_SCHEMA)


def attempts(parent_ids):
    return pa.table({C.ID: [f"c-{p}" for p in parent_ids], C.PARENT_ID: parent_ids,
                     C.STATUS: [C.KEPT] * len(parent_ids)})


def anti_join(left, right, partitions):
    """What `without_attempted` computes: union (missing columns null), group by partition."""
    tagged = pa.concat_tables([tag_pool(left, partitions), tag_attempted(right, partitions)],
                              promote_options="default")
    parts = [drop_attempted(tagged.filter(pc.equal(tagged[_PART], k))) for k in range(partitions)]
    return pa.concat_tables(parts)


@pytest.mark.parametrize("partitions", [1, 3, 8])
def test_anti_join_leaves_out_exactly_the_attempted_rows(partitions):
    left = pool(200)
    done = [f"s{i}" for i in range(0, 200, 3)] + ["not-in-pool"]
    out = anti_join(left, attempts(done), partitions)
    assert [(f.name, f.type) for f in out.schema] == [(f.name, f.type) for f in left.schema]  # untagged
    assert sorted(out[C.ID].to_pylist()) == sorted(f"s{i}" for i in range(200) if i % 3)
    row = {r[C.ID]: r for r in out.to_pylist()}["s1"]
    assert row == {C.ID: "s1", C.ROOT_ID: "s1", C.INSTRUCTION: "do 1", C.RESPONSE: None}


def test_anti_join_with_every_row_or_none_attempted():
    left = pool(50)
    assert anti_join(left, attempts([f"s{i}" for i in range(50)]), 4).num_rows == 0
    assert anti_join(left, attempts([]), 4).num_rows == 50


def test_partition_depends_on_the_id_alone():
    a = tag_pool(pool(100), 8)[_PART].to_pylist()
    b = tag_attempted(attempts([f"s{i}" for i in range(100)]), 8)[_PART].to_pylist()
    assert a == b and set(a) == set(range(8))


def test_resume_partitions():
    assert resume_partitions(0) == resume_partitions(1000) == 1
    assert resume_partitions(1_000_001) == 5
    assert resume_partitions(10**9) == 64
