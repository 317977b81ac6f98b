"""The driver: check everything cheap first, then run the rounds, each written and committed.

Output layout under `output.path` (local or `s3://`):

    run.json            config hash and the values it covers (a rerun must agree)
    config.yaml         the resolved config, secrets masked
    round_N/            every attempted evolution of round N, kept or not, as Parquet
    round_N/manifest.json   written last: the commit marker, with counts and the file list
    final/              the training set: every kept row of every round (+ seeds if configured)
    final/manifest.json

A round is complete only when its manifest says so; a rerun skips complete rounds and redoes the
rest. Round data is written to `round_N/_staging/` and moved into place before the manifest.
"""

from __future__ import annotations

import logging
import posixpath
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Dict, List, Optional

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import ray

from evol_ray import cleanup
from evol_ray import columns as C
from evol_ray import config as config_mod
from evol_ray import pool as pool_mod
from evol_ray import seeds as seeds_mod
from evol_ray import stage as stage_mod
from evol_ray.config import Config
from evol_ray.storage import Location, describe_error, list_files, locate, read_json, remove, write_json

log = logging.getLogger("evol_ray")

MANIFEST = "manifest.json"
RUN_FILE = "run.json"


class RunError(RuntimeError):
    """A problem that stops the run, with a message meant for the user."""


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def round_dir(out: Location, round_no: int) -> Location:
    return out.join(f"round_{round_no}")


def read_manifest(loc: Location) -> Optional[dict]:
    m = read_json(loc.join(MANIFEST))
    return m if m and m.get("complete") else None


def prepare_output(cfg: Config, out: Location) -> None:
    """Refuse to mix two configs in one output path, unless `output.start_over` is set."""
    saved = read_json(out.join(RUN_FILE))
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
    write_json(out.join(RUN_FILE), {
        "config_hash": config_mod.config_hash(cfg),
        "result_values": config_mod.result_values(cfg),
        "created": (saved or {}).get("created", _now()),
    })
    with out.fs.open(out.join("config.yaml").path, "w") as f:
        f.write(config_mod.to_yaml(cfg))


def count_files(loc: Location, files: List[str]) -> Dict[str, object]:
    """Counts of a round's written files: read back from storage, never by re-running the stage."""
    cols = [C.STATUS, C.REASON, C.OP, C.PROMPT_TOKENS, C.GENERATED_TOKENS, C.ENGINE_SECONDS]
    status, reason, op, op_kept = Counter(), Counter(), Counter(), Counter()
    prompt_tokens = generated_tokens = 0
    engine_seconds = 0.0
    rows = 0
    for path in files:
        with loc.fs.open(path, "rb") as f:
            t = pq.read_table(f, columns=cols)
        rows += t.num_rows
        d = t.to_pydict()
        status.update(d[C.STATUS])
        reason.update(r for r in d[C.REASON] if r)
        op.update(o for o in d[C.OP] if o)
        op_kept.update(o for o, s in zip(d[C.OP], d[C.STATUS]) if o and s == C.KEPT)
        prompt_tokens += sum(x or 0 for x in d[C.PROMPT_TOKENS])
        generated_tokens += sum(x or 0 for x in d[C.GENERATED_TOKENS])
        engine_seconds += sum(x or 0.0 for x in d[C.ENGINE_SECONDS])
    return {
        "rows": rows,
        "status_counts": dict(sorted(status.items())),
        "reason_counts": dict(sorted(reason.items())),
        "op_counts": dict(sorted(op.items())),
        "op_kept_counts": dict(sorted(op_kept.items())),
        "prompt_tokens": prompt_tokens,
        "generated_tokens": generated_tokens,
        "row_engine_seconds": engine_seconds,
    }


def _write_committed(ds: ray.data.Dataset, dest: Location, cfg: Config) -> List[str]:
    """Write `ds` to `dest/_staging`, then move the files into `dest`. Returns their paths."""
    staging = dest.join("_staging")
    remove(staging)
    ds.write_parquet(staging.path, filesystem=dest.arrow_fs, max_rows_per_file=cfg.output.rows_per_file)
    files = []
    for src in list_files(staging):
        dst = posixpath.join(dest.path, posixpath.basename(src))
        dest.fs.mv(src, dst)
        files.append(dst)
    remove(staging)
    return sorted(files)


