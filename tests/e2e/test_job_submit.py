"""`jobs/submit.py` against a real two-node Ray cluster on loopback, started with `ray start`.

The head mirrors the Kubernetes deployment: no CPU and no GPU, so the only thing that can run on
it is something that asks for nothing, like the job's driver. The worker node has the CPUs for the
engine actor and Ray Data's tasks. Every port is a free one and the temp dir is the test's own, so
other Ray instances on the machine are left alone; only this cluster's process groups are stopped.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import tiny_overrides

pytestmark = pytest.mark.cluster

REPO = Path(__file__).resolve().parents[2]
SUBMIT = REPO / "jobs" / "submit.py"
N_SEEDS = 12
HEAD_PORTS = ("port", "dashboard-port", "ray-client-server-port", "node-manager-port",
              "object-manager-port", "dashboard-agent-listen-port", "dashboard-agent-grpc-port",
              "metrics-export-port", "runtime-env-agent-port")
WORKER_PORTS = ("node-manager-port", "object-manager-port", "dashboard-agent-listen-port",
                "dashboard-agent-grpc-port", "metrics-export-port", "runtime-env-agent-port")


def free_ports(n: int) -> list:
    """`n` distinct free ports (all held open until every one is chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


TOKEN = secrets.token_hex(16)  # this module's cluster token, never the machine's ~/.ray one


def cluster_env() -> dict:
    """The cluster's environment: token authentication on, as Ray's default is, with this
    module's token; no address that points at another cluster."""
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=TOKEN, RAY_DATA_DISABLE_PROGRESS_BARS="1",
               TOKENIZERS_PARALLELISM="false")
    for key in ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    return env


