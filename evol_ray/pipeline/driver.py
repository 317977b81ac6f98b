"""The driver: check everything cheap first, then run the rounds, each written and committed, then
the final set (and the scores, if `score.enabled`). It reads top to bottom as the pipeline:

    check input, output, model (or endpoint) and the labelled sets -> connect to Ray -> read seeds
    -> the LLM decisions calibrated for the run's model (thresholds `auto`: `pipeline/calibrate.py`)
    -> (Auto Evol: the method of operation `auto`, optimized on the seeds, `pipeline/method.py`)
    -> for each round: skip if committed, else run it (engines started at the first one that
       runs; engine phase, commit phase) -> next pool
    -> (the seeds without an answer answered: `pipeline/seed_answers.py`, committed alike)
    -> final set -> (scores, on the same engines) -> engines stopped

A round is complete only when its manifest says so; a rerun skips complete rounds and redoes the
rest. The output layout is `evol_ray.io.layout`; the commit protocol `evol_ray.io.commit`.
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Callable, List, Optional, Set

from evol_ray import config as config_mod
from evol_ray.analysis.score import score_run
from evol_ray.config import Config
from evol_ray.engine.base import TextGenerator
from evol_ray.engine.resources import connect
from evol_ray.engine.service import make_engines
from evol_ray.engine.preflight import check_cpu_engine, check_engine_source
from evol_ray.io import layout, seeds as seeds_mod
from evol_ray.io.lease import Lease, LeaseHeld
from evol_ray.io.storage import Location, describe_error, locate, read_json, remove, write_json
from evol_ray.pipeline import calibrate, method, seed_answers
from evol_ray.pipeline.final import write_final
from evol_ray.pipeline.round import RunError, pool_after, pool_size_after, reusable_commit, run_round
from evol_ray.run_key import THRESHOLD_KEYS, UNHASHED_KEYS

log = logging.getLogger("evol_ray")

__all__ = ["RunError", "run", "prepare_output"]


def prepare_output(cfg: Config, out: Location, lease: Optional[Lease] = None) -> Optional[dict]:
    """The run's identity: refuse to mix two configs in one output path, unless
    `output.start_over` is set; then write `run.json` and `config.yaml`. Returns the values of
    `run_key.UNHASHED_KEYS` an output written while they were hashed was made under (kept in
    run.json as `legacy_values`), or None: its rounds are this run's too (`reusable`)."""
    saved = read_json(out.join(layout.RUN_FILE))
    now = config_mod.config_hash(cfg)
    legacy = (saved or {}).get("legacy_values")
    before = (saved or {}).get("result_values", {})
    if saved is not None and legacy is None and saved.get("config_hash") == config_mod.legacy_hash(cfg, before):
        legacy = {k: before[k] for k in UNHASHED_KEYS if k in before}  # written when the round count was hashed
    if saved is not None and saved.get("config_hash") not in reusable(cfg, legacy):
        keys = config_mod.differing_keys(before, cfg)
        if cfg.output.start_over:
            log.warning("output.start_over: removing the earlier run at %s", out.url)
            remove(out)
            if lease is not None:
                lease.restore()
            legacy = None
        elif keys and set(keys) <= set(THRESHOLD_KEYS):
            # a threshold decides which rows a round keeps: rounds made under another one are redone
            log.info("%s: %s changed; rounds made under the old value are redone", out.url, ", ".join(keys))
        else:
            raise RunError(
                f"{out.url} holds a run made with a different config; keys that differ: "
                f"{', '.join(keys) or '(unknown)'}. Use another output.path, or set "
                "output.start_over=true to delete that run and start again."
            )
    write_json(out.join(layout.RUN_FILE), {
        "config_hash": now,
        "legacy_values": legacy,
        "result_values": config_mod.result_values(cfg),
        "created": (saved or {}).get("created", layout.timestamp()),
    })
    with out.fs.open(out.join(layout.CONFIG_FILE).path, "w") as f:
        f.write(config_mod.to_yaml(cfg))
    return legacy


def reusable(cfg: Config, legacy: Optional[dict]) -> Set[str]:
    """Config hashes under which a committed round (or run.json) is this run's: `cfg`'s, and the
    one it had while `UNHASHED_KEYS` were hashed, at the values the output was written under."""
    return {config_mod.config_hash(cfg)} | ({config_mod.legacy_hash(cfg, legacy)} if legacy else set())


