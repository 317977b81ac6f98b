"""Progress of an engine phase (a round, a calibration, the scores, a selection, an Auto Evol step),
read from the figures its stage actors already report to the phase's `EngineStats` actor: rows
done of the total, rows per second, kept and eliminated so far with the top reasons, and the time
left. On a terminal one updating line (tqdm); otherwise, as in a Ray job's log or CI, a plain
log line every `output.progress_every_s` seconds. Rows done never go down.
"""

from __future__ import annotations

import contextlib
import logging
import sys
import threading
import time
from collections import Counter
from typing import Callable, Iterator, Optional

log = logging.getLogger("evol_ray")

TOP_REASONS = 3


def totals(snapshots: dict) -> dict:
    """The stage actors' latest snapshots -> rows done and the statuses and reasons of those rows."""
    statuses: Counter = Counter()
    reasons: Counter = Counter()
    for s in snapshots.values():
        statuses.update(s.get("statuses", {}))
        reasons.update(s.get("reasons", {}))
    return {"rows": sum(s.get("rows", 0) for s in snapshots.values()), "statuses": statuses, "reasons": reasons}


def describe(done: dict) -> str:
    """'kept 40, eliminated 70 (no_information_gain 30, ...)' from `totals`; '' for a phase whose
    rows carry no status (a calibration's scores)."""
    st = done["statuses"]
    if not st:
        return ""
    kept = st.get("kept", 0)
    others = sum(st.values()) - kept
    top = ", ".join(f"{r} {n}" for r, n in done["reasons"].most_common(TOP_REASONS))
    return f"kept {kept}, eliminated {others}" + (f" ({top})" if top else "")


def _clock(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rem = divmod(seconds, 3600)
    m, s = divmod(rem, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s" if m else f"{s}s"


def line(label: str, rows: int, total: Optional[int], elapsed: float, extra: str) -> str:
    """One plain progress line."""
    rate = rows / elapsed if elapsed > 0 else 0.0
    of = f" of {total} ({rows / total:.0%})" if total else ""
    left = f", about {_clock((total - rows) / rate)} left" if total and rate > 0 and rows < total else ""
    return f"{label}: {rows}{of} rows, {rate:.2f} rows/s{left}" + (f"; {extra}" if extra else "")


class Progress:
    """Polls `read()` (-> `totals`) in a thread until `stop()`: tqdm on a terminal, log lines
    every `every_s` otherwise."""

    def __init__(self, label: str, total: Optional[int], read: Callable[[], dict], every_s: float,
                 tty: Optional[bool] = None, clock=time.monotonic) -> None:
        self.label, self.total, self.read, self.every_s = label, total, read, every_s
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.clock = clock
        self.t0 = clock()
        self.rows = 0
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._loop, name=f"progress {label}", daemon=True)
        self.bar = None

    def start(self) -> "Progress":
        if self.tty:
            from tqdm import tqdm

            self.bar = tqdm(total=self.total, desc=self.label, unit="row", dynamic_ncols=True, leave=True)
        self.thread.start()
        return self

    def poll(self) -> dict:
        """Read the stage's figures once; rows done never go down (an actor restarted mid-phase
        reports from 0 again)."""
        try:
            done = self.read()
        except Exception:  # the stats actor is gone at the phase's end: nothing new to show
            done = {"rows": self.rows, "statuses": Counter(), "reasons": Counter()}
        done["rows"] = max(self.rows, done["rows"])
        if self.bar is not None:
            self.bar.update(done["rows"] - self.rows)
            self.bar.set_postfix_str(describe(done), refresh=False)
        self.rows = done["rows"]
        return done

    def _loop(self) -> None:
        wait = 1.0 if self.tty else self.every_s
        while not self.done.wait(wait):
            done = self.poll()
            if not self.tty:
                log.info("%s", line(self.label, done["rows"], self.total, self.clock() - self.t0, describe(done)))

    def stop(self) -> None:
        self.done.set()
        self.thread.join(timeout=5)
        if self.bar is not None:
            self.poll()
            self.bar.close()


@contextlib.contextmanager
def shown(label: str, total: Optional[int], stats, every_s: float, fresh: bool = False) -> Iterator[Optional[Progress]]:
    """Progress of the phase whose stage actors report to `stats` (an `EngineStats` actor handle),
    while the body runs. `every_s` <= 0: none. `fresh`: `stats` was started for this phase, so
    nothing is read before it starts (a stats actor takes about half a second to start, which the
    engines would wait)."""
    if stats is None or every_s <= 0:
        yield None
        return
    import ray

    def now() -> dict:
        return totals(ray.get(stats.get.remote(), timeout=10))

    base = {"rows": 0, "statuses": Counter(), "reasons": Counter()}
    if not fresh:
        try:  # what an earlier phase on the same stats actor reported (Auto Evol's steps)
            base = now()
        except Exception:  # the stats actor slow to start: progress counts from zero, the phase goes on
            pass

    def read() -> dict:
        t = now()
        return {"rows": t["rows"] - base["rows"], "statuses": t["statuses"] - base["statuses"],
                "reasons": t["reasons"] - base["reasons"]}

    p = Progress(label, total, read, every_s).start()
    try:
        if p.tty:
            from tqdm.contrib.logging import logging_redirect_tqdm

            with logging_redirect_tqdm(loggers=[log]):
                yield p
        else:
            yield p
    finally:
        p.stop()
