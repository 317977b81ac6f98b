"""vLLM's statistics of an engine (engine/vllm_stats.py): integrated over time between steps,
counted, turned into a round's figures per engine and together."""

from types import SimpleNamespace

import pytest

from evol_ray.analysis.sections import vllm_cells
from evol_ray.engine.vllm_stats import VllmStats, combine, round_figures


def _step(running, waiting, kv, queries=0, hits=0, prompt=0, generated=0):
    return (SimpleNamespace(num_running_reqs=running, num_waiting_reqs=waiting, kv_cache_usage=kv,
                            prefix_cache_stats=SimpleNamespace(queries=queries, hits=hits)),
            SimpleNamespace(num_prompt_tokens=prompt, num_generation_tokens=generated))


def test_gauges_are_time_weighted_and_counters_summed_between_two_snapshots():
    t = [0.0]
    s = VllmStats(clock=lambda: t[0])
    s.record(*_step(4, 0, 0.2, queries=100, hits=60, prompt=100, generated=4))  # at 0: 4 running until 2
    t[0] = 2.0
    begin = s.snapshot()
    s.record(*_step(8, 2, 0.5, queries=50, hits=50, prompt=50, generated=8))  # at 2: 8 running until 6
    t[0] = 6.0
    s.record(*_step(0, 0, 0.0, generated=2))  # at 6: idle until 10
    t[0] = 10.0
    f = round_figures(s.snapshot(), begin)
    assert f["seconds"] == 8.0
    assert f["mean_running"] == pytest.approx(8 * 4 / 8) and f["mean_waiting"] == pytest.approx(2 * 4 / 8)
    assert f["mean_kv_cache_usage"] == pytest.approx(0.5 * 4 / 8)
    assert f["prefix_cache_hit_rate"] == 1.0  # the round's own queries, not those before it
    assert f["prompt_tokens_per_s"] == pytest.approx(50 / 8) and f["generated_tokens_per_s"] == pytest.approx(10 / 8)
    whole = round_figures(s.snapshot(), None)
    assert whole["prefix_cache_hit_rate"] == pytest.approx(110 / 150) and whole["steps"] == 3


def test_engines_combine_means_by_time_and_sum_rates():
    a = {"seconds": 10, "mean_running": 10, "mean_waiting": 0, "mean_kv_cache_usage": 0.5, "prefix_queries": 10,
         "prefix_hits": 5, "prompt_tokens_per_s": 100, "generated_tokens_per_s": 10}
    b = {**a, "seconds": 30, "mean_running": 2, "prefix_queries": 0, "prefix_hits": 0}
    c = combine([a, b])
    assert c["engines"] == 2 and c["mean_running"] == pytest.approx((100 + 60) / 40)
    assert c["prefix_cache_hit_rate"] == 0.5 and c["prompt_tokens_per_s"] == 200
    assert combine([]) == {}


def test_the_report_says_not_available_without_vllm_statistics():
    assert vllm_cells({})[0] == "not available"  # an OpenAI-compatible endpoint, a benchmark's engine
    cells = vllm_cells({"mean_running": 3.14, "mean_waiting": 0.0, "mean_kv_cache_usage": 0.25,
                        "prefix_cache_hit_rate": None, "prompt_tokens_per_s": 99.6, "generated_tokens_per_s": 5.2})
    assert cells == [3.1, 0.0, "25%", "-", 100, 5]
