"""vLLM's own statistics of an engine, for the round manifests: what "busy" cannot say on a GPU
(an engine with one request in flight is as busy as one with a full batch).

`VllmStats` accumulates what vLLM's scheduler reports after every engine step, through a stat
logger handed to `AsyncLLM` (`stat_loggers`; vLLM's default loggers stay off): requests running
and waiting and KV-cache use integrated over time, prefix-cache queries and hits, prompt and
generated tokens. `round_figures` turns two snapshots of one engine into a round's figures:
mean running and waiting requests, mean KV-cache use, prefix-cache hit rate, prompt and
generated tokens per second. The figures are about the engine's steps only: between two steps
the last reported state is taken to hold.
"""

from __future__ import annotations

import time
from typing import Dict, Iterable, Optional

# cumulative fields of a snapshot
AREAS = ("running", "waiting", "kv_cache")
COUNTS = ("prefix_queries", "prefix_hits", "prompt_tokens", "generated_tokens", "steps")


class VllmStats:
    """Running sums of one engine's statistics (one per `AsyncLLM`, read by `snapshot`)."""

    def __init__(self, clock=time.monotonic) -> None:
        self.clock = clock
        self.t0 = self.last_t = clock()
        self.now = {"running": 0.0, "waiting": 0.0, "kv_cache": 0.0}
        self.area = dict.fromkeys(AREAS, 0.0)
        self.count = dict.fromkeys(COUNTS, 0)

    def _advance(self) -> None:
        t = self.clock()
        for k in AREAS:
            self.area[k] += self.now[k] * (t - self.last_t)
        self.last_t = t

    def record(self, scheduler_stats, iteration_stats) -> None:
        """One engine step's report (vLLM's `SchedulerStats` and `IterationStats`, either None)."""
        self._advance()
        if scheduler_stats is not None:
            self.now = {"running": float(scheduler_stats.num_running_reqs),
                        "waiting": float(scheduler_stats.num_waiting_reqs),
                        "kv_cache": float(scheduler_stats.kv_cache_usage)}
            p = scheduler_stats.prefix_cache_stats
            if p is not None:
                self.count["prefix_queries"] += p.queries
                self.count["prefix_hits"] += p.hits
            self.count["steps"] += 1
        if iteration_stats is not None:
            self.count["prompt_tokens"] += iteration_stats.num_prompt_tokens
            self.count["generated_tokens"] += iteration_stats.num_generation_tokens

    def observe(self, gauges: Dict[str, float], totals: Dict[str, int]) -> None:
        """A polled server's state (`server_metrics`): its gauges now (running, waiting,
        kv_cache), its counters since the first poll; each poll counts as a step."""
        self._advance()
        self.now = dict(gauges)
        self.count.update(totals)
        self.count["steps"] += 1

    def snapshot(self) -> dict:
        self._advance()
        return {"time_s": self.last_t - self.t0, **{f"{k}_area": v for k, v in self.area.items()}, **self.count}


def stat_logger_factory(stats: VllmStats):
    """A vLLM `StatLoggerFactory` whose loggers report to `stats`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class _ToStats(StatLoggerBase):
        def __init__(self, vllm_config, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(self, scheduler_stats, iteration_stats, mm_cache_stats=None, engine_idx: int = 0):
            stats.record(scheduler_stats, iteration_stats)

        def log_engine_initialized(self) -> None:
            pass

    return _ToStats


def round_figures(end: dict, begin: Optional[dict]) -> dict:
    """One engine's figures between two snapshots of its `VllmStats` (`begin` None: since start)."""
    d = {k: end[k] - (begin[k] if begin else 0) for k in end}
    secs = max(d["time_s"], 1e-9)
    return {
        "seconds": d["time_s"],
        "mean_running": d["running_area"] / secs,
        "mean_waiting": d["waiting_area"] / secs,
        "mean_kv_cache_usage": d["kv_cache_area"] / secs,
        "prefix_cache_hit_rate": d["prefix_hits"] / d["prefix_queries"] if d["prefix_queries"] else None,
        "prompt_tokens_per_s": d["prompt_tokens"] / secs,
        "generated_tokens_per_s": d["generated_tokens"] / secs,
        "prefix_queries": d["prefix_queries"], "prefix_hits": d["prefix_hits"],
        "prompt_tokens": d["prompt_tokens"], "generated_tokens": d["generated_tokens"], "steps": d["steps"],
    }


def combine(per_engine: Iterable[dict]) -> Dict[str, Optional[float]]:
    """The engines' figures of a round together: means per engine weighted by time, rates summed."""
    rows = list(per_engine)
    secs = sum(r["seconds"] for r in rows)
    if not rows or secs <= 0:
        return {}
    queries = sum(r["prefix_queries"] for r in rows)
    return {
        "engines": len(rows),
        "mean_running": sum(r["mean_running"] * r["seconds"] for r in rows) / secs,
        "mean_waiting": sum(r["mean_waiting"] * r["seconds"] for r in rows) / secs,
        "mean_kv_cache_usage": sum(r["mean_kv_cache_usage"] * r["seconds"] for r in rows) / secs,
        "prefix_cache_hit_rate": sum(r["prefix_hits"] for r in rows) / queries if queries else None,
        "prompt_tokens_per_s": sum(r["prompt_tokens_per_s"] for r in rows),
        "generated_tokens_per_s": sum(r["generated_tokens_per_s"] for r in rows),
    }
