"""The report's sections read from outputs other than the rounds: Auto Evol-Instruct's method
(`evolution.auto`, OUTPUT/method/manifest.json: every candidate method of every step with its
failure rate on the dev set, where it came from, why its dev rows failed, and the method the rounds
ran as operation `auto`) and `evol-ray select`'s selection (OUTPUT/selected/). No Ray here."""

from __future__ import annotations

import html
from typing import Callable, Optional

from evol_ray import columns as C
from evol_ray.figures import shown
from evol_ray.io import layout
from evol_ray.io.storage import Location


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
