"""The run's stage actors (`client_stage.RowClient`, issue 29): started once and kept for every
phase, fed batch by batch from the driver (`client_stage.map_rows`), never more than
`calls_per_client` batches on one, and dropped when a phase fails, on real Ray."""

import asyncio
import os

import pyarrow as pa
import pytest

from evol_ray.config import load_config
from evol_ray.engine.client_stage import blocks_of, map_rows
from evol_ray.engine.resources import calls_per_client
from evol_ray.engine.service import Engines

pytestmark = pytest.mark.e2e

SCHEMA = pa.schema([("id", pa.string()), ("pid", pa.int64()), ("holding", pa.int64())])
HELD = {"now": 0}  # batches' rows running in this actor process (one RowClient per process)


async def where_row_ran(gen, row):
    """The row's id, the actor process it ran in, and how many rows that actor ran at once."""
    HELD["now"] += 1
    try:
        await asyncio.sleep(0.05)
        return {"id": row["id"], "pid": os.getpid(), "holding": HELD["now"]}
    finally:
        HELD["now"] -= 1


async def fails_on_row_7(gen, row):
    if row["id"] == "r7":
        raise RuntimeError("this batch fails")  # a row function's own exception ends the phase
    return {"id": row["id"], "pid": os.getpid(), "holding": 0}


def no_generator():
    return None


def _engines(tmp_path, *overrides):
    cfg = load_config([f"input.path={tmp_path}/seeds.json", f"output.path={tmp_path}/out",
                       "model.source=scripted", "engine.batch_size=4", *overrides])
    return Engines(cfg, "cpu", no_generator, actors=2)


def test_stage_actors_serve_every_phase_and_hold_at_most_their_calls(tmp_path, ray_local):
    import ray

    ray.cloudpickle.register_pickle_by_value(__import__(__name__))
    engines = _engines(tmp_path, "engine.rows_in_flight=4")
    cap = calls_per_client(engines.cfg.engine)
    assert cap == 4  # 4 row slots filled by one batch of 4, and three more batches waiting
    rows = pa.table({"id": [f"r{i}" for i in range(40)]})
    try:
        first = pa.concat_tables(ray.get(map_rows(blocks_of(ray.data.from_arrow(rows), 4), engines,
                                                  where_row_ran, SCHEMA)))
        second = pa.concat_tables(ray.get(map_rows((rows.slice(i, 4) for i in range(0, 40, 4)), engines,
                                                   where_row_ran, SCHEMA)))
    finally:
        engines.stop()
    for got in (first, second):
        assert got.column("id").to_pylist() == rows.column("id").to_pylist()  # each row once, in order
        assert max(got.column("holding").to_pylist()) <= 4  # the client's row slots bound it
    pids_first, pids_second = set(first.column("pid").to_pylist()), set(second.column("pid").to_pylist())
    assert len(pids_first) == 2  # both stage actors took batches
    assert pids_second == pids_first  # the same actors served the second phase: none started anew


def test_a_failed_phase_drops_the_stage_actors_and_the_next_phase_starts_new_ones(tmp_path, ray_local):
    import ray

    ray.cloudpickle.register_pickle_by_value(__import__(__name__))
    engines = _engines(tmp_path)
    rows = pa.table({"id": [f"r{i}" for i in range(12)]})
    try:
        before = set(pa.concat_tables(ray.get(map_rows([rows], engines, where_row_ran, SCHEMA)))
                     .column("pid").to_pylist())
        with pytest.raises(Exception, match="this batch fails"):
            map_rows((rows.slice(i, 4) for i in range(0, 12, 4)), engines, fails_on_row_7, SCHEMA)
        assert engines._clients == []
        after = set(pa.concat_tables(ray.get(map_rows([rows], engines, where_row_ran, SCHEMA)))
                    .column("pid").to_pylist())
    finally:
        engines.stop()
    assert after and not after & before  # new actors, in new processes


