"""The engine's pure parts: vLLM arguments, the meter, actor resources, the device decision and the
per-round summary, all without starting an engine."""

import asyncio

import pytest

from evol_ray.config import load_config
from evol_ray.engine.base import Completion
from evol_ray.engine.meter import EngineMeter, MeteredGenerator, summarize_engines
from evol_ray.engine.resources import (ENGINE_NICENESS_VAR, calls_per_client, choose_device, client_actor_options,
                                       engine_actor_options, rows_per_actor)
from evol_ray.engine.service import RemoteGenerator
from evol_ray.engine.vllm_engine import engine_args
from evol_ray.stage import Stage


def _cfg(*extra):
    return load_config(["input.path=s.json", "output.path=o", "model.source=/m", *extra])


def test_engine_args_take_the_kv_fraction_of_the_device():
    cfg = _cfg("engine.gpu_memory_utilization=0.8", "engine.cpu_kv_cache_gib=1.5",
               "model.max_model_len=2048", "engine.extra_args.swap_space=2")
    gpu = engine_args(cfg.model, cfg.engine, "gpu", 7)
    cpu = engine_args(cfg.model, cfg.engine, "cpu", 7)
    assert gpu["gpu_memory_utilization"] == 0.8 and "kv_cache_memory_bytes" not in gpu
    assert cpu["kv_cache_memory_bytes"] == int(1.5 * 2**30)
    assert gpu["model"] == gpu["tokenizer"] == "/m" and gpu["seed"] == 7
    assert gpu["max_model_len"] == 2048 and gpu["swap_space"] == 2
    assert "distributed_executor_backend" not in gpu
    tp = _cfg("engine.tensor_parallel_size=2")
    assert engine_args(tp.model, tp.engine, "gpu", 0)["distributed_executor_backend"] == "ray"
    assert "max_model_len" not in engine_args(tp.model, tp.engine, "gpu", 0)


class _Clock:
    def __init__(self):
        self.t = 100.0

    def __call__(self):
        return self.t


def test_meter_busy_share_and_mean_in_flight(monkeypatch):
    clock = _Clock()
    monkeypatch.setattr("evol_ray.engine.meter.time.monotonic", clock)
    m = EngineMeter()
    clock.t += 1  # idle 1 s
    m.begin()
    m.begin()
    clock.t += 2  # 2 in flight for 2 s
    m.end(Completion("a", 3, 4))
    clock.t += 1  # 1 in flight for 1 s
    m.end(None)
    snap = m.snapshot()
    assert snap["lifetime_s"] == pytest.approx(4.0)
    assert snap["busy_share"] == pytest.approx(0.75)
    assert snap["mean_in_flight"] == pytest.approx(5 / 4)
    assert (snap["requests"], snap["prompt_tokens"], snap["generated_tokens"]) == (2, 3, 4)
    # while sending: from the start to the last request sent (t=1, nothing in flight before it)
    assert snap["sending_s"] == pytest.approx(1.0) and snap["sending_area_s"] == pytest.approx(0.0)
    m.begin()  # a third request at t=4: the 5 request-seconds before it count
    clock.t += 1
    m.end(None)
    later = m.snapshot()
    assert later["sending_s"] == pytest.approx(4.0) and later["sending_area_s"] == pytest.approx(5.0)


def test_metered_generator_counts_failed_requests_as_ended():
    class Failing:
        async def generate(self, *a, **k):
            raise RuntimeError("boom")

    m = EngineMeter()
    g = MeteredGenerator(Failing(), m)
    with pytest.raises(RuntimeError):
        asyncio.run(g.generate("p", None, seed=0))
    assert m.in_flight == 0 and m.requests == 1