def read_parquet(paths: List[str], fs) -> ray.data.Dataset:
    """Ray Data's V1 Parquet reader. The V2 reader, the default in Ray 2.60, starts 32 footer
    reading actors for every read (`RAY_DATA_PARQUET_FOOTER_NUM_ACTORS`); a round reads its files
    back several times, and on a 2-CPU node each read of a few files took 1.3-2.4 s instead of
    0.3-0.4 s. Our reads name their files, so there is nothing for V2's listing to scale out."""
    ctx = ray.data.DataContext.get_current()
    before = ctx.use_datasource_v2
    ctx.use_datasource_v2 = False
    try:
        return ray.data.read_parquet(list(paths), filesystem=fs)
    finally:
        ctx.use_datasource_v2 = before


def read_files(loc: Location, files: List[str]) -> ray.data.Dataset:
    return read_parquet(files, loc.arrow_fs)


def read_seeds(cfg: Config, urls: List[str], fmt: str, cols: List[str]) -> ray.data.Dataset:
    fs = locate(cfg.input.path, cfg.storage).arrow_fs
    paths = [u.split("://", 1)[1] if "://" in u else u for u in urls]
    if fmt == "parquet":
        ds = read_parquet(paths, fs).select_columns(cols)
    else:
        # pyarrow reads JSON Lines; a JSON array falls back to json.load in the same reader.
        ds = ray.data.read_json(paths, filesystem=fs)
    if cfg.input.limit:
        ds = ds.limit(cfg.input.limit)
    return ds.map_batches(seeds_mod.to_pool, fn_kwargs={"ic": cfg.input}, batch_format="pyarrow",
                          batch_size=None)


def choose_device(cfg: Config) -> str:
    if cfg.engine.device != "auto":
        return cfg.engine.device
    return "gpu" if ray.cluster_resources().get("GPU", 0) > 0 else "cpu"


def readable_parts(loc: Location) -> List[str]:
    """Parquet files under `loc` whose footer reads; a file cut short by a crash is removed (its
    rows were never counted, so they are simply sent to the engine again)."""
    good = []
    for path in list_files(loc):
        try:
            with loc.fs.open(path, "rb") as f:
                pq.read_metadata(f)
            good.append(path)
        except Exception:
            log.warning("removing unreadable partial file %s", loc.url_of(path))
            loc.fs.rm(path)
    return good


def done_ids(loc: Location, files: List[str]) -> pa.Array:
    """Pool ids that already have an attempt in `files` (the `parent_id` column)."""
    ids = []
    for path in files:
        with loc.fs.open(path, "rb") as f:
            ids.append(pq.read_table(f, columns=[C.PARENT_ID]).column(C.PARENT_ID).combine_chunks())
    return pa.concat_arrays(ids).unique() if ids else pa.array([], pa.string())


def without_ids(batch: pa.Table, ids: pa.Array) -> pa.Table:
    """Pool rows whose id is not in `ids` (reads `id`)."""
    if len(ids) == 0:
        return batch
    return batch.filter(pc.invert(pc.is_in(batch[C.ID], value_set=ids)))


def post_round(ds: ray.data.Dataset, cfg: Config, out: Location, round_no: int,
               seeds: Optional[ray.data.Dataset] = None, manifests: List[dict] = ()) -> Optional[ray.data.Dataset]:
    """CPU stages run on a round's attempts before it is committed (dedup, quality filters).
    They may change `status` and `reason` of rows, never drop one. None: no stage configured.
    Dedup compares against `seeds` and the rounds of `manifests` (the earlier ones)."""
    earlier = [read_files(round_dir(out, m["round"]),
                          [posixpath.join(round_dir(out, m["round"]).path, f) for f in m["files"]])
               for m in manifests]
    return cleanup.round_checks(ds, cfg, seeds, earlier)


