"""`bench/scale.py` at a small N, through the real driver with the synthetic generator: its
invariants, checked here again from what the run wrote (not timed)."""

import json
import os
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from evol_ray import columns as C

pytestmark = pytest.mark.bench

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
N = 1500


def rows_of(folder, files, columns):
    return [r for f in files for r in pq.read_table(os.path.join(folder, f), columns=columns).to_pylist()]


def test_scale_bench_accounts_for_every_row(tmp_path):
    figures = tmp_path / "figures.json"
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "scale.py"), "--rows", str(N),
                           "--rounds", "2", "--work", str(tmp_path), "--keep", "--json", str(figures)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1].split()
    assert [kv.split("=")[0] for kv in last] == ["rows", "rounds", "seconds", "rows_per_s",
                                                  "driver_peak_rss_mb", "growth", "commit_s", "attempt_files"]
    files = int(last[-1].split("=")[1])
    assert files == sum(m["attempt_files"] for m in json.loads(figures.read_text())["rounds"]) and files >= 2
    assert "invariants: ok" in done.stdout

    fig = json.loads(figures.read_text())
    planted, rounds, final = fig["planted"], fig["rounds"], fig["final"]
    out = fig["output"]
    assert not fig["broken"]

    # every pool row of every round has exactly one attempt, with a status and, unless kept, a reason
    pool = N
    kept_ids = set()
    for m in rounds:
        rdir = os.path.join(out, f"round_{m['round']}")
        rows = rows_of(rdir, m["files"], [C.ID, C.PARENT_ID, C.STATUS, C.REASON])
        assert len(rows) == m["rows_in"] == pool == sum(m["status_counts"].values())
        assert len({r[C.PARENT_ID] for r in rows}) == pool, "a pool row attempted twice"
        assert all(r[C.REASON] for r in rows if r[C.STATUS] != C.KEPT)
        assert sum(m["reason_counts"].values()) == m["rows_in"] - m["rows_kept"]
        kept_ids |= {r[C.ID] for r in rows if r[C.STATUS] == C.KEPT}
        assert m["reason_counts"].get(C.R_NEAR_DUPLICATE, 0) > 0  # the generator's near copies found
        pool = m["rows_in"] - m["status_counts"].get(C.INVALID_INPUT, 0) - m["reason_counts"].get(C.R_DUPLICATE_SEED, 0)

    # the planted exact copies are the repeated seeds; the near copies are removed from final/
    assert rounds[0]["reason_counts"][C.R_DUPLICATE_SEED] == planted["exact"] > 0
    fdir = os.path.join(out, "final")
    final_rows = rows_of(fdir, final["files"], [C.ID, C.ROUND])
    removed = rows_of(fdir, final["removed_files"], [C.ID, C.ROUND, C.REASON])
    assert len(final_rows) == final["rows"] and len(removed) == sum(final["removed_counts"].values())
    # final = the unique seeds + every kept row, minus what the final checks removed (never lost)
    assert len(final_rows) + len(removed) == N - planted["exact"] + len(kept_ids)
    assert {r[C.ID] for r in final_rows if r[C.ROUND] > 0} | {r[C.ID] for r in removed if r[C.ROUND] > 0} == kept_ids
    assert len({r[C.ID] for r in final_rows}) == len(final_rows)
    near_seeds = sum(1 for r in removed if r[C.ROUND] == 0 and r[C.REASON] in C.DEDUP_REASONS)
    assert near_seeds >= 0.95 * planted["near"] > 0