def test_summarize_engines_weights_by_lifetime():
    snaps = {"a": {"lifetime_s": 10, "busy_s": 10, "mean_in_flight": 4, "requests": 5, "prompt_tokens": 1,
                   "generated_tokens": 2, "rows": 3, "startup_s": 2.0},
             "b": {"lifetime_s": 30, "busy_s": 15, "mean_in_flight": 8, "requests": 7, "prompt_tokens": 1,
                   "generated_tokens": 2, "rows": 4, "startup_s": 5.0}}
    s = summarize_engines(snaps)
    assert s["actors"] == 2 and s["busy_share"] == pytest.approx(25 / 40)
    assert s["mean_in_flight"] == pytest.approx((40 + 240) / 40)
    assert (s["rows"], s["requests"], s["startup_s"]) == (7, 12, 5.0)
    assert summarize_engines({}) == {}
    snaps["a"].update(sending_s=4.0, sending_area_s=32.0)  # 8 in flight while sending
    snaps["b"].update(sending_s=2.0, sending_area_s=4.0)  # 2
    assert summarize_engines(snaps)["mean_in_flight_sending"] == pytest.approx(5.0)  # per actor


def test_engine_actor_options_cpu_gpu_tensor_parallel_and_restarts():
    e = _cfg("engine.cpus_per_replica=2", "engine.max_restarts=2").engine
    cpu = engine_actor_options(e, "cpu")
    assert cpu["num_cpus"] == 2 and "num_gpus" not in cpu
    assert cpu["runtime_env"]["env_vars"][ENGINE_NICENESS_VAR] == "0"
    assert cpu["max_restarts"] == 2 and cpu["max_task_retries"] == -1  # unfinished requests retried
    assert cpu["max_concurrency"] >= 10_000  # the engine's scheduler, not Ray, bounds what runs
    assert engine_actor_options(e, "gpu")["num_gpus"] == 1
    assert engine_actor_options(_cfg("engine.max_restarts=0").engine, "cpu")["max_task_retries"] == 0


def test_client_stage_asks_for_no_gpu_and_holds_batches_for_its_row_slots():
    e = _cfg("engine.rows_in_flight=100", "engine.batch_size=16").engine
    opts = client_actor_options()
    assert "num_gpus" not in opts and opts["num_cpus"] == 0
    # a lost stage actor stops the phase: no batch's rows handed over twice
    assert opts["max_restarts"] == 0 and opts["max_task_retries"] == 0
    assert rows_per_actor(e) == 100
    # four times the batches that fill the 100 slots (7 of 16 rows): the rest wait for slots
    assert calls_per_client(e) == 4 * 7
    two = _cfg("engine.rows_in_flight=100", "engine.clients_per_replica=2").engine
    assert rows_per_actor(two) == 50  # an engine's rows shared by its stage actors
    assert rows_per_actor(_cfg("engine.rows_in_flight=100", "engine.clients_per_replica=2",
                               "engine.backend=openai", "engine.endpoint.base_url=http://x/v1",
                               "engine.endpoint.model=m").engine) == 100


def test_a_row_that_ends_hands_its_slot_to_a_waiting_row_of_another_batch():
    """Two batches on one stage actor with 3 row slots, a slow first row: the second batch's rows
    start as soon as the first batch's fast rows end, not when its slow row does; in flight never
    exceeds the slots."""
    import asyncio

    import pyarrow as pa

    from evol_ray.engine.client_stage import RowStage

    log, running = [], [0, 0]

    async def fn(gen, row):
        running[0] += 1
        running[1] = max(running[1], running[0])
        log.append(("start", row["id"]))
        await asyncio.sleep(0.5 if row["id"] == "a0" else 0.01)
        running[0] -= 1
        log.append(("end", row["id"]))
        return {"id": row["id"]}

    schema = pa.schema([("id", pa.string())])
    stage = RowStage(lambda: None, fn, schema, slots=3)

    async def one(ids):
        return [t async for t in stage(pa.table({"id": ids}))]

    async def both():
        return await asyncio.gather(one(["a0", "a1", "a2"]), one(["b0", "b1", "b2"]))

    first, second = asyncio.run(both())
    assert first[0].column("id").to_pylist() == ["a0", "a1", "a2"]  # one row per input row, in order
    assert second[0].column("id").to_pylist() == ["b0", "b1", "b2"]
    assert running[1] == 3
    assert log.index(("end", "b2")) < log.index(("end", "a0"))  # batch b done while a0 still ran


class Handle:
    """An engine actor handle double: `.generate.remote(...)` is awaitable, recorded by name."""

    def __init__(self, name, log, gate):
        self.name, self.log, self.gate = name, log, gate
        outer = self

        class Method:
            def remote(self, *args):
                async def call():
                    outer.log.append(outer.name)
                    await outer.gate.wait()
                    return Completion(outer.name)
                return call()

        self.generate = Method()


