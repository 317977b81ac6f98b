"""How a command ends (evol_ray/stops.py): one line, the exit code of the kind of stop, the
traceback in the log file the line names."""

import errno
import os
import signal

import pytest
from ray.exceptions import OwnerDiedError

from evol_ray import stops


class RayTaskError(Exception):
    """Like Ray's: the task's own exception under `cause`."""

    def __init__(self, cause):
        super().__init__("ray::Write() (pid=1, ip=127.0.0.1)\n  File ...")
        self.cause = cause


def test_a_full_disk_under_rays_wrapper_is_named_in_one_line():
    full = RayTaskError(OSError(errno.ENOSPC, "No space left on device", "/data/out/round_1/_attempts/a.parquet"))
    assert stops.describe(full) == "no space left on the device writing /data/out/round_1/_attempts/a.parquet"
    denied = OSError(errno.EACCES, "Permission denied", "/data/out/run.json")
    assert stops.describe(denied) == "not allowed to write /data/out/run.json (Permission denied)"
    assert stops.describe(ValueError("first line\nsecond")) == "ValueError: first line"


def test_a_full_disk_inside_a_ray_data_write_names_the_output():
    """A write inside a Ray Data task (seen on a full tmpfs) carries Ray's own words where the
    file name would be: the line names the command's output path instead."""
    full = RayTaskError(OSError(errno.ENOSPC, "Error writing bytes to file",
                                "Failed to apply UDF transform after 1/1 attempts (total backoff 0.0s)."))
    assert stops.describe(full, "/data/out") == "no space left on the device writing under /data/out"
    assert stops.describe(full) == "no space left on the device writing a file"


def wrapped(inner: BaseException) -> Exception:
    """`inner` under a library's wrapper (`raise ... from`)."""
    try:
        try:
            raise inner
        except BaseException as e:
            raise RuntimeError("the stage failed") from e
    except RuntimeError as outer:
        return outer


def failed_while_handling(inner: BaseException) -> Exception:
    """A cleanup's error raised while `inner` was being handled (`__context__`)."""
    try:
        try:
            raise inner
        except BaseException:
            raise OSError("the engine's socket is closed")
    except OSError as outer:
        return outer


@pytest.mark.parametrize("raised, code, said", [
    (KeyboardInterrupt(), 130, "stopped by Ctrl-C (SIGINT)"),
    (stops.Terminated(), 143, "stopped by SIGTERM"),
    # seen in CI: a SIGTERM under another exception ended as "run: Terminated" with exit code 1
    (wrapped(stops.Terminated()), 143, "stopped by SIGTERM"),
    (failed_while_handling(stops.Terminated()), 143, "stopped by SIGTERM"),
    (wrapped(KeyboardInterrupt()), 130, "stopped by Ctrl-C (SIGINT)"),
    (wrapped(ValueError("bad row")), 1, "ValueError: bad row"),  # the cause is named
    (SystemExit(signal.SIGTERM), 143, "stopped by SIGTERM"),  # Ray's own SIGTERM handler, after ray.init
    (RayTaskError(OSError(errno.ENOSPC, "No space left on device", "/o/a.parquet")), 1, "no space left"),
    (RayTaskError(PermissionError(errno.EACCES, "Permission denied", "/o/a.parquet")), 1,
     "not allowed to write /o/a.parquet (Permission denied)"),
    (OwnerDiedError("ab" * 28, None, "(task call site)"), 1, "Ray lost data the run held in its object store"),
])
def test_each_stop_has_its_code_one_line_and_a_traceback_in_the_log(tmp_path, monkeypatch, capsys, raised, code, said):
    monkeypatch.setenv("EVOL_RAY_LOGS", str(tmp_path))

    def body(log_file):
        raise raised

    assert stops.guarded("run", ["run", "conf/local.yaml", "evolution.rounds=2"], body) == code
    err = capsys.readouterr().err
    [line] = err.strip().splitlines()
    assert line.startswith(f"evol-ray: run: {said}") and "the rows written so far are kept" in line
    assert "run again to resume: evol-ray run conf/local.yaml evolution.rounds=2" in line
    [log] = os.listdir(tmp_path)
    assert f"(details: {tmp_path / log})" in line and "Traceback" in (tmp_path / log).read_text()


def test_a_real_sigterm_raises_in_the_main_thread_and_other_exits_pass(tmp_path, monkeypatch):
    monkeypatch.setenv("EVOL_RAY_LOGS", str(tmp_path))

    def body(log_file):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("not reached: the handler raises first")

    assert stops.guarded("score", ["score", "out"], body) == 143
    assert signal.getsignal(signal.SIGTERM) is not None  # the earlier handler is back
    with pytest.raises(SystemExit):
        stops.guarded("report", ["report", "out"], lambda f: (_ for _ in ()).throw(SystemExit(3)))
    assert stops.guarded("report", ["report", "out"], lambda f: 0) == 0
