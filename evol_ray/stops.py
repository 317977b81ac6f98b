"""How a command ends, the same for `run`, `score`, `select`, `report` and `export`: one line a
person can read, the traceback in a log file that line names, and an exit code that says what
kind of stop it was.

Exit codes: 0 done; 2 bad input or config found before any work (nothing was written); 1 a failure
during the work (a stopped engine, a full disk, a store away); 130 Ctrl-C (SIGINT); 143 SIGTERM
(a scheduler's preemption). Rows written before a stop are kept: the same command resumes.

Every command writes its log (evol-ray's lines and any traceback) to a local file,
`$EVOL_RAY_LOGS` or ~/.cache/evol-ray/logs/<command>-<time>-<pid>.log; `run` copies it beside its
output at exit (OUTPUT/logs/) where the store takes it.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shlex
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, Iterator, Optional

log = logging.getLogger("evol_ray")

DONE, FAILED, BAD_INPUT, SIGINT_EXIT, SIGTERM_EXIT = 0, 1, 2, 130, 143


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that `finally` blocks (engines stopped) run. A
    BaseException, as KeyboardInterrupt is: no `except Exception` swallows it."""


def log_path(command: str) -> Path:
    folder = Path(os.environ.get("EVOL_RAY_LOGS") or Path.home() / ".cache" / "evol-ray" / "logs")
    return folder / f"{command}-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"


@contextlib.contextmanager
def logged_to_file(command: str) -> Iterator[Optional[Path]]:
    """evol-ray's log lines also go to a local file for the command (None when none can be made)."""
    path = log_path(command)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handler = logging.FileHandler(path, encoding="utf-8")
    except OSError:
        yield None
        return
    handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    ours = logging.getLogger("evol_ray")
    ours.addHandler(handler)
    try:
        yield path
    finally:
        ours.removeHandler(handler)
        handler.close()


@contextlib.contextmanager
def sigterm_raises() -> Iterator[None]:
    """SIGTERM raises `Terminated` in the main thread. `ray.init` sets Ray's own handler (SystemExit(15),
    which `exit_code` also reads); `keep_sigterm_ours`, called right after it, puts this one back."""
    if sys.platform == "win32" or not _main_thread():
        yield
        return

    global _GUARDED
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    _GUARDED = True
    try:
        yield
    finally:
        _GUARDED = False
        signal.signal(signal.SIGTERM, old)


_GUARDED = False  # inside `sigterm_raises` (a command run from the CLI)


def _raise_terminated(signum, frame):
    raise Terminated()


def keep_sigterm_ours() -> None:
    """Put `sigterm_raises`' handler back after `ray.init`, which sets Ray's own in Python and a
    C++ failure handler in its core worker. With those in place a SIGTERM sometimes ended the
    driver with exit code 1 and no line of ours (Ray's dump of the signal, then nothing); ours
    raises `Terminated` in the main thread, which the stop's line and the engines' shutdown follow."""
    if _GUARDED and _main_thread() and signal.getsignal(signal.SIGTERM) is not _raise_terminated:
        signal.signal(signal.SIGTERM, _raise_terminated)


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def cause_of(e: BaseException) -> BaseException:
    """The error under Ray's wrappers (a task's exception arrives as a RayTaskError) and chains."""
    seen = set()
    while id(e) not in seen:
        seen.add(id(e))
        inner = getattr(e, "cause", None) or e.__cause__
        if not isinstance(inner, BaseException):
            break
        e = inner
    return e


def _path_like(name) -> bool:
    return isinstance(name, str) and bool(name) and " " not in name and ("/" in name or "\\" in name)


def describe(e: BaseException, where: Optional[str] = None) -> str:
    """What happened, in one line. `where`: the command's output path, named when the error
    carries no file of its own (a write inside a Ray Data task reports none)."""
    c = cause_of(e)
    target = c.filename if isinstance(c, OSError) and _path_like(c.filename) else \
        (f"under {where}" if where else "a file")
    if isinstance(c, OSError) and c.errno in (errno.ENOSPC, errno.EDQUOT):
        return f"no space left on the device writing {target}"
    if isinstance(c, OSError) and c.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"not allowed to write {target} ({c.strerror})"
    if isinstance(c, OSError) and c.strerror:
        return f"{c.strerror}: {c.filename}" if c.filename else c.strerror
    from ray import exceptions as rx  # here, not at import: a stop is rare and the commands start light

    if isinstance(c, rx.ObjectStoreFullError):
        return "Ray's object store is full (a node's shared memory; ray start --object-store-memory sizes it)"
    if isinstance(c, (rx.ObjectLostError, rx.ObjectFetchTimedOutError)):
        return ("Ray lost data the run held in its object store (a node, or the worker that made the data, "
                f"went away: {type(c).__name__})")
    text = str(c).strip().splitlines()
    return f"{type(c).__name__}: {text[0][:300]}" if text else type(c).__name__


def exit_code(e: BaseException) -> int:
    """The stop's code. A signal counts wherever it is in `e`'s chain: Ctrl-C or SIGTERM raised
    inside code that wraps what it catches (CI saw a SIGTERM end as "run: Terminated", exit
    code 1), or a cleanup that failed while the signal's exception was being handled."""
    for x in chain_of(e):
        if isinstance(x, KeyboardInterrupt):
            return SIGINT_EXIT
        if isinstance(x, Terminated) or (isinstance(x, SystemExit) and x.code == signal.SIGTERM):
            return SIGTERM_EXIT
    return FAILED


def chain_of(e: BaseException) -> Iterator[BaseException]:
    """`e`, then what it wraps (Ray's `cause`, `__cause__`) and what it was raised while handling
    (`__context__`), each once."""
    seen, todo = set(), [e]
    while todo:
        x = todo.pop(0)
        if id(x) in seen:
            continue
        seen.add(id(x))
        yield x
        todo += [y for y in (getattr(x, "cause", None), x.__cause__, x.__context__) if isinstance(y, BaseException)]


def ended(e: BaseException, command: str, argv, log_file: Optional[Path], where: Optional[str] = None) -> int:
    """The one line for a command stopped by `e` (the traceback to the log file); its exit code."""
    code = exit_code(e)
    what = {SIGINT_EXIT: "stopped by Ctrl-C (SIGINT)", SIGTERM_EXIT: "stopped by SIGTERM"}.get(code) or describe(e, where)
    if log_file is not None:
        with open(log_file, "a", encoding="utf-8") as f:
            f.write("".join(traceback.format_exception(type(e), e, e.__traceback__)))
    resume = shlex.join(["evol-ray", *argv])
    kept = " the rows written so far are kept;" if command == "run" else ""
    where = f" (details: {log_file})" if log_file is not None else ""
    print(f"evol-ray: {command}: {what};{kept} run again to resume: {resume}{where}", file=sys.stderr)
    return code


def guarded(command: str, argv, body: Callable[[Optional[Path]], int],
            where: Callable[[], Optional[str]] = lambda: None) -> int:
    """`body(log_file)` with its stops made readable: any exception it does not turn into an exit
    code itself, Ctrl-C and SIGTERM end in `ended`'s line and code. `where()`: the output path
    the command writes, once known."""
    with logged_to_file(command) as log_file:
        try:
            with sigterm_raises():
                return body(log_file)
        except (Exception, KeyboardInterrupt, Terminated, SystemExit) as e:
            if isinstance(e, SystemExit) and e.code != signal.SIGTERM:
                raise
            return ended(e, command, argv, log_file, where())
