"""The OpenAI backend's pure parts: config keys and their errors, the key kept out of text, and
matching a plain answer to a choice (the `parse` fallback)."""

import math

import pytest

from evol_ray import config as cfgmod
from evol_ray.config import ConfigError, load_config
from evol_ray.engine.openai_client import Secret, match_choice, one_hot, redact

BASE = ["input.path=x", "output.path=y", "engine.backend=openai",
        "engine.endpoint.base_url=http://127.0.0.1:8000/v1", "engine.endpoint.model=smol"]


def test_model_source_defaults_to_the_endpoint_model_and_the_hash_names_it():
    cfg = load_config(BASE)
    assert cfg.model.source == "smol" and cfg.engine.endpoint.api_key_env == "OPENAI_API_KEY"
    other = load_config(BASE[:-1] + ["engine.endpoint.model=other"])
    assert cfgmod.config_hash(cfg) != cfgmod.config_hash(other)
    assert "engine.endpoint.model" in cfgmod.differing_keys(cfgmod.result_values(cfg), other)
    # the vllm backend's hash has no engine keys: runs made before the backend key still resume
    plain = load_config(["input.path=x", "output.path=y", "model.source=m"])
    assert not any(k.startswith("engine.") for k in cfgmod.result_values(plain))


@pytest.mark.parametrize("override, key", [
    ("engine.backend=tgi", "engine.backend"),
    ("engine.endpoint.base_url=localhost:8000", "engine.endpoint.base_url"),
    ("engine.endpoint.api_key_env=sk-live-abcdef123456", "engine.endpoint.api_key_env"),
    ("engine.endpoint.max_in_flight=0", "engine.endpoint.max_in_flight"),
    ("engine.choice_scoring=sampled", "engine.choice_scoring"),
    ("engine.endpoint.choice_scoring=logprobs", "engine.endpoint.choice_scoring"),
    ("engine.endpoint.forced_choice=regex", "engine.endpoint.forced_choice"),
    ("engine.max_restarts=-1", "engine.max_restarts"),
])
def test_bad_endpoint_values_name_the_key(override, key):
    with pytest.raises(ConfigError) as e:
        load_config(BASE + [override])
    assert f"'{key}'" in str(e.value)
    assert "sk-live-abcdef123456" not in str(e.value)


def test_an_endpoint_without_url_or_model_is_refused():
    with pytest.raises(ConfigError, match="engine.endpoint.model"):
        load_config(["input.path=x", "output.path=y", "engine.backend=openai", "model.source=m",
                     "engine.endpoint.base_url=http://h/v1"])


def test_the_key_never_shows():
    key = Secret("sk-proj-0123456789abcdef")
    assert "0123456789" not in repr(key) and "0123456789" not in repr({"k": key})
    msg = "Incorrect API key provided: sk-proj-0123456789abcdef. You can find your key at ..."
    assert "0123456789abcdef" not in redact(msg, key)
    assert "abcdef" not in redact("key sk-other-abcdef987654 rejected", "EMPTY")


@pytest.mark.parametrize("reply, expected", [
    ("Equal", "Equal"), ("  not equal. ", "Not Equal"), ('"Not Equal"', "Not Equal"),
    ("Equal, because both ask the same", "Equal"), ("They differ", None), ("Equality", None),
])
def test_match_choice_whole_answer_or_whole_word_start(reply, expected):
    assert match_choice(reply, ["Equal", "Not Equal"]) == expected


def test_match_choice_takes_the_longest_number_not_its_prefix():
    scores = [str(i) for i in range(1, 11)]
    assert match_choice("10", scores) == "10" and match_choice("10. It is hard", scores) == "10"
    assert match_choice("1 - trivial", scores) == "1" and match_choice("100", scores) is None


def test_one_hot_is_a_distribution_on_the_chosen():
    lp = one_hot(["a", "b"], "b")
    assert lp["b"] == 0.0 and lp["a"] == -math.inf


@pytest.mark.parametrize("send,sent", [(True, {"seed": 1234}), (False, {})])
def test_the_row_seed_is_sent_only_with_request_seeds_on(send, sent, monkeypatch):
    """engine.request_seeds (off by default): each request carries its row's seed."""
    import asyncio
    from types import SimpleNamespace

    from evol_ray.config import SamplingConfig
    from evol_ray.engine.openai_client import OpenAIGenerator, Secret

    cfg = load_config(BASE + [f"engine.request_seeds={str(send).lower()}"])
    gen = OpenAIGenerator(cfg.engine.endpoint, Secret("k"), request_seeds=cfg.engine.request_seeds)
    seen = []

    async def create(**kw):
        seen.append(kw)
        return SimpleNamespace(choices=[SimpleNamespace(message=SimpleNamespace(content="Equal"))],
                               usage=SimpleNamespace(prompt_tokens=3, completion_tokens=1))

    monkeypatch.setattr(gen.client.chat.completions, "create", create)
    asyncio.run(gen.generate("Say hi.", SamplingConfig(), seed=1234))
    asyncio.run(gen.generate("Pick one.", SamplingConfig(), seed=1234, choices=["Equal", "Not Equal"]))
    assert all({k: v for k, v in kw.items() if k == "seed"} == sent for kw in seen) and len(seen) == 2


def test_a_saved_config_with_send_seed_loads_with_its_value_moved_to_request_seeds():
    """engine.endpoint.send_seed became engine.request_seeds (one key for both backends): a run's
    saved config.yaml still loads; given on the command line, the old key names the new one."""
    from evol_ray.config import load_saved_config

    saved = {"input": {"path": "x"}, "output": {"path": "y"}, "model": {"source": "m"},
             "engine": {"endpoint": {"send_seed": True}}}
    assert load_saved_config(saved, "config.yaml").engine.request_seeds is True
    with pytest.raises(ConfigError, match="'engine.endpoint.send_seed' moved to 'engine.request_seeds'"):
        load_config(BASE + ["engine.endpoint.send_seed=false"])
