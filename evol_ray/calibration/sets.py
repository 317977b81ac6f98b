"""The labelled sets that calibrate the run's LLM decisions, and their split.

Two sets ship with evol-ray, written and labelled for the project (docs/judgement.md):

  data/judge_pairs.jsonl      (parent, evolution) pairs over every operation of the three recipes
                              and Auto Evol's: `Equal` (a failed evolution: a paraphrase, a trivial
                              edit, a reordering, a copy) or `Not Equal` (the operation did its work)
  data/coherence_texts.jsonl  instructions and answers collected from real runs (SmolLM2-135M's
                              mostly incoherent, Qwen2.5-Coder-1.5B's mostly coherent) and labelled
                              by reading them: `coherent` or `incoherent`

A user's own set (`elimination.calibration.judge_pairs`, `.coherence_texts`: a local path or an
s3:// URL) has the same fields. Every line is checked before any engine work; a bad line fails
naming the file, the line and what was expected.

Each set is split in two halves, stratified by label and operation (or role): a row's half is
decided by a hash of its id within its group, so it never depends on the file's order. The
threshold is chosen on the `tune` half and the accuracy the run reports is measured on the `test`
half, on pairs the threshold was not chosen on.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from evol_ray.io.storage import locate

DATA = Path(__file__).resolve().parents[2] / "data"
JUDGE_PAIRS = DATA / "judge_pairs.jsonl"
COHERENCE_TEXTS = DATA / "coherence_texts.jsonl"
EQUAL, NOT_EQUAL = "Equal", "Not Equal"
COHERENT, INCOHERENT = "coherent", "incoherent"
ROLES = ("instruction", "response")
TUNE, TEST = "tune", "test"


class LabelledSetError(ValueError):
    """A labelled set that cannot be read; the message names the file, the line and the key."""


# kind of set -> (required keys, the label's allowed values, the positive label, optional keys)
SHAPES: Dict[str, Tuple[Tuple[str, ...], Tuple[str, ...], str]] = {
    "judge": (("id", "label", "parent", "evolution"), (EQUAL, NOT_EQUAL), EQUAL),
    "coherence": (("id", "label", "role", "context", "text"), (COHERENT, INCOHERENT), INCOHERENT),
}


def default_path(kind: str) -> Path:
    return JUDGE_PAIRS if kind == "judge" else COHERENCE_TEXTS


def read_text(source: Optional[str], kind: str, storage=None) -> Tuple[str, str]:
    """(the set's text, where it came from): `source` (a local path or an s3:// URL, read with
    the run's `storage` settings) or the shipped set of `kind`."""
    if source is None:
        path = default_path(kind)
        if not path.exists():
            raise LabelledSetError(f"the shipped labelled set {path} is missing (an install without evol-ray's "
                                   f"data/ folder?); give your own with elimination.calibration."
                                   f"{'judge_pairs' if kind == 'judge' else 'coherence_texts'}")
        return path.read_text(encoding="utf-8"), str(path)
    from evol_ray.config import StorageConfig

    loc = locate(source, storage or StorageConfig())
    try:
        with loc.fs.open(loc.path, "rb") as f:
            return f.read().decode("utf-8"), loc.url
    except (OSError, UnicodeDecodeError) as e:
        raise LabelledSetError(f"{loc.url}: cannot read the labelled set ({type(e).__name__}: {e})") from None


def parse(text: str, kind: str, where: str) -> List[dict]:
    """The set's rows; each line a JSON object with the keys of its kind (`SHAPES`)."""
    keys, labels, _ = SHAPES[kind]
    rows, seen = [], set()
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise LabelledSetError(f"{where}, line {n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict):
            raise LabelledSetError(f"{where}, line {n}: expected a JSON object with keys {list(keys)}")
        missing = [k for k in keys if not isinstance(row.get(k), str) or not row[k].strip()]
        if missing:
            raise LabelledSetError(f"{where}, line {n}: key(s) {missing} missing or empty; expected "
                                   f"text for every one of {list(keys)}")
        if row["label"] not in labels:
            raise LabelledSetError(f"{where}, line {n}: label {row['label']!r}, expected one of {list(labels)}")
        if kind == "coherence" and row["role"] not in ROLES:
            raise LabelledSetError(f"{where}, line {n}: role {row['role']!r}, expected one of {list(ROLES)}")
        if row["id"] in seen:
            raise LabelledSetError(f"{where}, line {n}: id {row['id']!r} repeats an earlier line's")
        seen.add(row["id"])
        rows.append(row)
    both = {r["label"] for r in rows}
    if len(both) < 2 or len(rows) < 8:
        raise LabelledSetError(f"{where}: {len(rows)} rows with labels {sorted(both)}; a calibration needs "
                               f"at least 8 rows and both labels {list(labels)}")
    return rows


def load(source: Optional[str], kind: str, storage=None) -> Tuple[List[dict], str, str]:
    """(rows, where they came from, digest of the text): what a calibration reads and is keyed by."""
    text, where = read_text(source, kind, storage)
    return parse(text, kind, where), where, hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def positive(row: dict, kind: str) -> bool:
    return row["label"] == SHAPES[kind][2]


def split(rows: Sequence[dict], kind: str) -> Dict[str, List[dict]]:
    """Rows -> {tune: [...], test: [...]}: within each group (label, and operation or role) the
    rows ordered by a hash of their id, then taken in turn: the first to `tune`, the next to
    `test`, and so on."""
    groups: Dict[tuple, List[dict]] = {}
    for r in rows:
        groups.setdefault((r["label"], r.get("op") or r.get("role") or ""), []).append(r)
    out: Dict[str, List[dict]] = {TUNE: [], TEST: []}
    for key in sorted(groups):
        ordered = sorted(groups[key], key=lambda r: hashlib.sha256(r["id"].encode("utf-8")).hexdigest())
        for i, r in enumerate(ordered):
            out[TUNE if i % 2 == 0 else TEST].append(r)
    return out
