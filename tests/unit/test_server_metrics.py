"""`engine.backend=openai`: a vLLM server's statistics from its Prometheus /metrics, into the same
round figures as the in-process engines' (`vllm_stats`); a server without them says so."""

import pytest

from evol_ray.engine import server_metrics, vllm_stats


def text(running, waiting, kv, queries, hits, prompt, gen):
    """/metrics as vLLM 0.32's server writes it (two engines for the gauges: they add up)."""
    return f"""# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="m"}} {running - 1}
vllm:num_requests_running{{engine="1",model_name="m"}} 1.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} {kv}
# HELP vllm:prefix_cache_queries_total Prefix cache queries, in terms of number of queried tokens.
# TYPE vllm:prefix_cache_queries_total counter
vllm:prefix_cache_queries_total{{engine="0",model_name="m"}} {queries}
# HELP vllm:prefix_cache_hits_total Prefix cache hits, in terms of number of cached tokens.
# TYPE vllm:prefix_cache_hits_total counter
vllm:prefix_cache_hits_total{{engine="0",model_name="m"}} {hits}
# HELP vllm:prompt_tokens_total Number of prefill tokens processed.
# TYPE vllm:prompt_tokens_total counter
vllm:prompt_tokens_total{{engine="0",model_name="m"}} {prompt}
# HELP vllm:generation_tokens_total Number of generation tokens processed.
# TYPE vllm:generation_tokens_total counter
vllm:generation_tokens_total{{engine="0",model_name="m"}} {gen}
# HELP python_gc_objects_collected_total Objects collected during gc
# TYPE python_gc_objects_collected_total counter
python_gc_objects_collected_total{{generation="0"}} 123.0
"""


def test_parse_sums_engines_and_reads_counters_without_their_total_suffix():
    got = server_metrics.parse(text(5, 2, 0.25, 1000, 400, 900, 300))
    assert got["gauges"] == {"running": 5.0, "waiting": 2.0, "kv_cache": 0.25}
    assert got["counters"] == {"prefix_queries": 1000.0, "prefix_hits": 400.0, "prompt_tokens": 900.0,
                               "generated_tokens": 300.0}
    assert server_metrics.parse("# TYPE python_info gauge\npython_info{version=\"3.11\"} 1.0\n") is None


def test_metrics_url_is_at_the_servers_root():
    assert server_metrics.metrics_url("http://127.0.0.1:8000/v1") == "http://127.0.0.1:8000/metrics"
    assert server_metrics.metrics_url("https://h/v1/") == "https://h/metrics"


def test_a_phases_figures_count_from_its_first_poll():
    clock = [100.0]
    pages = iter([text(4, 0, 0.5, 1000, 400, 900, 300), text(8, 1, 0.75, 1600, 700, 1500, 700)])
    m = server_metrics.ServerMetrics("http://s/metrics", lambda url: next(pages), clock=lambda: clock[0])
    assert m.poll()  # at t=100: 4 running since
    clock[0] = 102.0
    assert m.poll()  # at t=102: counters moved by 600 queries, 300 hits, 600 prompt, 400 generated
    clock[0] = 104.0
    fig = vllm_stats.round_figures(m.stop(), None)
    assert fig["seconds"] == pytest.approx(4.0)
    assert fig["mean_running"] == pytest.approx((4 * 2 + 8 * 2) / 4)
    assert fig["mean_kv_cache_usage"] == pytest.approx((0.5 * 2 + 0.75 * 2) / 4)
    assert fig["prefix_cache_hit_rate"] == pytest.approx(300 / 600)
    assert fig["generated_tokens_per_s"] == pytest.approx(400 / 4)


def test_a_server_without_vllm_metrics_is_not_available():
    def missing(url):
        raise OSError("404 Not Found")

    m = server_metrics.ServerMetrics("http://s/metrics", missing).start()
    assert m.stop() is None and "404 Not Found" in m.unavailable
    other = server_metrics.ServerMetrics("http://s/metrics", lambda url: "# TYPE up gauge\nup 1\n").start()
    assert other.stop() is None and "no vLLM statistics" in other.unavailable