def run(cfg: Config, *, generator_factory: Optional[Callable[[], TextGenerator]] = None) -> dict:
    """Run every round not yet complete, then the final set (and the scores). Returns a summary
    dict. The engines start once, at the first round that needs them, and serve every later
    round and the scorer. `generator_factory`: benchmarks' own engine (a picklable callable
    returning a `TextGenerator`), in place of `engine.backend`'s; then no model is prepared."""
    # Everything cheap and checkable happens before Ray or any engine starts.
    urls, fmt, cols = seeds_mod.check_input(cfg)
    out = locate(cfg.output.path, cfg.storage)
    try:
        calibrate.check_sets(cfg)  # a labelled set that cannot be read fails here, before any engine work
        try:
            lease = Lease(out).take(cfg.output.wait_for_lease_s)  # one writer per output
        except LeaseHeld as e:
            raise RunError(str(e)) from None
        except Exception as e:
            raise RunError(f"output.path {describe_error(e, cfg.output.path)}") from None
        out = dataclasses.replace(out, guard=lease.check)  # every commit checks it first
        try:
            legacy = prepare_output(cfg, out, lease)
        except BaseException as e:
            lease.release()
            if isinstance(e, RunError) or not isinstance(e, Exception):
                raise
            raise RunError(f"output.path {describe_error(e, cfg.output.path)}") from None
    except RunError as e:
        e.before_work = True  # the command line's exit code 2: nothing was produced
        raise
    try:
        return _engines_and_rounds(cfg, out, urls, fmt, cols, legacy, generator_factory)
    finally:
        lease.release()


def _engines_and_rounds(cfg: Config, out: Location, urls, fmt, cols, legacy: Optional[dict],
                        generator_factory: Optional[Callable[[], TextGenerator]]) -> dict:
    """The engines started (once), the rounds run on them, the engines stopped."""

    if generator_factory is None:
        check_engine_source(cfg)  # a named model fetched once, or the endpoint's preflight request
    device = connect(cfg)
    if device == "cpu" and generator_factory is None and cfg.engine.backend == "vllm":
        check_cpu_engine(cfg)
    engines = make_engines(cfg, device, factory=generator_factory)
    log.info("evol-ray: %d seed file(s), engine on %s, %d round(s) into %s",
             len(urls), engines.device, cfg.evolution.rounds, out.url)
    try:
        return _rounds(cfg, out, urls, fmt, cols, engines, legacy)
    finally:
        engines.stop()


def _rounds(cfg: Config, out: Location, urls, fmt, cols, engines, legacy: Optional[dict]) -> dict:
    """The rounds, the final set and the scores, on `engines`. A committed round is reused when its
    manifest's config hash is `reusable` (and its calibrated numbers and Auto Evol method
    are the run's); rounds past `evolution.rounds` are left in place, outside `final/`."""
    all_seeds, expected = seeds_mod.load_seeds(cfg, urls, fmt, cols)  # its input errors come before any engine work
    if any(layout.read_manifest(layout.round_dir(out, r)) is None for r in range(1, cfg.evolution.rounds + 1)):
        engines.launch()  # a round is still to run: the engines load their model while round 1 is prepared
    # what is evolved, deduped against and kept as seeds: read by every round and the final set
    seeds = seeds_mod.ONLY_UNIQUE(all_seeds).materialize()
    repeats = seeds_mod.ONLY_REPEATS(all_seeds).materialize()
    del all_seeds  # the object store keeps one copy of the seeds
    # the judge's and the coherence gate's thresholds, calibrated on the run's engines (or given)
    cfg, about, calibrations = calibrate.decide(cfg, out, engines)
    found = None
    if cfg.evolution.auto.enabled:  # the method of operation `auto`, found (or reused) before round 1
        found = method.find_method(cfg, out, seeds, engines, about)
        cfg, about = method.rounds_config(cfg, found), {**about, method.DIGEST: found[method.DIGEST]}
    accepted = reusable(cfg, legacy)  # the hashes of the config the rounds run under (thresholds decided)
    pool = seeds
    manifests: List[dict] = []
    redone = False  # once a round is redone, later rounds built on the old one are redone too
    for r in range(1, cfg.evolution.rounds + 1):
        m = None if redone else layout.read_manifest(layout.round_dir(out, r))
        # a round counts as done when made with this config (and with this Auto Evol method)
        if reusable_commit(m, accepted, about):
            log.info("round %d: complete in %s, skipped", r, out.url)
        else:
            m = run_round(cfg, out, r, pool, engines, expected, seeds, manifests,
                          repeats=repeats if r == 1 else None, about=about)
            redone = True
        manifests.append(m)
        expected = pool_size_after(m)
        pool = pool_after(out, m)
    later = layout.read_manifest(layout.round_dir(out, cfg.evolution.rounds + 1))
    if later is not None:
        log.info("round %d and later: committed earlier, left in place outside final/ (evolution.rounds=%d; "
                 "a run with more rounds reuses them)", cfg.evolution.rounds + 1, cfg.evolution.rounds)
    answers = seed_answers.answer_seeds(cfg, out, seeds, engines, accepted, about)
    final = write_final(cfg, out, manifests, seeds, answers)
    summary = {"output": out.url, "rounds": manifests, "seed_answers": answers, "final": final, "method": found,
               "calibration": calibrations}
    if cfg.score.enabled:
        summary["scores"] = score_run(cfg, out, engines=engines)
    return summary
