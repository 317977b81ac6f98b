"""`evol-ray export`: the final set as files a trainer reads, with a dataset card.

Formats (one JSON object per line; `messages` also as Parquet):
  alpaca    {"instruction", "input": "", "output"} (+ "system" when `export.system_prompt` is set);
            evol-ray's instruction already holds the seed's input, as WizardLM joined them
  sharegpt  {"conversations": [{"from": "system"?}, {"from": "human"}, {"from": "gpt"}]}
  messages  {"messages": [{"role": "system"?}, {"role": "user"}, {"role": "assistant"}]}
Every row also carries `id`, `round` and `op`, for lineage. A row without an instruction or an
answer is not exported (a trainer must see no empty turn); such rows are counted by reason.

The validation split is drawn per seed lineage (`root_id`), from a hash of (`seed`, root id):
deterministic, and no seed's evolutions sit on both sides of the split.

Written like a round (`evol_ray.io.commit`): files into `_staging/`, moved, `manifest.json`
last; an export without a manifest is never taken for a complete one, and a rerun replaces it.
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Dict, Iterator, List, Optional

import pyarrow as pa
import pyarrow.parquet as pq

from evol_ray import columns as C
from evol_ray import identity
from evol_ray.config import Config, config_hash
from evol_ray.io import commit, layout, lease
from evol_ray.io.storage import Location, locate, remove

FORMATS = ("alpaca", "sharegpt", "messages")
SPLITS = ("train", "validation")
MESSAGES_TYPE = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))
_READ = [C.ID, C.ROOT_ID, C.ROUND, C.OP, C.INSTRUCTION, C.RESPONSE]


class ExportError(ValueError):
    """Nothing to export, or a bad argument; the message names it."""


def record(fmt: str, row: dict, system: Optional[str]) -> dict:
    """One final row -> one training record of `fmt` (lineage fields last)."""
    ins, ans = row[C.INSTRUCTION], row[C.RESPONSE]
    if fmt == "alpaca":
        rec = {"instruction": ins, "input": "", "output": ans}
        if system:
            rec["system"] = system
    elif fmt == "sharegpt":
        turns = [{"from": "system", "value": system}] if system else []
        rec = {"conversations": turns + [{"from": "human", "value": ins}, {"from": "gpt", "value": ans}]}
    else:
        turns = [{"role": "system", "content": system}] if system else []
        rec = {"messages": turns + [{"role": "user", "content": ins}, {"role": "assistant", "content": ans}]}
    rec.update({"id": row[C.ID], "round": row[C.ROUND], "op": row[C.OP]})
    return rec


def split_of(seed: int, root_id: str, val_share: float) -> str:
    """`validation` for about `val_share` of the seed lineages, the same ones on every rerun."""
    return "validation" if identity.unit_float("split", seed, root_id) < val_share else "train"


def skip_reason(row: dict) -> Optional[str]:
    if not (row[C.INSTRUCTION] or "").strip():
        return "empty_instruction"
    if not (row[C.RESPONSE] or "").strip():
        return "empty_answer"  # e.g. a seed without an answer column
    return None


def _rows(out: Location, source: str) -> Iterator[dict]:
    """Rows of `final/`, or of `selected/` (`evol-ray select`'s choice, in its rank order)."""
    src = out.join(source)
    m = layout.read_manifest(src)
    if m is None:
        what = "final set" if source == layout.FINAL else "selection (run `evol-ray select` first)"
        raise ExportError(f"{src.url}: no complete {what} (manifest.json)")
    files = layout.committed_files(src, m)
    if source == layout.SELECTED:
        files = [f for f in files if f.endswith("selected.parquet")]
    for t in layout.read_tables(src, files, _READ):
        yield from t.to_pylist()


def export(out: Location, cfg: Config, fmt: str, dest: Location, val_share: float,
           source: str = layout.FINAL) -> dict:
    """Write the export of `out`'s final set (or its `selected/` rows) to `dest`; returns its
    manifest."""
    if fmt not in FORMATS:
        raise ExportError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if not 0 <= val_share < 1:
        raise ExportError(f"--split {val_share}: expected a share in [0, 1)")
    system = cfg.export.system_prompt
    commit.begin(dest)
    staging = dest.join(layout.STAGING)
    remove(staging)
    dest.fs.makedirs(staging.path, exist_ok=True)
    splits = SPLITS if val_share > 0 else SPLITS[:1]
    jsonl = {s: dest.fs.open(staging.join(f"{s}.jsonl").path, "wb") for s in splits}
    parquet: Dict[str, pq.ParquetWriter] = {}
    batches: Dict[str, List[dict]] = {s: [] for s in splits}
    counts = {s: Counter() for s in splits}  # (round, op) -> rows
    skipped: Counter = Counter()

    def flush(s: str) -> None:
        if fmt == "messages" and batches[s]:
            t = pa.Table.from_pylist(batches[s], schema=_messages_schema())
            if s not in parquet:
                parquet[s] = pq.ParquetWriter(dest.fs.open(staging.join(f"{s}.parquet").path, "wb"), t.schema)
            parquet[s].write_table(t)
        batches[s] = []

    try:
        for row in _rows(out, source):
            why = skip_reason(row)
            if why:
                skipped[why] += 1
                continue
            s = split_of(cfg.seed, row[C.ROOT_ID], val_share) if val_share > 0 else "train"
            rec = record(fmt, row, system)
            jsonl[s].write((json.dumps(rec, ensure_ascii=False) + "\n").encode("utf-8"))
            counts[s][(row[C.ROUND], row[C.OP] or "seed")] += 1
            batches[s].append(rec)
            if len(batches[s]) >= 10_000:
                flush(s)
        for s in splits:
            flush(s)
    finally:
        for f in jsonl.values():
            f.close()
        for w in parquet.values():
            w.close()
    if not sum(sum(c.values()) for c in counts.values()):
        remove(staging)
        raise ExportError(f"{out.join(source).url}: no row with an instruction and an answer to export")
    card = dataset_card(cfg, fmt, counts, skipped, val_share, source)
    with dest.fs.open(staging.join("README.md").path, "wb") as f:
        f.write(card.encode("utf-8"))
    files = commit.move_into(layout_files(dest, staging), dest)
    remove(staging)
    return commit.commit(dest, {
        "format": fmt, "source": out.join(source).url, "config_hash": config_hash(cfg), "seed": cfg.seed,
        "validation_share": val_share, "system_prompt": bool(system),
        "rows": {s: sum(c.values()) for s, c in counts.items()},
        "skipped_counts": dict(sorted(skipped.items())),
    }, files)


def _messages_schema() -> pa.Schema:
    return pa.schema([("messages", MESSAGES_TYPE), ("id", pa.string()), ("round", pa.int32()), ("op", pa.string())])


def layout_files(dest: Location, staging: Location) -> List[str]:
    return sorted(p for p in dest.fs.find(staging.path) if not p.endswith("/"))


def dataset_card(cfg: Config, fmt: str, counts: Dict[str, Counter], skipped: Counter, val_share: float,
                 source: str = layout.FINAL) -> str:
    """README.md of the export: what it is, where it came from, how many rows of which kind."""
    total = Counter()
    for c in counts.values():
        total.update(c)
    by_round = Counter()
    for (r, _), n in total.items():
        by_round[r] += n
    rows = "\n".join(f"| {r} | {op} | {n} |" for (r, op), n in sorted(total.items()))
    split_rows = "\n".join(f"| {s} | {sum(c.values())} |" for s, c in counts.items())
    return f"""# Evol-Instruct data generated with evol-ray

Rows: {"the final set" if source == layout.FINAL else "the rows `evol-ray select` chose (difficulty x answer quality, diverse)"}.
Format: `{fmt}` (JSON Lines{', and Parquet' if fmt == 'messages' else ''}). Load it with
`datasets.load_dataset("json", data_files={{"train": "train.jsonl"{', "validation": "validation.jsonl"' if val_share else ''}}})`.

| split | rows |
|---|---|
{split_rows}

Validation share {val_share} of the seed lineages (drawn from `seed` = {cfg.seed}: a seed and all its
evolutions are on one side). Rows left out (no instruction or no answer): {dict(skipped) or 'none'}.

## Provenance

- Generating model: `{cfg.model.source}`
- Seeds: `{cfg.input.path}`
- Rounds: {cfg.evolution.rounds}; rows by round: {dict(sorted(by_round.items()))} (round 0: the seeds)
- Config hash: `{config_hash(cfg)}` (the run's `config.yaml` and `run.json` hold the full config)

| round | operation | rows |
|---|---|---|
{rows}

## License

The instructions and answers were written by the generating model: its license and terms of use
apply to this data, as do the seeds' own license and terms.
"""


def export_cli(url: str, fmt: str, to: Optional[str], val_share: Optional[float], overrides: List[str],
               selected: bool = False) -> dict:
    """`evol-ray export`: open the run, export to `to` (default OUTPUT/export/FORMAT); the
    validation share is `val_share`, else `export.validation_share`."""
    from evol_ray.analysis.runread import open_run

    out, cfg = open_run(url, overrides)
    dest = locate(to, cfg.storage) if to else out.join("export", f"{fmt}-selected" if selected else fmt)
    share = cfg.export.validation_share if val_share is None else val_share
    source = layout.SELECTED if selected else layout.FINAL
    with lease.held(out, cfg.output.wait_for_lease_s, read_only_ok=to is not None) as out:  # final/ not rewritten meanwhile
        return {**export(out, cfg, fmt, dest, share, source), "dest": dest.url}
