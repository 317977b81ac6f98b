"""`evol-ray export` on a finished run's final set: each format read back by Hugging Face
`datasets`, a deterministic split by seed lineage, the dataset card, and the commit protocol."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from evol_ray import columns as C
from evol_ray import config as cfgmod
from evol_ray.cli import main
from evol_ray.config import load_config
from evol_ray.handoff import export as ex

N_ROOTS = 40


def make_final(out, extra=()):
    """A run folder with config.yaml and a committed final/: 40 seeds, each with a round-1 and a
    round-2 evolution; one row without an answer, as a seed without an output column would be."""
    cfg = load_config(["input.path=seeds.jsonl", f"output.path={out}", "model.source=my-model",
                       "seed=7", *extra])
    out.mkdir(parents=True)
    (out / "config.yaml").write_text(cfgmod.to_yaml(cfg))
    rows = []
    for i in range(N_ROOTS):
        root = f"seed-{i}"
        rows.append({C.ID: root, C.PARENT_ID: None, C.ROOT_ID: root, C.ROUND: 0, C.OP: None,
                     C.INSTRUCTION: f"Seed task {i}.", C.RESPONSE: None if i == 0 else f"Seed answer {i}."})
        for r, op in ((1, "deepen"), (2, "breadth")):
            rows.append({C.ID: f"{root}-r{r}", C.PARENT_ID: root, C.ROOT_ID: root, C.ROUND: r, C.OP: op,
                         C.INSTRUCTION: f"Harder task {i} of round {r}.", C.RESPONSE: f"Answer {i}.{r}."})
    final = out / "final"
    final.mkdir()
    schema = pa.schema([C.ROUND_SCHEMA.field(c) for c in C.FINAL_COLUMNS])
    pq.write_table(pa.Table.from_pylist(rows, schema=schema), final / "part-0.parquet")
    (final / "manifest.json").write_text(json.dumps({"complete": True, "files": ["part-0.parquet"],
                                                     "rows": len(rows)}))
    return cfg, rows


@pytest.fixture
def run_dir(tmp_path):
    out = tmp_path / "run"
    cfg, rows = make_final(out)
    return out, cfg, rows


@pytest.mark.parametrize("fmt", ex.FORMATS)
def test_every_format_loads_with_datasets_with_alternating_turns(run_dir, fmt):
    from datasets import load_dataset

    out, _, rows = run_dir
    assert main(["export", str(out), "--format", fmt, "--split", "0.25"]) == 0
    d = out / "export" / fmt
    m = json.loads((d / "manifest.json").read_text())
    assert m["complete"] and m["skipped_counts"] == {"empty_answer": 1}
    assert sum(m["rows"].values()) == len(rows) - 1
    data = load_dataset("json", data_files={s: str(d / f"{s}.jsonl") for s in ex.SPLITS})
    assert {s: data[s].num_rows for s in ex.SPLITS} == m["rows"]
    key = {"alpaca": "instruction", "sharegpt": "conversations", "messages": "messages"}[fmt]
    assert key in data["train"].column_names and {"id", "round", "op"} <= set(data["train"].column_names)
    for rec in data["train"]:
        if fmt == "alpaca":
            assert rec["instruction"].strip() and rec["output"].strip() and rec["input"] == ""
        else:
            turns = rec[key]
            roles = [t["from" if fmt == "sharegpt" else "role"] for t in turns]
            assert roles == (["human", "gpt"] if fmt == "sharegpt" else ["user", "assistant"])
            assert all((t["value" if fmt == "sharegpt" else "content"] or "").strip() for t in turns)
    if fmt == "messages":
        pdata = load_dataset("parquet", data_files={s: str(d / f"{s}.parquet") for s in ex.SPLITS})
        assert {s: pdata[s].num_rows for s in ex.SPLITS} == m["rows"]
        assert pdata["train"][0]["messages"] == data["train"][0]["messages"]


def test_split_is_by_lineage_deterministic_and_near_the_share(run_dir):
    out, cfg, _ = run_dir
    ids = {}
    for attempt in (1, 2):  # a rerun replaces the export with the same split
        assert main(["export", str(out), "--format", "alpaca", "--split", "0.3"]) == 0
        d = out / "export" / "alpaca"
        ids[attempt] = {s: [json.loads(x)["id"] for x in (d / f"{s}.jsonl").read_text().splitlines()]
                        for s in ex.SPLITS}
    assert ids[1] == ids[2]
    roots = {s: {i.split("-r")[0] for i in v} for s, v in ids[1].items()}
    assert not roots["train"] & roots["validation"]  # no seed's lineage on both sides
    assert 0.1 < len(roots["validation"]) / N_ROOTS < 0.5
    other = load_config(["input.path=x", "output.path=y", "model.source=m", "seed=8"])
    assert [ex.split_of(other.seed, f"seed-{i}", 0.3) for i in range(N_ROOTS)] != \
        [ex.split_of(cfg.seed, f"seed-{i}", 0.3) for i in range(N_ROOTS)]


def test_system_prompt_and_dataset_card(tmp_path):
    out = tmp_path / "run"
    make_final(out, ["export.system_prompt=You are a careful assistant."])
    assert main(["export", str(out), "--format", "messages"]) == 0
    d = out / "export" / "messages"
    first = json.loads((d / "train.jsonl").read_text().splitlines()[0])
    assert [t["role"] for t in first["messages"]] == ["system", "user", "assistant"]
    assert not (d / "validation.jsonl").exists()
    card = (d / "README.md").read_text()
    assert "`my-model`" in card and "seeds.jsonl" in card and "license and terms" in card
    assert f"| 1 | deepen | {N_ROOTS} |" in card and f"| 0 | seed | {N_ROOTS - 1} |" in card
    m = json.loads((d / "manifest.json").read_text())
    assert m["config_hash"] in card and m["system_prompt"] is True
    assert not (d / "_staging").exists()


def test_export_to_another_folder_and_errors(run_dir, tmp_path, capsys):
    out, _, _ = run_dir
    dest = tmp_path / "elsewhere"
    assert main(["export", str(out), "--format", "sharegpt", "--to", str(dest)]) == 0
    assert (dest / "manifest.json").exists() and (dest / "train.jsonl").exists()
    assert main(["export", str(out), "--format", "alpaca", "--split", "1.5"]) == 2
    assert "export.validation_share" in capsys.readouterr().err
    (out / "final" / "manifest.json").unlink()  # a final set that never committed
    assert main(["export", str(out), "--format", "alpaca"]) == 2
    assert "no complete final set" in capsys.readouterr().err


def test_selected_export_needs_a_selection(run_dir, capsys):
    out, _, _ = run_dir
    assert main(["export", str(out), "--format", "alpaca", "--selected"]) == 2
    assert "run `evol-ray select` first" in capsys.readouterr().err


def test_export_report_and_select_wait_for_no_run_but_stop_naming_the_one_that_writes(run_dir, capsys):
    """A run that holds the output's lease (a live driver rewriting final/): `export`, `report`,
    `select` and `score` stop with exit code 2 naming it and write nothing; once it is given up,
    export runs and gives the lease up in turn."""
    import os

    from evol_ray.io.lease import LEASE_FILE, Lease
    from evol_ray.io.storage import locate

    out, cfg, _ = run_dir
    driver = Lease(locate(str(out), cfg.storage)).take()
    try:
        for argv in (["export", str(out), "--format", "alpaca"], ["report", str(out)],
                     ["select", str(out), "--budget", "5"], ["score", str(out)]):
            assert main(argv) == 2, argv
            err = capsys.readouterr().err
            assert "held by another evol-ray run" in err and f"pid {os.getpid()}" in err, (argv, err)
        assert not (out / "export").exists() and not (out / "report").exists()
    finally:
        driver.release()
    assert main(["export", str(out), "--format", "alpaca"]) == 0
    assert (out / "export" / "alpaca" / "manifest.json").exists() and not (out / LEASE_FILE).exists()