def client_env(home: Path, **extra: str) -> dict:
    """A user's shell: no RAY_AUTH_MODE (jobs/submit.py sets it when it finds a token), a home of
    its own (no ~/.ray/auth_token unless the test writes one), and `extra`."""
    env = {k: v for k, v in cluster_env().items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    home.mkdir(parents=True, exist_ok=True)
    return dict(env, HOME=str(home), **extra)


AUTH = {"Authorization": f"Bearer {TOKEN}"}


class LocalCluster:
    """A head (0 CPU, 0 GPU) and one worker (2 CPUs), each `ray start --block` in its own process
    group, so that stopping the cluster is killing exactly those two groups."""

    def __init__(self, temp_dir: Path) -> None:
        self.temp_dir = temp_dir
        self.env = cluster_env()
        self.procs: list = []
        self.logs: list = []
        ports = dict(zip(HEAD_PORTS, free_ports(len(HEAD_PORTS))))
        self.gcs = f"127.0.0.1:{ports['port']}"
        self.dashboard = f"http://127.0.0.1:{ports['dashboard-port']}"
        self.head_args = ["--head", "--dashboard-host=127.0.0.1", "--num-cpus=0", "--num-gpus=0",
                          *(f"--{k}={v}" for k, v in ports.items())]

    def _start(self, name: str, args: list) -> None:
        log = open(self.temp_dir / f"{name}.log", "w")
        self.logs.append(log)
        cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--block", "--disable-usage-stats",
               "--node-ip-address=127.0.0.1", "--min-worker-port=0", "--max-worker-port=0",
               "--object-store-memory=300000000", f"--temp-dir={self.temp_dir / name}", *args]
        self.procs.append(subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True))

    def start(self) -> None:
        self._start("h", self.head_args)
        self._wait(lambda: self._get("/api/version") is not None, "the head's job server")
        worker_ports = dict(zip(WORKER_PORTS, free_ports(len(WORKER_PORTS))))
        self._start("w", [f"--address={self.gcs}", "--num-cpus=2", "--num-gpus=0",
                          *(f"--{k}={v}" for k, v in worker_ports.items())])
        self._wait(lambda: len([n for n in self.nodes() if n["state"] == "ALIVE"]) == 2, "two alive nodes")

    def _wait(self, ready, what: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    raise RuntimeError(f"`ray start` exited with {p.returncode}; see {self.temp_dir}/*.log")
            try:
                if ready():
                    return
            except Exception:
                pass
            time.sleep(1)
        raise TimeoutError(f"cluster not ready after {timeout}s: waiting for {what}; see {self.temp_dir}/*.log")

    def _get(self, path: str):
        req = urllib.request.Request(self.dashboard + path, headers=AUTH)
        with urllib.request.urlopen(req, timeout=5) as r:
            return json.load(r)

    def nodes(self) -> list:
        return self._get("/api/v0/nodes?detail=1&limit=100")["data"]["result"]["result"]

    def client(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard, headers=AUTH)

    def stop(self) -> None:
        for p in reversed(self.procs):  # worker first, then the head
            _end_group(p, signal.SIGTERM)
        deadline = time.monotonic() + 10
        for p in reversed(self.procs):
            try:
                p.wait(timeout=max(deadline - time.monotonic(), 0.1))
            except subprocess.TimeoutExpired:
                pass
            # `ray start --block` can outlive SIGTERM with its GCS; the group goes down either way.
            _end_group(p, signal.SIGKILL)
            p.wait(timeout=20)
        for log in self.logs:
            log.close()


def _end_group(p: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(p.pid, sig)  # the group this test created (start_new_session), nothing else
    except ProcessLookupError:
        pass


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    # Short temp path: Ray's unix socket paths under it must stay below 107 characters.
    c = LocalCluster(tmp_path_factory.mktemp("ray"))
    try:
        c.start()
        yield c
    finally:
        c.stop()


def submit(cluster: LocalCluster, *args: str, timeout: float = 600, env=None) -> subprocess.CompletedProcess:
    """jobs/submit.py as a user runs it: by default with the token in $RAY_AUTH_TOKEN only."""
    env = env or client_env(cluster.temp_dir / "home", RAY_AUTH_TOKEN=TOKEN)
    return subprocess.run([sys.executable, str(SUBMIT), "--address", cluster.dashboard, *args],
                          env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def submission_id(proc: subprocess.CompletedProcess) -> str:
    first = proc.stdout.splitlines()[0]
    assert first.startswith("submission id: "), proc.stdout[:2000] + proc.stderr[-2000:]
    return first.split(": ", 1)[1]


def wait_terminal(client, job_id: str, timeout: float = 300):
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = client.get_job_info(job_id)
        if info.status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return info
        time.sleep(2)
    raise TimeoutError(f"job {job_id} still {info.status} after {timeout}s")


@pytest.fixture(scope="module")
def submitted_run(cluster, tiny_model, tmp_path_factory):
    d = tmp_path_factory.mktemp("job")
    seeds = d / "seeds.jsonl"
    seeds.write_text("".join(json.dumps({"instruction": f"Describe item {i} briefly.", "input": "",
                                         "output": f"item {i}"}) + "\n" for i in range(N_SEEDS)))
    out = d / "out"
    # A config file relative to the uploaded working dir, then overrides, as a user would submit.
    proc = submit(cluster, "conf/local.yaml", *tiny_overrides(tiny_model, seeds, out, rounds=2))
    return proc, submission_id(proc), out


def test_two_round_run_succeeds_through_ray_job_submit(cluster, submitted_run):
    from ray.job_submission import JobStatus

    proc, job_id, out = submitted_run
    info = cluster.client().get_job_info(job_id)
    assert proc.returncode == 0 and info.status == JobStatus.SUCCEEDED, (
        f"{info.status}: {info.message}\n{cluster.client().get_job_logs(job_id)[-6000:]}")
    assert "evol-ray: output in" in proc.stdout  # the driver's summary, streamed back by the script
    final = json.loads((out / "final" / "manifest.json").read_text())
    assert final["complete"] and final["rounds"] == [1, 2]
    for r in (1, 2):
        m = json.loads((out / f"round_{r}" / "manifest.json").read_text())
        assert m["complete"] and sum(m["status_counts"].values()) == m["rows_in"]
        assert m["device"] == "cpu" and m["engine"]["requests"] > 0
    assert json.loads((out / "round_1" / "manifest.json").read_text())["rows_in"] == N_SEEDS
    # conf/local.yaml came through the working dir: include_seeds is set there, not in the overrides.
    assert final["include_seeds"] is True


def test_driver_asks_for_no_gpu_and_runs_on_the_cpu_only_head(cluster, submitted_run):
    _, job_id, _ = submitted_run
    info = cluster.client().get_job_info(job_id)
    nodes = {n["node_id"]: n for n in cluster.nodes()}
    head = nodes[info.driver_node_id]
    assert head["is_head_node"]
    # The head offers neither CPU nor GPU (and Ray places an entrypoint that asks for a GPU on a
    # node that has one): a driver that asked for either could not have run there.
    assert head["resources_total"].get("GPU", 0) == 0 and head["resources_total"].get("CPU", 0) == 0


def test_bad_config_fails_the_job_with_the_config_error_in_its_logs(cluster, tmp_path):
    from ray.job_submission import JobStatus

    proc = submit(cluster, "--no-wait", "conf/local.yaml", f"output.path={tmp_path / 'out'}",
                  "engine.replica=2", timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    job_id = submission_id(proc)
    client = cluster.client()
    info = wait_terminal(client, job_id)
    logs = client.get_job_logs(job_id)
    assert info.status == JobStatus.FAILED, logs[-3000:]
    assert "config error" in logs and "engine.replica" in logs and "allowed here" in logs
    assert not (tmp_path / "out").exists()  # failed at config load, before any output or engine


def test_submission_without_the_token_is_refused_and_says_what_to_set(cluster, tmp_path):
    proc = submit(cluster, "conf/local.yaml", f"output.path={tmp_path / 'out'}", timeout=60,
                  env=client_env(tmp_path / "home"))
    assert proc.returncode == 2 and proc.stdout == "", proc.stderr[-2000:]
    assert "requires token authentication" in proc.stderr and "no token was found" in proc.stderr
    assert "RAY_AUTH_TOKEN" in proc.stderr and "k8s/README.md" in proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "out").exists()


def test_a_wrong_token_is_refused_without_showing_it(cluster, tmp_path):
    wrong = secrets.token_hex(16)
    proc = submit(cluster, "conf/local.yaml", timeout=60, env=client_env(tmp_path / "home", RAY_AUTH_TOKEN=wrong))
    assert proc.returncode == 2 and "refused the token from $RAY_AUTH_TOKEN" in proc.stderr, proc.stderr[-2000:]
    assert wrong not in proc.stderr + proc.stdout and TOKEN not in proc.stderr + proc.stdout


def test_the_token_file_of_ray_start_is_found_in_home(cluster, tmp_path):
    # `ray start --head` on this machine writes ~/.ray/auth_token; nothing else needs setting
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text(TOKEN + "\n")
    proc = submit(cluster, "--no-wait", "conf/local.yaml", f"output.path={tmp_path / 'out'}",
                  "engine.replica=2", timeout=120, env=client_env(home))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"auth: token from the file {home / '.ray' / 'auth_token'}" in proc.stderr
    wait_terminal(cluster.client(), submission_id(proc))


def test_submit_refuses_to_run_without_a_cluster_address():
    env = cluster_env()
    proc = subprocess.run([sys.executable, str(SUBMIT), "conf/local.yaml"], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "set RAY_ADDRESS" in proc.stderr and proc.stdout == ""


def test_run_joining_the_cluster_without_the_token_says_what_to_set(cluster, tiny_model, tmp_path):
    seeds = tmp_path / "seeds.jsonl"
    seeds.write_text(json.dumps({"instruction": "Describe a lamp.", "input": "", "output": "x"}) + "\n")
    args = [sys.executable, "-m", "evol_ray", "run", "conf/local.yaml",
            *tiny_overrides(tiny_model, seeds, tmp_path / "out", rounds=1), f"ray.address={cluster.gcs}"]
    proc = subprocess.run(args, env=client_env(tmp_path / "home"), cwd=REPO, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"the Ray cluster at {cluster.gcs} requires token authentication" in proc.stderr
    assert "RAY_AUTH_TOKEN" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "round_1").exists()