def test_a_stage_actor_lost_between_phases_is_replaced_after_the_phase_it_failed(tmp_path, ray_local):
    """A stage actor that dies between two phases (its node lost): the next phase fails with the
    clients dropped, and the one after starts new ones instead of reusing the dead actor."""
    import ray

    ray.cloudpickle.register_pickle_by_value(__import__(__name__))
    engines = _engines(tmp_path)
    rows = pa.table({"id": [f"r{i}" for i in range(8)]})
    try:
        ray.get(map_rows([rows], engines, where_row_ran, SCHEMA))
        ray.kill(engines.clients()[0], no_restart=True)
        with pytest.raises(ray.exceptions.RayActorError):
            map_rows([rows.slice(0, 4), rows.slice(4)], engines, where_row_ran, SCHEMA)
        assert engines._clients == []
        again = pa.concat_tables(ray.get(map_rows([rows.slice(0, 4), rows.slice(4)], engines, where_row_ran, SCHEMA)))
    finally:
        engines.stop()
    assert again.column("id").to_pylist() == rows.column("id").to_pylist()


def test_the_attempt_writers_and_stats_actor_serve_every_phase_until_one_fails(tmp_path, ray_local):
    """The run's writers and stats actor (issue 29) are started by the first phase and kept: the
    second phase writes through the same actors into its own folder and reads only its own
    figures; a phase that fails ends them and the next starts new ones."""
    import pyarrow.parquet as pq
    import ray

    from evol_ray.config import StorageConfig
    from evol_ray.io.attempt_files import writing
    from evol_ray.io.storage import locate

    engines = _engines(tmp_path)
    schema = pa.schema([("id", pa.string())])

    def phase(folder, ids, fail=False):
        stats = engines.stats.begin(folder)
        with writing(engines.writers, locate(str(tmp_path / folder), StorageConfig()), schema, 2, 100,
                     60.0) as (writers, written):
            ray.get(writers[0].add.remote(pa.table({"id": ids}, schema=schema)))
            ray.get(stats.report.remote(f"client-{folder}", {"rows": len(ids)}))
            if fail:
                raise RuntimeError("the phase failed")
        return [w._actor_id for w in writers], stats, written, ray.get(stats.get.remote())

    try:
        w1, s1, files1, figs1 = phase("round_1", ["a", "b"])
        w2, s2, files2, figs2 = phase("round_2", ["c"])
        assert w2 == w1 and s2._actor_id == s1._actor_id  # no actor started for round 2
        assert ray.get(s2.phase.remote()) == "round_2" and list(figs2) == ["client-round_2"]
        assert sorted(files1.values()) == [2] and all("/round_1/" in p for p in files1)
        assert [pq.read_table(p).column("id").to_pylist() for p in files2] == [["c"]]
        with pytest.raises(RuntimeError, match="the phase failed"):
            phase("round_3", ["d"], fail=True)
        assert engines.writers.actors == []
        assert [pq.read_table(p).column("id").to_pylist() for p in (tmp_path / "round_3").iterdir()] == [["d"]]
        w4, *_ = phase("round_4", ["e"])
        assert not set(w4) & set(w1)  # new writers after the failure
    finally:
        engines.stop()
    assert engines.writers.actors == [] and engines.stats.actor is None


def test_a_writer_lost_between_phases_fails_that_phase_and_the_next_starts_new_ones(tmp_path, ray_local):
    """A kept writer that died between two phases (its node lost): the next phase fails on it with
    the writers ended, and the one after writes through new ones instead of the dead actor."""
    import pyarrow.parquet as pq
    import ray

    from evol_ray.config import StorageConfig
    from evol_ray.io.attempt_files import writing
    from evol_ray.io.storage import locate

    engines = _engines(tmp_path)
    schema = pa.schema([("id", pa.string())])

    def phase(folder, ids):
        with writing(engines.writers, locate(str(tmp_path / folder), StorageConfig()), schema, 1, 100,
                     60.0) as (writers, written):
            ray.get(writers[0].add.remote(pa.table({"id": ids}, schema=schema)))
        return written

    try:
        phase("round_1", ["a"])
        ray.kill(engines.writers.actors[0], no_restart=True)
        with pytest.raises(ray.exceptions.RayActorError):
            phase("round_2", ["b"])
        assert engines.writers.actors == []
        written = phase("round_2", ["b"])
    finally:
        engines.stop()
    assert [pq.read_table(p).column("id").to_pylist() for p in written] == [["b"]]