def run_round(cfg: Config, out: Location, round_no: int, pool: ray.data.Dataset, device: str,
              expected_rows: Optional[int], seeds: Optional[ray.data.Dataset] = None,
              manifests: List[dict] = ()) -> dict:
    """One round in two phases, each safe to run again:

    1. engine: pool rows without an attempt in `round_N/_attempts/` go through the engine stage,
       whose output Ray Data writes there block by block; after a crash, a rerun finds the
       finished blocks and sends only the missing rows to the engine again;
    2. commit: the attempts pass the CPU stages (if any) into `round_N/`, then the manifest is
       written last, then `_attempts/` is removed.
    """
    rdir = round_dir(out, round_no)
    attempts_dir = rdir.join("_attempts")
    for path in rdir.fs.ls(rdir.path, detail=False) if rdir.fs.exists(rdir.path) else []:
        if posixpath.basename(path.rstrip("/")) != "_attempts":
            rdir.fs.rm(path, recursive=True)  # a half-committed round is never taken for a finished one
    started = time.monotonic()
    earlier = readable_parts(attempts_dir)
    resumed_ids = done_ids(attempts_dir, earlier)
    if len(resumed_ids):
        log.info("round %d: resuming, %d rows already have a result", round_no, len(resumed_ids))
    stats = stage_mod.start_engine_stats(round_no)
    todo = pool.map_batches(without_ids, fn_kwargs={"ids": resumed_ids}, batch_format="pyarrow",
                            batch_size=None)
    attempts = stage_mod.evolve(todo, cfg, round_no, device, stats)
    attempts.write_parquet(attempts_dir.path, filesystem=out.arrow_fs,
                           max_rows_per_file=cfg.output.rows_per_file)
    engines = stage_mod.summarize_engines(ray.get(stats.get.remote()))
    ray.kill(stats)
    engine_done = time.monotonic()

    parts = readable_parts(attempts_dir)
    counts = count_files(attempts_dir, parts)
    if expected_rows is not None and counts["rows"] != expected_rows:
        raise RunError(f"round {round_no}: {counts['rows']} attempts for {expected_rows} input rows; "
                       f"the round is left uncommitted in {attempts_dir.url}")
    post = post_round(read_files(attempts_dir, parts), cfg, out, round_no, seeds, manifests)
    if post is None:
        files = []
        for src in parts:
            dst = posixpath.join(rdir.path, posixpath.basename(src))
            rdir.fs.mv(src, dst)
            files.append(dst)
    else:
        files = _write_committed(post, rdir, cfg)
        counts = count_files(rdir, files)
    manifest = {
        "round": round_no,
        "complete": True,
        "config_hash": config_mod.config_hash(cfg),
        "rows_in": counts["rows"],
        "rows_kept": counts["status_counts"].get(C.KEPT, 0),
        "rows_resumed": len(resumed_ids),
        **{k: v for k, v in counts.items() if k != "rows"},
        "wall_seconds": round(time.monotonic() - started, 3),
        # engine phase: from the round's start (actors launched, engines starting) to the last
        # attempt written; commit phase: CPU checks (dedup, quality), files moved, manifest.
        "phase_seconds": {"engine": round(engine_done - started, 3),
                          "commit": round(time.monotonic() - engine_done, 3)},
        "engine": engines,
        "device": device,
        "files": sorted(posixpath.relpath(f, rdir.path) for f in files),
        "finished": _now(),
    }
    write_json(rdir.join(MANIFEST), manifest)
    remove(attempts_dir)
    return manifest


def pool_after(out: Location, round_no: int, manifest: dict) -> ray.data.Dataset:
    rdir = round_dir(out, round_no)
    files = [posixpath.join(rdir.path, f) for f in manifest["files"]]
    return read_files(rdir, files).map_batches(pool_mod.next_pool, batch_format="pyarrow", batch_size=None)


def pool_size_after(manifest: dict) -> int:
    return manifest["rows_in"] - manifest["status_counts"].get(C.INVALID_INPUT, 0)


