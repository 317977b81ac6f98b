"""The config schema: OmegaConf structured dataclasses, one per section, with their defaults.

`conf/default.yaml` documents every key; the dataclass defaults below are the same values, but
for the prompt texts, null here and filled in at load from `evolve/prompts.py` (and the recipe's
templates, from `evolve/recipes.py`): the schema imports nothing of the project, and loading
(merge, prompt texts, recipe resolution, checks: `evol_ray.config`), the checks and the run key
are built on it. `evol_ray.config` re-exports these names: import them from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING



@dataclass
class InputConfig:
    path: str = MISSING
    format: str = "auto"
    instruction_column: str = "instruction"
    input_column: Optional[str] = "input"
    response_column: Optional[str] = "output"
    id_column: Optional[str] = None
    limit: Optional[int] = None
    encoding: str = "auto"  # a file's byte-order mark, else UTF-8; or a Python codec name


@dataclass
class OutputConfig:
    path: str = MISSING
    include_seeds: bool = True  # the seeds join final/, as WizardLM trains on them
    answer_seeds: bool = True  # a seed without an answer gets one from the run's engines
    start_over: bool = False
    rows_per_file: int = 100_000
    # an engine phase's results (`_attempts/`) are written as rows end, one file per writer when it
    # holds this many rows (or 64 MB), or when its oldest row has waited flush_s: what a crash loses
    flush_rows: int = 16_384
    flush_s: float = 60.0
    progress_every_s: float = 30.0  # a progress line this often when the output is not a terminal
    wait_for_lease_s: float = 0.0  # how long to wait for another run's lease on this output


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


AUTO = "auto"  # the value of a key decided at run time (a threshold, the engines' count)


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
    forced_choice: str = "guided"


@dataclass
class EngineConfig:
    backend: str = "vllm"
    device: str = "auto"
    replicas: str = AUTO  # "auto" (GPUs / tensor_parallel_size; 1 on CPU) or a number
    wait_for_gpus_s: float = 0.0  # how long to wait for GPUs the cluster may add (autoscaling)
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.90
    cpu_kv_cache_gib: float = 1.0
    cpus_per_replica: float = 1.0
    max_num_seqs: int = 256
    batch_size: int = 64
    rows_in_flight: int = 256  # rows whose chains run at once per engine (per stage actor with openai)
    enforce_eager: bool = False
    extra_args: Dict[str, Any] = field(default_factory=dict)
    clients_per_replica: int = 1
    max_restarts: int = 3
    choice_scoring: str = "first_tokens"  # how verdicts and ratings are read (engine/base.py)
    request_seeds: bool = False  # each request carries its row's seed (conf/default.yaml: the cost)
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
    # null: the project's text (evolve/prompts.py), filled in at load (`config.PROMPT_DEFAULTS`)
    method: Optional[str] = None  # the method of step 0
    analysis: Optional[str] = None  # {method}, {instruction}, {evolved}, {outcome}
    optimizer: Optional[str] = None  # {method}, {feedback}


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


# A threshold that is "auto" or a number: OmegaConf has no union type, so every such key is a
# string, "auto" (calibrated at run time on a labelled set, `pipeline/calibrate.py`) or a number
# (YAML's 0.8 arrives as "0.8"); `threshold_of` reads it, `config_checks` checks it at load.


def threshold_of(value: str) -> Optional[float]:
    """A threshold key's value -> the number, or None for "auto"."""
    return None if str(value).strip().lower() == AUTO else float(value)


@dataclass
class CalibrationConfig:
    """The labelled sets that calibrate the run's LLM decisions (null: the sets shipped in data/)."""
    judge_pairs: Optional[str] = None  # JSONL of (parent, evolution, Equal | Not Equal)
    coherence_texts: Optional[str] = None  # JSONL of (text, coherent | incoherent)
    min_balanced_accuracy: float = 0.75  # a decision measured below it stops the run


@dataclass
class CoherenceConfig:
    enabled: bool = True
    threshold: str = AUTO
    template: Optional[str] = None  # {what}, {text}; null: the project's, filled in at load


@dataclass
class EliminationConfig:
    judge: bool = True
    judge_template: Optional[str] = None  # {first}, {second}; null: the project's, filled in at load
    judge_threshold: str = AUTO
    judge_both_orders: bool = True  # ask (parent, evolution) and (evolution, parent); P(Equal) their mean
    sorry_phrases: List[str] = field(default_factory=lambda: ["sorry"])
    sorry_max_words: int = 80
    stopwords_only: bool = True
    copied_phrases: Optional[List[str]] = None  # null: the evolving prompts' phrases, filled in at load
    not_instruction: bool = True
    code_answer: Optional[bool] = None  # null: on when the recipe lists it (filled in at load)
    math_answer: Optional[bool] = None
    lost_input: bool = True
    language_drift: bool = True
    coherence: CoherenceConfig = field(default_factory=CoherenceConfig)
    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)


@dataclass
class ScoreConfig:
    enabled: bool = False
    sample_size: int = 50
    model: Optional[str] = None
    template: Optional[str] = None  # {instruction}; null: the project's, filled in at load


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
    quality_template: Optional[str] = None  # {instruction}, {response}; null: the project's, at load
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
