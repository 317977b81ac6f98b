"""Value checks of a loaded config that OmegaConf's types cannot express. Each failure raises
`ConfigError` naming its dotted key and what was expected."""

from __future__ import annotations

import codecs

import string
from typing import TYPE_CHECKING

from evol_ray.evolve import prompts, recipes

if TYPE_CHECKING:
    from evol_ray.schema import (Config, DedupConfig, EngineConfig, EvolutionConfig, LengthRule, QualityConfig,
                                 SamplingConfig)


class ConfigError(ValueError):
    """A config problem, with the dotted key (and the file, where known) in the message."""


def _fail(key: str, problem: str) -> None:
    raise ConfigError(f"config key '{key}': {problem}")


def validate(cfg: Config) -> None:
    """Value checks OmegaConf's types cannot express, section by section. Each failure names its key."""
    _check_input_output(cfg)
    _check_engine(cfg.engine)
    _check_evolution(cfg)
    _check_elimination(cfg)
    _check_after_the_run(cfg)
    _check_dedup(cfg.dedup)
    _check_quality(cfg.quality)


def _check_input_output(cfg: Config) -> None:
    if cfg.input.format not in ("auto", "parquet", "json", "jsonl"):
        _fail("input.format", f"got {cfg.input.format!r}, allowed: auto, parquet, json, jsonl")
    if not cfg.input.path.strip():
        _fail("input.path", "must not be empty")
    if not cfg.output.path.strip():
        _fail("output.path", "must not be empty")
    if not cfg.input.instruction_column:
        _fail("input.instruction_column", "must name a column")
    try:
        if cfg.input.encoding != "auto":
            codecs.lookup(cfg.input.encoding)
    except LookupError:
        _fail("input.encoding", f"got {cfg.input.encoding!r}, expected auto (a file's byte-order mark, else "
              "UTF-8) or a Python codec name such as utf-8, latin-1 or cp1252")
    if cfg.input.limit is not None and cfg.input.limit < 1:
        _fail("input.limit", f"got {cfg.input.limit}, expected a positive integer or null")
    if cfg.output.rows_per_file < 1:
        _fail("output.rows_per_file", "must be at least 1")
    if cfg.output.flush_rows < 1:
        _fail("output.flush_rows", "must be at least 1")
    if not cfg.output.flush_s > 0:
        _fail("output.flush_s", "must be more than 0 seconds")
    if not cfg.model.source.strip():
        _fail("model.source", "must be a Hugging Face model id or a local directory")


def _check_evolution(cfg: Config) -> None:
    if cfg.evolution.rounds < 1:
        _fail("evolution.rounds", f"got {cfg.evolution.rounds}, expected at least 1")
    _check_auto(cfg.evolution)  # first: its method is the one operation `auto` fills
    _check_operations(cfg.evolution)
    for name in ("evolve_sampling", "answer_sampling"):
        _check_sampling(f"evolution.{name}", getattr(cfg.evolution, name))


def _check_elimination(cfg: Config) -> None:
    _check_template("elimination.judge_template", cfg.elimination.judge_template, ("first", "second"))
    _check_threshold("elimination.judge_threshold", cfg.elimination.judge_threshold, "P(Equal)")
    _check_threshold("elimination.coherence.threshold", cfg.elimination.coherence.threshold, "P(incoherent)")
    if not 0 < cfg.elimination.calibration.min_balanced_accuracy <= 1:
        _fail("elimination.calibration.min_balanced_accuracy",
              f"got {cfg.elimination.calibration.min_balanced_accuracy}, expected a share in (0, 1]")
    for key in ("judge_pairs", "coherence_texts"):
        v = getattr(cfg.elimination.calibration, key)
        if v is not None and not v.strip():
            _fail(f"elimination.calibration.{key}", "must be a path to a JSONL file, or null (the shipped set)")
    if cfg.elimination.sorry_max_words < 0:
        _fail("elimination.sorry_max_words", "must be >= 0")


