"""The report's sections read from outputs other than the rounds: the calibrated LLM decisions
(OUTPUT/judge/, OUTPUT/coherence/: each one's threshold and its accuracy measured on labelled rows it
was not tuned on) with every elimination rule and what it removed, Auto Evol-Instruct's method
(`evolution.auto`, OUTPUT/method/manifest.json: every candidate method of every step with its
failure rate on the dev set, where it came from, why its dev rows failed, and the method the rounds
ran as operation `auto`) and `evol-ray select`'s selection (OUTPUT/selected/). No Ray here."""

from __future__ import annotations

import html
from typing import Callable, List, Optional

from evol_ray import columns as C
from evol_ray.figures import shown
from evol_ray.io import layout
from evol_ray.io.storage import Location


DECISIONS = ("judge", "coherence")


def judgement_figures(out: Location, manifests: List[dict]) -> dict:
    """Each LLM decision's calibration (or the number the user gave: from the round manifests),
    and each elimination rule with what it removed in every round."""
    decisions = {}
    for name in DECISIONS:
        m = layout.read_manifest(out.join(name))
        given = {x.get(f"{name}_threshold") for x in manifests}
        decisions[name] = {k: m.get(k) for k in ("model", "choice_scoring", "labelled_set", "threshold",
                                                  "threshold_from", "rows", "errors", "test", "tune",
                                                  "position", "mean_score", "positive")} if m else \
            {"threshold": sorted(given, key=str)[0] if len(given) == 1 else sorted(given, key=str)}
    from evol_ray.checks.quality import QUALITY_RULES
    from evol_ray.evolve.elimination import CHAIN_RULES

    removed = {}
    for x in manifests:
        for reason, n in x.get("reason_counts", {}).items():
            removed[reason] = removed.get(reason, 0) + n
    rules = [{"name": r.name, "where": r.where, "reads": list(r.reads), "llm": r.judged, "doc": r.doc,
              "removed": {reason: removed.get(reason, 0) for reason in r.reasons}}
             for r in CHAIN_RULES + QUALITY_RULES]
    return {"decisions": decisions, "rules": rules}


def judgement_text(fig: dict) -> List[str]:
    """One line per LLM decision for the terminal."""
    lines = []
    for name, d in fig["decisions"].items():
        if "test" in d:
            t = d["test"]
            lines.append(f"{name}: threshold {d['threshold']:.3f}, on {t['rows']} held-out labelled rows balanced "
                         f"accuracy {shown(t['balanced_accuracy'])}, precision {shown(t['precision'])}, recall "
                         f"{shown(t['recall'])} of {d['positive']}")
        elif d["threshold"] is not None:
            lines.append(f"{name}: threshold {d['threshold']} given, accuracy not measured")
    return lines


def judgement_html(fig: dict, table: Callable) -> str:
    parts = []
    for name, d in fig["decisions"].items():
        if "test" not in d:
            t = d["threshold"]
            parts.append(f"<p><b>{name}</b>: " + ("off." if t is None else
                         f"threshold {html.escape(str(t))} given in the config: not calibrated here, so its "
                         "accuracy for this model is not measured (python bench/judge.py measures it).") + "</p>")
            continue
        t = d["test"]
        flips = (f"; verdicts that flip when the two instructions swap places: {d['position']['share']:.0%}"
                 if d.get("position") else "")
        parts.append(
            f"<p><b>{name}</b> ({html.escape(str(d['model']))}, read by {d['choice_scoring']}): threshold "
            f"{d['threshold']:.3f} ({html.escape(d['threshold_from'])}). Measured on the {t['rows']} labelled rows "
            f"of <code>{html.escape(d['labelled_set'])}</code> it was not tuned on: balanced accuracy "
            f"{shown(t['balanced_accuracy'])}, accuracy {shown(t['accuracy'])}, precision {shown(t['precision'])} and "
            f"recall {shown(t['recall'])} of <i>{d['positive']}</i> (what it eliminates); confusion "
            f"{t['confusion']}{flips}.</p>")
    rows = [[r["name"], r["where"], ", ".join(r["reads"]), "yes" if r["llm"] else "",
             ", ".join(f"{k} {v}" for k, v in r["removed"].items()), r["doc"]] for r in fig["rules"]]
    return "".join(parts) + table(["rule", "runs", "reads", "LLM", "removed (all rounds)", "what it checks"], rows)


def method_figures(out: Location) -> Optional[dict]:
    """The committed method's figures, or None for a run without Auto Evol (or before it ends)."""
    m = layout.read_manifest(out.join(layout.METHOD))
    if m is None:
        return None
    keys = ("op", "recipe", "dev_size", "batch_size", "steps", "candidates", "by_step",
            "initial_failure_rate", C.CHOSEN, "prompt_tokens", "generated_tokens", "wall_seconds")
    return {k: m.get(k) for k in keys}


def _survival(fig: dict, r: Optional[dict]) -> str:
    """Op `auto`'s failure share in the first round: the method on rows that did not choose it."""
    tried = (r or {}).get("op_counts", {}).get(fig["op"], 0)
    if not tried or r.get("round") != 1:
        return ""
    kept = r["op_kept_counts"].get(fig["op"], 0)
    return f"; in round 1 it failed {tried - kept} of {tried} rows ({(tried - kept) / tried:.0%})"


