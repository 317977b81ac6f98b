"""A driver stopped by Ctrl-C (SIGINT) or a scheduler's SIGTERM mid-round, with the real engine:
one line that says what happened and how to resume, exit code 130 or 143, the traceback in the
log file the line names, no engine process left behind, and a rerun that completes with every row
once."""

import os
import signal
import subprocess
import sys

import pytest

from evol_ray import columns as C
from evol_ray.config import load_config
from evol_ray.pipeline.driver import run
from tests.conftest import parquet_rows
from tests.e2e.test_failures import N, engine_actor_processes, round_rows, slow_round, wait_for, write_seeds

pytestmark = pytest.mark.e2e


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


@pytest.mark.parametrize("sig, code, said", [(signal.SIGINT, 130, "stopped by Ctrl-C (SIGINT)"),
                                             (signal.SIGTERM, 143, "stopped by SIGTERM")])
def test_a_stopped_driver_says_so_in_one_line_and_the_rerun_completes(tmp_path, tiny_model, ray_local, sig, code, said):
    seed_ids = write_seeds(tmp_path / "seeds.jsonl")
    out = tmp_path / "out"
    args = slow_round(tiny_model, tmp_path / "seeds.jsonl", out)
    gcs = ray_local.get_runtime_context().gcs_address
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "EVOL_RAY_LOGS": str(tmp_path / "logs")}
    driver = subprocess.Popen([sys.executable, "-m", "evol_ray", "run", *args, f"ray.address={gcs}"],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        attempts = out / "round_1" / "_attempts"
        assert wait_for(lambda: parquet_rows(attempts) >= 4), "no attempt was written in time"
        driver.send_signal(sig)
        _, err = driver.communicate(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == code, err[-3000:]
    [line] = [x for x in err.splitlines() if x.startswith("evol-ray: run:")]
    assert said in line and "the rows written so far are kept" in line and "run again to resume: evol-ray run" in line
    assert "Traceback" not in err
    log_file = line.rsplit("(details: ", 1)[1].rstrip(")")
    assert log_file.startswith(str(tmp_path / "logs")) and "Traceback" in open(log_file).read()
    assert (out / "logs" / os.path.basename(log_file)).exists()  # copied beside the output
    # the engines were stopped by the driver itself, their vLLM processes with them
    assert wait_for(lambda: not engine_actor_processes() and not vllm_processes(), timeout=60, step=0.5)
    done_before = parquet_rows(attempts)
    assert 0 < done_before < N and not (out / "round_1" / "manifest.json").exists()

    run(load_config(args))
    m, rows = round_rows(out)
    assert sorted(x[C.PARENT_ID] for x in rows) == sorted(seed_ids), "every seed exactly once"
    assert m["rows_resumed"] == done_before
