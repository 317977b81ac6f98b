"""`bench/in_flight.py` small: the stage's row slots keep the engine fed with long-tailed replies
(the synthetic generator's latency mode), where the stage before them (a batch's rows back only
when its slowest row ended) did not. Figures of requests in flight, not of time."""

import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.bench

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_row_slots_keep_the_rows_in_flight_asked_for():
    env = {**os.environ, "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    done = subprocess.run([sys.executable, os.path.join(ROOT, "bench", "in_flight.py"), "--rows", "512",
                           "--rows-in-flight", "32", "--batch-size", "8", "--latency-ms", "30", "--sigma", "1.2"],
                          env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    last = dict(kv.split("=") for kv in done.stdout.strip().splitlines()[-1].split())
    asked, old, new = int(last["asked"]), float(last["old"]), float(last["new"])
    assert asked == 32 and new >= 0.9 * asked, done.stdout[-2000:]  # the bar
    assert new > old, done.stdout[-2000:]  # a batch's slow row no longer holds its batch's slots