def _check_after_the_run(cfg: Config) -> None:
    """storage, score, report, select and export."""
    if cfg.storage.retries < 0:
        _fail("storage.retries", "must be >= 0")
    if cfg.score.sample_size < 1:
        _fail("score.sample_size", f"got {cfg.score.sample_size}, expected at least 1")
    if cfg.score.model is not None and not cfg.score.model.strip():
        _fail("score.model", "must be a Hugging Face model id, a local directory, or null")
    _check_template("score.template", cfg.score.template, ("instruction",))
    if cfg.report.sample_size < 2:
        _fail("report.sample_size", f"got {cfg.report.sample_size}, expected at least 2")
    if not 2 <= cfg.report.min_sample_size <= cfg.report.sample_size:
        _fail("report.min_sample_size", f"got {cfg.report.min_sample_size}, expected 2 .. "
              f"report.sample_size ({cfg.report.sample_size})")
    if not 0 < cfg.report.near_duplicate_threshold <= 1:
        _fail("report.near_duplicate_threshold", "expected a Jaccard similarity in (0, 1]")
    if cfg.report.lineages < 0:
        _fail("report.lineages", "must be >= 0")
    _check_template("select.quality_template", cfg.select.quality_template, ("instruction", "response"))
    if not 0 < cfg.select.diversity_threshold <= 1:
        _fail("select.diversity_threshold", "expected a MinHash Jaccard similarity in (0, 1]")
    if not 0 < cfg.select.embedding_threshold <= 1:
        _fail("select.embedding_threshold", "expected a cosine similarity in (0, 1]")
    if cfg.select.embedding_model is not None and not cfg.select.embedding_model.strip():
        _fail("select.embedding_model", "must be a model id, a local directory, or null (MinHash)")
    if cfg.select.model is not None and not cfg.select.model.strip():
        _fail("select.model", "must be a Hugging Face model id, a local directory, or null")
    if not 0 <= cfg.export.validation_share < 1:
        _fail("export.validation_share", f"got {cfg.export.validation_share}, expected a share in [0, 1)")
    if cfg.export.system_prompt is not None and not cfg.export.system_prompt.strip():
        _fail("export.system_prompt", "must be text or null (no system turn)")


def _check_threshold(key: str, value: str, what: str) -> None:
    """A threshold key: "auto" (calibrated at run time) or a number in (0, 1]."""
    if str(value).strip().lower() == "auto":
        return
    try:
        x = float(value)
    except (TypeError, ValueError):
        x = None
    if x is None or not 0 < x <= 1:
        _fail(key, f"got {value!r}, expected auto (calibrated at run time on a labelled set) or {what} in (0, 1]")


BACKENDS = ("vllm", "openai")
CHOICE_SCORING = ("first_tokens", "whole_answer", "forced")
FORCED_CHOICE = ("guided", "json_schema", "parse")


