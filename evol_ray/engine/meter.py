"""How busy the engines were kept: the one meter of every request, and a named actor that
collects the meters per engine phase.

`EngineMeter` measures requests and tokens, the share of wall time with at least one request in
flight and the mean number in flight; `MeteredGenerator` wraps any `TextGenerator` with one. Each
stage actor (`client_stage.RowStage`) meters what it sends, whatever the backend, and reports its
snapshot to the phase's `EngineStats` actor; `summarize_engines` is the one aggregation of the
snapshots into the figures of the manifest (the engines add only what they alone know: start-up,
vLLM's own statistics, `service.VLLMEngines.round_figures`).
"""

from __future__ import annotations

import time
import uuid
from typing import Optional

import ray

from evol_ray.engine.base import Completion, TextGenerator


class EngineMeter:
    """Counts requests in flight over time. Not thread safe: use from the engine's event loop."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.in_flight = 0
        self.requests = 0
        self.prompt_tokens = 0
        self.generated_tokens = 0
        self._busy = 0.0  # seconds with in_flight > 0
        self._area = 0.0  # integral of in_flight over time
        self._last = self.started
        self._sent_at = None  # when the last request was sent, and the integral until then
        self._area_sent = 0.0

    def _tick(self) -> None:
        now = time.monotonic()
        dt = now - self._last
        if self.in_flight > 0:
            self._busy += dt
            self._area += dt * self.in_flight
        self._last = now

    def begin(self) -> None:
        self._tick()
        self._sent_at, self._area_sent = self._last, self._area
        self.in_flight += 1
        self.requests += 1

    def end(self, completion: Optional[Completion]) -> None:
        self._tick()
        self.in_flight -= 1
        if completion is not None:
            self.prompt_tokens += completion.prompt_tokens
            self.generated_tokens += completion.generated_tokens

    def snapshot(self) -> dict:
        self._tick()
        lifetime = max(self._last - self.started, 1e-9)
        return {
            "lifetime_s": lifetime,
            "busy_s": self._busy,
            "area_s": self._area,
            "busy_share": self._busy / lifetime,
            "mean_in_flight": self._area / lifetime,
            # from the start until the last request was sent: what the stage kept the engines
            # fed with, before the round's tail (its last requests' replies) drains
            "sending_s": (self._sent_at - self.started) if self._sent_at is not None else 0.0,
            "sending_area_s": self._area_sent,
            "requests": self.requests,
            "prompt_tokens": self.prompt_tokens,
            "generated_tokens": self.generated_tokens,
        }


class MeteredGenerator:
    """A `TextGenerator` that records each request in an `EngineMeter`."""

    def __init__(self, inner: TextGenerator, meter: EngineMeter) -> None:
        self.inner = inner
        self.meter = meter

    async def generate(self, prompt, sampling, *, seed, choices=None) -> Completion:
        self.meter.begin()
        out = None
        try:
            out = await self.inner.generate(prompt, sampling, seed=seed, choices=choices)
            return out
        finally:
            self.meter.end(out)

    async def score_choices(self, prompt, choices):
        return await self._uncounted(self.inner.score_choices(prompt, choices))

    async def embed(self, text):
        return await self._uncounted(self.inner.embed(text))

    async def _uncounted(self, request):
        """A request whose tokens the meter does not count (no Completion comes back)."""
        self.meter.begin()
        try:
            return await request
        finally:
            self.meter.end(None)


@ray.remote(num_cpus=0)
class EngineStats:
    """Collects each stage actor's latest meter snapshot for one phase (the driver reads it at the
    end); `begin` clears it for the next phase of a run."""

    def __init__(self, label: str = "") -> None:
        self.snapshots: dict = {}
        self.label = label

    def begin(self, label: str) -> None:
        self.snapshots, self.label = {}, label

    def phase(self) -> str:
        """The phase whose figures `get` returns ("round 2", "seed answers")."""
        return self.label

    def report(self, actor: str, snapshot: dict) -> None:
        self.snapshots[actor] = snapshot

    def get(self) -> dict:
        return dict(self.snapshots)


STATS_ACTOR_PREFIX = "evol-ray-engine-stats"


def start_engine_stats(label: str) -> object:
    """An EngineStats actor (`label`: "auto evol", "run"), named so that live progress can be read
    while a phase runs (`ray.util.list_named_actors()`, then `ray.get(ray.get_actor(name).get.remote())`,
    and `.phase.remote()` for the phase). The name carries the label and a random suffix, so
    concurrent runs on one cluster never collide."""
    name = f"{STATS_ACTOR_PREFIX}-{label.replace(' ', '')}-{uuid.uuid4().hex[:8]}"
    return EngineStats.options(name=name).remote(label)


class PhaseStats:
    """The run's EngineStats actor (named `evol-ray-engine-stats-run-<suffix>`), started by its
    first engine phase and cleared by each next (`begin`), so that a phase starts no process of
    its own; `stop()` ends it (a failed phase does, and the next starts a new one)."""

    def __init__(self) -> None:
        self.actor: Optional[object] = None

    def begin(self, label: str) -> object:
        if self.actor is None:
            self.actor = start_engine_stats("run")
        ray.get(self.actor.begin.remote(label))
        return self.actor

    def stop(self) -> None:
        actor, self.actor = self.actor, None
        if actor is not None:
            ray.kill(actor)


def mean_per_actor(snaps: list, area: str, seconds: str) -> float:
    """Mean requests in flight per stage actor over the seconds each was sending."""
    spans = [s for s in snaps if s.get(seconds, 0.0) > 0]
    return sum(s[area] / s[seconds] for s in spans) / len(spans) if spans else 0.0


def summarize_engines(snapshots: dict) -> dict:
    """A phase's request figures from every stage actor's snapshot ({} when none reported)."""
    if not snapshots:
        return {}
    snaps = list(snapshots.values())
    life = sum(s["lifetime_s"] for s in snaps)
    busy = sum(s["busy_s"] for s in snaps)
    return {
        "actors": len(snaps),
        "busy_share": busy / life if life else 0.0,
        "mean_in_flight": sum(s["mean_in_flight"] * s["lifetime_s"] for s in snaps) / life if life else 0.0,
        "mean_in_flight_sending": mean_per_actor(snaps, "sending_area_s", "sending_s"),
        "rows": sum(s.get("rows", 0) for s in snaps),
        "requests": sum(s["requests"] for s in snaps),
        "prompt_tokens": sum(s["prompt_tokens"] for s in snaps),
        "generated_tokens": sum(s["generated_tokens"] for s in snaps),
        "startup_s": max(s.get("startup_s", 0.0) for s in snaps),
        "per_actor": snapshots,
    }
