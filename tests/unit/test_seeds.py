import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evol_ray import columns as C
from evol_ray import identity
from evol_ray.config import load_config
from evol_ray.io.seeds import InputError, check_input, mark_repeats, only_repeats, only_unique, to_pool
from evol_ray.pipeline.pool import next_pool, repeat_attempts


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
    row = to_pool(batch, ic).to_pylist()[0]
    assert {k: row[k] for k in C.POOL_SCHEMA.names} == {C.ID: "17", C.ROOT_ID: "17", C.INSTRUCTION: "What?",
                                                       C.RESPONSE: None}


def _seeds(instructions, outputs=None, *extra):
    ic = cfg_for("x", *extra).input
    batch = pa.table({"instruction": instructions, "output": outputs or [f"o{i}" for i in range(len(instructions))]})
    return to_pool(batch, ic), ic


def test_repeated_seeds_get_unique_ids_and_point_at_the_first():
    # the same text twice (once with other case and punctuation), two blank rows, one other seed
    pool, ic = _seeds(["Name a bird.", "name a BIRD!", "  ", "", "Name a fish."], ["a", "b", "c", "d", "e"])
    out = mark_repeats(pool, content_ids=not ic.id_column)
    assert out.schema == C.SEED_SCHEMA
    rows = {r[C.ID]: r for r in out.to_pylist()}
    assert len(rows) == 5  # five distinct ids, blank rows included
    firsts = [r for r in rows.values() if r[C.DUPLICATE_OF] is None]
    repeats = [r for r in rows.values() if r[C.DUPLICATE_OF] is not None]
    assert len(repeats) == 1 and len(firsts) == 4
    first = rows[repeats[0][C.DUPLICATE_OF]]
    assert first[C.ID] == identity.content_id(first[C.INSTRUCTION])
    assert {first[C.INSTRUCTION], repeats[0][C.INSTRUCTION]} == {"Name a bird.", "name a BIRD!"}
    assert repeats[0][C.ID] == identity.repeat_id(first[C.ID], 1) == repeats[0][C.ROOT_ID]
    blanks = [r for r in rows.values() if r[C.INSTRUCTION] == ""]
    assert len(blanks) == 2 and all(r[C.DUPLICATE_OF] is None for r in blanks)  # stay invalid_input


def test_which_repeat_is_first_does_not_depend_on_row_order():
    pool, ic = _seeds(["Say hi.", "say hi", "Say hi."], ["x", "y", "z"])
    a = mark_repeats(pool, content_ids=True).to_pylist()
    b = mark_repeats(pool.take([2, 0, 1]), content_ids=True).to_pylist()
    assert sorted(map(str, a)) == sorted(map(str, b))
    assert sum(r[C.DUPLICATE_OF] is None for r in a) == 1


def test_user_ids_are_kept_for_repeats():
    ic = cfg_for("x", "input.id_column=uid").input
    pool = to_pool(pa.table({"instruction": ["Q.", "q"], "uid": ["u1", "u2"]}), ic)
    out = mark_repeats(pool, content_ids=False).to_pylist()
    assert sorted(r[C.ID] for r in out) == ["u1", "u2"]
    assert sorted(str(r[C.DUPLICATE_OF]) for r in out) == ["None", "u1"]


def test_repeats_become_counted_round_one_rows_and_leave_the_pool():
    pool, ic = _seeds(["Name a bird.", "Name a bird."])
    seeds = mark_repeats(pool, content_ids=True)
    att = repeat_attempts(only_repeats(seeds))
    assert att.schema == C.ROUND_SCHEMA and att.num_rows == 1
    row = att.to_pylist()[0]
    assert (row[C.STATUS], row[C.REASON], row[C.ROUND]) == (C.ELIMINATED, C.R_DUPLICATE_SEED, 1)
    assert row[C.DUPLICATE_OF] == only_unique(seeds)[C.ID][0].as_py()
    assert row[C.GENERATED_TOKENS] == 0 and row[C.INSTRUCTION] is None
    assert next_pool(att).num_rows == 0  # never evolved in a later round either
    assert only_unique(seeds).schema == C.POOL_SCHEMA


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


def test_a_byte_that_is_not_utf8_names_file_offset_and_line(tmp_path):
    f = tmp_path / "latin.jsonl"
    good = json.dumps({"instruction": "Say hi."}) + "\n"
    f.write_bytes(good.encode() * 3 + '{"instruction": "Caf\xe9 menu"}\n'.encode("latin-1"))
    offset = len(good.encode()) * 3 + len('{"instruction": "Caf')
    with pytest.raises(InputError, match=rf"{f}: not valid utf-8 at byte {offset} \(line 4\).*input.encoding"):
        check_input(cfg_for(f))
    check_input(cfg_for(f, "input.encoding=latin-1"))  # declared: accepted, and decoded as such
    from evol_ray.io.json_files import json_file_rows
    rows = json_file_rows(pa.table({"bytes": [f.read_bytes()]}), "latin-1").to_pylist()
    assert rows[3]["instruction"] == "Café menu" and len(rows) == 4


