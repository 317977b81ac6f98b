"""The difficulty rating (`evol-ray score`, WizardLM's 1..10) read two ways, on the same instructions.

    python bench/rating.py [--pairs N] model.source=qwen2.5-coder-1.5b-instruct

Arguments are config overrides (`conf/local.yaml` first). The instructions are the parents and the
Not Equal evolutions of `data/judge_pairs.jsonl` (an evolution is meant to be harder; --pairs N
takes N spread over the operations, since the whole-answer method costs ten full prefills a row). Each is rated
with `score.template` by `first_tokens` (the first token's log-probabilities of "1".."9"; where
"10" starts with "1", one more request after "1") and by `whole_answer` (each of the ten answers
scored whole, ten prompt-logprob requests), on one engine. Prints the expected scores' Spearman
correlation between the two methods, their mean absolute difference, the share of pairs where each
method rates the evolution above its parent, and the prompt tokens computed per rated row; the
last line `spearman=<r> mean_abs_diff=<d> first_tokens_tokens=<n> whole_answer_tokens=<n> rows=<n>`.
No Ray.
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
ROOT = Path(__file__).resolve().parents[1]


def main(argv) -> None:
    from scipy.stats import spearmanr

    from evol_ray.analysis.score import SCORES, expected_score
    from evol_ray.calibration import sets
    from evol_ray.config import load_config
    from evol_ray.engine.preflight import prepare_models
    from evol_ray.engine.vllm_engine import VLLMGenerator

    limit = None
    if argv and argv[0] == "--pairs":
        limit, argv = int(argv[1]), argv[2:]
    cfg = load_config([str(ROOT / "conf" / "local.yaml"), "engine.device=cpu", *argv])
    pairs = [p for p in sets.load(None, "judge")[0] if p["label"] == sets.NOT_EQUAL]
    if limit:  # spread over the operations, which the set lists in order
        pairs = pairs[::max(1, len(pairs) // limit)][:limit]
    texts = [p["parent"] for p in pairs] + [p["evolution"] for p in pairs]
    prepare_models(cfg)
    gen = VLLMGenerator(cfg.model, cfg.engine, "cpu", cfg.seed)

    async def rate(method):
        gen.choice_scoring = method
        before = dict(gen.counts)
        await gen.score_choices(cfg.score.template.format(instruction=texts[0]), SCORES)
        got = await asyncio.gather(*(gen.score_choices(cfg.score.template.format(instruction=t), SCORES) for t in texts))
        computed = (gen.counts["prompt_tokens"] - before["prompt_tokens"]) - (gen.counts["cached_tokens"] - before["cached_tokens"])
        return [expected_score(lp)[0] for lp in got], computed / (len(texts) + 1)

    async def both():
        return await rate("first_tokens"), await rate("whole_answer")

    (ft, ft_tok), (wa, wa_tok) = asyncio.run(both())
    gen.shutdown(grace_s=0)
    n = len(pairs)
    rho = spearmanr(ft, wa).statistic
    diff = sum(abs(a - b) for a, b in zip(ft, wa)) / len(ft)
    for name, s in (("first_tokens", ft), ("whole_answer", wa)):
        up = sum(s[n + i] > s[i] for i in range(n)) / n
        print(f"{name}: mean {sum(s) / len(s):.2f}, evolution rated above its parent in {up:.0%} of {n} pairs")
    print(f"spearman={rho:.3f} mean_abs_diff={diff:.3f} first_tokens_tokens={ft_tok:.1f} "
          f"whole_answer_tokens={wa_tok:.1f} rows={len(texts)}")


if __name__ == "__main__":
    main(sys.argv[1:])
