"""What a run's result depends on: the flattened config values that change what it produces, and
their hash. A rerun into an output path must agree on them (`run.json`); a round, the final set
and the scores are reused only when their manifest's `config_hash` matches. `config.py`
re-exports these names (`config.config_hash`, ...); this module reads a loaded `Config` only.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING, Any, Dict, List

from omegaconf import OmegaConf

from evol_ray.evolve import prompts
from evol_ray.schema import threshold_of

if TYPE_CHECKING:
    from evol_ray.schema import Config

# Sections whose values change what a run produces. A rerun into an existing output path must
# agree on these; engine sizing, storage and Ray address may change between attempts.
RESULT_SECTIONS = ("seed", "input", "model", "evolution", "elimination", "output.include_seeds",
                   "dedup", "quality")
# Keys inside those sections that only size the work, never change its result.
SIZING_KEYS = ("dedup.partitions",)
# Keys that never change a committed round's rows: how many rounds follow a round (rounds 1..N do
# not depend on it) and whether the seeds join the final set (`final/` is rebuilt by every run
# from the rounds it covers). A run extends or shrinks by changing them. Hashed until this
# change: `legacy_hash` gives the hash such a run was written under.
UNHASHED_KEYS = ("evolution.rounds", "output.include_seeds")
# Thresholds that are "auto" or a number: a number is a result value (as a float, so a run written
# when the key was a float hashes the same); "auto" is left out, since the number the run
# calibrates is recorded in every round manifest and a committed round is reused only under the
# same one (`pipeline/calibrate.py`). The labelled sets that calibrate them likewise.
THRESHOLD_KEYS = ("elimination.judge_threshold", "elimination.coherence.threshold")
CALIBRATION_SECTION = "elimination.calibration."
# Keys added after runs were first hashed, with the value that does what those runs did: at that
# value they are left out of the hash, so a run written before them still resumes.
LATER_KEYS = {"evolution.recipe": "general", "evolution.templates.downward": None,
              "elimination.code_answer": False, "elimination.math_answer": False,
              "elimination.lost_input": False, "elimination.language_drift": False,
              "elimination.coherence.enabled": False, "elimination.judge_both_orders": False}


def result_values(cfg: Config) -> Dict[str, Any]:
    """The flattened `key -> value` map of everything that changes what a run produces."""
    data = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)  # no secret is a result key
    flat: Dict[str, Any] = {}
    for section in RESULT_SECTIONS:
        node: Any = data
        for part in section.split("."):
            node = node[part]
        _flatten(section, node, flat)
    for key in SIZING_KEYS + UNHASHED_KEYS:
        flat.pop(key, None)
    if flat.get("input.encoding") == "auto":  # what every run before `auto` read: UTF-8, no mark
        flat["input.encoding"] = "utf-8"
    for key in THRESHOLD_KEYS:
        number = threshold_of(flat.pop(key))
        if number is not None:
            flat[key] = number
    if not cfg.elimination.coherence.enabled:  # its other keys change nothing while it is off
        flat = {k: v for k, v in flat.items() if not k.startswith("elimination.coherence.") or k.endswith(".enabled")}
    flat = {k: v for k, v in flat.items() if not k.startswith(CALIBRATION_SECTION)}
    if cfg.engine.backend != "vllm":  # the endpoint's model wrote the rows (absent for vllm: hashes stay)
        flat["engine.backend"] = cfg.engine.backend
        flat["engine.endpoint.model"] = cfg.engine.endpoint.model
    for key, value in LATER_KEYS.items():
        if key in flat and flat[key] == value:
            del flat[key]
    # Auto Evol's keys change nothing while it is off; while on, they make the `auto` method,
    # which the run writes into the rounds' copy of the config only.
    off = not cfg.evolution.auto.enabled
    return {k: v for k, v in flat.items() if not (k.startswith("evolution.auto.") if off
                                                  else k == f"evolution.templates.methods.{prompts.AUTO_OP}")}


def _flatten(prefix: str, node: Any, out: Dict[str, Any]) -> None:
    if isinstance(node, dict):
        for k, v in node.items():
            _flatten(f"{prefix}.{k}", v, out)
    else:
        out[prefix] = node


def config_hash(cfg: Config) -> str:
    blob = json.dumps(result_values(cfg), sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def legacy_hash(cfg: Config, saved: Dict[str, Any]) -> str:
    """The hash `cfg` had when `UNHASHED_KEYS` were hashed, with their values from `saved` (a
    run.json's `result_values`): a run written then is this run when the hashes agree."""
    values = {**result_values(cfg), **{k: saved[k] for k in UNHASHED_KEYS if k in saved}}
    return hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differing_keys(saved: Dict[str, Any], cfg: Config) -> List[str]:
    now = result_values(cfg)
    return sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k) and k not in UNHASHED_KEYS)
