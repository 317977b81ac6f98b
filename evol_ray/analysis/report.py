"""`evol-ray report OUTPUT`: what every round did, and whether the instructions got harder and
more diverse, from what the run wrote (never by running anything again).

`collect` reads the run once, file by file, and returns the figures as plain data (the JSON that
is written next to the HTML); `write_report` renders them with `plots` into one self-contained HTML
file (PNG images inlined) under `OUTPUT/report/`; `summary_text` is the short text for the terminal.

Round 0 is the seeds. Per round the counts come from the manifest, which the report checks against
the Parquet files it reads anyway (any disagreement is listed under `mismatches`). Statuses,
reasons and operations are whatever the manifests counted: a stage added later shows up unasked.
Lengths are words (runs of non-space characters) of the kept rows. Diversity is measured on samples
of one size for every round (`report.sample_size`, or the smallest round's kept count).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Dict, List, Optional

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from evol_ray import columns as C
from evol_ray.analysis import diversity, plots, report_html, runread, sections
from evol_ray.checks import minhash
from evol_ray.checks.text import word_counts
from evol_ray.config import Config
from evol_ray.counts import row_counts
from evol_ray.figures import shown
from evol_ray.io import commit, layout, lease
from evol_ray.io.storage import Location

HTML_FILE = "report.html"
JSON_FILE = "figures.json"
_READ = [C.ID, C.PARENT_ID, C.ROOT_ID, C.ROUND, C.OP, C.STATUS, C.REASON, C.INSTRUCTION, C.RESPONSE, C.PARENT_INSTRUCTION, C.PARENT_RESPONSE]
_COUNTED = ("status_counts", "reason_counts", "op_counts", "op_kept_counts")


def length_stats(x: np.ndarray) -> Dict[str, float]:
    if not len(x):
        return {"rows": 0}
    q = np.percentile(x, [10, 25, 50, 75, 90])
    return {"rows": int(len(x)), "mean": float(x.mean()), "min": int(x.min()), "p10": float(q[0]),
            "p25": float(q[1]), "median": float(q[2]), "p75": float(q[3]), "p90": float(q[4]),
            "max": int(x.max())}


def round_figures(m: dict, counted: Dict[str, Counter], rows: int) -> dict:
    """One round's figures from its manifest, plus the disagreements with the files' own counts."""
    kept = m["status_counts"].get(C.KEPT, 0)
    ops = m.get("op_counts", {})
    engine = m.get("engine") or {}
    mismatches = [f"rows: manifest {m['rows_in']}, files {rows}"] if rows != m["rows_in"] else []
    for key in _COUNTED:
        if dict(counted[key]) != m.get(key, {}):
            mismatches.append(f"{key}: manifest {m.get(key)}, files {dict(sorted(counted[key].items()))}")
    return {
        "round": m["round"],
        "rows_in": m["rows_in"],
        "kept": kept,
        "survival": kept / m["rows_in"] if m["rows_in"] else 0.0,
        **{key: m.get(key, {}) for key in _COUNTED},
        "op_survival": {op: m.get("op_kept_counts", {}).get(op, 0) / n for op, n in ops.items() if n},
        "prompt_tokens": m.get("prompt_tokens", 0),
        "generated_tokens": m.get("generated_tokens", 0),
        "wall_seconds": m.get("wall_seconds"),
        "engine_startup_seconds": engine.get("startup_s"),
        "engine_busy_share": engine.get("busy_share"),
        "engine_in_flight_sending": engine.get("mean_in_flight_sending"),
        "vllm": engine.get("vllm") or {},
        "row_engine_seconds": m.get("row_engine_seconds"),
        "mismatches": mismatches,
    }


def _lineage(rows_by_round: Dict[int, pa.Table], roots: List[str]) -> List[dict]:
    """Seed -> last round for each root: op, status, reason and the instruction at each step."""
    chains = []
    for root in roots:
        steps = []
        for r in sorted(rows_by_round):
            t = rows_by_round[r].filter(pc.equal(rows_by_round[r][C.ROOT_ID], root)).to_pylist()
            if not t:
                continue
            x = t[0]
            if r == 1:
                steps.append({"round": 0, "op": None, "status": "seed", "reason": None,
                              "instruction": x[C.PARENT_INSTRUCTION]})
            steps.append({"round": r, "op": x[C.OP], "status": x[C.STATUS], "reason": x[C.REASON],
                          "instruction": x[C.INSTRUCTION]})
        chains.append({"root_id": root, "steps": steps})
    return chains


def _read_rounds(out: Location, cfg: Config, manifests: List[dict]):
    """The one pass over the rounds' files: per round its figures, the words of its kept rows, a
    sample of its instructions; round 0 (the seeds, read from round 1) likewise; and the rows of
    the sampled lineages."""
    rc = cfg.report
    lengths: Dict[str, Dict[int, List[np.ndarray]]] = {"instruction": {0: []}, "response": {0: []}}
    samples = {0: runread.Sampler(rc.sample_size, cfg.seed)}
    lineage_pick = runread.Sampler(rc.lineages, cfg.seed, key=C.ROOT_ID)
    lineage_rows: Dict[int, pa.Table] = {}
    roots = pa.array([], pa.string())  # the lineage roots, known once round 1 is read
    per_round = []
    for m in manifests:
        r = m["round"]
        counted = {k: Counter() for k in _COUNTED}
        rows = 0
        samples[r] = runread.Sampler(rc.sample_size, cfg.seed)
        lengths["instruction"][r], lengths["response"][r] = [], []
        picked = []
        for t in runread.read_tables(out, runread.round_files(out, m), _READ):
            rows += t.num_rows
            for k, v in row_counts(t).items():
                counted[k].update(v)
            kept = t.filter(pc.equal(t[C.STATUS], C.KEPT))
            groups = [(r, kept)]
            if r == 1:
                groups.append((0, runread.seeds_of(t)))
                if rc.lineages:
                    lineage_pick.add(t.filter(pc.not_equal(t[C.STATUS], C.INVALID_INPUT)))
            for g, tab in groups:
                lengths["instruction"][g].append(word_counts(tab[C.INSTRUCTION]))
                lengths["response"][g].append(word_counts(tab[C.RESPONSE]))
                samples[g].add(tab.select([C.ID, C.INSTRUCTION]))
            if r > 1 and len(roots):
                picked.append(t.filter(pc.is_in(t[C.ROOT_ID], value_set=roots)))
        if r == 1 and lineage_pick.table is not None:
            lineage_rows[1] = lineage_pick.table
            roots = lineage_pick.table[C.ROOT_ID].combine_chunks()
        elif picked:
            lineage_rows[r] = pa.concat_tables(picked)
        per_round.append(round_figures(m, counted, rows))
    return per_round, lengths, samples, lineage_rows, roots


def _diversity_figures(samples: dict, groups: List[int], cfg: Config) -> dict:
    """Diversity of each group's sampled instructions, every measured group on the same number of
    rows: the smallest group that reaches `min_sample_size` (smaller groups are shown as too few
    rather than shrinking the rest), and the same word budget per text."""
    rc = cfg.report
    drawn = {g: samples[g].result(pa.schema([(C.ID, pa.string()), (C.INSTRUCTION, pa.string())]))
             for g in groups}
    big_enough = [t.num_rows for t in drawn.values() if t.num_rows >= rc.min_sample_size]
    n_equal = min([rc.sample_size] + big_enough) if big_enough else None
    texts = {g: runread.smallest(drawn[g], n_equal, cfg.seed)[C.INSTRUCTION].to_pylist()
             for g in groups if n_equal and drawn[g].num_rows >= n_equal}
    budget = diversity.equal_budget(list(texts.values()))
    div = {str(g): diversity.diversity(texts[g], rc.near_duplicate_threshold,
                                       minhash.params_from(cfg.dedup, cfg.seed), budget)
           if g in texts else None for g in groups}
    return {"sample_size": n_equal, "min_sample_size": rc.min_sample_size, "threshold": rc.near_duplicate_threshold,
            "words_per_text": budget[0], "words_per_sample": budget[1], "by_round": div}


def collect(out: Location, cfg: Config) -> dict:
    """Every figure of the report, as plain data, from one pass over the run's files.
    Raw length arrays are kept under `_lengths` for the plots and left out of the JSON."""
    manifests, missing = runread.round_manifests(out, cfg.evolution.rounds)
    if not manifests:
        raise runread.RunReadError(f"{out.url}: no complete round yet; nothing to report")
    per_round, lengths, samples, lineage_rows, roots = _read_rounds(out, cfg, manifests)
    groups = [0] + [m["round"] for m in manifests]
    raw_lengths = {kind: {g: np.concatenate(v[g]) if v[g] else np.zeros(0, np.int64) for g in groups}
                   for kind, v in lengths.items()}
    shown = sorted(roots.to_pylist(), key=lambda x: runread.sample_key(cfg.seed, x))
    final = layout.read_manifest(out.join(layout.FINAL))
    return {
        "output": out.url,
        "generated": layout.timestamp(),
        "config_hash": manifests[-1].get("config_hash"),
        "rounds": [m["round"] for m in manifests],
        "rounds_configured": cfg.evolution.rounds,
        "rounds_missing": missing,
        "statuses": sorted({s for x in per_round for s in x["status_counts"]}),
        "reasons": sorted({s for x in per_round for s in x["reason_counts"]}),
        "ops": sorted({s for x in per_round for s in x["op_counts"]}),
        "per_round": per_round,
        "lengths": {kind: {str(g): length_stats(v[g]) for g in groups} for kind, v in raw_lengths.items()},
        "diversity": _diversity_figures(samples, groups, cfg),
        "difficulty": _difficulty(out),
        "selected": layout.read_manifest(out.join(layout.SELECTED)),
        "method": sections.method_figures(out),
        "judgement": sections.judgement_figures(out, manifests),
        "lineage": _lineage(lineage_rows, shown),
        "final": None if not final else {"rows": final.get("rows"), "include_seeds": final.get("include_seeds"),
                                          "rounds": final.get("rounds"), "seed_answers": final.get("seed_answers")},
        "_lengths": raw_lengths,
    }


def _difficulty(out: Location) -> Optional[dict]:
    m, t = runread.read_scores(out)
    if m is None:
        return None
    by_round = {}
    for r in m["rounds"]:
        rt = t.filter(pc.equal(t[C.ROUND], r))
        ok = rt[C.DIFFICULTY].drop_null().to_pylist()  # expected scores, 1.0 .. 10.0
        hist = Counter(int(min(10, max(1, round(x)))) for x in ok)
        by_round[str(r)] = {"rows": rt.num_rows, "rated": len(ok), "errors": rt.num_rows - len(ok),
                            "mean": float(np.mean(ok)) if ok else None,
                            "median": float(np.median(ok)) if ok else None,
                            "std": float(np.std(ok)) if ok else None,
                            "histogram": {str(s): hist.get(s, 0) for s in range(1, 11)}}
    return {"model": m.get("model"), "sample_size": m.get("sample_size"), "rounds": m["rounds"],
            "by_round": by_round}


def write_report(out: Location, fig: dict) -> Dict[str, str]:
    """Render `fig` into OUTPUT/report/report.html and figures.json; returns their URLs."""
    images = plots.render_all(fig, fig["_lengths"])
    page = report_html.render_html(fig, images)
    rdir = out.join(layout.REPORT)
    data = {k: v for k, v in fig.items() if not k.startswith("_")}
    data["plots"] = sorted(images)
    commit.begin(rdir)
    files = commit.write_tables({HTML_FILE: page.encode("utf-8"),
                                 JSON_FILE: json.dumps(data, indent=2, sort_keys=True, default=str).encode()}, rdir)
    commit.commit(rdir, {"config_hash": fig.get("config_hash"), "rounds": fig["rounds"]}, files)
    return {"html": rdir.join(HTML_FILE).url, "json": rdir.join(JSON_FILE).url}


def summary_text(fig: dict, paths: Dict[str, str]) -> str:
    lines = [f"evol-ray report: {fig['output']} (rounds {fig['rounds']} of {fig['rounds_configured']})"]
    dif = (fig["difficulty"] or {}).get("by_round", {})
    div = fig["diversity"]["by_round"]
    seed_len = fig["lengths"]["instruction"]["0"]
    lines.append(f"seeds: {seed_len['rows']} rows, instruction words median {seed_len.get('median', '-')}"
                 + _extra(dif.get("0"), div.get("0")))
    lines += sections.judgement_text(fig["judgement"])
    if (au := fig.get("method")) is not None:
        lines.append(f"auto evol: dev-set failure rate {shown(au['initial_failure_rate'], '.0%')} initial -> "
                     f"{shown(au['chosen']['failure_rate'], '.0%')} chosen (optimistic: the set chose it) in "
                     f"{au['steps']} step(s) on {au['dev_size']} dev seeds")
    for x in fig["per_round"]:
        r = str(x["round"])
        gone = ", ".join(f"{k} {v}" for k, v in x["reason_counts"].items()) or "none"
        ln = fig["lengths"]["instruction"][r]
        lines.append(f"round {r}: in {x['rows_in']}, kept {x['kept']} ({x['survival']:.0%}); dropped: {gone}; "
                     f"instruction words median {ln.get('median', '-')}" + _extra(dif.get(r), div.get(r)))
        lines.extend(f"  CHECK round {r}: {p}" for p in x["mismatches"])
    if fig["rounds_missing"]:
        lines.append(f"rounds not complete: {fig['rounds_missing']}")
    if not fig["difficulty"]:
        lines.append("difficulty: not scored (evol-ray score OUTPUT)")
    lines.append(f"report: {paths['html']}")
    lines.append(f"figures: {paths['json']}")
    return "\n".join(lines)


def _extra(dif: Optional[dict], div: Optional[dict]) -> str:
    s = ""
    if dif and dif.get("mean") is not None:
        s += f", difficulty mean {dif['mean']:.2f}"
    if div:
        s += f", distinct-2 {div['distinct_2']:.2f}, near-dup {div['near_duplicate_share']:.0%}"
    return s


def report(url: str, overrides: List[str] = ()) -> str:
    """The whole `evol-ray report` command: read, render, write; returns the text summary."""
    out, cfg = runread.open_run(url, overrides)
    with lease.held(out, cfg.output.wait_for_lease_s) as out:
        fig = collect(out, cfg)
        return summary_text(fig, write_report(out, fig))
