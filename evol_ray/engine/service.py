"""Engines as services: started once per run, serving every round and the scorer.

`engine.backend=vllm` (the default): `EngineServer` actors, one per replica, each holding one vLLM
`AsyncLLM`, started by the driver and owned by its job (never detached: a driver that dies takes
them along). In front of them, the run's stage actors (`evol_ray.engine.client_stage.RowClient`,
light CPU actors started with the engines and kept for every phase) hold a `RemoteGenerator` that
sends their rows' requests to them, as Ray Data LLM's shared-engine stage does (ray PR #55179). An engine actor that dies is restarted by Ray (`engine.max_restarts`) and
its unfinished requests retried on the new one (`max_task_retries`); after the last restart the
rows' stage fails with `EngineUnavailable`, and the round's resume keeps every row written.

`engine.backend=openai`: no engine actor; each stage actor holds an `OpenAIGenerator`
(`evol_ray.engine.openai_client`) to the configured server.

Either way, everything past this module sees a `TextGenerator` made by `Engines.generator_factory`.
Benchmarks hand their own factory (`make_engines(..., factory=...)`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import time
from typing import Any, Callable, Dict, Iterator, List, Optional

import ray

from evol_ray.config import Config, ModelConfig
from evol_ray.engine import vllm_stats
from evol_ray.engine.base import EngineUnavailable, TextGenerator, engine_is_dead
from evol_ray.engine.meter import PhaseStats
from evol_ray.engine.resources import (client_actor_options, engine_actor_options, release, replica_count,
                                       reserve, rows_per_actor, wait_until_placeable)
from evol_ray.io.attempt_files import Writers

log = logging.getLogger("evol_ray")


class EngineServer:
    """One replica: one engine; `generate`, `score_choices`, `embed` as async actor
    methods (Ray runs them concurrently on the actor's event loop, so they all join the engine's
    running batch). Built as a Ray actor by `VLLMEngines`; `make` builds a stand-in engine in the
    actor instead of vLLM's (benchmarks and tests of placement). Requests are metered where they
    are sent (the stage actors, `client_stage.RowStage`); an engine reports what only it knows:
    its process, its start-up, and vLLM's own statistics (`snapshot`)."""

    def __init__(self, model: ModelConfig, engine_cfg, device: str, seed: int,
                 pooling: bool = False, make: Optional[Callable[[], TextGenerator]] = None) -> None:
        t0 = time.monotonic()
        if make is None:
            from evol_ray.engine.vllm_engine import actor_engine

            generator = actor_engine(model, engine_cfg, device, seed, pooling=pooling)
        else:
            generator = make()
        self.gen = generator
        self.startup_s = time.monotonic() - t0
        self.name = f"{os.uname().nodename}:{os.getpid()}"
        self.niceness = os.nice(0)

    async def _call(self, method: str, *args, **kwargs):
        try:
            return await getattr(self.gen, method)(*args, **kwargs)
        except Exception as e:
            if engine_is_dead(e):  # the engine process is gone: let Ray restart this actor
                log.error("engine died (%s); restarting the engine actor", e)
                os._exit(1)
            raise

    async def generate(self, prompt, sampling, seed, choices=None):
        return await self._call("generate", prompt, sampling, seed=seed, choices=choices)

    async def score_choices(self, prompt, choices):
        return await self._call("score_choices", prompt, choices)

    async def embed(self, text):
        return await self._call("embed", text)

    def snapshot(self) -> dict:
        snap = {"name": self.name, "startup_s": self.startup_s, "niceness": self.niceness, "pid": os.getpid()}
        stats = getattr(self.gen, "vllm_stats", None)  # vLLM's own (a stand-in engine has none)
        if stats is not None:
            snap["vllm"] = stats.snapshot()
        return snap

    def shutdown(self) -> None:
        """End the engine's processes now (the actor is killed next)."""
        if hasattr(self.gen, "shutdown"):
            self.gen.shutdown(grace_s=0)


