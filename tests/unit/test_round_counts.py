"""`count_files`: a round's counts from its files, by Arrow aggregation per file, added up."""

import random
from collections import Counter

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evol_ray import columns as C
from evol_ray.io.storage import locate
from evol_ray.pipeline.round import count_files


def rows_of(rng, n, start):
    out = []
    for i in range(start, start + n):
        status = rng.choice([C.KEPT, C.KEPT, C.ELIMINATED, C.ERROR_STATUS])
        out.append({C.ID: f"r{i}", C.STATUS: status,
                    C.REASON: None if status == C.KEPT else rng.choice([C.R_NO_GAIN, C.R_SORRY, "", None]),
                    C.OP: rng.choice(["deepen", "breadth", "concretize", "", None]),
                    C.PROMPT_TOKENS: rng.choice([None, rng.randrange(100)]),
                    C.GENERATED_TOKENS: rng.choice([None, rng.randrange(100)]),
                    C.ENGINE_SECONDS: rng.choice([None, rng.randrange(1000) / 8])})  # sums exact in binary
    return out


def expected(rows):
    """What the counts mean, row by row in Python."""
    return {
        "rows": len(rows),
        "status_counts": dict(sorted(Counter(r[C.STATUS] for r in rows).items())),
        "reason_counts": dict(sorted(Counter(r[C.REASON] for r in rows if r[C.REASON]).items())),
        "op_counts": dict(sorted(Counter(r[C.OP] for r in rows if r[C.OP]).items())),
        "op_kept_counts": dict(sorted(Counter(r[C.OP] for r in rows if r[C.OP] and r[C.STATUS] == C.KEPT).items())),
        "prompt_tokens": sum(r[C.PROMPT_TOKENS] or 0 for r in rows),
        "generated_tokens": sum(r[C.GENERATED_TOKENS] or 0 for r in rows),
        "row_engine_seconds": sum(r[C.ENGINE_SECONDS] or 0.0 for r in rows),
    }


@pytest.mark.parametrize("sizes", [[], [0], [1], [50, 0, 7, 300], [40] * 20])
def test_count_files_adds_up_per_file_counts(tmp_path, sizes):
    rng, rows, files = random.Random(len(sizes)), [], []
    schema = pa.schema([C.ROUND_SCHEMA.field(c) for c in (C.ID, C.STATUS, C.REASON, C.OP, C.PROMPT_TOKENS,
                                                          C.GENERATED_TOKENS, C.ENGINE_SECONDS)])
    for i, n in enumerate(sizes):
        part = rows_of(rng, n, len(rows))
        rows += part
        files.append(str(tmp_path / f"part-{i}.parquet"))
        pq.write_table(pa.Table.from_pylist(part, schema=schema), files[-1])
    got = count_files(locate(str(tmp_path), None), files)
    assert got == expected(rows)
    assert list(got["status_counts"]) == sorted(got["status_counts"])  # manifests list keys sorted
    assert "" not in got["reason_counts"] and None not in got["op_counts"]