def _check_engine(e: EngineConfig) -> None:
    if e.backend not in BACKENDS:
        _fail("engine.backend", f"got {e.backend!r}, allowed: {', '.join(BACKENDS)}")
    for key in ("tensor_parallel_size", "max_num_seqs", "clients_per_replica", "batch_size", "rows_in_flight"):
        if getattr(e, key) < 1:
            _fail(f"engine.{key}", f"got {getattr(e, key)}, expected at least 1")
    if e.device not in ("auto", "gpu", "cpu"):
        _fail("engine.device", f"got {e.device!r}, allowed: auto, gpu, cpu")
    replicas = str(e.replicas).strip().lower()
    if replicas != "auto" and not (replicas.isdigit() and int(replicas) >= 1):
        _fail("engine.replicas", f"got {e.replicas!r}, expected auto (the cluster's GPUs / "
              "engine.tensor_parallel_size; 1 on CPU) or a number of engines, at least 1")
    if e.wait_for_gpus_s < 0:
        _fail("engine.wait_for_gpus_s", f"got {e.wait_for_gpus_s}, expected seconds >= 0")
    if not 0 < e.gpu_memory_utilization <= 1:
        _fail("engine.gpu_memory_utilization", "expected a fraction in (0, 1]")
    if e.cpu_kv_cache_gib <= 0:
        _fail("engine.cpu_kv_cache_gib", f"got {e.cpu_kv_cache_gib}, expected a size in GiB > 0")
    if e.cpus_per_replica <= 0:
        _fail("engine.cpus_per_replica", "expected a positive number")
    if e.max_restarts < 0:
        _fail("engine.max_restarts", f"got {e.max_restarts}, expected 0 or more")
    p = e.endpoint
    if e.backend == "openai":
        if not p.base_url or not p.base_url.startswith(("http://", "https://")):
            _fail("engine.endpoint.base_url", f"got {p.base_url!r}, expected the server's OpenAI API root, "
                  "such as http://127.0.0.1:8000/v1")
        if not p.model or not p.model.strip():
            _fail("engine.endpoint.model", "required with engine.backend=openai: the model name the server serves")
    if not p.api_key_env.strip() or p.api_key_env.startswith(("sk-", "Bearer")):
        _fail("engine.endpoint.api_key_env", "expected the NAME of an environment variable holding the key "
              "(default OPENAI_API_KEY), never the key itself")
    if p.max_in_flight < 1:
        _fail("engine.endpoint.max_in_flight", f"got {p.max_in_flight}, expected at least 1")
    if p.timeout_s <= 0:
        _fail("engine.endpoint.timeout_s", f"got {p.timeout_s}, expected seconds > 0")
    if p.max_retries < 0:
        _fail("engine.endpoint.max_retries", f"got {p.max_retries}, expected 0 or more")
    if e.choice_scoring not in CHOICE_SCORING:
        _fail("engine.choice_scoring", f"got {e.choice_scoring!r}, allowed: {', '.join(CHOICE_SCORING)}")
    if p.forced_choice not in FORCED_CHOICE:
        _fail("engine.endpoint.forced_choice", f"got {p.forced_choice!r}, allowed: {', '.join(FORCED_CHOICE)}")


def _check_operations(ev: EvolutionConfig) -> None:
    """After `recipes.resolve`: every weighted operation is the recipe's or has a template of
    its own (or a method for the recipe's in-depth frame), and every template it fills is whole."""
    recipe = recipes.RECIPES[ev.recipe]
    t = ev.templates
    for op, w in ev.op_weights.items():
        if op not in recipe.ops and op not in t.ops and op not in t.methods:
            _fail(f"evolution.op_weights.{op}", f"unknown operation of recipe {ev.recipe!r} "
                  f"(its operations: {', '.join(recipe.ops)}); an operation of your own needs "
                  f"evolution.templates.ops.{op} (a whole template) or evolution.templates.methods.{op} "
                  "(a method for the recipe's in-depth template)")
        if w < 0:
            _fail(f"evolution.op_weights.{op}", f"got {w}, expected a weight >= 0")
    for section, names in (("ops", t.ops), ("methods", t.methods)):
        for op in names:
            if op not in ev.op_weights:
                _fail(f"evolution.templates.{section}.{op}", f"not an operation of recipe {ev.recipe!r} "
                      f"(its operations: {', '.join(recipe.ops)}); give it a weight in evolution.op_weights.{op}")
    if sum(ev.op_weights.values()) <= 0:
        _fail("evolution.op_weights", "at least one operation needs a positive weight")
    for frame in recipes.FRAMES:
        text = getattr(t, frame)
        if text is not None:
            needs = ("instruction", "method") if frame in recipes.METHOD_FRAMES else ("instruction",)
            _check_template(f"evolution.templates.{frame}", text, needs, ("method",))
    for op, w in ev.op_weights.items():
        if w <= 0:
            continue
        key, text = recipes.op_template(ev, op)
        if text is None:
            _fail(key, f"missing: operation {op} fills it, and recipe {ev.recipe!r} has none")
        if "method" in _check_template(key, text, ("instruction",), ("method",)) and not t.methods.get(op, "").strip():
            _fail(f"evolution.templates.methods.{op}", f"missing: operation {op} fills {{method}} of {key}")