def test_remote_generator_spreads_requests_over_engines_by_what_is_in_flight():
    async def go():
        log, gate = [], asyncio.Event()
        gen = RemoteGenerator([Handle(n, log, gate) for n in "abc"], max_restarts=3)
        tasks = [asyncio.ensure_future(gen.generate("p", None, seed=i)) for i in range(9)]
        await asyncio.sleep(0.01)
        assert sorted(log) == list("aaabbbccc")  # 3 in flight on each engine
        gate.set()
        done = await asyncio.gather(*tasks)
        assert gen.in_flight == [0, 0, 0] and {c.text for c in done} == set("abc")
    asyncio.run(go())


def test_vllm_round_figures_are_the_stage_meters_plus_what_only_the_engines_know():
    """Issue 31: one metering path. Requests, tokens and in-flight figures come from the stage
    actors' meters (`summarize_engines`), never a second engine-side count; the engines add their
    processes and start-ups: an engine restarted during the round counts its start-up there, a
    warm one in no later round."""
    from evol_ray.engine.service import VLLMEngines

    engines = VLLMEngines(_cfg("engine.replicas=2"), "cpu")
    warm = {"name": "h:1", "startup_s": 30.0, "niceness": 0, "pid": 1}
    engines._begin = {0: warm, 1: {"name": "h:2", "startup_s": 31.0, "niceness": 0, "pid": 2}}
    engines._reported = {"h:1", "h:2"}
    engines._snapshots = lambda: {0: warm, 1: {"name": "h:3", "startup_s": 12.0, "niceness": 0, "pid": 3}}
    stage = {"s:1": {"lifetime_s": 10, "busy_s": 10, "area_s": 40, "mean_in_flight": 4, "requests": 5,
                     "prompt_tokens": 100, "generated_tokens": 40, "rows": 3},
             "s:2": {"lifetime_s": 10, "busy_s": 5, "area_s": 10, "mean_in_flight": 1, "requests": 2,
                     "prompt_tokens": 10, "generated_tokens": 4, "rows": 1}}
    f = engines.round_figures(stage)
    assert f["requests"] == 7 and f["prompt_tokens"] == 110 and f["generated_tokens"] == 44 and f["rows"] == 4
    assert f["busy_share"] == pytest.approx(15 / 20) and f["actors"] == 2 and set(f["per_actor"]) == {"s:1", "s:2"}
    assert f["engines"] == 2 and set(f["per_engine"]) == {"h:1", "h:3"}
    assert f["mean_in_flight_per_engine"] == pytest.approx((40 + 10) / 10 / 2)
    assert f["engine_starts"] == 1 and f["startup_s"] == 12.0  # the restart; the warm engine paid before
    assert engines.round_figures(stage)["engine_starts"] == 0  # reported once


def test_one_device_decision_from_the_cluster():
    assert choose_device("auto", {"CPU": 8}) == "cpu"
    assert choose_device("auto", {"CPU": 8, "GPU": 2}) == "gpu"
    assert choose_device("cpu", {"GPU": 2}) == "cpu"


def test_stage_spec_passes_its_settings_once():
    calls = {}

    class FakeDataset:
        def map_batches(self, fn, **kw):
            calls.update(kw, fn=fn)
            return "next"

    def fn(batch, k):
        return batch

    s = Stage(fn, 128, {"num_cpus": 0.5})
    assert s(FakeDataset(), k=1) == "next"
    assert calls == {"fn": fn, "batch_format": "pyarrow", "batch_size": 128, "num_cpus": 0.5,
                     "fn_kwargs": {"k": 1}}
    calls.clear()
    Stage(fn, None, {"num_gpus": 1})(FakeDataset(), constructor={"a": 2})
    assert calls["fn_constructor_kwargs"] == {"a": 2} and calls["num_gpus"] == 1 and calls["batch_size"] is None


