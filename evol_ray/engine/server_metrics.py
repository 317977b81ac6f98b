"""vLLM's own statistics of an OpenAI-compatible server, for `engine.backend=openai`: what the
in-process engines report through their stat logger (`vllm_stats`), read instead from the
server's Prometheus endpoint (`/metrics` at the root of `engine.endpoint.base_url`).

`ServerMetrics` polls it from the driver every POLL_S seconds during an engine phase, in a daemon
thread: the gauges `vllm:num_requests_running`, `vllm:num_requests_waiting` and
`vllm:kv_cache_usage_perc` (summed over the server's engines) are integrated over time between
polls, and the counters `vllm:prefix_cache_queries`, `vllm:prefix_cache_hits`,
`vllm:prompt_tokens` and `vllm:generation_tokens` are counted from the first poll, into a
`vllm_stats.VllmStats`, so a round's figures are the same as the in-process engines'. A server
without such an endpoint (another server, or a vLLM one behind a proxy that hides it) gives
`unavailable`, its reason, and the round says "not available". The text is parsed with
prometheus_client's parser.
"""

from __future__ import annotations

import re
import threading
import time
from typing import Callable, Dict, Optional

from evol_ray.engine.vllm_stats import VllmStats

POLL_S = 1.0
GAUGES = {"running": ("vllm:num_requests_running",), "waiting": ("vllm:num_requests_waiting",),
          "kv_cache": ("vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc")}
COUNTERS = {"prefix_queries": ("vllm:prefix_cache_queries",), "prefix_hits": ("vllm:prefix_cache_hits",),
            "prompt_tokens": ("vllm:prompt_tokens",), "generated_tokens": ("vllm:generation_tokens",)}


def metrics_url(base_url: str) -> str:
    """The server's /metrics: at the root of an OpenAI base URL (`http://host:8000/v1`)."""
    return re.sub(r"/v1/?$", "", base_url.rstrip("/")) + "/metrics"


def parse(text: str) -> Optional[Dict[str, Dict[str, float]]]:
    """Prometheus text -> {"gauges": {...}, "counters": {...}} of the names above, each summed over
    its label sets (one per engine of the server); None when the text holds none of them."""
    from prometheus_client.parser import text_string_to_metric_families

    values: Dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            name = sample.name[:-len("_total")] if sample.name.endswith("_total") else sample.name
            values[name] = values.get(name, 0.0) + float(sample.value)

    def pick(names) -> Optional[float]:
        return next((values[n] for n in names if n in values), None)

    gauges = {k: pick(names) for k, names in GAUGES.items()}
    counters = {k: pick(names) for k, names in COUNTERS.items()}
    if all(v is None for v in (*gauges.values(), *counters.values())):
        return None
    return {"gauges": {k: v or 0.0 for k, v in gauges.items()}, "counters": {k: v or 0.0 for k, v in counters.items()}}


class ServerMetrics:
    """One engine phase's statistics of a server, polled while it runs. `fetch(url) -> text`
    (default: an HTTP GET with the endpoint's key)."""

    def __init__(self, url: str, fetch: Callable[[str], str], every_s: float = POLL_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.url, self.fetch, self.every_s = url, fetch, every_s
        self.stats = VllmStats(clock)
        self.unavailable: Optional[str] = None
        self._first: Optional[Dict[str, float]] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    def poll(self) -> bool:
        """One reading; False (and `unavailable` set) when the server gives none."""
        try:
            got = parse(self.fetch(self.url))
        except Exception as e:  # no such endpoint, not Prometheus text, the server away
            self.unavailable = f"{self.url}: {type(e).__name__}: {str(e)[:200]}"
            return False
        if got is None:
            self.unavailable = f"{self.url}: no vLLM statistics (vllm:*) in its metrics"
            return False
        if self._first is None:
            self._first = got["counters"]
        self.stats.observe(got["gauges"], {k: int(v - self._first[k]) for k, v in got["counters"].items()})
        return True

    def start(self) -> "ServerMetrics":
        if self.poll():
            self._thread = threading.Thread(target=self._run, name="evol-ray-server-metrics", daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.poll()

    def stop(self) -> Optional[dict]:
        """The phase's snapshot (`VllmStats.snapshot`), or None when the server gave none."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self.poll()  # the state at the phase's end
        return None if self._first is None else self.stats.snapshot()


def http_fetch(api_key: Optional[str], timeout_s: float = 5.0) -> Callable[[str], str]:
    """GET a URL's text with the endpoint's key (vLLM leaves /metrics open; a proxy may not)."""
    def fetch(url: str) -> str:
        import httpx

        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        r = httpx.get(url, headers=headers, timeout=timeout_s)
        r.raise_for_status()
        return r.text
    return fetch
