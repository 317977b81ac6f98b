"""One writer per output: a run holds a lease on its output path (`OUTPUT/_lease.json`) while it
writes, so that two drivers on one path (a resubmitted job, a RayJob retried while its first
driver still runs) never both evolve and commit the same rows.

Taken by an exclusive create (on S3 a conditional PUT, `If-None-Match: *`; on local disk
`O_EXCL`), renewed every `ttl / 4` by a thread (on S3 `If-Match` on the lease's ETag: a renewal
never overwrites a lease someone else took), checked before every commit (`Location.guard`, so a
driver paused past its lease never commits), given up at the end. A lease whose holder is a dead
process on the same host is taken at once; another host's once it has expired.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
from typing import Iterator, Optional

from evol_ray.io.storage import Location, is_s3

log = logging.getLogger("evol_ray")

LEASE_FILE = "_lease.json"
TTL_S = 60.0


class LeaseHeld(RuntimeError):
    """Another driver holds the output's lease; the message names it."""


class LeaseLost(RuntimeError):
    """This driver's lease expired or was taken (it was paused past it): it must not commit."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def holder_of(lease: dict) -> str:
    job = f", Ray job {lease['job']}" if lease.get("job") else ""
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(lease.get("since", 0)))
    return f"{lease.get('host')} pid {lease.get('pid')}{job}, since {since}"


class Lease:
    """The lease on `out` for this process (`take`, `renew` by a thread, `check`, `release`)."""

    def __init__(self, out: Location, ttl_s: float = TTL_S, clock=time.time) -> None:
        self.loc = out.join(LEASE_FILE)
        self.ttl_s, self.clock = ttl_s, clock
        self.token = uuid.uuid4().hex
        self.etag: Optional[str] = None
        self.expires = 0.0
        self.lost: Optional[str] = None
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None

    # -- the file ---------------------------------------------------------------------------
    def _doc(self) -> dict:
        now = self.clock()
        return {"host": socket.gethostname(), "pid": os.getpid(), "job": os.environ.get("RAY_JOB_ID") or None,
                "since": getattr(self, "since", now), "expires": now + self.ttl_s, "token": self.token}

    def _read(self):
        """(the lease document, its ETag on S3) or (None, None)."""
        try:
            if is_s3(self.loc.url):
                info = self.loc.fs.info(self.loc.path, refresh=True)
                with self.loc.fs.open(self.loc.path, "rb") as f:
                    return json.loads(f.read()), info.get("ETag")
            with open(self.loc.path, "rb") as f:
                return json.loads(f.read()), None
        except FileNotFoundError:
            return None, None
        except ValueError:  # a lease file cut short: nobody holds it
            return {}, None

    def _write(self, create: bool, etag: Optional[str] = None) -> bool:
        """Write our document: `create` only if none exists, else over the one with `etag` (S3) or
        over whatever is there (local: the caller read it just before). False when beaten to it."""
        doc = self._doc()
        blob = json.dumps(doc, sort_keys=True).encode()
        if is_s3(self.loc.url):
            kwargs = {"mode": "create"} if create else ({"IfMatch": etag} if etag else {})
            try:
                r = self.loc.fs.pipe_file(self.loc.path, blob, **kwargs)
            except FileExistsError:  # s3fs's reading of 412 Precondition Failed
                return False
            except Exception as e:  # the same, unmapped (If-Match), or 409 for a racing create
                if any(w in str(e) for w in ("Precondition", "pre-conditions", "412", "409", "Conflict")):
                    return False
                raise
            self.etag = (r or {}).get("ETag") if isinstance(r, dict) else None
            if self.etag is None:
                self.etag = self.loc.fs.info(self.loc.path, refresh=True).get("ETag")
        else:
            os.makedirs(os.path.dirname(self.loc.path), exist_ok=True)
            if create:
                try:
                    fd = os.open(self.loc.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
                except FileExistsError:
                    return False
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
            else:
                tmp = f"{self.loc.path}.{self.token}.tmp"
                with open(tmp, "wb") as f:
                    f.write(blob)
                os.replace(tmp, self.loc.path)
        self.since, self.expires = doc["since"], doc["expires"]
        return True

    # -- the protocol -----------------------------------------------------------------------
    def take(self, wait_s: float = 0.0) -> "Lease":
        """Take the lease, waiting up to `wait_s` for its holder to give it up or expire; else
        raise `LeaseHeld` naming the holder. Starts the renewal thread."""
        deadline = time.monotonic() + wait_s
        said = False
        while True:
            if self._write(create=True):
                break
            doc, etag = self._read()
            if doc is None:
                continue  # given up between our create and our read: try again
            same_host = doc.get("host") == socket.gethostname()
            dead = same_host and isinstance(doc.get("pid"), int) and not _alive(doc["pid"])
            if not doc or dead or doc.get("expires", 0) < self.clock():
                why = "its holder is gone" if dead else "it expired" if doc else "it was unreadable"
                if self._write(create=False, etag=etag):
                    time.sleep(0.2)  # two takers of one dead lease on local disk: the last write wins
                    if (self._read()[0] or {}).get("token") == self.token:
                        log.info("output lease taken over from %s: %s", holder_of(doc) if doc else "?", why)
                        break
                continue
            if time.monotonic() >= deadline:
                raise LeaseHeld(f"{self.loc.url} is held by another evol-ray run ({holder_of(doc)}; it renews it "
                                f"every {self.ttl_s / 4:.0f} s). Wait for it to end, or set output.wait_for_lease_s to "
                                "wait for the lease (a RayJob retried while its first driver still runs)")
            if not said:
                log.info("output lease held by %s: waiting up to %.0f s", holder_of(doc), deadline - time.monotonic())
                said = True
            time.sleep(min(2.0, max(0.1, deadline - time.monotonic())))
        self._thread = threading.Thread(target=self._renew_loop, name="evol-ray lease", daemon=True)
        self._thread.start()
        return self

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            try:
                self.renew()
            except Exception as e:  # the store away for a moment: try again next time
                log.warning("output lease: renewal failed (%s); retrying", e)

    def renew(self) -> None:
        doc, etag = self._read()
        if not doc or doc.get("token") != self.token:
            self.lost = f"taken by {holder_of(doc)}" if doc else "its file was removed"
            self._stop.set()
            return
        if not self._write(create=False, etag=etag or self.etag):
            self.lost = "taken by another driver during renewal"
            self._stop.set()

    def check(self) -> None:
        """Before a commit: raise `LeaseLost` when this driver no longer holds the lease."""
        if self.lost is None and self.clock() > self.expires:
            self.lost = "it expired while this driver was not renewing it (paused or cut off)"
        if self.lost is not None:
            raise LeaseLost(f"{self.loc.url}: this run's lease on the output is lost ({self.lost}); it commits "
                            "nothing more. Run again to resume once the other driver is done")

    def restore(self) -> None:
        """Write the lease again after the output was removed under it (`output.start_over`)."""
        if not self._write(create=True):
            self.lost = "another driver took it while the output was being removed"

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.lost is not None:
            return
        doc, _ = self._read()
        if doc and doc.get("token") == self.token:
            try:
                self.loc.fs.rm(self.loc.path)
            except FileNotFoundError:
                pass


@contextlib.contextmanager
def held(out: Location, wait_s: float = 0.0, *, read_only_ok: bool = False) -> Iterator[Location]:
    """`out` with its lease held while the block runs, every commit through it checked first: for
    the commands that write beside a run (`score`, `select`, `report`, `export`), so that none of
    them reads or commits while a driver is rewriting the same output. `LeaseHeld` names the holder.
    `read_only_ok`: a command that only reads `out` (an export to elsewhere) goes on without the
    lease where `out` cannot be written (a bucket this user may only read)."""
    try:
        lease = Lease(out).take(wait_s)
    except PermissionError as e:
        if not read_only_ok:
            raise
        log.info("%s: no lease taken (%s); reading it as it is", out.url, e)
        yield out
        return
    try:
        yield dataclasses.replace(out, guard=lease.check)
    finally:
        lease.release()