class RemoteGenerator:
    """A `TextGenerator` over engine actors: each request goes to the engine with the fewest of
    this client's requests in flight (ties: the next in turn), so one client keeps every engine
    busy and several clients share them."""

    def __init__(self, handles: List[Any], max_restarts: int) -> None:
        self.handles = list(handles)
        self.in_flight = [0] * len(self.handles)
        self.turn = 0
        self.max_restarts = max_restarts

    def _pick(self) -> int:
        n = len(self.handles)
        self.turn = (self.turn + 1) % n
        return min(range(n), key=lambda i: (self.in_flight[i], (i - self.turn) % n))

    async def _send(self, method: str, *args):
        i = self._pick()
        self.in_flight[i] += 1
        try:
            return await getattr(self.handles[i], method).remote(*args)
        except ray.exceptions.ActorDiedError as e:
            raise EngineUnavailable(
                f"engine replica {i} died and was restarted engine.max_restarts={self.max_restarts} "
                f"times; see its log in Ray's session logs ({type(e).__name__})") from None
        finally:
            self.in_flight[i] -= 1

    async def generate(self, prompt, sampling, *, seed, choices=None):
        return await self._send("generate", prompt, sampling, seed, choices)

    async def score_choices(self, prompt, choices):
        return await self._send("score_choices", prompt, choices)

    async def embed(self, text):
        return await self._send("embed", text)


def _client_for(handles: List[Any], max_restarts: int) -> RemoteGenerator:
    return RemoteGenerator(handles, max_restarts)


class Engines:
    """What a stage needs of the run's engines: a picklable `generator_factory` (called once in
    each CPU stage actor), the stage's `map_batches` arguments, and the engine figures of a round.

    Requests are metered in one place whatever the backend: each stage actor meters what it sends
    and reports to the phase's `EngineStats`, and `meter.summarize_engines` makes the round's
    figures of them. This base class serves a plain factory (the OpenAI backend's, or a
    benchmark's)."""

    def __init__(self, cfg: Config, device: str, factory: Callable[[], TextGenerator],
                 actors: Optional[int] = None) -> None:
        self.cfg = cfg
        self.model = cfg.model
        self.device = device
        self.generator_factory = factory
        self.replicas = replica_count(cfg.engine, device)
        self.stage_actors = actors or self.replicas
        self._server = None  # an endpoint's statistics, polled during a phase
        self._clients: List[Any] = []
        # the stage actors' attempt writers and the phases' stats actor, kept for the run as they are
        self.writers, self.stats = Writers(), PhaseStats()

    def clients(self) -> List[Any]:
        """The run's stage actors (`client_stage.RowClient`, `stage_actors` of them), started with
        the engines (or here, the first time) and kept for every phase until `stop()`."""
        self.start()
        if not self._clients:
            from evol_ray.engine.client_stage import RowClient

            actor = ray.remote(RowClient).options(**client_actor_options())
            self._clients = [actor.remote(self.generator_factory, rows_per_actor(self.cfg.engine))
                             for _ in range(self.stage_actors)]
        return self._clients

    def drop_clients(self) -> None:
        """The stage actors ended (a failed phase's rows stop here); the next phase starts new ones."""
        clients, self._clients = self._clients, []
        for c in clients:
            ray.kill(c, no_restart=True)

    def launch(self) -> None:
        """Engines begin to start here without being waited for (`start` waits); an endpoint has
        none."""

    def start(self) -> None:
        """Engines start here (once; later calls do nothing)."""

    def round_begin(self) -> None:
        """With an endpoint: its server's own statistics polled while the phase runs (a phase
        that failed before its figures leaves its poller to the next, which stops it)."""
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self.cfg.engine.backend == "openai" and self.device == "endpoint":
            from evol_ray.engine import server_metrics
            from evol_ray.engine.openai_client import api_key

            ep = self.cfg.engine.endpoint
            self._server = server_metrics.ServerMetrics(
                server_metrics.metrics_url(ep.base_url), server_metrics.http_fetch(str(api_key(ep)))).start()

    def round_figures(self, stage_snapshots: dict) -> dict:
        """The round's engine figures for its manifest (`meter.summarize_engines`), with the
        endpoint's vLLM statistics where its server has them (`server_metrics`)."""
        from evol_ray.engine.meter import summarize_engines

        figures = summarize_engines(stage_snapshots)
        server, self._server = self._server, None
        end = server.stop() if server is not None else None
        if server is not None and figures:  # a phase with rows (an empty one has no figures)
            if end is not None:
                figures["vllm"] = vllm_stats.combine([vllm_stats.round_figures(end, None)])
            else:
                figures["vllm_not_available"] = server.unavailable
        return figures

    def stop(self) -> None:
        self.drop_clients()
        self.writers.stop()
        self.stats.stop()
        if self._server is not None:
            self._server.stop()
            self._server = None


