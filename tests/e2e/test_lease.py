"""One writer per output, for real: on the loopback S3 server (conditional PUTs: If-None-Match to
take, If-Match to renew), and two drivers started a second apart on one local output with the
real engine: one runs, the other stops at once naming the holder, and the output holds every row
once. (A driver killed with SIGKILL leaves its lease behind: test_failures' rerun on the same host
takes it over at once.)"""

import json
import os
import subprocess
import sys
import time

import pytest

from evol_ray import columns as C
from evol_ray.config import load_config
from evol_ray.io.lease import LEASE_FILE, Lease, LeaseHeld, LeaseLost
from evol_ray.io.storage import locate
from tests.e2e.test_failures import round_rows, slow_round, wait_for, write_seeds

pytestmark = pytest.mark.e2e


def test_the_lease_on_s3_is_exclusive_renewed_by_etag_and_released(s3):
    url = s3.make_bucket("evol-lease")
    cfg = load_config(["input.path=x", f"output.path={url}/runs/a", "model.source=m", *s3.overrides()])
    out = locate(cfg.output.path, cfg.storage)
    first = Lease(out).take()
    with pytest.raises(LeaseHeld, match="held by another evol-ray run"):
        Lease(locate(cfg.output.path, cfg.storage)).take()
    etag = first.etag
    first.renew()
    assert first.etag and first.etag != etag and first.lost is None  # renewed over its own ETag
    # someone else's write in between: the next renewal's If-Match fails, and nothing more commits
    out.fs.pipe_file(out.join(LEASE_FILE).path, json.dumps({"host": "x", "pid": 1, "expires": 4e9,
                                                             "token": "theirs"}).encode())
    first.renew()
    with pytest.raises(LeaseLost, match="taken by x pid 1"):
        first.check()
    first.release()
    assert out.fs.exists(out.join(LEASE_FILE).path)  # theirs stays
    out.fs.rm(out.join(LEASE_FILE).path)
    second = Lease(locate(cfg.output.path, cfg.storage)).take()
    second.release()
    assert not out.fs.exists(out.join(LEASE_FILE).path)


def test_a_killed_drivers_lease_on_s3_is_taken_over_at_once(s3):
    """A driver SIGKILLed on this host leaves its lease on S3, valid for another minute: the rerun
    takes it at once (its process is gone), over the dead lease's ETag."""
    import socket

    url = s3.make_bucket("evol-lease-dead")
    cfg = load_config(["input.path=x", f"output.path={url}/runs/a", "model.source=m", *s3.overrides()])
    out = locate(cfg.output.path, cfg.storage)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out.fs.pipe_file(out.join(LEASE_FILE).path, json.dumps({
        "host": socket.gethostname(), "pid": int(dead.stdout), "since": time.time(),
        "expires": time.time() + 60, "token": "killed"}).encode())
    started = time.monotonic()
    lease = Lease(locate(cfg.output.path, cfg.storage)).take()
    assert time.monotonic() - started < 5
    assert json.loads(out.fs.cat_file(out.join(LEASE_FILE).path))["token"] == lease.token
    lease.release()
    assert not out.fs.exists(out.join(LEASE_FILE).path)


def test_two_drivers_on_one_output_one_runs_the_other_stops_naming_it(tmp_path, tiny_model, ray_local):
    seed_ids = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "out"
    args = slow_round(tiny_model, tmp_path / "seeds.jsonl", out)
    gcs = ray_local.get_runtime_context().gcs_address
    cmd = [sys.executable, "-m", "evol_ray", "run", *args, f"ray.address={gcs}"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EVOL_RAY_LOGS": str(tmp_path / "logs")}
    first = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: (out / LEASE_FILE).exists(), timeout=120)
        time.sleep(1)
        second = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr[-2000:]
        assert "held by another evol-ray run (" in second.stderr and f"pid {first.pid}" in second.stderr
        _, err = first.communicate(timeout=600)
        assert first.returncode == 0, err[-3000:]
    finally:
        if first.poll() is None:
            first.kill()
    m, rows = round_rows(out)
    assert sorted(x[C.PARENT_ID] for x in rows) == sorted(seed_ids) and m["rows_in"] == len(seed_ids)
    assert not (out / LEASE_FILE).exists()  # given up at the end
