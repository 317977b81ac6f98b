"""Typed configuration: OmegaConf structured dataclasses, merged from YAML files and dotted overrides,
checked once at load so that a wrong key, type or value fails before Ray starts, naming the key.

`conf/default.yaml` documents every key; the dataclass defaults below are the same values.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

from omegaconf import MISSING, DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from evol_ray.config_checks import BACKENDS, ConfigError, validate
from evol_ray.run_key import LATER_KEYS, config_hash, differing_keys, result_values  # noqa: F401 (callers use config.*)
from evol_ray.evolve import prompts, recipes


@dataclass
class InputConfig:
    path: str = MISSING
    format: str = "auto"
    instruction_column: str = "instruction"
    input_column: Optional[str] = "input"
    response_column: Optional[str] = "output"
    id_column: Optional[str] = None
    limit: Optional[int] = None
    encoding: str = "utf-8"


@dataclass
class OutputConfig:
    path: str = MISSING
    include_seeds: bool = False
    start_over: bool = False
    rows_per_file: int = 100_000


@dataclass
class StorageConfig:
    endpoint_url: Optional[str] = None
    region: Optional[str] = None
    options: Dict[str, Any] = field(default_factory=dict)
    retries: int = 5


@dataclass
class ModelConfig:
    source: str = MISSING
    tokenizer: Optional[str] = None
    dtype: str = "auto"
    max_model_len: Optional[int] = None
    load_format: str = "auto"
    trust_remote_code: bool = False


@dataclass
class EndpointConfig:
    """An OpenAI-compatible server (`engine.backend=openai`). The key itself is read from the
    environment variable named by `api_key_env`, never from config."""
    base_url: Optional[str] = None
    model: Optional[str] = None
    api_key_env: str = "OPENAI_API_KEY"
    max_in_flight: int = 64
    timeout_s: float = 600.0
    max_retries: int = 5
    choice_scoring: str = "logprobs"
    forced_choice: str = "guided"
    send_seed: bool = True  # false for a server that fails seeded requests (vLLM's CPU build)


@dataclass
class EngineConfig:
    backend: str = "vllm"
    device: str = "auto"
    replicas: int = 1
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.90
    cpu_kv_cache_gib: float = 1.0
    cpus_per_replica: float = 1.0
    max_num_seqs: int = 256
    batch_size: int = 64
    batches_in_flight: int = 4
    enforce_eager: bool = False
    extra_args: Dict[str, Any] = field(default_factory=dict)
    clients_per_replica: int = 1
    max_restarts: int = 3
    endpoint: EndpointConfig = field(default_factory=EndpointConfig)


@dataclass
class SamplingConfig:
    temperature: float = 1.0
    top_p: float = 0.95
    max_tokens: int = 2048


@dataclass
class TemplatesConfig:
    """Overrides of the recipe's texts; null / absent: the recipe's own (filled in at load)."""
    depth: Optional[str] = None  # harder rewrite: {method}, {instruction}
    breadth: Optional[str] = None  # new instruction: {instruction} [, {method}]
    downward: Optional[str] = None  # easier rewrite (WizardMath): {method}, {instruction}
    methods: Dict[str, str] = field(default_factory=dict)  # op -> the text for {method}
    ops: Dict[str, str] = field(default_factory=dict)  # op -> a whole template of its own


@dataclass
class AutoTemplatesConfig:
    method: str = prompts.INITIAL_METHOD  # the method of step 0
    analysis: str = prompts.ANALYSIS_TEMPLATE  # {method}, {instruction}, {evolved}, {outcome}
    optimizer: str = prompts.OPTIMIZER_TEMPLATE  # {method}, {feedback}


@dataclass
class AutoConfig:
    """Auto Evol-Instruct (`evolve/auto.py`): a method optimized before round 1, run as op `auto`."""
    enabled: bool = False
    dev_size: int = 32  # seeds the candidates are measured on
    steps: int = 2  # optimization steps after the initial method's
    candidates: int = 3  # methods the optimizer proposes per step
    batch_size: int = 8  # seeds evolved and analysed per step (never the dev set's)
    templates: AutoTemplatesConfig = field(default_factory=AutoTemplatesConfig)


@dataclass
class EvolutionConfig:
    rounds: int = 4
    recipe: str = "general"
    # op -> weight, over the recipe's defaults; an op the recipe lacks is the user's own
    op_weights: Dict[str, float] = field(default_factory=dict)
    templates: TemplatesConfig = field(default_factory=TemplatesConfig)
    evolve_sampling: SamplingConfig = field(default_factory=SamplingConfig)
    answer_sampling: SamplingConfig = field(default_factory=SamplingConfig)
    auto: AutoConfig = field(default_factory=AutoConfig)


@dataclass
class EliminationConfig:
    judge: bool = True
    judge_template: str = prompts.JUDGE_TEMPLATE
    judge_threshold: float = 0.5
    sorry_phrases: List[str] = field(default_factory=lambda: ["sorry"])
    sorry_max_words: int = 80
    stopwords_only: bool = True
    copied_phrases: List[str] = field(default_factory=lambda: list(prompts.COPIED_PROMPT_PHRASES))
    not_instruction: bool = True
    code_answer: Optional[bool] = None  # null: on when the recipe lists it (filled in at load)
    math_answer: Optional[bool] = None


@dataclass
class ScoreConfig:
    enabled: bool = False
    sample_size: int = 50
    model: Optional[str] = None
    template: str = prompts.DIFFICULTY_TEMPLATE


@dataclass
class ReportConfig:
    sample_size: int = 200
    min_sample_size: int = 20
    near_duplicate_threshold: float = 0.7
    lineages: int = 3


@dataclass
class DedupConfig:
    in_rounds: bool = True
    in_final: bool = True
    exact: bool = True
    near: bool = True
    threshold: float = 0.7
    num_perm: int = 128
    bands: Optional[int] = None
    rows: Optional[int] = None
    ngram: int = 3
    partitions: int = 64


@dataclass
class LengthRule:
    enabled: bool = True
    min_chars: int = 1
    max_chars: int = 100_000


@dataclass
class RefusalRule:
    enabled: bool = True
    phrases: List[str] = field(default_factory=lambda: [
        "as an AI language model", "I'm sorry, but I can't", "I'm sorry, but I cannot",
        "I cannot fulfill", "I can't assist with", "I cannot assist with", "I am unable to help",
    ])


@dataclass
class RepeatRule:
    enabled: bool = True
    max_overlap: float = 0.8
    ngram: int = 3


@dataclass
class Switch:
    enabled: bool = True


@dataclass
class QualityConfig:
    in_rounds: bool = True
    in_final: bool = False
    non_printable: Switch = field(default_factory=Switch)
    instruction_length: LengthRule = field(default_factory=lambda: LengthRule(min_chars=10, max_chars=8000))
    answer_length: LengthRule = field(default_factory=lambda: LengthRule(min_chars=1, max_chars=32000))
    refusal: RefusalRule = field(default_factory=RefusalRule)
    unbalanced_code_fence: Switch = field(default_factory=Switch)
    answer_repeats_instruction: RepeatRule = field(default_factory=RepeatRule)


@dataclass
class RayConfig:
    address: Optional[str] = None
    verbose: bool = False


@dataclass
class SelectConfig:
    model: Optional[str] = None
    quality_template: str = prompts.QUALITY_TEMPLATE
    diversity_threshold: float = 0.7
    embedding_model: Optional[str] = None
    embedding_threshold: float = 0.95


@dataclass
class ExportConfig:
    system_prompt: Optional[str] = None
    validation_share: float = 0.0


@dataclass
class Config:
    seed: int = 0
    input: InputConfig = field(default_factory=InputConfig)
    output: OutputConfig = field(default_factory=OutputConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    evolution: EvolutionConfig = field(default_factory=EvolutionConfig)
    elimination: EliminationConfig = field(default_factory=EliminationConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    dedup: DedupConfig = field(default_factory=DedupConfig)
    quality: QualityConfig = field(default_factory=QualityConfig)
    ray: RayConfig = field(default_factory=RayConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    select: SelectConfig = field(default_factory=SelectConfig)


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
    if obj.evolution.recipe not in recipes.RECIPES:
        raise ConfigError(f"config key 'evolution.recipe': got {obj.evolution.recipe!r}, allowed: "
                          f"{', '.join(recipes.RECIPES)}")
    recipes.resolve(obj)
    validate(obj)
    return obj


def load_saved_config(saved: dict, source: str, overrides: Sequence[str] = ()) -> Config:
    """A run's saved config (the dict of its config.yaml, read from `source`) under the current
    defaults, then `dotted.key=value` overrides; validated like `load_config`."""
    cfg = _merge(OmegaConf.structured(Config), OmegaConf.create(saved), source)
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