def _start(text: str, limit: int = 120) -> str:
    t = " ".join(text.split())
    return t if len(t) <= limit else t[:limit] + " ..."


def method_html(fig: Optional[dict], table: Callable, img: str, first_round: Optional[dict] = None) -> str:
    """The section's HTML: `table(header, rows)` is the report's table helper, `img` its plot,
    `first_round` the report's figures of the first round (for op `auto`'s survival there)."""
    if not fig:
        return ("<p>Not used: the rounds ran the recipe's operations (set "
                "<code>evolution.auto.enabled=true</code> for Auto Evol-Instruct).</p>")
    chosen = fig[C.CHOSEN]
    rows = [[e[C.STEP], e[C.CANDIDATE], e[C.SOURCE], "step {} #{}".format(*e["origin"]), e[C.FAILURE_RATE],
             e[C.EVALUATED], e[C.FAILED], e[C.ERRORS], "yes" if e[C.CHOSEN] else "",
             ", ".join(f"{k} {v}" for k, v in e["reason_counts"].items()), _start(e[C.METHOD])]
            for s in fig["by_step"] for e in s["methods"]]
    return (f"<p>Operation <code>{html.escape(fig['op'])}</code> ran one method, optimized before round 1 "
            f"in {fig['steps']} step(s) of {fig['candidates']} candidate(s) on a dev set of "
            f"{fig['dev_size']} seeds (mini-batches of {fig['batch_size']}). Failure rate: the share of "
            "dev rows not kept (eliminated by the run's rules, or an engine error); each step keeps "
            "the lowest, a tie going to the method it started from. Initial method "
            f"{shown(fig['initial_failure_rate'], '.0%')}, chosen {shown(chosen[C.FAILURE_RATE], '.0%')} (step {chosen['origin'][0]}, "
            f"candidate {chosen['origin'][1]}): the lowest of several estimates on the set that chose it, so "
            f"optimistic{_survival(fig, first_round)}; {fig['prompt_tokens']:,} prompt and "
            f"{fig['generated_tokens']:,} generated tokens, {fig['wall_seconds']:.0f} s.</p>"
            + table(["step", "candidate", "source", "first proposed", "failure rate", "evaluated", "failed",
                     "errors", "chosen", "reasons", "method (start)"], rows)
            + img + f"<p>The chosen method:</p><pre>{html.escape(chosen[C.METHOD])}</pre>")


def selected_html(m: Optional[dict], table: Callable) -> str:
    """`evol-ray select`'s outcome (OUTPUT/selected/manifest.json), or how to get one."""
    if not m:
        return "<p>Nothing selected: <code>evol-ray select OUTPUT --budget N</code> keeps the best N rows.</p>"
    return (f"<p>{m['selected']} of {m['rows_rated']} rated rows kept (budget {m['budget']}) by difficulty x "
            f"answer quality, rated by <code>{html.escape(str(m['model']))}</code>, near-duplicates at "
            f"MinHash Jaccard &gt;= {m['near_duplicate_threshold']} skipped.</p>"
            + table(["by", "value", "rows"], [["round", k, v] for k, v in m["selected_by_round"].items()]
                     + [["operation", k, v] for k, v in m["selected_by_op"].items()]))


def vllm_cells(v: dict) -> list:
    """A round's vLLM statistics as table cells; "not available" where the engines report none (an
    endpoint whose server has no vLLM /metrics, a benchmark's own engine)."""
    if not v:
        return ["not available"] + [""] * 5
    return [round(v["mean_running"], 1), round(v["mean_waiting"], 1), f"{v['mean_kv_cache_usage']:.0%}",
            shown(v["prefix_cache_hit_rate"], ".0%"), round(v["prompt_tokens_per_s"]), round(v["generated_tokens_per_s"])]


def engine_table(per_round: List[dict]):
    """The report's engine table: header and rows, one per round (`report.round_figures`)."""
    header = ["round", "prompt tokens", "generated tokens", "wall s", "engine start s", "vLLM running (mean)",
              "waiting (mean)", "KV cache use (mean)", "prefix-cache hits", "prompt tok/s", "generated tok/s",
              "engine busy", "requests in flight while sending", "row engine s"]
    return header, [[x["round"], x["prompt_tokens"], x["generated_tokens"], x["wall_seconds"],
                     x["engine_startup_seconds"], *vllm_cells(x.get("vllm") or {}), x["engine_busy_share"],
                     x.get("engine_in_flight_sending"), x["row_engine_seconds"]] for x in per_round]


def seed_answers_text(a: Optional[dict]) -> str:
    """The seeds the run answered, for the final set's line: how many, kept, and why not."""
    if not a or not a.get("unanswered"):
        return ""
    why = ", ".join(f"{k} {v}" for k, v in a["reason_counts"].items())
    return (f"; {a['unanswered']:,} had no answer, {a['kept']:,} answered by the run and kept"
            + (f", left out: {html.escape(why)}" if why else ""))
