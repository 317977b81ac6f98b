"""The report's page: `render_html` turns `report.collect`'s figures and `plots`' PNG images into
one self-contained HTML file (tables, inlined images, lineage text; no script, no link), one
helper per section; `table` is the one way a table is drawn (the sections of `sections.py` too).
"""

from __future__ import annotations

import base64
import html
import re
from typing import Dict, List, Optional

from evol_ray.analysis import sections


def table(header: List[str], rows: List[List[object]]) -> str:
    """An HTML table; None shows as "-", numbers with thousands separators."""
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_fmt(c))}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _fmt(v: object) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)


def _img(name: str, png: bytes, alt: str) -> str:
    return (f'<figure><img id="plot-{name}" alt="{html.escape(alt)}" '
            f'src="data:image/png;base64,{base64.b64encode(png).decode()}"><figcaption>{html.escape(alt)}'
            "</figcaption></figure>")


_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f]")


def _short(text: Optional[str], limit: int = 300) -> str:
    """One line of at most `limit` characters; control characters shown as escapes (\\x00), so
    none reaches the page (the caller HTML-escapes the rest)."""
    t = " ".join(_CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text or "").split())
    return t if len(t) <= limit else t[:limit] + " ..."


def _sample_words(dv: dict) -> str:
    if dv["sample_size"] is None:
        return f"no round has {dv['min_sample_size']} kept rows to measure"
    return f"{dv['sample_size']} rows per round"


def _counts_html(pr: List[dict], fig: dict) -> str:
    return table(
        ["round", "rows in", "kept", "survival"] + [f"status: {s}" for s in fig["statuses"]]
        + [f"reason: {s}" for s in fig["reasons"]],
        [[x["round"], x["rows_in"], x["kept"], f"{x['survival']:.0%}"]
         + [x["status_counts"].get(s, 0) for s in fig["statuses"]]
         + [x["reason_counts"].get(s, 0) for s in fig["reasons"]] for x in pr])


def _ops_html(pr: List[dict], fig: dict) -> str:
    return table(["round"] + [f"{op} (kept/tried)" for op in fig["ops"]],
                 [[x["round"]] + [f"{x['op_kept_counts'].get(op, 0)}/{x['op_counts'].get(op, 0)}"
                                  for op in fig["ops"]] for x in pr])


def _lengths_html(fig: dict) -> str:
    return table(["round", "kind", "rows", "mean", "p10", "median", "p90", "max"],
                  [[g, kind, s.get("rows"), s.get("mean"), s.get("p10"), s.get("median"), s.get("p90"), s.get("max")]
                   for kind, by in fig["lengths"].items() for g, s in by.items()])


def _diversity_html(dv: dict) -> str:
    return (f"<p>Rounds with fewer than {dv['min_sample_size']} kept rows (<code>report.min_sample_size</code>) "
           "are not measured. distinct-n: distinct word n-grams over all n-grams, on an equal budget for every "
           f"round: {dv['sample_size']} rows, the first {dv.get('words_per_text')} words of each, "
           f"{dv.get('words_per_sample')} words in all, so that longer texts do not read as less "
           "diverse (the columns 'all' use the whole texts and fall with length alone). "
           "Near-duplicate share: rows of the sample with another row at MinHash Jaccard "
           f">= {dv['threshold']}, with dedup's own signatures.</p>") + table(
                 ["round", "rows", "distinct-1", "distinct-2", "distinct-1 all", "distinct-2 all",
                  "near-duplicate share"],
                 [[g, *([f"(fewer than {dv['min_sample_size']} kept rows)", None, None, None, None, None] if d is None else
                        [d["rows"], d["distinct_1"], d["distinct_2"], d.get("distinct_1_all"),
                         d.get("distinct_2_all"), d["near_duplicate_share"]])]
                  for g, d in dv["by_round"].items()])


def _difficulty_html(dif: Optional[dict], images: Dict[str, bytes]) -> str:
    if dif:
        return (f"<p>Rated by <code>{html.escape(str(dif['model']))}</code>, up to {dif['sample_size']} "
                     "rows per round. Each row's score is its expected value under the rater's "
                     "probabilities of the ten answers 1..10 (each scored as the whole answer, so no "
                     "option is a prefix of another); the columns 1..10 count rows by that score, "
                     "rounded.</p>"
                     + table(["round", "rated", "errors", "mean", "median", "std"] + [str(s) for s in range(1, 11)],
                              [[g, d["rated"], d["errors"], d["mean"], d["median"], d.get("std")]
                               + [d["histogram"][str(s)] for s in range(1, 11)] for g, d in dif["by_round"].items()])
                     + _img("difficulty", images["difficulty"], "Difficulty score by round (0 = seeds)"))
    return ("<p>Not scored yet: run <code>evol-ray score OUTPUT</code> (or set "
            "<code>score.enabled=true</code> for the run), then this report again.</p>")


