"""One writer per output (io/lease.py) on local disk: taken exclusively, a second taker refused
naming the holder (or waiting for it), a dead holder's lease taken at once, an expired one taken,
a lost lease stops commits, released at the end."""

import json
import os
import socket
import subprocess
import sys
import threading

import pytest

from evol_ray.io import commit
from evol_ray.io.lease import LEASE_FILE, Lease, LeaseHeld, LeaseLost
from evol_ray.io.storage import locate
from evol_ray.config import load_config


def _out(tmp_path):
    return locate(str(tmp_path / "out"), load_config(["input.path=x", "output.path=y", "model.source=m"]).storage)


def test_a_second_taker_is_refused_naming_the_holder_then_gets_it_after_release(tmp_path, monkeypatch):
    monkeypatch.setenv("RAY_JOB_ID", "02000000")
    first = Lease(_out(tmp_path)).take()
    doc = json.loads((tmp_path / "out" / LEASE_FILE).read_text())
    assert doc["pid"] == os.getpid() and doc["host"] == socket.gethostname() and doc["job"] == "02000000"
    with pytest.raises(LeaseHeld, match=rf"held by another evol-ray run \({socket.gethostname()} pid {os.getpid()}, "
                                        r"Ray job 02000000, since .*output.wait_for_lease_s"):
        Lease(_out(tmp_path)).take()
    first.release()
    assert not (tmp_path / "out" / LEASE_FILE).exists()
    Lease(_out(tmp_path)).take().release()


def test_a_waiting_taker_gets_the_lease_when_its_holder_gives_it_up(tmp_path):
    first = Lease(_out(tmp_path)).take()
    threading.Timer(1.0, first.release).start()
    second = Lease(_out(tmp_path)).take(wait_s=30)
    assert json.loads((tmp_path / "out" / LEASE_FILE).read_text())["token"] == second.token
    second.release()


def test_a_dead_holder_on_this_host_is_taken_over_at_once(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    pid = int(dead.stdout)
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / LEASE_FILE).write_text(json.dumps(
        {"host": socket.gethostname(), "pid": pid, "since": 0, "expires": 4e9, "token": "old"}))
    lease = Lease(_out(tmp_path)).take()  # its expiry is far away, but its process is gone
    assert json.loads((tmp_path / "out" / LEASE_FILE).read_text())["token"] == lease.token
    lease.release()


def test_another_hosts_lease_is_taken_only_once_it_expired(tmp_path):
    (tmp_path / "out").mkdir()
    path = tmp_path / "out" / LEASE_FILE
    path.write_text(json.dumps({"host": "other-node", "pid": 1, "since": 0, "expires": 4e9, "token": "theirs"}))
    with pytest.raises(LeaseHeld, match="other-node pid 1"):
        Lease(_out(tmp_path)).take()
    path.write_text(json.dumps({"host": "other-node", "pid": 1, "since": 0, "expires": 1.0, "token": "theirs"}))
    Lease(_out(tmp_path)).take().release()


def test_a_driver_that_lost_its_lease_commits_nothing(tmp_path):
    clock = [1000.0]
    out = _out(tmp_path)
    lease = Lease(out, ttl_s=60, clock=lambda: clock[0]).take()
    guarded = out.join("round_1")
    guarded.guard = lease.check
    commit.commit(guarded, {"round": 1}, [])  # held: commits
    clock[0] += 61  # paused past its lease (no renewal ran)
    with pytest.raises(LeaseLost, match="expired while this driver was not renewing it"):
        commit.commit(guarded, {"round": 1}, [])
    # taken by someone else meanwhile: the renewal sees it and the lease is lost for good
    other = Lease(out, ttl_s=60, clock=lambda: clock[0])
    other.token = "other"
    (tmp_path / "out" / LEASE_FILE).write_text(json.dumps(other._doc()))
    lease.lost = None
    lease.renew()
    with pytest.raises(LeaseLost, match="taken by"):
        lease.check()
    lease.release()
    assert json.loads((tmp_path / "out" / LEASE_FILE).read_text())["token"] == "other"  # not ours to remove