def test_a_bad_byte_past_the_first_chunk_is_found(tmp_path, monkeypatch):
    import evol_ray.io.json_files as json_files
    monkeypatch.setattr(json_files, "SCAN_BYTES", 7)  # the bad byte and a cut character span chunks
    f = tmp_path / "s.jsonl"
    data = ('{"instruction": "naïve ok"}\n' * 2).encode() + b'{"instruction": "x\xff"}\n'
    f.write_bytes(data)
    bad = data.index(bytes([0xFF]))
    with pytest.raises(InputError, match=rf"at byte {bad} \(line 3\)"):
        check_input(cfg_for(f))


def test_jsonl_errors_name_the_line_of_the_file(tmp_path):
    f = tmp_path / "cut.jsonl"
    lines = [json.dumps({"instruction": f"Task {i}."}) for i in range(4)] + ['{"instruction": "Cut']
    f.write_text("\n".join(lines) + "\n")
    with pytest.raises(InputError, match=rf"{f}: line 5 column \d+: not valid JSON"):
        check_input(cfg_for(f))
    f.write_text("\n".join(lines[:2] + ["", "[1, 2]"]) + "\n")
    with pytest.raises(InputError, match=r"line 4: expected a JSON object, got a JSON list"):
        check_input(cfg_for(f))


def test_json_array_errors_name_the_line(tmp_path):
    f = tmp_path / "a.json"
    f.write_text('[\n  {"instruction": "a"},\n  {"instruction": "b",}\n]\n')
    with pytest.raises(InputError, match=rf"{f}: line 3 column \d+: not valid JSON"):
        check_input(cfg_for(f))


@pytest.mark.parametrize("codec, mark", [("utf-8", b"\xef\xbb\xbf"), ("utf-16-le", b"\xff\xfe"),
                                         ("utf-16-be", b"\xfe\xff"), ("utf-32-le", b"\xff\xfe\x00\x00")])
def test_a_byte_order_mark_says_the_encoding_with_no_key(tmp_path, codec, mark):
    """Editors and spreadsheet exports write a BOM: it is read as the encoding it declares."""
    from evol_ray.io.json_files import json_file_rows

    text = "".join(json.dumps({"instruction": t}, ensure_ascii=False) + "\r\n" for t in ("Héllo there.", "Nǐ hǎo: 你好"))
    f = tmp_path / "bom.jsonl"
    f.write_bytes(mark + text.encode(codec))
    check_input(cfg_for(f))  # input.encoding: auto, the default
    rows = json_file_rows(pa.table({"bytes": [f.read_bytes()]}), "auto").to_pylist()
    assert [r["instruction"] for r in rows] == ["Héllo there.", "Nǐ hǎo: 你好"]
    if codec == "utf-8":  # naming the encoding the mark declares is no contradiction
        check_input(cfg_for(f, "input.encoding=utf-8"))


def test_an_encoding_that_contradicts_the_mark_names_both(tmp_path):
    f = tmp_path / "bom.jsonl"
    f.write_bytes(b"\xef\xbb\xbf" + json.dumps({"instruction": "Hi there."}).encode() + b"\n")
    with pytest.raises(InputError, match=rf"{f}: starts with a UTF-8 byte-order mark, but input.encoding=latin-1"):
        check_input(cfg_for(f, "input.encoding=latin-1"))
    g = tmp_path / "u16.jsonl"
    g.write_bytes(b"\xff\xfe" + json.dumps({"instruction": "Hi there."}).encode("utf-16-le"))
    with pytest.raises(InputError, match=r"UTF-16 byte-order mark, but input.encoding=utf-8"):
        check_input(cfg_for(g, "input.encoding=utf-8"))


def test_runs_made_before_auto_encoding_keep_their_identity():
    from evol_ray import config as cfgmod

    assert cfgmod.config_hash(cfg_for("x")) == cfgmod.config_hash(cfg_for("x", "input.encoding=utf-8"))


def test_unknown_encoding_names_the_key():
    from evol_ray.config_checks import ConfigError
    with pytest.raises(ConfigError, match="input.encoding"):
        cfg_for("x", "input.encoding=klingon")


def test_crlf_seeds_are_read_as_lf():
    pool = to_pool(pa.table({"instruction": ["Sum these.\r\n"], "input": ["1,\r\n2"], "output": ["3\r\n"]}),
                   cfg_for("x").input).to_pylist()[0]
    assert pool[C.INSTRUCTION] == "Sum these.\n1,\n2" and pool[C.RESPONSE] == "3\n"
