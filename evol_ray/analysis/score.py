"""Difficulty ratings: how hard are the seeds and each round's kept instructions?

WizardLM (arXiv 2304.12244, sec. 4.5 and appendix) had ChatGPT rate the difficulty and complexity of
each instruction from 1 to 10. `score.template` (default `prompts.DIFFICULTY_TEMPLATE`) asks the
same question. The score is not a sampled answer: a forced choice among "1".."10" is biased by
construction, since "1" is a prefix of "10" (a model whose first token is "1" is steered into
"10"). Each of the ten answers is scored as the model's whole reply (`score_choices`), and the
score is their expected value; the ten probabilities are kept per row.

The sample: `score.sample_size` rows of the seeds (round 0, read back from round 1's `parent_*`)
and of each complete round's kept rows, drawn by `runread.sample_key` (a hash of seed and id).

Reads the round files of a finished run (`id`, `root_id`, `round`, `status`, `instruction`,
`parent_*`); writes `OUTPUT/scores/scores.parquet` (`columns.SCORES_SCHEMA`) and then
`OUTPUT/scores/manifest.json` (the commit: model, sample, counts and mean by round).

In a run with `score.enabled`, the rows go to the run's warm engines when `score.model` is unset;
`evol-ray score` (or another `score.model`) starts one engine, placed where the GPUs are as the
rounds' are (the driver may run on a CPU-only head node, docs/cluster.md): a sample of a few
hundred rows is seconds of engine time, and a second engine would only add another start-up.
"""

from __future__ import annotations

import functools
import hashlib
import logging
from typing import Any, Dict, List, Optional, Tuple

import pyarrow as pa
import pyarrow.compute as pc

from evol_ray import columns as C
from evol_ray import config as config_mod
from evol_ray.analysis import runread
from evol_ray.config import Config, ModelConfig
from evol_ray.engine.base import TextGenerator, choice_distribution, engine_is_dead
from evol_ray.engine.client_stage import table_through
from evol_ray.engine.service import Engines, engines_for
from evol_ray.evolve import prompts
from evol_ray.io import commit, layout
from evol_ray.io.storage import Location

log = logging.getLogger("evol_ray")

SCORES = tuple(str(i) for i in range(1, 11))
SCORES_FILE = "scores.parquet"
_COLUMNS = [C.ID, C.ROOT_ID, C.ROUND, C.INSTRUCTION]


def expected_score(logprobs: Dict[str, float]) -> Tuple[float, List[float]]:
    """Log-probabilities of the answers "1".."10" -> (expected score, P(1)..P(10)), the
    probabilities renormalized over the ten answers (as Deita's scorers read theirs)."""
    p = choice_distribution(logprobs)
    probs = [p[s] for s in SCORES]
    return sum(k * q for k, q in zip(range(1, 11), probs)), probs


async def rate_row(gen: TextGenerator, row: Dict[str, Any],
                   template: str = prompts.DIFFICULTY_TEMPLATE) -> Dict[str, Any]:
    """One row (`id`, `root_id`, `round`, `instruction`) -> the same plus `difficulty` and
    `difficulty_probs`, or `error`."""
    out = {k: row[k] for k in _COLUMNS}
    out.update({C.DIFFICULTY: None, C.DIFFICULTY_PROBS: None, C.ERROR: None})
    try:
        lp = await gen.score_choices(template.format(instruction=row[C.INSTRUCTION]), SCORES)
    except Exception as e:
        if engine_is_dead(e):
            raise
        out[C.ERROR] = f"{type(e).__name__}: {e}"[:2000]
        return out
    out[C.DIFFICULTY], out[C.DIFFICULTY_PROBS] = expected_score(lp)
    return out


def score_model(cfg: Config) -> ModelConfig:
    """The run's model settings, with `score.model` (and its own tokenizer) when one is set."""
    return config_mod.model_named(cfg, cfg.score.model)


def sample(out: Location, cfg: Config, manifests: List[dict]) -> pa.Table:
    """`score.sample_size` seeds and kept rows of each round in `manifests` (`_COLUMNS`)."""
    n, schema = cfg.score.sample_size, pa.schema([C.SCORES_SCHEMA.field(c) for c in _COLUMNS])
    cols = [C.ID, C.ROOT_ID, C.ROUND, C.STATUS, C.REASON, C.INSTRUCTION, C.PARENT_ID,
            C.PARENT_INSTRUCTION, C.PARENT_RESPONSE]
    seeds, parts = runread.Sampler(n, cfg.seed), []
    for m in manifests:
        kept = runread.Sampler(n, cfg.seed)
        for t in runread.read_tables(out, runread.round_files(out, m), cols):
            if m["round"] == 1:
                seeds.add(runread.seeds_of(t).select(_COLUMNS))
            kept.add(t.filter(pc.equal(t[C.STATUS], C.KEPT)).select(_COLUMNS))
        parts.append(kept.result(schema))
    return pa.concat_tables([t.cast(schema) for t in [seeds.result(schema)] + parts])


def _key(cfg: Config, rounds: List[int]) -> str:
    """What a set of scores depends on: the run, the rounds, and the score settings."""
    sc = config_mod.to_container(cfg)["score"]
    sc.pop("enabled")
    blob = repr((config_mod.config_hash(cfg), rounds, sorted(sc.items()), score_model(cfg).source)).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def score_run(cfg: Config, out: Location, force: bool = False, engines: Optional[Engines] = None) -> dict:
    """Rate the sample of a finished run and write `OUTPUT/scores/`. Returns the scores manifest.
    Scores made with the same run, rounds and score settings are kept, unless `force`. `engines`:
    the run's own, used when they serve the score model; else one engine is started for it."""
    manifests, _ = runread.round_manifests(out, cfg.evolution.rounds)
    if not manifests or manifests[0]["round"] != 1:
        raise runread.RunReadError(f"{out.url}: round 1 is not complete; nothing to score yet")
    rounds = [m["round"] for m in manifests]
    key = _key(cfg, rounds)
    old, _ = runread.read_scores(out)
    if old and old.get("key") == key and not force:
        log.info("scores: up to date in %s, skipped", out.join(layout.SCORES).url)
        return old

    table = sample(out, cfg, manifests)
    with engines_for(cfg, score_model(cfg), engines, replicas=1) as eng:
        log.info("scores: rating %d instructions with %s on %s", table.num_rows, score_model(cfg).source, eng.device)
        scored = table_through(table, eng, functools.partial(rate_row, template=cfg.score.template),
                               C.SCORES_SCHEMA, columns=_COLUMNS, label="scores")
        device = eng.device
    scored = scored.sort_by([(C.ROUND, "ascending"), (C.ID, "ascending")])

    by_round: Dict[str, dict] = {}
    for r in [0] + rounds:
        t = scored.filter(pc.equal(scored[C.ROUND], r))
        ok = t[C.DIFFICULTY].drop_null()
        by_round[str(r)] = {"rows": t.num_rows, "rated": len(ok), "errors": t.num_rows - len(ok),
                            "mean": pc.mean(ok).as_py() if len(ok) else None}
    sdir = out.join(layout.SCORES)
    commit.begin(sdir)
    files = commit.write_tables({SCORES_FILE: scored}, sdir)
    return commit.commit(sdir, {
        "key": key,
        "config_hash": config_mod.config_hash(cfg),
        "model": score_model(cfg).source,
        "sample_size": cfg.score.sample_size,
        "template": cfg.score.template,
        "rounds": [0] + rounds,
        "rows": scored.num_rows,
        "by_round": by_round,
        "device": device,
    }, files)
