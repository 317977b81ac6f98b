"""The equality judge (elimination rule 1) on the labelled set `data/judge_pairs.jsonl`, as the run
calibrates it, with each way of reading its verdict.

    python bench/judge.py model.source=qwen2.5-coder-1.5b-instruct
    python bench/judge.py model.source=qwen2.5-coder-1.5b-instruct --methods first_tokens,whole_answer
    python bench/judge.py model.source=Qwen/Qwen2.5-7B-Instruct engine.device=gpu

Arguments are config overrides (`conf/local.yaml` first). Every (parent, evolution) pair is judged
in both orders with the run's judge request (`evolve/verdicts.p_equal`), read by each method of
`--methods` (default: the config's `engine.choice_scoring`) on one engine. For each method:
the threshold the run would take (best balanced accuracy on the tune half,
`pipeline/calibrate.measure`) and, on the test half, the accuracy, balanced accuracy and
confusion; the accuracy at 0.5; the verdicts that flip when the order swaps; the mean P(Equal)
per label; the prompt tokens the engine computed per verdict (its prompt tokens minus those read
from the prefix cache: vLLM's `num_cached_tokens`) and the seconds. The last line per method:
`method=<m> balanced_accuracy=<test> threshold=<t> accuracy_at_0.5=<a> position_flips=<f>
computed_tokens_per_verdict=<n> seconds=<s> pairs=<n>`. No Ray: one engine in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


def main(argv) -> None:
    import dataclasses

    import pyarrow as pa

    from evol_ray.calibration import metrics, sets
    from evol_ray.config import load_config
    from evol_ray.engine.resources import choose_device
    from evol_ray.engine.preflight import prepare_models
    from evol_ray.engine.vllm_engine import VLLMGenerator
    from evol_ray.pipeline import calibrate

    ap = argparse.ArgumentParser()
    ap.add_argument("--methods", default=None, help="comma-separated engine.choice_scoring values")
    ap.add_argument("--dump", default=None, help="write every pair's P(Equal), both orders, to this JSON file")
    ns, overrides = ap.parse_known_args(argv)
    cfg = load_config([str(ROOT / "conf" / "local.yaml"), "engine.device=cpu", *overrides])
    methods = (ns.methods or cfg.engine.choice_scoring).split(",")
    rows, where, _ = sets.load(cfg.elimination.calibration.judge_pairs, "judge")
    halves = sets.split(rows, "judge")
    half_of = {r["id"]: h for h, rs in halves.items() for r in rs}
    prepare_models(cfg)
    device = cfg.engine.device if cfg.engine.device != "auto" else choose_device("auto", {})
    t0 = time.time()
    gen = VLLMGenerator(cfg.model, cfg.engine, device, cfg.seed)
    print(f"model {cfg.model.source}: {len(rows)} pairs of {where} x 2 orders; engine start-up {time.time() - t0:.1f}s")
    judge = next(d for d in calibrate.DECISIONS if d.name == "judge")

    async def run_method(method):
        gen.choice_scoring = method
        mcfg = dataclasses.replace(cfg, engine=dataclasses.replace(cfg.engine, choice_scoring=method))
        await judge.score(gen, rows[0], mcfg)  # the shared prefix into the cache, as the run does
        before, t = dict(gen.counts), time.time()
        scores = await asyncio.gather(*(judge.score(gen, r, mcfg) for r in rows))
        seconds = time.time() - t
        computed = (gen.counts["prompt_tokens"] - before["prompt_tokens"]) - \
                   (gen.counts["cached_tokens"] - before["cached_tokens"])
        table = pa.Table.from_pylist([{"id": r["id"], "label": r["label"], "group": r["op"], calibrate.HALF: half_of[r["id"]],
                                       **s, "error": None} for r, s in zip(rows, scores)], schema=calibrate.SCORED_SCHEMA)
        return mcfg, table, seconds, computed / (2 * len(rows))

    async def run_all():
        return [(m, *(await run_method(m))) for m in methods]

    results = asyncio.run(run_all())
    gen.shutdown(grace_s=0)
    if ns.dump:
        Path(ns.dump).write_text(json.dumps({m: t.to_pylist() for m, _, t, _, _ in results}, indent=1))
    for method, mcfg, table, seconds, per_verdict in results:
        m = calibrate.measure(judge, mcfg, table)
        t = m["test"]
        labels = [x == sets.EQUAL for x in table["label"].to_pylist()]
        fwd = table[calibrate.SCORE].to_pylist()
        at_half = metrics.measures(labels, fwd, 0.5)
        print(f"--- {method}: {seconds:.1f}s, {per_verdict:.1f} prompt tokens computed per verdict")
        print(f"threshold {m['threshold']:.3f} ({m['threshold_from']}); test half ({t['rows']} pairs): accuracy "
              f"{t['accuracy']:.3f}, balanced accuracy {t['balanced_accuracy']:.3f}, confusion {t['confusion']} "
              f"(positive: Equal; {'both orders averaged' if m['both_orders'] else 'parent first'})")
        print(f"at 0.5 (all pairs): accuracy {at_half['accuracy']:.3f}, {at_half['confusion']['tp'] + at_half['confusion']['fp']} "
              f"of {len(labels)} pairs called Equal")
        print(f"position bias: {m['position']['share']:.1%} of verdicts flip when the order swaps; mean |P(Equal) "
              f"difference| {m['position']['mean_abs_diff']:.3f}; mean P(Equal): Equal pairs "
              f"{m['mean_score']['positive']:.3f}, Not Equal pairs {m['mean_score']['negative']:.3f}")
        sweep = [(x / 100, metrics.measures(labels, fwd, x / 100)["balanced_accuracy"]) for x in range(5, 100, 5)]
        print("balanced accuracy by threshold (all pairs): " + ", ".join(f"{x:.2f}:{a:.2f}" for x, a in sweep))
        print(f"method={method} balanced_accuracy={t['balanced_accuracy']:.3f} threshold={m['threshold']:.3f} "
              f"accuracy_at_0.5={at_half['accuracy']:.3f} position_flips={m['position']['share']:.3f} "
              f"computed_tokens_per_verdict={per_verdict:.1f} seconds={seconds:.1f} pairs={len(rows)}")


if __name__ == "__main__":
    main(sys.argv[1:])
