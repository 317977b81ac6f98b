"""Storage and the one commit protocol, on local disk (S3 is covered end to end in tests/e2e)."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evol_ray.config import StorageConfig
from evol_ray.io import commit, layout
from evol_ray.io.storage import describe_error, is_s3, list_files, locate, read_json, remove, s3_options, write_json


def test_locate_local_and_s3_paths():
    loc = locate("/tmp/x/", StorageConfig())
    assert loc.path == "/tmp/x" and not is_s3(loc.url)
    assert loc.join("a", "b.json").url == "/tmp/x/a/b.json"
    s3 = locate("s3://bucket/prefix/", StorageConfig(endpoint_url="http://127.0.0.1:9", region="eu-west-1"))
    assert s3.path == "bucket/prefix" and s3.join("f").url == "s3://bucket/prefix/f"


def test_s3_options_merge_user_options_without_losing_retries():
    opts = s3_options(StorageConfig(endpoint_url="http://h:1", retries=7,
                                    options={"config_kwargs": {"connect_timeout": 3}, "anon": True}))
    assert opts["client_kwargs"]["endpoint_url"] == "http://h:1"
    assert opts["config_kwargs"] == {"retries": {"max_attempts": 7, "mode": "adaptive"}, "connect_timeout": 3}
    assert opts["anon"] is True and opts["use_listings_cache"] is False


def test_describe_error_names_the_path_and_not_the_secret():
    assert describe_error(FileNotFoundError("x"), "s3://b/p") == "s3://b/p: not found (no such file, prefix or bucket)"
    assert describe_error(PermissionError("key=SECRET"), "s3://b/p") == "s3://b/p: access denied"
    assert describe_error(ValueError("bad\nsecond line"), "u") == "u: ValueError: bad"


def test_json_round_trip_and_atomic_replace(tmp_path):
    loc = locate(str(tmp_path), StorageConfig()).join("d", "m.json")
    assert read_json(loc) is None
    write_json(loc, {"a": 1})
    write_json(loc, {"a": 2})
    assert read_json(loc) == {"a": 2}
    assert list_files(locate(str(tmp_path / "d"), StorageConfig()), suffix=".tmp") == []


def test_list_files_and_remove(tmp_path):
    loc = locate(str(tmp_path), StorageConfig())
    assert list_files(loc.join("missing")) == []
    for name in ("b.parquet", "a.parquet", "c.txt"):
        (tmp_path / name).write_bytes(b"x")
    assert [p.rsplit("/", 1)[1] for p in list_files(loc)] == ["a.parquet", "b.parquet"]
    remove(loc.join("missing"))  # nothing there: no error
    remove(loc)
    assert not tmp_path.exists()


def test_write_tables_then_commit_manifest_last(tmp_path):
    dest = locate(str(tmp_path / "scores"), StorageConfig())
    files = commit.write_tables({"s.parquet": pa.table({"x": [1, 2]}), "r.html": b"<p>"}, dest)
    assert layout.read_manifest(dest) is None  # files alone are not a commit
    m = commit.commit(dest, {"rows": 2}, files)
    assert m["complete"] and m["files"] == ["r.html", "s.parquet"] and m["rows"] == 2
    assert layout.read_manifest(dest) == m
    assert layout.committed_files(dest, m) == sorted(files)
    assert pq.read_table(str(tmp_path / "scores" / "s.parquet"))["x"].to_pylist() == [1, 2]
    assert not (tmp_path / "scores" / layout.STAGING).exists()
    assert layout.row_count(dest, [f for f in files if f.endswith(".parquet")]) == 2


def test_begin_clears_an_unfinished_attempt_but_keeps_what_resume_needs(tmp_path):
    d = tmp_path / "round_1"
    (d / layout.ATTEMPTS).mkdir(parents=True)
    (d / layout.ATTEMPTS / "p.parquet").write_bytes(b"x")
    (d / "half.parquet").write_bytes(b"x")
    (d / layout.MANIFEST).write_text(json.dumps({"complete": False}))
    commit.begin(locate(str(d), StorageConfig()), keep=[layout.ATTEMPTS])
    assert sorted(p.name for p in d.iterdir()) == [layout.ATTEMPTS]
    commit.begin(locate(str(d), StorageConfig()))
    assert not d.exists()


def test_readable_parts_removes_a_file_cut_short(tmp_path):
    pq.write_table(pa.table({"x": [1]}), str(tmp_path / "good.parquet"))
    (tmp_path / "cut.parquet").write_bytes(b"PAR1 not a footer")
    good = commit.readable_parts(locate(str(tmp_path), StorageConfig()))
    assert [p.rsplit("/", 1)[1] for p in good] == ["good.parquet"]
    assert not (tmp_path / "cut.parquet").exists()


def test_readable_parts_counts_rows_and_reads_no_known_footer(tmp_path):
    """Each footer is read once: a file the phase's writers reported is taken with their count."""
    from fsspec.implementations.local import LocalFileSystem

    opened = []

    class Counting(LocalFileSystem):
        def _open(self, path, *args, **kwargs):
            opened.append(path.rsplit("/", 1)[1])
            return super()._open(path, *args, **kwargs)

    for name, n in (("a.parquet", 2), ("b.parquet", 3)):
        pq.write_table(pa.table({"x": list(range(n))}), str(tmp_path / name))
    loc = locate(str(tmp_path), StorageConfig())
    loc.fs = Counting(skip_instance_cache=True)
    parts = commit.readable_parts(loc, {str(tmp_path / "b.parquet"): 3})
    assert {p.rsplit("/", 1)[1]: n for p, n in parts.items()} == {"a.parquet": 2, "b.parquet": 3}
    assert opened == ["a.parquet"]


def test_readable_parts_keeps_a_file_the_store_fails_to_serve(tmp_path):
    """A read that fails for another reason than the bytes (the store away past its retries) is
    not a partial file: the run stops, naming the file, and the file stays for the rerun."""
    from fsspec.implementations.local import LocalFileSystem

    class StoreAway(LocalFileSystem):
        def _open(self, path, *args, **kwargs):
            if path.endswith("b.parquet"):
                raise ConnectionResetError("Connection reset by peer")
            return super()._open(path, *args, **kwargs)

    for name in ("a.parquet", "b.parquet"):
        pq.write_table(pa.table({"x": [1]}), str(tmp_path / name))
    loc = locate(str(tmp_path), StorageConfig())
    loc.fs = StoreAway(skip_instance_cache=True)
    with pytest.raises(OSError, match=r"b\.parquet: ConnectionResetError: Connection reset by peer"):
        commit.readable_parts(loc)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.parquet", "b.parquet"]


def test_move_into_moves_every_file(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for i in range(40):
        (src / f"{i:02d}.parquet").write_bytes(b"x")
    dest = locate(str(tmp_path / "dest"), StorageConfig())
    moved = commit.move_into(sorted(str(p) for p in src.iterdir()), dest)
    assert len(moved) == 40 and not list(src.iterdir())
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == [f"{i:02d}.parquet" for i in range(40)]


def test_round_manifests_reports_missing_rounds(tmp_path):
    out = locate(str(tmp_path), StorageConfig())
    write_json(layout.round_dir(out, 1).join(layout.MANIFEST), {"complete": True, "round": 1})
    write_json(layout.round_dir(out, 3).join(layout.MANIFEST), {"complete": False, "round": 3})
    done, missing = layout.round_manifests(out, 3)
    assert [m["round"] for m in done] == [1] and missing == [2, 3]


def test_timestamp_is_utc_iso():
    t = layout.timestamp()
    assert t.endswith("+00:00") and "T" in t
