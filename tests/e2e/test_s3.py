"""A whole multi-round run reading its seeds from and writing all its output to s3://, against a
real S3-protocol server on loopback; the output reads back with plain pyarrow."""

import json

import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from evol_ray import columns as C
from evol_ray.config import load_config
from evol_ray.pipeline.driver import RunError, run
from evol_ray.io.seeds import InputError
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.e2e


def arrow_s3(s3):
    return pafs.S3FileSystem(endpoint_override=s3.endpoint, scheme="http", region="us-east-1",
                             access_key="testing-key-id", secret_key="testing-secret-value")


@pytest.fixture(scope="module")
def s3_run(s3, tiny_model, ray_local):
    url = s3.make_bucket("evol-e2e")
    fs = arrow_s3(s3)
    rows = [{"instruction": f"Describe item {i} of the list.", "input": "", "output": f"item {i}"}
            for i in range(20)]
    import pyarrow as pa

    import io

    import boto3

    client = boto3.client("s3", endpoint_url=s3.endpoint, region_name="us-east-1")
    for i, part in enumerate((rows[:10], rows[10:])):
        buf = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(part), buf)
        client.put_object(Bucket="evol-e2e", Key=f"seeds/part-{i}.parquet", Body=buf.getvalue())
    cfg = load_config(tiny_overrides(tiny_model, f"{url}/seeds/", f"{url}/runs/r1") + s3.overrides()
                      + ["storage.options.key=explicit-key-id", "storage.options.secret=never-print-this"])
    return cfg, run(cfg), fs


def test_rounds_and_final_read_back_with_plain_pyarrow(s3_run):
    cfg, summary, fs = s3_run
    assert summary["output"] == "s3://evol-e2e/runs/r1"
    pool_ids = None
    for r in (1, 2):
        with fs.open_input_stream(f"evol-e2e/runs/r1/round_{r}/manifest.json") as f:
            m = json.loads(f.read())
        t = pq.read_table([f"evol-e2e/runs/r1/round_{r}/{name}" for name in m["files"]], filesystem=fs)
        assert t.num_rows == m["rows_in"] == sum(m["status_counts"].values()) == 20
        parents = set(t.column(C.PARENT_ID).to_pylist())
        assert len(parents) == 20
        if pool_ids is not None:
            assert parents == pool_ids
        pool_ids = {row[C.ID] if row[C.STATUS] == C.KEPT else row[C.PARENT_ID] for row in t.to_pylist()}
    with fs.open_input_stream("evol-e2e/runs/r1/final/manifest.json") as f:
        fm = json.loads(f.read())
    final = pq.read_table([f"evol-e2e/runs/r1/final/{name}" for name in fm["files"]], filesystem=fs)
    assert final.num_rows == summary["final"]["rows"]
    leftovers = fs.get_file_info(pafs.FileSelector("evol-e2e/runs/r1", recursive=True))
    assert not [i.path for i in leftovers if "_staging" in i.path or "_attempts" in i.path]


def test_credentials_never_written(s3_run):
    cfg, summary, fs = s3_run
    files = fs.get_file_info(pafs.FileSelector("evol-e2e/runs/r1", recursive=True))
    for info in files:
        if info.path.endswith((".json", ".yaml")):
            with fs.open_input_stream(info.path) as f:
                text = f.read().decode()
            for secret in ("never-print-this", "explicit-key-id", "testing-secret-value"):
                assert secret not in text, f"{secret} leaked into {info.path}"


def test_missing_bucket_fails_naming_the_path(s3, tiny_model):
    cfg = load_config(tiny_overrides(tiny_model, "s3://no-such-bucket/seeds/", "s3://no-such-bucket/out")
                      + s3.overrides())
    with pytest.raises(InputError, match=r"s3://no-such-bucket/seeds/: not found"):
        run(cfg)


def test_unwritable_output_fails_naming_the_path(s3, s3_run, tiny_model):
    cfg = load_config(tiny_overrides(tiny_model, "s3://evol-e2e/seeds/", "s3://missing-out-bucket/x")
                      + s3.overrides())
    with pytest.raises(RunError) as e:
        run(cfg)
    assert "s3://missing-out-bucket/x" in str(e.value) and "testing-secret" not in str(e.value)


def test_empty_write_on_s3_commits_no_files(s3, ray_local):
    """Writing no rows to s3:// (a final set from which nothing was removed) commits an empty
    folder: Ray's sink deletes the "directory" it made, which on S3 never existed."""
    import pyarrow as pa
    import ray

    from evol_ray.io.commit import write_dataset
    from evol_ray.io.storage import list_files, locate

    url = s3.make_bucket("evol-empty")
    cfg = load_config(["input.path=s.json", f"output.path={url}/out", "model.source=m"] + s3.overrides())
    dest = locate(f"{url}/out/final/_removed", cfg.storage)
    empty = ray.data.from_arrow(pa.table({C.ID: pa.array(["x"])})).filter(lambda r: False)
    assert write_dataset(empty, dest, cfg.output.rows_per_file) == []
    assert list_files(dest) == []
