"""The equality judge (elimination rule 1) on the labelled set `data/judge_pairs.jsonl`.

    python bench/judge.py                                  # the real small model, on CPU
    python bench/judge.py model.source=Qwen/Qwen2.5-7B-Instruct engine.device=gpu

Arguments are config overrides (`conf/local.yaml` first). Every (parent, evolution) pair is judged
in both orders with the run's judge prompt, its verdict read from P(Equal) as the pipeline reads
it. Prints the accuracy and confusion matrix at `elimination.judge_threshold`, the accuracy when
both orders are averaged, the position bias (verdicts that flip when the two instructions swap
places, and the mean |P(Equal) difference|), the mean P(Equal) per label, and the accuracy over a
sweep of thresholds; the last line is `accuracy=<a> threshold=<t> best_threshold=<b>
best_accuracy=<c> position_flips=<f> pairs=<n>`. No Ray: one engine in this process.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


def main(argv) -> None:
    from evol_ray.analysis.judge_eval import evaluate, load_pairs
    from evol_ray.config import load_config
    from evol_ray.engine.base import choice_distribution
    from evol_ray.engine.resources import choose_device
    from evol_ray.engine.sizing import prepare_models
    from evol_ray.engine.vllm_engine import VLLMGenerator
    from evol_ray.evolve import prompts

    cfg = load_config([str(ROOT / "conf" / "local.yaml"), "engine.device=cpu", *argv])
    pairs = load_pairs(ROOT / "data" / "judge_pairs.jsonl")
    prepare_models(cfg)
    device = cfg.engine.device if cfg.engine.device != "auto" else choose_device("auto", {})
    t0 = time.time()
    gen = VLLMGenerator(cfg.model, cfg.engine, device, cfg.seed)
    started = time.time() - t0
    template = cfg.elimination.judge_template

    async def p_equal(first, second):
        lp = await gen.score_choices(template.format(first=first, second=second),
                                     (prompts.JUDGE_EQUAL, prompts.JUDGE_NOT_EQUAL))
        return choice_distribution(lp)[prompts.JUDGE_EQUAL]

    async def run_all():
        fwd = asyncio.gather(*(p_equal(p["parent"], p["evolution"]) for p in pairs))
        swp = asyncio.gather(*(p_equal(p["evolution"], p["parent"]) for p in pairs))
        return await fwd, await swp

    t1 = time.time()
    forward, swapped = asyncio.run(run_all())
    judged = time.time() - t1
    gen.shutdown(grace_s=0)
    labels = [p["label"] for p in pairs]
    th = cfg.elimination.judge_threshold
    r = evaluate(labels, forward, swapped, th)
    print(f"model {cfg.model.source}: {len(pairs)} pairs x 2 orders judged in {judged:.1f}s "
          f"(engine start-up {started:.1f}s)")
    print(f"threshold {th}: accuracy {r['accuracy']:.3f}; accuracy with both orders averaged "
          f"{r['accuracy_both_orders']:.3f}")
    print("confusion (rows: true label, columns: verdict):")
    for t in ("Equal", "Not Equal"):
        print(f"  {t:>9}: Equal {r['confusion'][t]['Equal']:3d}   Not Equal {r['confusion'][t]['Not Equal']:3d}")
    print(f"position bias: {r['position_flips']:.1%} of verdicts flip when the order swaps; "
          f"mean |P(Equal) difference| {r['position_mean_abs_diff']:.3f}")
    print(f"mean P(Equal): Equal pairs {r['mean_p_equal']['Equal']:.3f}, "
          f"Not Equal pairs {r['mean_p_equal']['Not Equal']:.3f}")
    sweep = [(t / 100, evaluate(labels, forward, swapped, t / 100)["accuracy"]) for t in range(5, 100, 5)]
    print("sweep: " + ", ".join(f"{t:.2f}:{a:.2f}" for t, a in sweep))
    best_t, best_a = max(sweep, key=lambda x: (x[1], -abs(x[0] - 0.5)))
    print(f"accuracy={r['accuracy']:.3f} threshold={th} best_threshold={best_t:.2f} "
          f"best_accuracy={best_a:.3f} position_flips={r['position_flips']:.3f} pairs={len(pairs)}")


if __name__ == "__main__":
    main(sys.argv[1:])