class VLLMEngines(Engines):
    """`engine.replicas` `EngineServer` actors (`auto`: as many as the cluster's GPUs hold), started
    at the first `start()` and kept until `stop()`. On GPU with tensor parallelism each replica has
    a placement group of its own, removed at `stop()` and when the start fails; a request the
    cluster cannot hold fails before any engine starts (`resources.wait_until_placeable`).
    A round's figures are the stage's (`Engines.round_figures`) with, per engine, vLLM's own
    statistics over the round (the difference between its snapshots at the round's end and start)
    and its process; an engine started (or restarted) during the round counts its start-up there. `make`: a stand-in engine built in each actor (benchmarks, tests)."""

    def __init__(self, cfg: Config, device: str, model: Optional[ModelConfig] = None,
                 pooling: bool = False, make: Optional[Callable[[], TextGenerator]] = None) -> None:
        self.pooling = pooling
        self.make = make
        self.handles: List[Any] = []
        self.groups: list = []
        self._reported: set = set()  # engine processes whose start-up a round manifest holds
        super().__init__(cfg, device, factory=None)
        self.stage_actors = self.replicas * cfg.engine.clients_per_replica
        self.model = model or cfg.model

    def gpus(self) -> int:
        """GPUs these engines hold once started."""
        return self.replicas * self.cfg.engine.tensor_parallel_size if self.device == "gpu" else 0

    def launch(self) -> None:
        """The engine actors created and left to load their model while the caller goes on
        (`start` waits for them): the driver prepares round 1 meanwhile."""
        if self.handles:
            return
        e = self.cfg.engine
        self._launched = time.monotonic()
        try:
            if self.device == "gpu":
                wait_until_placeable(e, self.replicas)
            if self.device == "gpu" and e.tensor_parallel_size > 1:
                self.groups = reserve(e, self.replicas)
            server = ray.remote(EngineServer)
            self.handles = [server.options(**engine_actor_options(e, self.device, g)).remote(
                self.model, e, self.device, self.cfg.seed, self.pooling, self.make)
                for g in (self.groups or [None] * self.replicas)]
        except BaseException:
            self.stop()
            raise

    def start(self) -> None:
        if self.generator_factory is not None:
            return
        self.launch()
        try:
            snaps = ray.get([h.snapshot.remote() for h in self.handles])  # waits for every engine
        except BaseException:
            self.stop()
            raise
        log.info("engines: %d started in %.0f s (%s)", len(snaps), time.monotonic() - self._launched,
                 ", ".join(s["name"] for s in snaps))
        self.generator_factory = functools.partial(_client_for, self.handles, self.cfg.engine.max_restarts)
        self.clients()  # the stage actors start while the caller goes on

    def round_begin(self) -> None:
        self.start()
        self._begin = self._snapshots()

    def _snapshots(self) -> Dict[int, dict]:
        return dict(enumerate(ray.get([h.snapshot.remote() for h in self.handles])))

    def round_figures(self, stage_snapshots: dict) -> dict:
        end = self._snapshots()
        starts, startup = 0, 0.0
        # every engine process seen this round (one that died mid-round is in `_begin` only)
        for s in list(self._begin.values()) + list(end.values()):
            if s["name"] not in self._reported:  # a start no earlier round reported
                self._reported.add(s["name"])
                starts += 1
                startup = max(startup, s["startup_s"])
        per_engine = {}
        for i, s in end.items():
            b = self._begin.get(i)
            b = b if b is not None and b["name"] == s["name"] else None
            per_engine[s["name"]] = {"pid": s["pid"], "niceness": s["niceness"]}
            if "vllm" in s:
                per_engine[s["name"]]["vllm"] = vllm_stats.round_figures(s["vllm"], b.get("vllm") if b else None)
        sent = list(stage_snapshots.values())
        window = max((x["lifetime_s"] for x in sent), default=0.0)
        return {
            **super().round_figures(stage_snapshots),
            "engines": len(per_engine),
            # the stage actors' requests in flight together, over the phase, per engine: what to
            # compare with engine.max_num_seqs
            "mean_in_flight_per_engine": (sum(x["area_s"] for x in sent) / window / len(per_engine)
                                          if window and per_engine else 0.0),
            "stage_actors": self.stage_actors,
            "engine_starts": starts,
            "startup_s": startup,
            # vLLM's own statistics, per engine (per_engine[...]["vllm"]) and together
            "vllm": vllm_stats.combine([p["vllm"] for p in per_engine.values() if "vllm" in p]),
            "per_engine": per_engine,
        }

    def stop(self) -> None:
        """End the engines and give their GPUs back (placement groups removed); `start()` again
        starts new ones."""
        handles, self.handles = self.handles, []
        self.generator_factory = None  # clients of these engines are no use after
        if handles:
            try:
                ray.get([h.shutdown.remote() for h in handles], timeout=30)
            except Exception:  # an engine that cannot shut down cleanly is killed all the same
                pass
            for h in handles:
                ray.kill(h, no_restart=True)
        groups, self.groups = self.groups, []
        release(groups)
        super().stop()  # the stage actors, clients of the engines just ended


