"""Paths on local disk or S3 (and S3-compatible stores), through fsspec/s3fs and pyarrow.

S3 endpoint, region and credentials come from the usual AWS environment variables and profiles;
`storage.endpoint_url`, `storage.region` and `storage.options` (passed to `s3fs.S3FileSystem`)
override them. Transient errors are retried with backoff by botocore's own retry modes
(`storage.retries` attempts, "adaptive" mode) rather than by a loop of ours.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass
from typing import Any, Callable, List, Optional

import fsspec
import pyarrow.fs as pafs

from evol_ray.config import StorageConfig


@dataclass
class Location:
    """A filesystem and a path on it, with the URL the user wrote (for messages)."""

    fs: Any  # fsspec.AbstractFileSystem
    path: str  # without scheme
    url: str
    # called before every commit under this location (a run's output lease: `io/lease.py`)
    guard: Optional[Callable[[], None]] = None

    def join(self, *parts: str) -> "Location":
        path = posixpath.join(self.path, *parts)
        return Location(self.fs, path, self.url_of(path), self.guard)

    def __getstate__(self) -> dict:
        # the guard stays with the driver, which alone commits: Ray's workers get the location only
        return {**self.__dict__, "guard": None}

    def url_of(self, path: str) -> str:
        return f"s3://{path}" if is_s3(self.url) else path

    @property
    def arrow_fs(self) -> pafs.FileSystem:
        """The same filesystem for pyarrow and Ray Data."""
        if not is_s3(self.url):
            return pafs.LocalFileSystem()
        return pafs.PyFileSystem(ObjectStoreHandler(self.fs))


class ObjectStoreHandler(pafs.FSSpecHandler):
    """pyarrow over s3fs, where a "directory" exists only while objects sit under it: deleting one
    that holds nothing is done already. (Ray Data's Parquet sink deletes the folder it "created"
    when a write produced no rows, for example a final set from which nothing was removed.)"""

    def delete_dir(self, path: str) -> None:
        try:
            super().delete_dir(path)
        except FileNotFoundError:
            pass


def is_s3(url: str) -> bool:
    return url.startswith("s3://") or url.startswith("s3a://")


def s3_options(cfg: StorageConfig) -> dict:
    opts: dict = {}
    client: dict = {}
    if cfg.endpoint_url:
        client["endpoint_url"] = cfg.endpoint_url
    if cfg.region:
        client["region_name"] = cfg.region
    if client:
        opts["client_kwargs"] = client
    opts["config_kwargs"] = {"retries": {"max_attempts": max(cfg.retries, 1), "mode": "adaptive"}}
    # Ray workers write the files the driver then lists: a cached listing would be stale.
    opts["use_listings_cache"] = False
    user = dict(cfg.options)
    for key in ("client_kwargs", "config_kwargs"):
        if key in user:
            opts[key] = {**opts.get(key, {}), **user.pop(key)}
    opts.update(user)
    return opts


def locate(url: str, cfg: StorageConfig) -> Location:
    if is_s3(url):
        fs = fsspec.filesystem("s3", skip_instance_cache=True, **s3_options(cfg))
        path = url.split("://", 1)[1].rstrip("/")
    else:
        fs = fsspec.filesystem("file")
        path = fs._strip_protocol(url).rstrip("/") or "/"
    return Location(fs, path, url)


def describe_error(e: BaseException, url: str) -> str:
    """A message that names the path and the problem without leaking credentials."""
    name = type(e).__name__
    text = str(e)
    if isinstance(e, FileNotFoundError):
        return f"{url}: not found (no such file, prefix or bucket)"
    if isinstance(e, PermissionError):
        return f"{url}: access denied"
    return f"{url}: {name}: {text.splitlines()[0] if text else ''}"


def read_json(loc: Location) -> Optional[dict]:
    try:
        with loc.fs.open(loc.path, "rb") as f:
            return json.loads(f.read())
    except FileNotFoundError:
        return None


def write_json(loc: Location, data: dict) -> None:
    """Write a small JSON document so that a reader sees either the old one or the whole new one:
    a temporary file then a rename on local disk; a single PUT on S3, which is atomic there."""
    blob = json.dumps(data, indent=2, sort_keys=True, default=str).encode()
    if is_s3(loc.url):
        loc.fs.pipe_file(loc.path, blob)
        return
    loc.fs.makedirs(posixpath.dirname(loc.path), exist_ok=True)
    tmp = loc.path + ".tmp"
    with loc.fs.open(tmp, "wb") as f:
        f.write(blob)
    loc.fs.mv(tmp, loc.path)


def list_files(loc: Location, suffix: str = ".parquet") -> List[str]:
    """Data files directly under `loc`, sorted; [] when `loc` does not exist."""
    try:
        entries = loc.fs.ls(loc.path, detail=True)
    except FileNotFoundError:
        return []
    return sorted(e["name"] for e in entries if e["type"] == "file" and e["name"].endswith(suffix))


def remove(loc: Location) -> None:
    try:
        loc.fs.rm(loc.path, recursive=True)
    except FileNotFoundError:
        pass
