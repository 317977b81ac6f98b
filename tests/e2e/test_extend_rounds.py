"""A run extended and shrunk by `evolution.rounds` alone (the way users iterate: look at round 1,
then pay for more), through real Ray Data and the real vLLM engine (CPU build) with the tiny
random model: committed rounds reused byte for byte, `final/` rebuilt from the rounds the run now
covers, later rounds left in place and reused when the run grows again; and an output written
while the round count was hashed still resumes."""

import json

import pytest

from evol_ray.config import load_config, result_values
from evol_ray.pipeline.driver import run
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.e2e


def _seeds(path, n=12):
    path.write_text("".join(json.dumps({"instruction": f"Describe place number {i} to a visitor.", "output": f"It is {i}."})
                            + "\n" for i in range(n)))
    return path


def _manifests(out):
    return {p.parent.name: p.read_bytes() for p in sorted(out.glob("round_*/manifest.json"))}


def test_a_run_extended_then_shrunk_reuses_its_rounds_and_rebuilds_final(tmp_path, tiny_model, ray_local):
    seeds, out = _seeds(tmp_path / "seeds.jsonl"), tmp_path / "out"
    args = lambda r: tiny_overrides(tiny_model, seeds, out, rounds=r)  # noqa: E731  only the round count changes

    one = run(load_config(args(1)))
    before = _manifests(out)
    assert list(before) == ["round_1"] and one["final"]["rounds"] == [1]

    two = run(load_config(args(2)))
    after_two = _manifests(out)
    assert after_two["round_1"] == before["round_1"]  # reused byte for byte: not run again
    assert two["final"]["rounds"] == [1, 2]

    three = run(load_config(args(3)))
    after_three = _manifests(out)
    assert {k: after_three[k] for k in after_two} == after_two and "round_3" in after_three
    assert three["final"]["rounds"] == [1, 2, 3]
    final_rows = three["final"]["rows"]

    # shrink: final/ from rounds 1-2 only; round 3 stays where it is, and growing again reuses it
    shrunk = run(load_config(args(2)))
    assert shrunk["final"]["rounds"] == [1, 2] and shrunk["final"]["rows"] <= final_rows
    assert _manifests(out) == after_three
    saved = (out / "config.yaml").read_text()
    assert "rounds: 2" in saved  # what report, score and export read: the rounds final/ covers
    again = run(load_config(args(3)))
    assert _manifests(out) == after_three and again["final"]["rows"] == final_rows


def test_an_output_written_when_the_round_count_was_hashed_resumes(tmp_path, tiny_model, ray_local):
    """run.json and the round manifests of an earlier version carry the hash with `evolution.rounds`
    and `output.include_seeds` in it: the same command with more rounds reuses its rounds."""
    import hashlib

    seeds, out = _seeds(tmp_path / "seeds.jsonl", 8), tmp_path / "out"
    cfg = load_config(tiny_overrides(tiny_model, seeds, out, rounds=1))
    run(cfg)
    # rewrite the output as the earlier version wrote it
    old_values = {**result_values(cfg), "evolution.rounds": 1, "output.include_seeds": False}
    old_hash = hashlib.sha256(json.dumps(old_values, sort_keys=True, default=str).encode()).hexdigest()[:16]
    (out / "run.json").write_text(json.dumps({"config_hash": old_hash, "result_values": old_values}))
    m1 = json.loads((out / "round_1" / "manifest.json").read_text())
    (out / "round_1" / "manifest.json").write_text(json.dumps({**m1, "config_hash": old_hash}))
    before = (out / "round_1" / "manifest.json").read_bytes()

    two = run(load_config(tiny_overrides(tiny_model, seeds, out, rounds=2)))
    assert (out / "round_1" / "manifest.json").read_bytes() == before and two["final"]["rounds"] == [1, 2]
    assert json.loads((out / "run.json").read_text())["legacy_values"] == {"evolution.rounds": 1,
                                                                          "output.include_seeds": False}
    run(load_config(tiny_overrides(tiny_model, seeds, out, rounds=2)))  # and on the next rerun too
    assert (out / "round_1" / "manifest.json").read_bytes() == before
