"""Typed configuration: the schema's dataclasses (`evol_ray.schema`) merged from YAML files and dotted
overrides, checked once at load so that a wrong key, type or value fails before Ray starts, naming
the key. Every other module imports the config's names from here.
"""

from __future__ import annotations

import copy
import dataclasses
import re
from pathlib import Path
from typing import Any, Optional, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from evol_ray.config_checks import BACKENDS, ConfigError, validate
from evol_ray.run_key import LATER_KEYS, config_hash, differing_keys, legacy_hash, result_values  # noqa: F401 (callers use config.*)
from evol_ray.evolve import prompts, recipes
from evol_ray.schema import (  # noqa: F401 (the schema's names are imported from here)
    InputConfig, OutputConfig, StorageConfig, ModelConfig, EndpointConfig, EngineConfig,
    SamplingConfig, TemplatesConfig, AutoTemplatesConfig, AutoConfig, EvolutionConfig, CalibrationConfig,
    CoherenceConfig, EliminationConfig, ScoreConfig, ReportConfig, DedupConfig, LengthRule,
    RefusalRule, RepeatRule, Switch, QualityConfig, RayConfig, SelectConfig,
    ExportConfig, Config, AUTO, threshold_of)


_SECRET_KEY = re.compile(r"(secret|password|token|credential|session|(^|_)key($|_))", re.I)


def load_config(args: Sequence[str | Path] = ()) -> Config:
    """Merge the defaults with each argument in order, later ones winning: a YAML file path, or a
    `dotted.key=value` override. Then validate."""
    cfg = OmegaConf.structured(Config)
    for arg in args:
        item = str(arg)
        if "=" in item and not item.endswith((".yaml", ".yml")):
            cfg = _merge(cfg, OmegaConf.from_dotlist([item]), f"override {item!r}")
            continue
        try:
            loaded = OmegaConf.load(item)
        except FileNotFoundError:
            raise ConfigError(f"config file {item}: not found") from None
        except Exception as e:  # yaml errors carry line and column
            raise ConfigError(f"config file {item}: not valid YAML: {e}") from None
        cfg = _merge(cfg, loaded, f"config file {item}")
    return _finish(cfg, "config")


def _finish(cfg: DictConfig, source: str) -> Config:
    """Derived defaults, then the typed object, then the value checks. With an OpenAI-compatible
    endpoint, `model.source` names the endpoint's model unless set (the report and the manifests
    name the model that wrote the rows)."""
    if cfg.engine.backend not in BACKENDS:  # before model.source, which depends on it
        raise ConfigError(f"config key 'engine.backend': got {cfg.engine.backend!r}, allowed: {', '.join(BACKENDS)}")
    if cfg.engine.backend == "openai" and OmegaConf.is_missing(cfg.model, "source") \
            and cfg.engine.endpoint.model:
        cfg.model.source = cfg.engine.endpoint.model
    try:
        obj: Config = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, source)) from None
    _fill_prompts(obj)
    if obj.evolution.recipe not in recipes.RECIPES:
        raise ConfigError(f"config key 'evolution.recipe': got {obj.evolution.recipe!r}, allowed: "
                          f"{', '.join(recipes.RECIPES)}")
    recipes.resolve(obj)
    validate(obj)
    return obj


# Keys that moved: old name -> (new name, old value -> new value). A run's saved config is
# migrated; a user's file or override naming the old key is told the new one.
MOVED_KEYS = {"engine.endpoint.choice_scoring": ("engine.choice_scoring", {"logprobs": "whole_answer"}),
              "engine.endpoint.send_seed": ("engine.request_seeds", {})}


def _fill_prompts(obj: Config) -> None:
    """The prompt texts the schema leaves null (it imports nothing of the project): the project's
    own, from `evolve/prompts.py`. A text given (a file, an override, a saved run) is kept."""
    auto, el = obj.evolution.auto.templates, obj.elimination
    for node, key, text in ((auto, "method", prompts.INITIAL_METHOD), (auto, "analysis", prompts.ANALYSIS_TEMPLATE),
                            (auto, "optimizer", prompts.OPTIMIZER_TEMPLATE),
                            (el.coherence, "template", prompts.COHERENCE_TEMPLATE),
                            (el, "judge_template", prompts.JUDGE_TEMPLATE),
                            (el, "copied_phrases", list(prompts.COPIED_PROMPT_PHRASES)),
                            (obj.score, "template", prompts.DIFFICULTY_TEMPLATE),
                            (obj.select, "quality_template", prompts.QUALITY_TEMPLATE)):
        if getattr(node, key) is None:
            setattr(node, key, text)