def test_metered_generator_passes_every_seam_method_through():
    class Inner:
        async def generate(self, prompt, sampling, *, seed, choices=None):
            return Completion("x", 1, 1)

        async def score_choices(self, prompt, choices):
            return {c: 0.0 for c in choices}

        async def embed(self, text):
            return [1.0]

    meter = EngineMeter()
    gen = MeteredGenerator(Inner(), meter)
    asyncio.run(gen.generate("p", None, seed=0))
    assert asyncio.run(gen.score_choices("p", ["a"])) == {"a": 0.0}
    assert asyncio.run(gen.embed("t")) == [1.0]
    assert meter.snapshot()["requests"] == 3 and meter.in_flight == 0


class SinkDouble:
    """An attempt writer's handle double: `.add.remote(table)` is awaitable and records when."""

    def __init__(self):
        self.got = []
        outer = self

        class Add:
            def remote(self, table):
                async def call():
                    outer.got.append(table.column("id").to_pylist())
                return call()

        self.add = Add()


def test_with_a_sink_a_row_leaves_as_its_chain_ends_not_with_its_batch():
    """Issue 29: rows go to the writer while their batch's slowest row still runs; the batch's own
    output is its count, given once its rows have ended, and the phase's end hands the rest over."""
    import pyarrow as pa

    from evol_ray.engine.client_stage import SENT_SCHEMA, RowStage
    from evol_ray.io.attempt_files import HAND_OVER_S

    async def fn(gen, row):
        await asyncio.sleep(HAND_OVER_S * 4 if row["id"] == "slow" else 0.01)
        return {"id": row["id"]}

    sink = SinkDouble()
    stats = StatsDouble()
    stage = RowStage(lambda: None, fn, pa.schema([("id", pa.string())]), sink=[sink], stats=stats)

    async def go():
        run = asyncio.ensure_future(_all(stage(pa.table({"id": ["slow", "a", "b"]}))))
        await asyncio.sleep(HAND_OVER_S * 2.5)
        handed_mid_batch = [i for got in sink.got for i in got]
        reported_mid_batch = stats.rows
        out = await run
        await stage.close()
        return handed_mid_batch, reported_mid_batch, out

    mid, reported, out = asyncio.run(go())
    assert sorted(mid) == ["a", "b"]  # handed over while "slow" still ran
    assert reported == 2 and stats.rows == 3  # the phase's progress counts them then too
    assert sorted(i for got in sink.got for i in got) == ["a", "b", "slow"]  # each row once
    assert len(out) == 1 and out[0].schema == SENT_SCHEMA and out[0].column("rows").to_pylist() == [3]


def test_the_phase_end_waits_for_a_hand_over_under_way_and_counts_its_rows():
    """A writer slow to take a hand-over (an S3 flush) when the phase ends: `close` lets that
    hand-over finish instead of cancelling it after its rows left the stage, so every row reaches
    the writer once and the phase's stats count them all."""
    import pyarrow as pa

    from evol_ray.engine.client_stage import RowStage
    from evol_ray.io.attempt_files import HAND_OVER_S

    got, entered = [], asyncio.Event()

    class SlowAdd:
        def remote(self, table):
            async def call():
                entered.set()
                await asyncio.sleep(HAND_OVER_S)  # the writer busy flushing
                got.append(table.column("id").to_pylist())
            return call()

    sink = type("Sink", (), {"add": SlowAdd()})()
    stats = StatsDouble()

    async def fn(gen, row):
        return {"id": row["id"]}

    stage = RowStage(lambda: None, fn, pa.schema([("id", pa.string())]), sink=[sink], stats=stats)

    async def go():
        await _all(stage(pa.table({"id": ["a", "b"]})))
        await asyncio.wait_for(entered.wait(), HAND_OVER_S * 4)  # the clock's hand-over is under way
        await stage.close()

    asyncio.run(go())
    assert sorted(i for ids in got for i in ids) == ["a", "b"]
    assert stats.rows == 2


def test_a_client_reports_each_phase_under_its_own_name():
    """One stage actor serves many phases; phases that share a stats actor (Auto Evol's) must not
    overwrite each other's figures, so each phase reports under its own name."""
    import pyarrow as pa

    from evol_ray.engine.client_stage import RowClient

    stats = NamesDouble()

    async def fn(gen, row):
        return {"id": row["id"]}

    client = RowClient(lambda: None, slots=4)
    schema = pa.schema([("id", pa.string())])

    async def go():
        for ids in (["a"], ["b", "c"]):
            await client.begin(fn, schema, None, stats, None)
            await client.run(pa.table({"id": ids}))
            await client.end()

    asyncio.run(go())
    assert len(stats.by_name) == 2 and sorted(s["rows"] for s in stats.by_name.values()) == [1, 2]