def _lineage_html(fig: dict) -> str:
    return "".join(
        f"<h3>root {html.escape(c['root_id'][:12])}</h3><pre>"
        + html.escape("\n".join(
            f"round {s['round']}: {s['status']}" + (f" ({s['reason']})" if s["reason"] else "")
            + (f" by {s['op']}" if s["op"] else "") + "\n    " + _short(s["instruction"])
            for s in c["steps"])) + "</pre>" for c in fig["lineage"])


def _warnings_html(pr: List[dict], fig: dict) -> str:
    """What the report found not to add up (manifests against files, rounds not complete)."""
    problems = [f"round {x['round']}: {p}" for x in pr for p in x["mismatches"]]
    if fig["rounds_missing"]:
        problems.insert(0, f"rounds not complete: {fig['rounds_missing']}")
    if not problems:
        return ""
    return '<div class="warn"><b>Check:</b><ul>' + "".join(f"<li>{html.escape(p)}</li>" for p in problems) + "</ul></div>"


def _final_html(final: Optional[dict]) -> str:
    if not final:
        return "<p>No final/ set written yet.</p>"
    return (f"<p>Final training set: {final['rows']:,} rows (seeds included: {final['include_seeds']}"
            f"{sections.seed_answers_text(final.get('seed_answers'))}).</p>")


def render_html(fig: dict, images: Dict[str, bytes]) -> str:
    """One self-contained page: tables, inlined PNG plots and lineage text; no script, no link."""
    pr, dv = fig["per_round"], fig["diversity"]
    lineage = _lineage_html(fig)
    auto_img = _img("methods", images["methods"], "Candidate methods' failure rates on the dev set, by step") \
        if "methods" in images else ""
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>evol-ray report: {html.escape(fig['output'])}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; max-width: 1150px; color: #222; }}
table {{ border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }}
th, td {{ border: 1px solid #ccc; padding: 3px 8px; text-align: right; }}
th {{ background: #f0f0f0; }}
figure {{ margin: 1em 0; }} img {{ max-width: 100%; border: 1px solid #ddd; }}
pre {{ background: #f7f7f7; padding: 0.6em; white-space: pre-wrap; }}
.warn {{ background: #fff3cd; padding: 0.5em 1em; border: 1px solid #e0c060; }}
</style></head><body>
<h1>evol-ray report</h1>
<p>Output <code>{html.escape(fig['output'])}</code>, config {html.escape(str(fig['config_hash']))},
rounds {fig['rounds']} of {fig['rounds_configured']}; generated {fig['generated']}.</p>
{_warnings_html(pr, fig)}{_final_html(fig['final'])}
<h2>Rows by round</h2>{_counts_html(pr, fig)}
{_img("survival", images["survival"], "Rows by round: kept and each elimination reason")}
<h2>Operations</h2>{_ops_html(pr, fig)}
{_img("operations", images["operations"], "Operation mix and survival rate by round")}
<h2>Lengths (words, kept rows; round 0 = seeds)</h2>{_lengths_html(fig)}
{_img("lengths", images["lengths"], "Instruction and answer length by round")}
<h2>Diversity (instructions, {_sample_words(dv)})</h2>{_diversity_html(dv)}
{_img("diversity", images["diversity"], "Diversity by round")}
<h2>Calibrated judgement and the elimination rules</h2>{sections.judgement_html(fig["judgement"], table)}
<h2>Difficulty</h2>{_difficulty_html(fig['difficulty'], images)}
<h2>Auto Evol-Instruct</h2>{sections.method_html(fig.get("method"), table, auto_img, pr[0] if pr else None)}
<h2>Selection</h2>{sections.selected_html(fig.get("selected"), table)}
<h2>Engine</h2>{table(*sections.engine_table(pr))}
<h2>Lineage</h2>{lineage or "<p>No lineage (report.lineages is 0).</p>"}
</body></html>
"""
