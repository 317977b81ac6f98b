"""The driver: check everything cheap first, then run the rounds, each written and committed, then
the final set (and the scores, if `score.enabled`). It reads top to bottom as the pipeline:

    check input, output and model -> connect to Ray -> read seeds
    -> for each round: skip if committed, else run it (engine phase, commit phase) -> next pool
    -> final set -> (scores)

A round is complete only when its manifest says so; a rerun skips complete rounds and redoes the
rest. The output layout is `evol_ray.io.layout`; the commit protocol `evol_ray.io.commit`.
"""

from __future__ import annotations

import logging
from typing import List, Optional

from evol_ray import config as config_mod
from evol_ray.analysis.score import score_run
from evol_ray.config import Config
from evol_ray.engine.resources import connect
from evol_ray.engine.sizing import check_cpu_kv_cache, prepare_models
from evol_ray.io import layout, seeds as seeds_mod
from evol_ray.io.storage import Location, describe_error, locate, read_json, remove, write_json
from evol_ray.pipeline.final import write_final
from evol_ray.pipeline.round import RunError, pool_after, pool_size_after, run_round

log = logging.getLogger("evol_ray")

__all__ = ["RunError", "run", "prepare_output"]


def prepare_output(cfg: Config, out: Location) -> None:
    """The run's identity: refuse to mix two configs in one output path, unless
    `output.start_over` is set; then write `run.json` and `config.yaml`."""
    saved = read_json(out.join(layout.RUN_FILE))
    if saved is not None and saved.get("config_hash") != config_mod.config_hash(cfg):
        if cfg.output.start_over:
            log.warning("output.start_over: removing the earlier run at %s", out.url)
            remove(out)
        else:
            keys = config_mod.differing_keys(saved.get("result_values", {}), cfg)
            raise RunError(
                f"{out.url} holds a run made with a different config; keys that differ: "
                f"{', '.join(keys) or '(unknown)'}. Use another output.path, or set "
                "output.start_over=true to delete that run and start again."
            )
    write_json(out.join(layout.RUN_FILE), {
        "config_hash": config_mod.config_hash(cfg),
        "result_values": config_mod.result_values(cfg),
        "created": (saved or {}).get("created", layout.timestamp()),
    })
    with out.fs.open(out.join(layout.CONFIG_FILE).path, "w") as f:
        f.write(config_mod.to_yaml(cfg))


def run(cfg: Config) -> dict:
    """Run every round not yet complete, then the final set. Returns a summary dict."""
    # Everything cheap and checkable happens before Ray or any engine starts.
    urls, fmt, cols = seeds_mod.check_input(cfg)
    out = locate(cfg.output.path, cfg.storage)
    try:
        prepare_output(cfg, out)
    except RunError:
        raise
    except Exception as e:
        raise RunError(f"output.path {describe_error(e, cfg.output.path)}") from None

    prepare_models(cfg)  # a named model is fetched once; a folder or hub id must be loadable
    device = connect(cfg)
    if device == "cpu":
        check_cpu_kv_cache(cfg)
    log.info("evol-ray: %d seed file(s), engine on %s, %d round(s) into %s",
             len(urls), device, cfg.evolution.rounds, out.url)

    all_seeds, expected = seeds_mod.load_seeds(cfg, urls, fmt, cols)
    seeds = seeds_mod.ONLY_UNIQUE(all_seeds)  # what is evolved, deduped against and kept as seeds
    repeats = seeds_mod.ONLY_REPEATS(all_seeds)
    pool = seeds
    manifests: List[dict] = []
    redone = False  # once a round is redone, later rounds built on the old one are redone too
    for r in range(1, cfg.evolution.rounds + 1):
        m = None if redone else layout.read_manifest(layout.round_dir(out, r))
        if m is not None and m.get("config_hash") == config_mod.config_hash(cfg):
            log.info("round %d: complete in %s, skipped", r, out.url)
        else:
            m = run_round(cfg, out, r, pool, device, expected, seeds, manifests,
                          repeats=repeats if r == 1 else None)
            redone = True
        manifests.append(m)
        expected = pool_size_after(m)
        pool = pool_after(out, m)
    final = write_final(cfg, out, manifests, seeds)
    summary = {"output": out.url, "rounds": manifests, "final": final}
    if cfg.score.enabled:
        summary["scores"] = score_run(cfg, out)
    return summary