class NamesDouble:
    """The stats actor's report, by reporting name."""

    def __init__(self):
        self.by_name = {}
        self.report = self

    def remote(self, name, snap):
        self.by_name[name] = snap


class StatsDouble:
    """The phase's stats actor: the latest rows a stage actor reported. A report lands `delay`
    seconds after it is sent (an actor call is delivered later, in no order with the driver's)."""

    def __init__(self, delay: float = 0.0):
        self.rows = 0
        self.delay = delay
        self.report = self

    def remote(self, name, snap):
        async def deliver():
            await asyncio.sleep(self.delay)
            self.rows = snap["rows"]
        return asyncio.ensure_future(deliver())


def test_the_phase_end_returns_once_its_last_report_landed():
    """CI found a run's summary failing on a round with no figures: the driver read the stats
    actor before a stage actor's last report (sent without waiting) had arrived. `close`, which
    every client's `end` awaits before the driver reads, now waits for it."""
    import pyarrow as pa

    from evol_ray.engine.client_stage import RowStage

    async def fn(gen, row):
        return {"id": row["id"]}

    stats = StatsDouble(delay=0.3)
    stage = RowStage(lambda: None, fn, pa.schema([("id", pa.string())]), stats=stats)

    async def go():
        await _all(stage(pa.table({"id": ["a", "b", "c"]})))
        before = stats.rows
        await stage.close()
        return before

    assert asyncio.run(go()) == 0  # the report was still on its way when the batch returned
    assert stats.rows == 3


async def _all(agen):
    return [t async for t in agen]


