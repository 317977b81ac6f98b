"""Before round 1 (and before Auto Evol, whose trials apply the same rules): every LLM decision
whose threshold is `auto` calibrated on the run's warm engines, for the model that makes it.

    OUTPUT/judge/       scores.parquet (every labelled pair's P(Equal), both orders), manifest.json
    OUTPUT/coherence/   scores.parquet (every labelled text's P(incoherent)), manifest.json

For each decision (`DECISIONS`): the labelled set (`calibration.sets`) is scored through the
decision's own request (`evolve/verdicts.py`, the function the rounds call), the threshold with
the best balanced accuracy on the `tune` half is taken (`calibration.metrics.best_threshold`),
and the accuracy, balanced accuracy, precision, recall and confusion are measured on the `test`
half, which the threshold was not chosen on. The judge's pairs are scored in the order the rounds
ask (parent first) and swapped, for its position bias. With `engine.choice_scoring=forced` the
scores are 0 or 1: no threshold to choose, the verdicts' accuracy is measured on every row.

A decision whose balanced accuracy on the test half is below
`elimination.calibration.min_balanced_accuracy` stops the run here, before any round, naming the
keys: such a judge keeps and drops rows at random. A number given for the threshold, or the
decision switched off, skips its calibration. A committed calibration is reused when its key (the
model, the method, the template, the labelled set) is the same.

`decide` returns the config the rounds run with (each threshold a number) and what every round
manifest records of it; a committed round is reused only under the same numbers.
"""

from __future__ import annotations

import asyncio
import dataclasses
import hashlib
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import pyarrow as pa

from evol_ray.calibration import metrics, sets
from evol_ray.config import Config, threshold_of
from evol_ray.engine.base import FORCED, engine_is_dead
from evol_ray.engine.client_stage import table_through
from evol_ray.evolve import verdicts
from evol_ray.figures import shown
from evol_ray.io import commit, layout
from evol_ray.io.storage import Location
from evol_ray.pipeline.round import RunError

log = logging.getLogger("evol_ray")
SCORES_FILE = "scores.parquet"
SCORE, SWAPPED, HALF = "score", "score_swapped", "half"
SCORED_SCHEMA = pa.schema([("id", pa.string()), ("label", pa.string()), ("group", pa.string()),
                           (HALF, pa.string()), (SCORE, pa.float64()), (SWAPPED, pa.float64()),
                           ("error", pa.string())])


async def _judge_row(gen, row: Dict[str, Any], cfg: Config) -> Dict[str, Any]:
    t = cfg.elimination.judge_template
    return dict(zip((SCORE, SWAPPED), await asyncio.gather(
        verdicts.p_equal(gen, t, row["parent"], row["evolution"]),
        verdicts.p_equal(gen, t, row["evolution"], row["parent"]))))


async def _coherence_row(gen, row: Dict[str, Any], cfg: Config) -> Dict[str, Any]:
    return {SCORE: await verdicts.p_incoherent(gen, cfg.elimination.coherence.template, row["role"],
                                               row["text"]), SWAPPED: None}


@dataclass(frozen=True)
class Decision:
    name: str  # its folder under OUTPUT/ and its name in manifests
    kind: str  # its labelled set's kind (`sets.SHAPES`)
    keys: Tuple[str, str, str]  # its switch, its threshold, its labelled set
    on: Callable[[Config], bool]
    threshold: Callable[[Config], str]
    source: Callable[[Config], Optional[str]]
    template: Callable[[Config], str]
    score: Callable  # async (gen, labelled row, cfg) -> {score, score_swapped}
    set_threshold: Callable[[Config, float], Config]


def _el(cfg: Config, **changes) -> Config:
    return dataclasses.replace(cfg, elimination=dataclasses.replace(cfg.elimination, **changes))


DECISIONS = (
    Decision("judge", "judge", ("elimination.judge", "elimination.judge_threshold",
                                "elimination.calibration.judge_pairs"),
             lambda c: c.elimination.judge, lambda c: c.elimination.judge_threshold,
             lambda c: c.elimination.calibration.judge_pairs, lambda c: c.elimination.judge_template,
             _judge_row, lambda c, t: _el(c, judge_threshold=repr(t))),
    Decision("coherence", "coherence", ("elimination.coherence.enabled", "elimination.coherence.threshold",
                                        "elimination.calibration.coherence_texts"),
             lambda c: c.elimination.coherence.enabled, lambda c: c.elimination.coherence.threshold,
             lambda c: c.elimination.calibration.coherence_texts, lambda c: c.elimination.coherence.template,
             _coherence_row,
             lambda c, t: _el(c, coherence=dataclasses.replace(c.elimination.coherence, threshold=repr(t)))),
)