# Keys replaced by one of another meaning: old name -> (new name, what to set it to).
REPLACED_KEYS = {"engine.batches_in_flight": (
    "engine.rows_in_flight", "the rows whose chains run at once per engine: engine.batch_size x the old value")}


def _migrate(saved: dict) -> dict:
    saved = copy.deepcopy(saved)
    engine = saved.get("engine")
    if isinstance(engine, dict) and "batches_in_flight" in engine:  # rows in flight were a product
        batches = engine.pop("batches_in_flight")
        engine.setdefault("rows_in_flight", int(batches) * int(engine.get("batch_size", 64)))
    for old, (new, values) in MOVED_KEYS.items():
        *path, last = old.split(".")
        node = saved
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if isinstance(node, dict) and last in node:
            value = node.pop(last)
            *npath, nlast = new.split(".")
            target = saved
            for part in npath:
                target = target.setdefault(part, {})
            target.setdefault(nlast, values.get(value, value))
    return saved


def load_saved_config(saved: dict, source: str, overrides: Sequence[str] = ()) -> Config:
    """A run's saved config (the dict of its config.yaml, read from `source`) under the current
    defaults, then `dotted.key=value` overrides; validated like `load_config`."""
    cfg = _merge(OmegaConf.structured(Config), OmegaConf.create(_migrate(saved)), source)
    for item in overrides:
        cfg = _merge(cfg, OmegaConf.from_dotlist([item]), f"override {item!r}")
    return _finish(cfg, source)


def _merge(cfg: DictConfig, other: Any, source: str) -> DictConfig:
    try:
        return OmegaConf.merge(cfg, other)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(_describe(e, source)) from None


def _describe(e: OmegaConfBaseException, source: str) -> str:
    key = getattr(e, "full_key", None) or "?"
    msg = str(getattr(e, "msg", e)).split("\n")[0]
    if key in REPLACED_KEYS:
        new, how = REPLACED_KEYS[key]
        return f"{source}: config key '{key}' was replaced by '{new}' ({how})"
    if key in MOVED_KEYS:
        new, values = MOVED_KEYS[key]
        renamed = ", ".join(f"{a} is now {b}" for a, b in values.items())
        return f"{source}: config key '{key}' moved to '{new}'" + (f" ({renamed})" if renamed else "")
    if "missing mandatory value" in msg.lower():
        msg = "is required but not set"
    elif msg.startswith("Key ") and " not in " in msg:
        node = OmegaConf.structured(Config)
        parent = key.rsplit(".", 1)[0] if "." in key else ""
        sub = OmegaConf.select(node, parent) if parent else node
        if isinstance(sub, DictConfig):
            msg = f"unknown key; allowed here: {', '.join(str(k) for k in sub.keys())}"
    return f"{source}: config key '{key}': {msg}"


def model_named(cfg: Config, source: Optional[str]) -> ModelConfig:
    """The run's model settings, with another model `source` (and that model's own tokenizer)
    when one is given (`score.model`, `select.model`, `select.embedding_model`)."""
    if source is None:
        return cfg.model
    return dataclasses.replace(cfg.model, source=source, tokenizer=None)


def to_container(cfg: Config, redact: bool = True) -> dict:
    """A plain dict of the config; secrets under storage.options are masked unless redact=False."""
    data = OmegaConf.to_container(OmegaConf.structured(cfg), resolve=True)
    if redact:
        data["storage"]["options"] = _redact(data["storage"]["options"])
    return data  # type: ignore[return-value]


def _redact(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: ("***" if _SECRET_KEY.search(str(k)) else _redact(v)) for k, v in value.items()}
    return value


def to_yaml(cfg: Config) -> str:
    return OmegaConf.to_yaml(to_container(cfg))
