"""Will the engines start? Checked on the driver before any engine starts, so a problem is one
message naming its key, not a failure deep in an engine actor's log:

- `check_engine_source`: the model can be had (a named model fetched once into the cache,
  `models.check_source`) or, with `engine.backend=openai`, the endpoint answers one request;
- `prepare_models`: the same for every model the run and its scorer will load;
- `check_cpu_engine`: on the CPU build, the KV cache (`engine.cpu_kv_cache_gib`, a fixed size)
  holds one whole sequence of `model.max_model_len` tokens: 2 (keys and values) x layers x KV
  heads x head size x bytes per value for each token; the message names a size that works.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Optional

from evol_ray.config import Config, ModelConfig
from evol_ray.config_checks import ConfigError
from evol_ray.engine import models

_DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2}


def check_engine_source(cfg: Config) -> None:
    """Before Ray starts: the vllm backend's models fetched and loadable (`prepare_models`); the
    openai backend's endpoint answering with the model (`openai_client.preflight`)."""
    if cfg.engine.backend == "openai":
        from evol_ray.engine.openai_client import preflight

        preflight(cfg)
    else:
        prepare_models(cfg)


def prepare_models(cfg: Config) -> None:
    """Fetch named models that are not cached yet, then check every model source can be loaded."""
    for key, source in (("model.source", cfg.model.source), ("score.model", cfg.score.model)):
        if source is None:
            continue
        if source in models.KNOWN and not models.is_fetched(source):
            models.fetch(source)
        models.check_source(source, key)


def _model_config(model: ModelConfig) -> Optional[dict]:
    """The model's local config.json, or None (a hub id not in the local cache, no such file)."""
    try:
        path = Path(models.resolve_source(model.source, fetch_missing=False)) / "config.json"
        return json.loads(path.read_text())
    except (OSError, ValueError, models.ModelSourceError):
        return None


def kv_bytes_per_token(model: ModelConfig) -> Optional[int]:
    """KV cache bytes per token of the model; None when its config cannot be read or is of an
    unusual architecture."""
    c = _model_config(model)
    try:
        layers, heads = c["num_hidden_layers"], c["num_attention_heads"]
        kv_heads = c.get("num_key_value_heads") or heads
        head_dim = c.get("head_dim") or c["hidden_size"] // heads
    except (KeyError, TypeError):
        return None
    dtype = model.dtype if model.dtype != "auto" else (c.get("torch_dtype") or c.get("dtype") or "bfloat16")
    return 2 * layers * kv_heads * head_dim * _DTYPE_BYTES.get(str(dtype), 2)


def check_cpu_engine(cfg: Config) -> None:
    """Before a CPU engine starts: fail naming `engine.request_seeds` when it is on (the CPU build
    fails a seeded request it prefills in chunks), and `engine.cpu_kv_cache_gib` when one sequence
    of `model.max_model_len` tokens does not fit the CPU build's KV cache."""
    if cfg.engine.request_seeds:
        raise ConfigError("config key 'engine.request_seeds': the vLLM CPU build fails a seeded request that "
                          "it prefills in chunks ('CPU Generator does not use offset'); set it false on CPU")
    per_token = kv_bytes_per_token(cfg.model)
    tokens = cfg.model.max_model_len or (_model_config(cfg.model) or {}).get("max_position_embeddings")
    if per_token is None or tokens is None:
        return
    need = per_token * tokens
    have = cfg.engine.cpu_kv_cache_gib * 2**30
    if need > have:
        raise ConfigError(
            f"config key 'engine.cpu_kv_cache_gib': {cfg.engine.cpu_kv_cache_gib} GiB of KV cache holds "
            f"{int(have // per_token)} tokens of {cfg.model.source}, less than one sequence of "
            f"model.max_model_len={tokens}; set engine.cpu_kv_cache_gib={math.ceil(need / 2**30 * 4) / 4} "
            f"or more, or a smaller model.max_model_len")
