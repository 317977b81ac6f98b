import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evol_ray import columns as C
from evol_ray import identity
from evol_ray.config import load_config
from evol_ray.io.seeds import InputError, check_input, to_pool


def cfg_for(path, *extra):
    return load_config([f"input.path={path}", "output.path=out", "model.source=m", *extra])


def test_alpaca_layout_joins_instruction_and_input():
    batch = pa.table({"instruction": ["Sum these.", "Say hi.", "  "],
                      "input": ["1, 2", "", "ignored"], "output": ["3", "hi", None]})
    pool = to_pool(batch, cfg_for("x").input).to_pylist()
    assert pool[0][C.INSTRUCTION] == "Sum these.\n1, 2"
    assert pool[1][C.INSTRUCTION] == "Say hi."
    assert pool[2][C.INSTRUCTION] == ""  # flagged invalid_input in round 1, not dropped here
    assert pool[0][C.ID] == identity.content_id("Sum these.\n1, 2") == pool[0][C.ROOT_ID]
    assert pool[0][C.RESPONSE] == "3"


def test_configured_columns_and_id_column():
    batch = pa.table({"q": ["What?"], "uid": [17]})
    ic = cfg_for("x", "input.instruction_column=q", "input.id_column=uid").input
    assert to_pool(batch, ic).to_pylist() == [{C.ID: "17", C.ROOT_ID: "17", C.INSTRUCTION: "What?", C.RESPONSE: None}]


def test_check_input_accepts_json_jsonl_parquet_dir_and_glob(tmp_path):
    rows = [{"instruction": "a", "input": "", "output": "b"}]
    (tmp_path / "d").mkdir()
    json.dump(rows, open(tmp_path / "d" / "one.json", "w"))
    json.dump(rows, open(tmp_path / "d" / "two.json", "w"))
    urls, fmt, cols = check_input(cfg_for(tmp_path / "d"))
    assert fmt == "json" and len(urls) == 2 and cols == ["instruction", "input", "output"]
    (tmp_path / "x.jsonl").write_text("\n".join(json.dumps(r) for r in rows * 3))
    assert check_input(cfg_for(tmp_path / "x.jsonl"))[1] == "jsonl"
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p1.parquet")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p2.parquet")
    urls, fmt, _ = check_input(cfg_for(str(tmp_path / "p*.parquet")))
    assert fmt == "parquet" and len(urls) == 2


def test_missing_column_names_file_and_column(tmp_path):
    f = tmp_path / "s.jsonl"
    f.write_text(json.dumps({"prompt": "x"}) + "\n")
    with pytest.raises(InputError) as e:
        check_input(cfg_for(f))
    assert str(f) in str(e.value) and "'instruction'" in str(e.value) and "input.instruction_column" in str(e.value)


def test_missing_path(tmp_path):
    with pytest.raises(InputError, match="nothing-here.*not found"):
        check_input(cfg_for(tmp_path / "nothing-here.parquet"))


def test_corrupt_parquet_names_the_file(tmp_path):
    pq.write_table(pa.table({"instruction": ["a"]}), tmp_path / "good.parquet")
    (tmp_path / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(InputError) as e:
        check_input(cfg_for(tmp_path))
    assert "bad.parquet" in str(e.value) and "cannot read as parquet" in str(e.value)


def test_wrong_type_and_disagreeing_shards(tmp_path):
    pq.write_table(pa.table({"instruction": [1, 2]}), tmp_path / "ints.parquet")
    with pytest.raises(InputError, match=r"ints.parquet: column 'instruction'.*int64, expected text"):
        check_input(cfg_for(tmp_path / "ints.parquet"))
    d = tmp_path / "shards"
    d.mkdir()
    pq.write_table(pa.table({"instruction": ["a"], "uid": pa.array([1], pa.int64())}), d / "a.parquet")
    pq.write_table(pa.table({"instruction": ["a"], "uid": pa.array(["1"])}), d / "b.parquet")
    with pytest.raises(InputError, match=r"b.parquet: column 'uid'.*a.parquet"):
        check_input(cfg_for(d, "input.id_column=uid"))