def _check_auto(ev: EvolutionConfig) -> None:
    a, op = ev.auto, prompts.AUTO_OP
    for key, low in (("dev_size", 1), ("steps", 0), ("candidates", 1), ("batch_size", 1)):
        if getattr(a, key) < low:
            _fail(f"evolution.auto.{key}", f"got {getattr(a, key)}, expected at least {low}")
    if not a.templates.method.strip():
        _fail("evolution.auto.templates.method", "must hold the initial method's text")
    _check_template("evolution.auto.templates.analysis", a.templates.analysis,
                    ("method", "instruction", "evolved"), ("outcome",))
    _check_template("evolution.auto.templates.optimizer", a.templates.optimizer, ("method", "feedback"))
    if not a.enabled:
        return
    if op in ev.templates.ops:
        _fail(f"evolution.templates.ops.{op}", "Auto Evol's method fills the recipe's in-depth template "
              "(evolution.templates.depth); operation auto takes no template of its own")
    if ev.templates.methods.get(op) != a.templates.method:
        _fail(f"evolution.templates.methods.{op}", "written by Auto Evol (evolution.auto.enabled); its "
              "initial method is evolution.auto.templates.method")


def _check_dedup(d: DedupConfig) -> None:
    if not 0 < d.threshold <= 1:
        _fail("dedup.threshold", f"got {d.threshold}, expected a Jaccard similarity in (0, 1]")
    if d.num_perm < 2:
        _fail("dedup.num_perm", f"got {d.num_perm}, expected at least 2")
    for key in ("bands", "rows"):
        v = getattr(d, key)
        if v is not None and v < 1:
            _fail(f"dedup.{key}", f"got {v}, expected a positive integer or null")
    if d.bands is not None and d.rows is not None and d.bands * d.rows > d.num_perm:
        _fail("dedup.bands", f"bands x rows = {d.bands * d.rows} exceeds dedup.num_perm = {d.num_perm}")
    for key in ("bands", "rows"):
        v = getattr(d, key)
        if v is not None and v > d.num_perm:
            _fail(f"dedup.{key}", f"got {v}, at most dedup.num_perm = {d.num_perm}")
    if d.ngram < 1:
        _fail("dedup.ngram", f"got {d.ngram}, expected at least 1")
    if d.partitions < 1:
        _fail("dedup.partitions", f"got {d.partitions}, expected at least 1")


def _check_quality(q: QualityConfig) -> None:
    for key in ("instruction_length", "answer_length"):
        rule: "LengthRule" = getattr(q, key)
        if rule.min_chars < 0:
            _fail(f"quality.{key}.min_chars", "must be >= 0")
        if rule.max_chars < rule.min_chars:
            _fail(f"quality.{key}.max_chars", f"got {rule.max_chars}, below min_chars {rule.min_chars}")
    if q.answer_repeats_instruction.ngram < 1:
        _fail("quality.answer_repeats_instruction.ngram", "expected at least 1")
    if not 0 < q.answer_repeats_instruction.max_overlap <= 1:
        _fail("quality.answer_repeats_instruction.max_overlap", "expected a share in (0, 1]")
    if q.refusal.enabled and not any(p.strip() for p in q.refusal.phrases):
        _fail("quality.refusal.phrases", "needs at least one phrase while quality.refusal.enabled")


def _check_template(key: str, template: str, fields: tuple[str, ...], optional: tuple[str, ...] = ()) -> set:
    """Fails unless `template` holds every placeholder of `fields` and no other but `optional`;
    returns the placeholders it holds."""
    try:
        names = {f for _, f, _, _ in string.Formatter().parse(template) if f is not None}
    except ValueError as e:
        _fail(key, f"not a valid template ({e}); write literal braces as {{{{ and }}}}")
    for f in fields:
        if f not in names:
            _fail(key, f"must contain the placeholder {{{f}}}")
    extra = names - set(fields) - set(optional)
    if extra:
        _fail(key, f"unknown placeholder(s) {sorted(extra)}, allowed: {list(fields + optional)}")
    return names


def _check_sampling(key: str, s: SamplingConfig) -> None:
    if s.temperature < 0:
        _fail(f"{key}.temperature", "must be >= 0")
    if not 0 < s.top_p <= 1:
        _fail(f"{key}.top_p", "expected a value in (0, 1]")
    if s.max_tokens < 1:
        _fail(f"{key}.max_tokens", "must be at least 1")
