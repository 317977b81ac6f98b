"""Progress lines of an engine phase (evol_ray/progress.py): rows done of the total, the rate, the
time left, kept and eliminated so far with the top reasons; rows done never go down."""

import logging
import time
from collections import Counter

from evol_ray.progress import Progress, describe, line, totals


def test_totals_add_up_every_actors_latest_snapshot():
    snaps = {"a": {"rows": 10, "statuses": {"kept": 3, "eliminated": 7}, "reasons": {"sorry": 2, "no_information_gain": 5}},
             "b": {"rows": 5, "statuses": {"kept": 1, "eliminated": 4}, "reasons": {"no_information_gain": 4}}}
    t = totals(snaps)
    assert t["rows"] == 15 and t["statuses"] == Counter(kept=4, eliminated=11)
    assert describe(t) == "kept 4, eliminated 11 (no_information_gain 9, sorry 2)"
    assert describe(totals({"c": {"rows": 3}})) == ""  # a phase whose rows have no status (scores)


def test_a_line_says_rows_of_total_rate_and_time_left():
    assert line("round 1", 250, 1000, 100.0, "kept 40, eliminated 210") == \
        "round 1: 250 of 1000 (25%) rows, 2.50 rows/s, about 5m00s left; kept 40, eliminated 210"
    assert line("round 2", 0, None, 3.0, "") == "round 2: 0 rows, 0.00 rows/s"  # total unknown, nothing done yet
    assert line("scores", 10, 10, 5.0, "").endswith("rows, 2.00 rows/s")  # done: no estimate
    assert "about 2h46m left" in line("round 3", 1, 10_001, 1.0, "")


def test_rows_done_never_go_down_and_lines_come_while_the_phase_runs(caplog):
    reads = iter([5, 12, 9, 20])  # 9: an actor restarted mid-phase reports from 0 again
    last = {"rows": 20}

    def read():
        n = next(reads, last["rows"])
        return {"rows": n, "statuses": Counter(kept=n // 2, eliminated=n - n // 2), "reasons": Counter(sorry=n - n // 2)}

    with caplog.at_level(logging.INFO, logger="evol_ray"):
        p = Progress("round 1", 40, read, every_s=0.05, tty=False).start()
        deadline = time.monotonic() + 5
        while sum("round 1:" in r.getMessage() for r in caplog.records) < 5 and time.monotonic() < deadline:
            time.sleep(0.02)
        p.stop()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("round 1:")]
    rows = [int(m.split(": ", 1)[1].split(" ")[0]) for m in lines]
    assert len(rows) >= 5 and rows == sorted(rows) and rows[:3] == [5, 12, 12]
    assert all(" of 40 (" in m for m in lines) and any("left" in m for m in lines)
    assert "kept" in lines[-1] and "(sorry" in lines[-1]


def test_on_a_terminal_one_tqdm_line_counts_the_rows(capsys):
    reads = iter([3, 8, 6])  # polled by hand here, before the bar's own first poll (1 s)
    p = Progress("scores", 10, lambda: {"rows": next(reads, 10), "statuses": Counter(), "reasons": Counter()},
                 every_s=30, tty=True).start()
    p.poll()
    p.poll()
    p.stop()  # its last poll reads 6: the bar stays at 8
    assert p.bar.n == 8 and p.bar.total == 10
    assert "scores" in capsys.readouterr().err