@contextlib.contextmanager
def engines_for(cfg: Config, model: ModelConfig, running: Optional[Engines] = None,
                pooling: bool = False, replicas: Optional[int] = None) -> Iterator[Engines]:
    """Engines serving `model`: `running` (the run's warm ones) when they serve it, else engines
    started here for it (the model checked first, as a run checks its own) and stopped after.
    `replicas`: how many to start (default `engine.replicas`). When the new engines need GPUs
    that `running` holds, `running` is stopped first (its next `start()` brings it back): a
    second set of engines never waits for GPUs the run's own hold."""
    if running is not None and not pooling and running.model.source == model.source \
            and running.model.tokenizer == model.tokenizer:
        yield running
        return
    from evol_ray.engine.preflight import check_cpu_engine, check_engine_source
    from evol_ray.engine.resources import connect

    e = cfg.engine
    sub = dataclasses.replace(cfg, model=model, engine=dataclasses.replace(
        e, replicas=str(replicas) if replicas else e.replicas,
        endpoint=dataclasses.replace(e.endpoint, model=model.source)))
    check_engine_source(sub)
    device = connect(sub)
    if device == "cpu" and e.backend == "vllm":
        check_cpu_engine(sub)
    engines = make_engines(sub, device, pooling=pooling)
    make_room(engines, running)
    try:
        yield engines
    finally:
        engines.stop()


def make_room(engines: Engines, running: Optional[Engines]) -> None:
    """Before `engines` start: stop `running` (the run's warm engines) when the GPUs free now are
    fewer than `engines` need, so that they never wait for GPUs the run's own hold; `running`'s
    next `start()` brings it back."""
    if isinstance(running, VLLMEngines) and running.handles and isinstance(engines, VLLMEngines) \
            and engines.gpus() > ray.available_resources().get("GPU", 0):
        log.info("engines: stopping the run's %d engine(s) to free their GPUs for %s", len(running.handles),
                 engines.model.source)
        running.stop()


def make_engines(cfg: Config, device: str, model: Optional[ModelConfig] = None,
                 factory: Optional[Callable[[], TextGenerator]] = None, pooling: bool = False) -> Engines:
    """The run's engines, not started yet (`Engines.start` or the first round starts them).
    `factory`: a benchmark's own generator instead of the backend's."""
    if factory is not None:
        return Engines(cfg, device, factory)
    if cfg.engine.backend == "openai":
        from evol_ray.engine.openai_client import endpoint_factory

        return Engines(cfg, "endpoint", endpoint_factory(cfg.engine.endpoint, cfg.engine.choice_scoring,
                                                              cfg.engine.request_seeds))
    return VLLMEngines(cfg, device, model, pooling)