def write_final(cfg: Config, out: Location, manifests: List[dict], seeds: ray.data.Dataset) -> dict:
    final = out.join("final")
    remove(final)
    parts = []
    if cfg.output.include_seeds:
        parts.append(seeds.map_batches(pool_mod.seed_rows, batch_format="pyarrow", batch_size=None))
    for m in manifests:
        rdir = round_dir(out, m["round"])
        files = [posixpath.join(rdir.path, f) for f in m["files"]]
        parts.append(read_files(rdir, files).map_batches(pool_mod.final_rows, batch_format="pyarrow",
                                                         batch_size=None))
    ds = parts[0].union(*parts[1:]) if len(parts) > 1 else parts[0]
    removed: Counter = Counter()
    removed_files: List[str] = []
    checked = cleanup.final_checks(ds, cfg)  # final dedup / quality, per config
    if checked is not None:
        # rows the final checks reject are left out of the training set, never lost: written
        # with their reason to final/_removed/ and counted in the manifest
        gone = final.join("_removed")
        removed_files = _write_committed(
            checked.map_batches(cleanup.removed_rows, batch_format="pyarrow", batch_size=None), gone, cfg)
        for f in removed_files:
            with final.fs.open(f, "rb") as fh:
                removed.update(pq.read_table(fh, columns=[C.REASON]).column(C.REASON).to_pylist())
        ds = checked.map_batches(pool_mod.final_rows, batch_format="pyarrow", batch_size=None)
    files = _write_committed(ds, final, cfg)
    rows = 0
    for f in files:
        with final.fs.open(f, "rb") as fh:
            rows += pq.read_metadata(fh).num_rows
    manifest = {
        "complete": True,
        "config_hash": config_mod.config_hash(cfg),
        "rows": rows,
        "rounds": [m["round"] for m in manifests],
        "include_seeds": cfg.output.include_seeds,
        "files": [posixpath.relpath(f, final.path) for f in files],
        "removed_counts": dict(sorted(removed.items())),
        "removed_files": [posixpath.relpath(f, final.path) for f in removed_files],
        "finished": _now(),
    }
    write_json(final.join(MANIFEST), manifest)
    return manifest


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

    if not ray.is_initialized():
        ray.init(address=cfg.ray.address or None, log_to_driver=True)
    device = choose_device(cfg)
    log.info("evol-ray: %d seed file(s), engine on %s, %d round(s) into %s",
             len(urls), device, cfg.evolution.rounds, out.url)

    seeds = read_seeds(cfg, urls, fmt, cols)
    pool = seeds
    expected: Optional[int] = None
    manifests: List[dict] = []
    redone = False  # once a round is redone, later rounds built on the old one are redone too
    for r in range(1, cfg.evolution.rounds + 1):
        m = None if redone else read_manifest(round_dir(out, r))
        if m is not None and m.get("config_hash") == config_mod.config_hash(cfg):
            log.info("round %d: complete in %s, skipped", r, out.url)
        else:
            m = run_round(cfg, out, r, pool, device, expected, seeds, manifests)
            redone = True
        manifests.append(m)
        expected = pool_size_after(m)
        pool = pool_after(out, r, m)
    final = write_final(cfg, out, manifests, seeds)
    summary = {"output": out.url, "rounds": manifests, "final": final}
    if cfg.score.enabled:
        from evol_ray.score import score_run

        summary["scores"] = score_run(cfg, out)
    return summary


def format_summary(summary: dict) -> str:
    lines = [f"evol-ray: output in {summary['output']}"]
    for m in summary["rounds"]:
        eng = m.get("engine") or {}
        busy = f", engine busy {eng['busy_share']:.0%} (mean {eng['mean_in_flight']:.1f} in flight)" if eng else ""
        reasons = ", ".join(f"{k}={v}" for k, v in m["reason_counts"].items()) or "none"
        lines.append(
            f"round {m['round']}: in {m['rows_in']}, kept {m['rows_kept']}, "
            f"statuses {m['status_counts']}, reasons: {reasons}; "
            f"{m['generated_tokens']} tokens generated in {m['wall_seconds']:.1f}s{busy}"
        )
    lines.append(f"final: {summary['final']['rows']} rows")
    if summary.get("scores"):
        lines.append(f"scores: {summary['scores']['rows']} rated; `evol-ray report {summary['output']}` plots them")
    return "\n".join(lines)
