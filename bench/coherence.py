"""The coherence gate's signal, measured on the labelled set `data/coherence_texts.jsonl`.

    python bench/coherence.py model.source=qwen2.5-coder-1.5b-instruct
    python bench/coherence.py model.source=smollm2-135m-instruct

Arguments are config overrides (`conf/local.yaml` first). Two signals are measured for every
labelled text, with the model given:

  rating   the gate as the run asks it (`evolve/verdicts.p_incoherent`): P(No) to "is this text
           coherent?", read as `engine.choice_scoring` says;
  logprob  the mean log-probability of the text's first K tokens under the model, given the prompt
           that made it (the evolving prompt of its recipe and operation for an instruction, the
           instruction for an answer): what the generating model itself said of the text, free at
           generation time. The score is its negative (higher: less likely, more incoherent).

For each, the threshold with the best balanced accuracy on the tune half (`calibration.sets.split`)
and the precision and recall of "incoherent" on the test half, and the seconds it took. The last
line: `rating_precision=<p> rating_recall=<r> logprob_precision=<p> logprob_recall=<r> rows=<n>`.
No Ray: one engine in this process.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]
K_TOKENS = (16, 32, 64)


def main(argv) -> None:
    import argparse

    from evol_ray.calibration import metrics, sets
    from evol_ray.config import load_config
    from evol_ray.engine.preflight import prepare_models
    from evol_ray.engine.vllm_engine import VLLMGenerator
    from evol_ray.evolve import recipes, verdicts
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    ap = argparse.ArgumentParser()
    ap.add_argument("--rating-only", action="store_true", help="skip the log-probability signal (its prompts are not cached)")
    ns, argv = ap.parse_known_args(argv)
    cfg = load_config([str(ROOT / "conf" / "local.yaml"), "engine.device=cpu", *argv])
    rows, where, _ = sets.load(cfg.elimination.calibration.coherence_texts, "coherence")
    prepare_models(cfg)
    t0 = time.time()
    gen = VLLMGenerator(cfg.model, cfg.engine, "cpu", cfg.seed)
    print(f"model {cfg.model.source}: engine started in {time.time() - t0:.1f}s; {len(rows)} texts of {where}")
    evo = {name: load_config(["input.path=x", "output.path=y", "model.source=m",
                              f"evolution.recipe={name}"]).evolution for name in recipes.RECIPES}

    def made_by(row) -> str:
        if row["role"] == "response":
            return row["context"]
        return recipes.evolve_prompt(evo[row.get("recipe", "general")], row["op"], row["context"])

    async def logprob(row) -> list:
        head = gen.tokenizer(gen.chat_prompt(made_by(row)), add_special_tokens=False).input_ids
        body = gen.tokenizer(row["text"], add_special_tokens=False).input_ids[:max(K_TOKENS)]
        ids = head + body
        out = await gen._request(TokensPrompt(prompt_token_ids=ids), SamplingParams(max_tokens=1, prompt_logprobs=0))
        return [out.prompt_logprobs[i][ids[i]].logprob for i in range(len(head), len(ids))]

    async def rating(row) -> float:
        return await verdicts.p_incoherent(gen, cfg.elimination.coherence.template, row["role"], row["text"])

    async def run_all():
        t = time.time()
        await rating(rows[0])
        r = await asyncio.gather(*(rating(x) for x in rows))
        t_rating = time.time() - t
        rating_counts.update(gen.counts)
        if ns.rating_only:
            return r, t_rating, None, 0.0
        t = time.time()
        lp = await asyncio.gather(*(logprob(x) for x in rows))
        return r, t_rating, lp, time.time() - t

    before, rating_counts = dict(gen.counts), {}
    r, t_rating, lp, t_lp = asyncio.run(run_all())
    gen.shutdown(grace_s=0)
    halves = sets.split(rows, "coherence")
    at = {x["id"]: i for i, x in enumerate(rows)}
    results = {}
    signals = {"rating": r, **({} if lp is None else
                               {f"logprob_k{k}": [-sum(v[:k]) / max(1, len(v[:k])) for v in lp] for k in K_TOKENS})}
    for name, scores in signals.items():
        def part(h):
            idx = [at[x["id"]] for x in halves[h]]
            return [rows[i]["label"] == sets.INCOHERENT for i in idx], [scores[i] for i in idx]
        th = metrics.best_threshold(*part(sets.TUNE))
        m = metrics.measures(*part(sets.TEST), th)
        results[name] = m
        by_role = {}
        for role in sets.ROLES:
            idx = [at[x["id"]] for x in halves[sets.TEST] if x["role"] == role]
            lab = [rows[i]["label"] == sets.INCOHERENT for i in idx]
            by_role[role] = metrics.measures(lab, [scores[i] for i in idx], th)
        print(f"{name:>12}: threshold {th:.3f}; test half ({m['rows']} rows): precision {m['precision']:.3f} "
              f"recall {m['recall']:.3f} balanced accuracy {m['balanced_accuracy']:.3f}; by role: "
              + ", ".join(f"{k} P {v['precision'] if v['precision'] is not None else float('nan'):.2f} "
                          f"R {v['recall'] if v['recall'] is not None else float('nan'):.2f}" for k, v in by_role.items()))
    computed = (rating_counts["prompt_tokens"] - before["prompt_tokens"]) - (rating_counts["cached_tokens"] - before["cached_tokens"])
    print(f"seconds: rating {t_rating:.1f} ({computed / (len(rows) + 1):.0f} prompt tokens computed per text), "
          f"logprob {t_lp:.1f}")
    last = f"rating_precision={results['rating']['precision']:.3f} rating_recall={results['rating']['recall']:.3f}"
    if lp is not None:
        best_lp = max((k for k in signals if k.startswith("logprob")), key=lambda k: results[k]["balanced_accuracy"])
        last += f" logprob_precision={results[best_lp]['precision']:.3f} logprob_recall={results[best_lp]['recall']:.3f}"
    print(f"{last} seconds={t_rating:.1f} rows={len(rows)}")


if __name__ == "__main__":
    main(sys.argv[1:])