def key_of(d: Decision, cfg: Config, set_digest: str) -> str:
    """What a calibration depends on: the model that decides, how its answer is read, the prompt,
    the labelled set."""
    e, m = cfg.engine, cfg.model
    blob = json.dumps([d.name, m.source, m.tokenizer, e.backend, e.endpoint.model if e.backend != "vllm" else None,
                       e.choice_scoring, d.template(cfg), set_digest, cfg.elimination.judge_both_orders
                       if d.name == "judge" else None, 1], sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def decide(cfg: Config, out: Location, engines) -> Tuple[Config, Dict[str, Any], Dict[str, dict]]:
    """-> (the config the rounds run with, what each round manifest records of the decisions,
    each calibrated decision's manifest by name)."""
    recorded: Dict[str, Any] = {"choice_scoring": cfg.engine.choice_scoring}
    done: Dict[str, dict] = {}
    for d in DECISIONS:
        if not d.on(cfg):
            recorded[f"{d.name}_threshold"] = None
            continue
        given = threshold_of(d.threshold(cfg))
        if given is None:
            done[d.name] = calibrated(d, cfg, out, engines)
            given = done[d.name]["threshold"]
            cfg = d.set_threshold(cfg, given)
        recorded[f"{d.name}_threshold"] = given
    return cfg, recorded, done


def check_sets(cfg: Config) -> None:
    """Before any engine work: each labelled set a calibration will read loads (a bad line fails
    naming the file and the line)."""
    for d in DECISIONS:
        if d.on(cfg) and threshold_of(d.threshold(cfg)) is None:
            try:
                sets.load(d.source(cfg), d.kind, cfg.storage)
            except sets.LabelledSetError as e:
                raise RunError(f"{d.keys[2]}: {e}") from None


def calibrated(d: Decision, cfg: Config, out: Location, engines) -> dict:
    """The decision's committed calibration when its key matches, else one made now; either way
    checked against the minimum."""
    rows, where, digest = sets.load(d.source(cfg), d.kind, cfg.storage)
    key, ddir = key_of(d, cfg, digest), out.join(d.name)
    m = layout.read_manifest(ddir)
    if m is not None and m.get("key") == key:
        log.info("%s: calibration complete in %s, reused", d.name, ddir.url)
    else:
        m = _calibrate(d, cfg, ddir, engines, rows, where, key)
    log.info("%s", describe(m))
    _check(d, cfg, m)
    return m


def _scored(d: Decision, cfg: Config, engines, rows: List[dict]) -> pa.Table:
    halves = sets.split(rows, d.kind)
    half_of = {r["id"]: h for h, rs in halves.items() for r in rs}

    async def one(gen, row: Dict[str, Any]) -> Dict[str, Any]:
        out = {"id": row["id"], "label": row["label"], "group": row.get("op") or row.get("role") or "",
               HALF: half_of[row["id"]], SCORE: None, SWAPPED: None, "error": None}
        try:
            out.update(await d.score(gen, row, cfg))
        except Exception as e:  # one row's failure is counted, never the calibration's end
            if engine_is_dead(e):
                raise
            out["error"] = f"{type(e).__name__}: {e}"[:500]
        return out

    table = pa.Table.from_pylist([{"row": json.dumps(r)} for r in rows])
    fn = _RowFn(one)
    # the first row alone, so that the prompt prefix every row shares is in the engine's cache
    first = table_through(table.slice(0, 1), engines, fn, SCORED_SCHEMA)
    rest = table_through(table.slice(1), engines, fn, SCORED_SCHEMA,
                         label=f"{d.name} calibration") if table.num_rows > 1 else None
    return pa.concat_tables([first] + ([rest] if rest is not None else []))


class _RowFn:
    """A labelled row (as JSON, so any set's fields pass through Arrow) through `fn`."""

    def __init__(self, fn) -> None:
        self.fn = fn

    async def __call__(self, gen, row):
        return await self.fn(gen, json.loads(row["row"]))


def measure(d: Decision, cfg: Config, scored: pa.Table) -> dict:
    """Threshold (tuned on one half) and its measures on the other, from the scored rows."""
    ok = [r for r in scored.to_pylist() if r["error"] is None]
    pos = sets.SHAPES[d.kind][2]
    part = {h: [r for r in ok if r[HALF] == h] for h in (sets.TUNE, sets.TEST)}
    forced = cfg.engine.choice_scoring == FORCED

    def lab(rs):
        return [r["label"] == pos for r in rs]

    def sc(rs, key=SCORE):
        return [r[key] for r in rs]

    def decision(rs):  # the score the rounds threshold: the judge's mean of both orders, where it asks both
        if d.name == "judge" and cfg.elimination.judge_both_orders:
            return [(r[SCORE] + r[SWAPPED]) / 2 for r in rs]
        return sc(rs)

    if forced:  # 0 or 1: the verdicts as they are, measured on every row
        threshold, source, test = 0.5, "forced choice: the verdicts as given", ok
    else:
        threshold, source, test = metrics.best_threshold(lab(part[sets.TUNE]), decision(part[sets.TUNE])), \
            "best balanced accuracy on the tune half", part[sets.TEST]
    m = {
        "threshold": threshold,
        "threshold_from": source,
        "rows": scored.num_rows,
        "errors": scored.num_rows - len(ok),
        "tune": metrics.measures(lab(part[sets.TUNE]), decision(part[sets.TUNE]), threshold),
        "test": metrics.measures(lab(test), decision(test), threshold),
        "mean_score": metrics.mean_score(lab(ok), decision(ok)),
        "positive": pos,
    }
    if d.name == "judge":
        m["both_orders"] = cfg.elimination.judge_both_orders
        m["position"] = metrics.position_flips(sc(ok), sc(ok, SWAPPED), threshold)
    return m


def _calibrate(d: Decision, cfg: Config, ddir: Location, engines, rows: List[dict], where: str, key: str) -> dict:
    started = time.monotonic()
    log.info("%s: calibrating %s on %d labelled rows of %s", d.name, cfg.model.source, len(rows), where)
    commit.begin(ddir)
    scored = _scored(d, cfg, engines, rows)
    if scored.num_rows and scored["error"].null_count == 0:
        raise RunError(f"{d.name}: every labelled row failed in the engine (first: {scored['error'][0]}); "
                       f"the calibration cannot measure the {d.name}")
    files = commit.write_tables({SCORES_FILE: scored}, ddir)
    return commit.commit(ddir, {
        "decision": d.name,
        "key": key,
        "model": cfg.model.source,
        "choice_scoring": cfg.engine.choice_scoring,
        "labelled_set": where,
        **measure(d, cfg, scored),
        "wall_seconds": round(time.monotonic() - started, 3),
    }, files)


def _check(d: Decision, cfg: Config, m: dict) -> None:
    low = cfg.elimination.calibration.min_balanced_accuracy
    got = m["test"]["balanced_accuracy"]
    if got is None or got < low:
        raise RunError(
            f"{d.name}: {m['model']} reaches a balanced accuracy of {shown(got)} on the held-out half of "
            f"{m['labelled_set']}, below elimination.calibration.min_balanced_accuracy={low}: it would keep "
            f"and drop rows nearly at random. Use a more capable model (model.source), give a threshold "
            f"yourself ({d.keys[1]}=<number>), switch it off ({d.keys[0]}=false), or lower the minimum.")


def describe(m: dict) -> str:
    """One line for the log and the run summary."""
    t = m["test"]
    line = (f"{m['decision']}: threshold {m['threshold']:.3f} ({m['model']}, {m['choice_scoring']}); on the "
            f"{t['rows']} held-out rows: balanced accuracy {shown(t['balanced_accuracy'])}, accuracy "
            f"{shown(t['accuracy'])}, precision {shown(t['precision'])}, recall {shown(t['recall'])} "
            f"of {m['positive']}")
    if "position" in m:
        line += (f"; {'both orders averaged, ' if m.get('both_orders') else ''}verdicts that flip when the "
                 f"order swaps {m['position']['share']:.0%}")
    return line
