"""The report's plots as PNG bytes, drawn with matplotlib's object API (`Figure`, Agg canvas):
no pyplot, so no global figure state and no display needed.

Each function takes the report's figures (see `report.collect`) and returns one PNG. Colours
follow matplotlib's default cycle; `kept` is always green so survival reads the same everywhere.
"""

from __future__ import annotations

import io
from typing import Dict

import numpy as np
from matplotlib.figure import Figure

from evol_ray import columns as C

KEPT_COLOUR = "#2ca02c"
DPI = 100


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, bbox_inches="tight")
    return buf.getvalue()


def _round_labels(rounds) -> list:
    return [f"round {r}" if int(r) else "seeds" for r in rounds]


def survival(fig_data: dict) -> bytes:
    """Stacked bars per round: kept, then each reason a row was not kept."""
    pr = fig_data["per_round"]
    x = np.arange(len(pr))
    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    bottom = np.zeros(len(pr))
    segments = [("kept", [p["kept"] for p in pr])]
    segments += [(r, [p["reason_counts"].get(r, 0) for p in pr]) for r in fig_data["reasons"]]
    unexplained = [p["rows_in"] - p["kept"] - sum(p["reason_counts"].values()) for p in pr]
    if any(unexplained):
        segments.append(("(no reason)", unexplained))
    colours = iter(c for c in [f"C{i}" for i in range(20)] if c != "C2")  # C2 is kept's green
    for name, values in segments:
        ax.bar(x, values, bottom=bottom, label=name,
               color=KEPT_COLOUR if name == "kept" else next(colours))
        bottom += np.array(values, dtype=float)
    ax.set_xticks(x, _round_labels(p["round"] for p in pr))
    ax.set_ylabel("rows")
    ax.set_title("Rows by round: kept and each elimination reason")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    return _png(fig)


def operations(fig_data: dict) -> bytes:
    """Left: how often each operation was tried per round. Right: the share of it kept."""
    pr, ops = fig_data["per_round"], fig_data["ops"]
    x = np.arange(len(pr))
    fig = Figure(figsize=(11, 4.5))
    left, right = fig.subplots(1, 2)
    bottom = np.zeros(len(pr))
    width = 0.8 / max(len(ops), 1)
    for i, op in enumerate(ops):
        tried = np.array([p["op_counts"].get(op, 0) for p in pr], dtype=float)
        left.bar(x, tried, bottom=bottom, label=op, color=f"C{i}")
        bottom += tried
        rate = [p["op_survival"].get(op, np.nan) for p in pr]
        right.bar(x - 0.4 + width * (i + 0.5), rate, width=width, label=op, color=f"C{i}")
    labels = _round_labels(p["round"] for p in pr)
    left.set_xticks(x, labels)
    left.set_ylabel("attempts")
    left.set_title("Operation mix")
    right.set_xticks(x, labels)
    right.set_ylim(0, 1)
    right.set_ylabel("kept / tried")
    right.set_title("Survival rate by operation")
    right.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize="small")
    return _png(fig)


def lengths(raw: Dict[str, Dict[int, np.ndarray]]) -> bytes:
    """Box plots of words per instruction and per answer, by round (seeds first)."""
    fig = Figure(figsize=(11, 4.5))
    axes = fig.subplots(1, 2)
    for ax, (kind, title) in zip(axes, (("instruction", "Instruction length"), ("response", "Answer length"))):
        groups = sorted(raw[kind])
        data = [raw[kind][g] if len(raw[kind][g]) else np.array([np.nan]) for g in groups]
        ax.boxplot(data, tick_labels=_round_labels(groups), showmeans=True)
        ax.set_ylabel("words")
        ax.set_title(title + " (kept rows)")
    return _png(fig)


def diversity(fig_data: dict) -> bytes:
    """distinct-1, distinct-2 and near-duplicate share by round, on equal-size samples."""
    by = fig_data["diversity"]["by_round"]
    groups = [g for g in sorted(by, key=int) if by[g] is not None]
    x = np.arange(len(groups))
    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    for key, label in (("distinct_1", "distinct-1"), ("distinct_2", "distinct-2"),
                       ("near_duplicate_share", "near-duplicate share")):
        ax.plot(x, [by[g][key] for g in groups], marker="o", label=label)
    ax.set_xticks(x, _round_labels(groups))
    ax.set_ylim(0, 1.05)
    ax.set_title(f"Diversity of instructions ({fig_data['diversity']['sample_size'] or 0} rows per round)")
    ax.legend()
    return _png(fig)


def difficulty(fig_data: dict) -> bytes:
    """Box plot of the 1-10 difficulty scores by round, rebuilt from their histograms."""
    by = fig_data["difficulty"]["by_round"]
    groups = sorted(by, key=int)
    data = [np.repeat(np.arange(1, 11), [by[g]["histogram"][str(s)] for s in range(1, 11)]) for g in groups]
    data = [d if len(d) else np.array([np.nan]) for d in data]
    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    ax.boxplot(data, tick_labels=_round_labels(groups), showmeans=True)
    ax.set_ylim(0.5, 10.5)
    ax.set_ylabel("difficulty (1-10)")
    ax.set_title(f"Difficulty by round, rated by {fig_data['difficulty']['model']}")
    return _png(fig)


def render_all(fig_data: dict, raw_lengths: Dict[str, Dict[int, np.ndarray]]) -> Dict[str, bytes]:
    images = {
        "survival": survival(fig_data),
        "operations": operations(fig_data),
        "lengths": lengths(raw_lengths),
        "diversity": diversity(fig_data),
    }
    if fig_data.get("difficulty"):
        images["difficulty"] = difficulty(fig_data)
    if fig_data.get("method"):
        images["methods"] = methods(fig_data)
    return images


def methods(fig_data: dict) -> bytes:
    """Auto Evol: each candidate's failure rate by step (dots; one never tried is left out), the
    chosen one's (line)."""
    steps = fig_data["method"]["by_step"]
    fig = Figure(figsize=(9, 4.5))
    ax = fig.subplots()
    for s in steps:
        new = [e for e in s["methods"] if e[C.SOURCE] != "incumbent" and e[C.FAILURE_RATE] is not None]
        ax.scatter([s[C.STEP]] * len(new), [e[C.FAILURE_RATE] for e in new], color="C0", alpha=0.6,
                   label="candidate" if s is steps[0] else None)
    best = [next(e[C.FAILURE_RATE] for e in s["methods"] if e[C.CHOSEN]) for s in steps]
    ax.plot([s[C.STEP] for s in steps], best, color=KEPT_COLOUR, marker="o", label="chosen")
    ax.set_xticks([s[C.STEP] for s in steps])
    ax.set_ylim(-0.05, 1.05)
    ax.set_xlabel("optimization step (0 = the initial method)")
    ax.set_ylabel("failure rate on the dev set")
    ax.set_title("Auto Evol-Instruct: candidate methods by step")
    ax.legend()
    return _png(fig)
