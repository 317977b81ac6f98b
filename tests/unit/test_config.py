import pytest

from evol_ray import config as cfgmod
from evol_ray.config import ConfigError, load_config

BASE = ["input.path=seeds.json", "output.path=out", "model.source=m"]


def test_defaults_and_documented_names():
    cfg = load_config(BASE)
    assert cfg.evolution.rounds == 4
    assert cfg.input.path == "seeds.json" and cfg.output.path == "out" and cfg.model.source == "m"
    assert cfg.seed == 0


def test_later_arguments_win(tmp_path):
    a = tmp_path / "a.yaml"
    a.write_text("evolution: {rounds: 2}\nseed: 5\n")
    b = tmp_path / "b.yaml"
    b.write_text("evolution: {rounds: 3}\n")
    cfg = load_config(BASE + [str(a), "evolution.rounds=7", str(b)])
    assert cfg.evolution.rounds == 3 and cfg.seed == 5
    cfg = load_config(BASE + [str(a), str(b), "evolution.rounds=7"])
    assert cfg.evolution.rounds == 7


@pytest.mark.parametrize(
    "override, key, words",
    [
        ("engine.bogus=1", "engine.bogus", "allowed here: backend, device"),
        ("evolution.rounds=many", "evolution.rounds", "Integer"),
        ("evolution.rounds=0", "evolution.rounds", "at least 1"),
        ("engine.device=tpu", "engine.device", "allowed: auto, gpu, cpu"),
        ("input.format=csv", "input.format", "allowed: auto, parquet"),
        ("evolution.op_weights.shrink=1", "evolution.op_weights.shrink", "unknown operation"),
        ("evolution.answer_sampling.top_p=0", "evolution.answer_sampling.top_p", "(0, 1]"),
        ("elimination.judge_threshold=0", "elimination.judge_threshold", "P(Equal)"),
        ("evolution.templates.breadth=no placeholder", "evolution.templates.breadth", "{instruction}"),
        ("engine.gpu_memory_utilization=1.5", "engine.gpu_memory_utilization", "fraction"),
    ],
)
def test_bad_values_name_the_key(override, key, words):
    with pytest.raises(ConfigError) as e:
        load_config(BASE + [override])
    assert f"'{key}'" in str(e.value)
    assert words in str(e.value)


def test_missing_required_key_is_named():
    with pytest.raises(ConfigError, match="'model.source'.*required"):
        load_config(["input.path=x", "output.path=y"])


def test_yaml_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("engine: {replicas: [1, 2}\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(BASE + [str(bad)])
    with pytest.raises(ConfigError, match="missing.yaml: not found"):
        load_config(BASE + [str(tmp_path / "missing.yaml")])
    typo = tmp_path / "typo.yaml"
    typo.write_text("evolution:\n  roundz: 3\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: config key 'evolution.roundz'"):
        load_config(BASE + [str(typo)])


def test_shipped_configs_load(tmp_path):
    import pathlib

    conf = pathlib.Path(__file__).resolve().parents[2] / "conf"
    cfg = load_config([conf / "default.yaml"] + BASE)
    assert cfg == load_config(BASE), "conf/default.yaml must hold exactly the dataclass defaults"
    local = load_config([conf / "local.yaml"])
    assert local.model.source and local.evolution.rounds >= 1


def test_default_yaml_names_every_key():
    """Every config key is written out in conf/default.yaml, except the long prompt texts, whose
    defaults live in evol_ray/prompts.py and which the file's comments point to."""
    import pathlib

    from omegaconf import OmegaConf

    from evol_ray.config import Config

    in_prompts_py = {"evolution.templates", "elimination.judge_template", "score.template",
                     "select.quality_template", "evolution.auto.templates", "elimination.coherence.template"}
    shipped = OmegaConf.to_container(OmegaConf.load(pathlib.Path(__file__).resolve().parents[2] / "conf" / "default.yaml"))

    def missing(schema, written, prefix=""):
        for key, value in schema.items():
            name = prefix + key
            if name in in_prompts_py:
                continue
            if not isinstance(written, dict) or key not in written:
                yield name
            elif isinstance(value, dict) and value:
                yield from missing(value, written[key], name + ".")

    assert list(missing(OmegaConf.to_container(OmegaConf.structured(Config)), shipped)) == []


def test_secrets_are_masked_and_hash_ignores_engine_sizing():
    cfg = load_config(BASE + ["storage.options.secret=hunter2", "storage.options.key=AKIA123",
                              "storage.options.anon=false"])
    text = cfgmod.to_yaml(cfg)
    assert "hunter2" not in text and "AKIA123" not in text and "anon: false" in text
    other = load_config(BASE + ["engine.replicas=8", "engine.batch_size=3", "dedup.partitions=5"])
    assert cfgmod.config_hash(other) == cfgmod.config_hash(load_config(BASE))
    changed = load_config(BASE + ["seed=3", "evolution.rounds=2", "output.include_seeds=false"])
    saved = cfgmod.result_values(load_config(BASE))
    assert cfgmod.differing_keys(saved, changed) == ["seed"]  # rounds to come and the seeds in final/: no round changes
    assert cfgmod.config_hash(load_config(BASE + ["evolution.rounds=7"])) == cfgmod.config_hash(load_config(BASE))


@pytest.mark.parametrize("extra,digest", [
    ([], "5f8624b18de68d2a"),
    (["evolution.recipe=code"], "587f7577d8c02a5c"),
    (["evolution.recipe=math", "seed=3"], "fb4cc634880d4367"),
])
def test_config_hashes_of_runs_written_before_stay_the_same(extra, digest):
    """A run's output path is resumed only under the same hash (run.json): these are the hashes
    that evol-ray wrote before Auto Evol's keys existed (commit 8db6777). A key added since stays
    out of the hash at the value that does what those runs did, so an earlier run resumes when
    those values are given: since calibrated judgement, the judge's old default threshold and
    the new rules off (their defaults changed what a run keeps)."""
    before = ["elimination.judge_threshold=0.5", "elimination.judge_both_orders=false", "elimination.lost_input=false",
              "elimination.language_drift=false", "elimination.coherence.enabled=false"]
    # and since runs extend, the number of rounds and include_seeds were hashed: legacy_hash
    then = {"evolution.rounds": 4, "output.include_seeds": False}
    assert cfgmod.legacy_hash(load_config(BASE + before + extra), then) == digest
    assert cfgmod.legacy_hash(load_config(BASE + extra), then) != digest  # the new defaults keep other rows
    assert cfgmod.legacy_hash(load_config(BASE + before + extra), {**then, "evolution.rounds": 2}) != digest


def test_batches_in_flight_is_replaced_by_rows_in_flight(tmp_path):
    """The product of two keys became one: a user's file naming the old key is told the new one
    and what to set; a run saved with it reads as the same rows in flight."""
    old = tmp_path / "old.yaml"
    old.write_text("engine:\n  batch_size: 16\n  batches_in_flight: 2\n")
    with pytest.raises(ConfigError, match=r"'engine.batches_in_flight' was replaced by 'engine.rows_in_flight' "
                                          r"\(.*batch_size x the old value\)"):
        load_config(BASE + [str(old)])
    saved = cfgmod.to_container(load_config(BASE))
    del saved["engine"]["rows_in_flight"]
    saved["engine"].update(batch_size=16, batches_in_flight=2)
    assert cfgmod.load_saved_config(saved, "config.yaml").engine.rows_in_flight == 32
    with pytest.raises(ConfigError, match="engine.rows_in_flight"):
        load_config(BASE + ["engine.rows_in_flight=0"])