def test_attempt_writer_flushes_by_rows_and_by_time_and_close_returns_every_file(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from evol_ray.config import StorageConfig
    from evol_ray.io.attempt_files import AttemptWriter
    from evol_ray.io.storage import locate

    schema = pa.schema([("id", pa.string())])
    w = AttemptWriter(locate(str(tmp_path), StorageConfig()), schema, "w0", flush_rows=4, flush_s=0.4)

    def rows(*ids):
        return pa.table({"id": list(ids)}, schema=schema)

    async def go():
        await w.add(rows("a", "b", "c"))
        assert not list(tmp_path.iterdir())  # 3 < flush_rows: buffered
        await w.add(rows("d", "e"))
        assert len(list(tmp_path.iterdir())) == 1  # 5 >= 4: written
        await w.add(rows("f"))
        await asyncio.sleep(0.9)  # older than flush_s: written by time
        assert len(list(tmp_path.iterdir())) == 2
        await w.add(rows("g"))
        return await w.close()

    files = asyncio.run(go())
    assert len(files) == 3 and sorted(p.rsplit("/", 1)[1] for p in files) == sorted(p.name for p in tmp_path.iterdir())
    assert [pq.read_table(p).column("id").to_pylist() for p in sorted(files)] == [["a", "b", "c", "d", "e"], ["f"], ["g"]]
    assert {p: pq.read_metadata(p).num_rows for p in files} == files  # the counts close returns are the files'


def test_attempt_writer_raises_a_failed_write_on_its_next_call(tmp_path):
    """A write that failed (a full disk) fails the next call, so the phase stops with the error."""
    import pyarrow as pa

    from evol_ray.config import StorageConfig
    from evol_ray.io.attempt_files import AttemptWriter
    from evol_ray.io.storage import locate

    schema = pa.schema([("id", pa.string())])
    w = AttemptWriter(locate(str(tmp_path / "gone"), StorageConfig()), schema, "w0", flush_rows=1000, flush_s=0.2)

    def full(path, table):
        raise OSError(28, "No space left on device")

    w._write = full

    async def go():
        await w.add(pa.table({"id": ["a"]}, schema=schema))
        await asyncio.sleep(0.6)  # the timed write failed
        with pytest.raises(OSError, match="No space left"):
            await w.add(pa.table({"id": ["b"]}, schema=schema))

    asyncio.run(go())


def test_attempt_writer_takes_rows_of_another_stage_in_its_own_schema(tmp_path):
    """Repeated seeds' rows (made without the engines, `to_writers`) share the engine rows' files:
    same columns in another order, or a null column typed otherwise, are cast to the writer's."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from evol_ray.config import StorageConfig
    from evol_ray.io.attempt_files import AttemptWriter
    from evol_ray.io.storage import locate

    schema = pa.schema([("id", pa.string()), ("n", pa.int64())])
    w = AttemptWriter(locate(str(tmp_path), StorageConfig()), schema, "w0", flush_rows=100, flush_s=60)

    async def go():
        await w.add(pa.table({"id": ["a"], "n": [1]}, schema=schema))
        await w.add(pa.table({"n": pa.array([None], pa.null()), "id": ["b"]}))
        return await w.close()

    [path] = asyncio.run(go())
    t = pq.read_table(path)
    assert t.schema == schema and t.to_pylist() == [{"id": "a", "n": 1}, {"id": "b", "n": None}]


def test_ray_datas_false_cpu_alarm_is_filtered_and_nothing_else():
    import logging

    from evol_ray.engine.resources import _no_false_cpu_alarm

    def record(msg):
        return logging.LogRecord("ray.data.dataset", logging.WARNING, "dataset.py", 1, msg, None, None)

    assert not _no_false_cpu_alarm(record("Warning: The Ray cluster currently does not have any available CPUs. "
                                          "The Dataset job will hang unless more CPUs are freed up."))
    assert _no_false_cpu_alarm(record("Failed to write block: no space left on device"))


def test_a_round_without_stage_figures_still_has_its_summary_line():
    """A round's engine figures with no stage actor's snapshot (the engines' own part only) are
    shown without the busy share instead of failing the run's end."""
    from evol_ray.cli import format_summary

    figures = {"engines": 1, "mean_in_flight_per_engine": 0.0, "stage_actors": 2, "engine_starts": 0,
               "startup_s": 0.0, "vllm": {}, "per_engine": {}}
    rnd = {"round": 1, "rows_in": 3, "rows_kept": 3, "status_counts": {"kept": 3}, "reason_counts": {},
           "generated_tokens": 30, "wall_seconds": 2.0, "engine": figures}
    text = format_summary({"output": "runs/x", "rounds": [rnd], "final": {"rows": 3}})
    assert "round 1: in 3, kept 3" in text and "engine busy" not in text
    rnd["engine"] = {**figures, "busy_share": 0.5, "mean_in_flight": 2.0}
    assert "engine busy 50% (mean 2.0 in flight" in format_summary({"output": "runs/x", "rounds": [rnd],
                                                                    "final": {"rows": 3}})


def test_an_attempt_writer_serves_the_next_phase_after_close(tmp_path):
    """The run keeps its writers from one phase to the next (issue 29: no actor start per round):
    after `close`, `begin` points a writer at the next phase's folder and names; its files and
    counts start anew. A writer still holding rows refuses a new phase instead of losing them."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from evol_ray.config import StorageConfig
    from evol_ray.io.attempt_files import AttemptWriter
    from evol_ray.io.storage import locate

    schema = pa.schema([("id", pa.string())])
    first, second = (locate(str(tmp_path / d), StorageConfig()) for d in ("round_1", "round_2"))
    for loc in (first, second):
        loc.fs.makedirs(loc.path, exist_ok=True)
    w = AttemptWriter()

    async def go():
        await w.begin(first, schema, "a-0", 100, 60.0)
        await w.add(pa.table({"id": ["x", "y"]}, schema=schema))
        one = await w.close()
        await w.begin(second, schema, "b-0", 100, 0.2)
        await w.add(pa.table({"id": ["z"]}, schema=schema))
        await asyncio.sleep(0.6)  # the next phase's own time flush runs
        two = await w.close()
        await w.add(pa.table({"id": ["late"]}, schema=schema))
        with pytest.raises(RuntimeError, match="1 rows of the last phase were never written"):
            await w.begin(first, schema, "c-0", 100, 60.0)
        return one, two

    one, two = asyncio.run(go())
    assert list(one.values()) == [2] and all("/round_1/a-0-" in p for p in one)
    assert list(two.values()) == [1] and all("/round_2/b-0-" in p for p in two)
    assert [pq.read_table(p).column("id").to_pylist() for p in two] == [["z"]]
