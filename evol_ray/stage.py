"""The GPU stage of a round: one vLLM engine per actor, every row's chain running concurrently.

`EvolveStage` is a callable class for `Dataset.map_batches`. Its `__call__` is an async generator,
so Ray Data runs it on the actor's event loop and keeps several batches in flight per actor
(`engine.batches_in_flight`): the engine's continuous batching stays full and no batch waits for
its slowest row. One engine serves all three steps (evolve, judge, answer).

Reads pool columns (`columns.POOL_SCHEMA`); writes attempt rows (`columns.ROUND_SCHEMA`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
import uuid
from typing import AsyncIterator, Optional

import pyarrow as pa
import ray

from evol_ray import columns as C
from evol_ray.chain import evolve_row
from evol_ray.config import Config, EngineConfig
from evol_ray.engine import EngineMeter, MeteredGenerator, TextGenerator, actor_engine, engine_is_dead

log = logging.getLogger("evol_ray")


@ray.remote(num_cpus=0)
class EngineStats:
    """Collects each engine actor's latest meter snapshot for one round (driver reads it at the end)."""

    def __init__(self) -> None:
        self.snapshots: dict = {}

    def report(self, actor: str, snapshot: dict) -> None:
        self.snapshots[actor] = snapshot

    def get(self) -> dict:
        return dict(self.snapshots)


STATS_ACTOR_PREFIX = "evol-ray-engine-stats"


def start_engine_stats(round_no: int) -> object:
    """The round's EngineStats actor, named so that live progress can be read while the round runs
    (`ray.util.list_named_actors()`, then `ray.get(ray.get_actor(name).get.remote())`). The name
    carries the round and a random suffix, so concurrent runs on one cluster never collide."""
    name = f"{STATS_ACTOR_PREFIX}-round{round_no}-{uuid.uuid4().hex[:8]}"
    return EngineStats.options(name=name).remote()


def summarize_engines(snapshots: dict) -> dict:
    """Per-round engine figures from every actor's snapshot."""
    if not snapshots:
        return {}
    snaps = list(snapshots.values())
    life = sum(s["lifetime_s"] for s in snaps)
    busy = sum(s["busy_s"] for s in snaps)
    return {
        "actors": len(snaps),
        "busy_share": busy / life if life else 0.0,
        "mean_in_flight": sum(s["mean_in_flight"] * s["lifetime_s"] for s in snaps) / life if life else 0.0,
        "rows": sum(s.get("rows", 0) for s in snaps),
        "requests": sum(s["requests"] for s in snaps),
        "prompt_tokens": sum(s["prompt_tokens"] for s in snaps),
        "generated_tokens": sum(s["generated_tokens"] for s in snaps),
        "startup_s": max(s.get("startup_s", 0.0) for s in snaps),
        "per_actor": snapshots,
    }


class EvolveStage:
    def __init__(self, cfg: Config, round_no: int, device: str, stats: Optional[object] = None,
                 generator: Optional[TextGenerator] = None) -> None:
        t0 = time.monotonic()
        self.cfg = cfg
        self.round_no = round_no
        inner = generator or actor_engine(cfg.model, cfg.engine, device, cfg.seed)
        self._inner = inner
        self.meter = EngineMeter()
        self.gen = MeteredGenerator(inner, self.meter)
        self.stats = stats
        self.startup_s = time.monotonic() - t0
        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self.niceness = os.nice(0)
        self.rows = 0

    def _report(self) -> None:
        if self.stats is not None:
            snap = self.meter.snapshot()
            snap["startup_s"] = self.startup_s
            snap["rows"] = self.rows
            snap["niceness"] = self.niceness
            self.stats.report.remote(self.name, snap)

    async def __call__(self, batch: pa.Table) -> AsyncIterator[pa.Table]:
        rows = batch.select([C.ID, C.ROOT_ID, C.INSTRUCTION, C.RESPONSE]).to_pylist()
        try:
            out = await asyncio.gather(*(evolve_row(self.gen, r, self.round_no, self.cfg) for r in rows))
        except Exception as e:
            if engine_is_dead(e):
                # The engine process is gone: end this actor so Ray Data restarts it with a fresh
                # engine and retries this batch (its rows were not written yet).
                log.error("engine died (%s); restarting the actor", e)
                os._exit(1)
            raise
        self.rows += len(rows)
        self._report()
        yield pa.Table.from_pylist(out, schema=C.ROUND_SCHEMA)


ENGINE_NICENESS_VAR = "RAY_worker_niceness"  # read by Ray when it starts the worker process


def engine_actor_args(e: EngineConfig, device: str, replicas: int) -> dict:
    """`map_batches` arguments for a pool of engine actors: the actor asks for one GPU, or, for
    tensor parallelism, a placement group whose GPU bundles vLLM's Ray executor fills (the actor
    itself then holds none). The job's driver asks for nothing, so the head can be CPU-only.

    Engine actors run at normal CPU priority: Ray starts worker processes at niceness 15, under
    its own daemons and the driver, and the engine's scheduler and its child processes inherit
    that. The engine is what the run pays for; background data tasks keep niceness 15."""
    args: dict = {
        "num_cpus": e.cpus_per_replica,
        "runtime_env": {"env_vars": {ENGINE_NICENESS_VAR: "0"}},
        "batch_size": e.batch_size,
        "batch_format": "pyarrow",
        "compute": ray.data.ActorPoolStrategy(
            size=replicas,
            max_tasks_in_flight_per_actor=e.batches_in_flight,
            max_concurrent_calls_per_actor=e.batches_in_flight,
        ),
    }
    if device == "gpu":
        args["num_gpus"] = 1 if e.tensor_parallel_size == 1 else 0
        if e.tensor_parallel_size > 1:
            args["ray_remote_args_fn"] = lambda: _tp_placement(e.tensor_parallel_size, e.cpus_per_replica)
    return args


def evolve(ds: ray.data.Dataset, cfg: Config, round_no: int, device: str,
           stats: Optional[object] = None) -> ray.data.Dataset:
    """Pool dataset -> attempt dataset for one round, on `engine.replicas` engine actors."""
    return ds.map_batches(
        EvolveStage,
        fn_constructor_kwargs={"cfg": cfg, "round_no": round_no, "device": device, "stats": stats},
        **engine_actor_args(cfg.engine, device, cfg.engine.replicas),
    )


def _tp_placement(tp: int, cpus: float) -> dict:
    from ray.util.placement_group import placement_group
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    pg = placement_group([{"CPU": cpus}] + [{"GPU": 1, "CPU": 1}] * tp, strategy="STRICT_PACK")
    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(
        pg, placement_group_capture_child_tasks=True)}
