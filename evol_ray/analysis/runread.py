"""Read what a finished run wrote, and nothing else: its saved config, round manifests, round
Parquet files and scores. Used by `evol-ray report` and `evol-ray score`; never starts Ray.

Round 0 stands for the seeds. They are not copied into the output unless `output.include_seeds`,
so they are read back from round 1, where every attempt carries its seed as `parent_*`.
"""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import pyarrow as pa
import pyarrow.compute as pc
import yaml
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from evol_ray import columns as C
from evol_ray import identity
from evol_ray.config import Config, ConfigError, StorageConfig, load_saved_config
from evol_ray.io import layout
from evol_ray.io.layout import CONFIG_FILE, read_tables, round_files, round_manifests  # noqa: F401
from evol_ray.io.storage import Location, describe_error, locate

MASKED = "***"  # what config.to_container writes in place of a secret


class RunReadError(RuntimeError):
    """The output path does not hold a readable evol-ray run; the message names the path."""


def _storage_from(overrides: Sequence[str]) -> StorageConfig:
    """Storage settings from `storage.*` overrides alone: enough to reach the saved config."""
    items = [o.split(".", 1)[1] for o in overrides if o.startswith("storage.")]
    try:
        node = OmegaConf.merge(OmegaConf.structured(StorageConfig), OmegaConf.from_dotlist(items))
        return OmegaConf.to_object(node)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(f"config key 'storage.{getattr(e, 'full_key', '?')}': "
                          f"{str(getattr(e, 'msg', e)).splitlines()[0]}") from None


def _drop_masked(value):
    """Saved config masks secrets as '***'; passing that on as a credential would be wrong, so
    such keys are dropped and the credentials come from the environment as usual."""
    if isinstance(value, dict):
        return {k: _drop_masked(v) for k, v in value.items() if v != MASKED}
    return value


def open_run(url: str, overrides: Sequence[str] = ()) -> Tuple[Location, Config]:
    """The run at `url` (local or s3://) and its saved config, with `dotted.key=value` overrides
    applied (e.g. `storage.endpoint_url=...`, `score.sample_size=20`)."""
    out = locate(url, _storage_from(overrides))
    try:
        with out.fs.open(out.join(CONFIG_FILE).path, "rb") as f:
            text = f.read().decode()
    except FileNotFoundError:
        raise RunReadError(f"{url}: no {CONFIG_FILE} there; is this the output.path of an evol-ray run?") from None
    except Exception as e:
        raise RunReadError(describe_error(e, url)) from None
    try:
        saved = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        raise RunReadError(f"{out.join(CONFIG_FILE).url}: not valid YAML: {e}") from None
    if "storage" in saved and isinstance(saved["storage"], dict):
        saved["storage"]["options"] = _drop_masked(saved["storage"].get("options") or {})
    cfg = load_saved_config(saved, f"config file {out.join(CONFIG_FILE).url}", overrides)
    return locate(url, cfg.storage), cfg


def seeds_of(round1: pa.Table) -> pa.Table:
    """Round-1 attempts (with `parent_*`, `status`) -> the seeds as round-0 rows: id, root_id,
    round, instruction, response. Blank seeds (status invalid_input) are not seeds of anything,
    and a repeated seed (`duplicate_seed`) is its first copy's seed, already counted."""
    t = round1.filter(pc.and_(pc.not_equal(round1[C.STATUS], C.INVALID_INPUT),
                              pc.not_equal(pc.fill_null(round1[C.REASON], ""), C.R_DUPLICATE_SEED)))
    return pa.table({
        C.ID: t[C.PARENT_ID],
        C.ROOT_ID: t[C.ROOT_ID],
        C.ROUND: pa.array([0] * t.num_rows, pa.int32()),
        C.INSTRUCTION: t[C.PARENT_INSTRUCTION],
        C.RESPONSE: t[C.PARENT_RESPONSE],
    })


def sample_key(seed: int, row_id: str) -> float:
    """Rank of a row in every sample the report and the scorer draw: a hash, never random state,
    so the same rows are drawn on every call and a smaller sample is part of a larger one."""
    return identity.unit_float("report-sample", seed, row_id)


def smallest(table: pa.Table, n: int, seed: int, key: str = C.ID) -> pa.Table:
    """The `n` rows of `table` with the smallest sample key of column `key` (all rows if fewer)."""
    if table.num_rows <= n:
        return table
    keys = pa.array([sample_key(seed, i) for i in table[key].to_pylist()], pa.float64())
    order = pc.sort_indices(keys)[:n]
    return table.take(order)


class Sampler:
    """Keeps the `n` rows with the smallest sample key (of column `key`) of everything fed to it,
    file by file."""

    def __init__(self, n: int, seed: int, key: str = C.ID) -> None:
        self.n, self.seed, self.key = n, seed, key
        self.table: Optional[pa.Table] = None
        self.seen = 0

    def add(self, t: pa.Table) -> None:
        self.seen += t.num_rows
        both = t if self.table is None else pa.concat_tables([self.table, t])
        self.table = smallest(both, self.n, self.seed, self.key)

    def result(self, schema: pa.Schema) -> pa.Table:
        return self.table if self.table is not None else schema.empty_table()


def read_scores(out: Location) -> Tuple[Optional[dict], Optional[pa.Table]]:
    """The scores manifest and table, or (None, None) when the run was never scored."""
    m = layout.read_manifest(out.join(layout.SCORES))
    if m is None:
        return None, None
    files = layout.committed_files(out.join(layout.SCORES), m)
    tables = list(read_tables(out, files, [c.name for c in C.SCORES_SCHEMA]))
    return m, pa.concat_tables(tables) if tables else C.SCORES_SCHEMA.empty_table()
