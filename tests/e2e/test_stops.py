"""A driver stopped by Ctrl-C (SIGINT), a scheduler's SIGTERM or a full disk mid-round, with the real engine:
one line that says what happened and how to resume, exit code 130, 143 or 1, the traceback in the
log file the line names, no engine process left behind, and a rerun that completes with every row
once."""

import os
import signal
import subprocess
import sys
from datetime import datetime

import pytest

from evol_ray import columns as C
from evol_ray.config import load_config
from evol_ray.pipeline.driver import run
from tests.conftest import parquet_rows
from tests.e2e.test_failures import N, engine_actor_processes, round_rows, slow_round, wait_for, write_seeds

pytestmark = pytest.mark.e2e


# `python -m evol_ray` with Ctrl-C raising KeyboardInterrupt, as from a terminal: a test session
# started in the background (`nohup ... &`, some CI runners) ignores SIGINT, and its children
# inherit that, so the signal would never reach the driver.
AS_FROM_A_TERMINAL = ("import runpy, signal; signal.signal(signal.SIGINT, signal.default_int_handler); "
                      "runpy.run_module('evol_ray', run_name='__main__', alter_sys=True)")


def vllm_processes():
    """vLLM's engine-core and worker processes under this test session (`VLLM::...`)."""
    found = []
    for p in __import__("psutil").Process(os.getpid()).children(recursive=True):
        try:
            if (p.cmdline() or [""])[0].startswith("VLLM::"):
                found.append(p.pid)
        except Exception:
            pass
    return found


def engines_serving_for(log_dir, seconds: float) -> bool:
    """The driver's log (in `log_dir`) says its engines started at least `seconds` ago."""
    for f in log_dir.glob("run-*.log") if log_dir.exists() else ():
        for line in f.read_text(errors="ignore").splitlines():
            if " engines: " in line and " started in " in line:
                at = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
                return (datetime.now() - at).total_seconds() >= seconds
    return False


def stop_mid_round(tmp_path, tiny_model, ray_local, out, stop, written=True):
    """A driver of the slow round into `out`, stopped by `stop(driver)` once 4 rows are written
    (`written`: the slow round's writers flush every second), else 4 s after its engines started,
    well inside the round's 20-odd seconds of answers.
    Returns the seeds' ids, the run's arguments, the driver's exit code and stderr, and the one
    stop line, after checking what every stop must: no traceback on the terminal (nor Ray Data's
    own words), and no engine process left (the driver stopped its engines itself)."""
    seed_ids = write_seeds(tmp_path / "seeds.jsonl")
    args = slow_round(tiny_model, tmp_path / "seeds.jsonl", out)
    gcs = ray_local.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EVOL_RAY_LOGS": str(tmp_path / "logs")}
    driver = subprocess.Popen([sys.executable, "-c", AS_FROM_A_TERMINAL, "run", *args, f"ray.address={gcs}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        attempts = out / "round_1" / "_attempts"
        going = (lambda: parquet_rows(attempts) >= 4) if written else (
            lambda: engines_serving_for(tmp_path / "logs", 4.0))
        assert wait_for(going), "the round did not get going in time"
        stop(driver)
        _, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    [line] = [x for x in err.splitlines() if x.startswith("evol-ray: run:")] or [err[-3000:]]
    assert "the rows written so far are kept" in line and "run again to resume: evol-ray run" in line, \
        (driver.returncode, err[-3000:])
    assert "Traceback" not in err and "open an issue" not in err  # Ray Data's own words stay in its log
    assert wait_for(lambda: not engine_actor_processes() and not vllm_processes(), timeout=60, step=0.5)
    return seed_ids, args, driver.returncode, err, line


def rerun_completes(args, out, seed_ids):
    """The rows written before the stop are kept; the same command sends only the rest."""
    attempts = out / "round_1" / "_attempts"
    done_before = parquet_rows(attempts)
    assert done_before < N and not (out / "round_1" / "manifest.json").exists()
    run(load_config(args))
    m, rows = round_rows(out)
    assert sorted(x[C.PARENT_ID] for x in rows) == sorted(seed_ids), "every seed exactly once"
    assert m["rows_resumed"] == done_before


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "stopped by Ctrl-C (SIGINT)"),
                                             (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_a_stopped_driver_says_so_in_one_line_and_the_rerun_completes(tmp_path, tiny_model, ray_local, sig, code, said):
    out = tmp_path / "out"
    seed_ids, args, returncode, err, line = stop_mid_round(tmp_path, tiny_model, ray_local, out,
                                                           lambda driver: driver.send_signal(sig), written=False)
    assert returncode == code, err[-3000:]
    assert said in line
    log_file = line.rsplit("(details: ", 1)[1].rstrip(")")
    assert log_file.startswith(str(tmp_path / "logs")) and "Traceback" in open(log_file).read()
    assert (out / "logs" / os.path.basename(log_file)).exists()  # copied beside the output
    rerun_completes(args, out, seed_ids)


@pytest.fixture
def small_disk(tmp_path):
    """A 16 MiB tmpfs mounted for the test (skipped where this machine allows no mount)."""
    mnt = tmp_path / "small_disk"
    mnt.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tmpfs", str(mnt)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"no tmpfs mount on this machine: {mounted.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(folder) -> os.PathLike:
    """Every free byte of `folder`'s file system taken by one file, which is returned."""
    filler = folder / "filler.bin"
    with open(filler, "wb") as f:
        try:
            while True:
                f.write(b"\0" * 65536)
                f.flush()
        except OSError:
            pass
    return filler


def test_a_full_disk_stops_with_one_line_and_the_rerun_completes(tmp_path, tiny_model, ray_local, small_disk):
    out = small_disk / "out"
    filler = []
    seed_ids, args, returncode, err, line = stop_mid_round(tmp_path, tiny_model, ray_local, out,
                                                           lambda driver: filler.append(fill(small_disk)))
    assert returncode == 1, err[-3000:]
    assert "no space left on the device" in line and str(out) in line, line
    os.remove(filler[0])  # space again: the same command resumes
    rerun_completes(args, out, seed_ids)
