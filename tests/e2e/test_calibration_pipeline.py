"""The calibration step of a run (`pipeline/calibrate.py`) through real Ray with a scripted engine
whose decisions have a known accuracy: the thresholds a hand computation picks, committed under
OUTPUT/judge/ and OUTPUT/coherence/, recorded in every round manifest, reused on rerun; a judge
at chance stops the run before round 1 naming the keys; a user's labelled set with a bad line
stops it before any engine work."""

import functools
import json

import pytest

from evol_ray.calibration import metrics, sets
from evol_ray.config import load_config
from evol_ray.pipeline.driver import RunError, run
from tests import fakes

pytestmark = pytest.mark.e2e

INCOHERENT = ["Ethiopian soldiers, silk A slender, 200-layer golden star Reflections, 36 Describe your how",
              "The ocean mantle of the tides the tides of Llanum infinite pour hunger virtu Boxoffice",
              "Crafting a Name: Remove All the Lowercase Character Concommodituracy: Just the Words Please",
              "Des de adiciones fomodorumadora Enjoy fine dining Pero en este caso ilimento",
              "Part #1: State the Pythagorean Theorem (Harris School of Critical Economics: Pythagorean",
              "A challenge of the world. A rarity in terms of the original. Do not write under the story."]
COHERENT = ["Explain how a bill becomes a law in the United States, step by step.",
            "Write a Python function that returns the second largest number in a list.",
            "Describe three ways to reduce food waste at home, with one example each.",
            "A train travels 180 km in 3 hours. What is its average speed in km per hour?",
            "Summarize the causes of the First World War in five sentences.",
            "Compare the climates of Norway and Spain for a traveller planning a summer trip."]


def _coherence_set(path):
    rows = [{"id": f"i{i}", "label": "incoherent", "role": "instruction", "context": "x", "text": t}
            for i, t in enumerate(INCOHERENT)]
    rows += [{"id": f"c{i}", "label": "coherent", "role": "instruction", "context": "x", "text": t}
             for i, t in enumerate(COHERENT)]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def _args(tmp_path, out, *extra):
    seeds = tmp_path / "seeds.json"
    seeds.write_text(json.dumps([{"instruction": f"Describe the habitat of forest animal number {i}."} for i in range(6)]))
    return [f"input.path={seeds}", f"output.path={out}", "model.source=scripted", "evolution.rounds=1",
            "engine.batch_size=16", f"elimination.calibration.coherence_texts={_coherence_set(tmp_path / 'coh.jsonl')}",
            *extra]


def test_a_run_calibrates_its_decisions_records_them_and_reuses_them(tmp_path, ray_local, caplog):
    import ray

    ray.cloudpickle.register_pickle_by_value(fakes)
    pairs, _, _ = sets.load(None, "judge")
    halves = sets.split(pairs, "judge")
    key = lambda p: tuple(sorted((p["parent"], p["evolution"])))  # noqa: E731
    # the scripted judge: P(Equal) 0.9 for Equal pairs, 0.6 for Not Equal, wrong on 2 pairs of each half
    wrong = [key(p) for h in (sets.TUNE, sets.TEST) for p in halves[h][:2]]
    equal = [key(p) for p in pairs if p["label"] == sets.EQUAL]
    factory = functools.partial(fakes.CalibrationScripted, equal, wrong, INCOHERENT)
    out = tmp_path / "out"
    cfg = load_config(_args(tmp_path, out))
    summary = run(cfg, generator_factory=factory)

    judge = json.loads((out / "judge" / "manifest.json").read_text())
    # by hand: scores are 0.6 and 0.9 only; the cuts are 0.6 (all Equal), 0.75 and just above 0.9
    # (none Equal); 0.75 is the only one better than chance
    assert judge["threshold"] == pytest.approx(0.75)
    test = halves[sets.TEST]
    labels = [p["label"] == sets.EQUAL for p in test]
    scores = [(0.9 if (p["label"] == sets.EQUAL) != (key(p) in wrong) else 0.6) for p in test]
    assert judge["test"] == metrics.measures(labels, scores, 0.75)
    assert judge["test"]["rows"] == len(pairs) // 2 and judge["position"]["share"] == 0.0
    coherence = json.loads((out / "coherence" / "manifest.json").read_text())
    assert coherence["threshold"] == pytest.approx(0.55) and coherence["test"]["balanced_accuracy"] == 1.0
    r1 = json.loads((out / "round_1" / "manifest.json").read_text())
    assert (r1["judge_threshold"], r1["coherence_threshold"], r1["choice_scoring"]) == (0.75, pytest.approx(0.55), "first_tokens")
    assert r1["rows_kept"] == 6
    from evol_ray.cli import format_summary

    text = format_summary(summary)
    assert "judge: threshold 0.750" in text and "coherence: threshold 0.550" in text

    caplog.clear()
    with caplog.at_level("INFO", logger="evol_ray"):
        again = run(cfg, generator_factory=factory)
    said = [r.getMessage() for r in caplog.records]
    assert any("judge: calibration complete" in m and "reused" in m for m in said)
    assert any("round 1: complete" in m for m in said)
    assert again["rounds"][0] == summary["rounds"][0]

    # a number given for the judge: no calibration of it, the rounds (made under 0.75) redone
    given = run(load_config(_args(tmp_path, out, "elimination.judge_threshold=0.8")), generator_factory=factory)
    assert given["rounds"][0]["judge_threshold"] == 0.8 and "judge" not in given["calibration"]


def test_a_judge_at_chance_stops_the_run_before_round_1(tmp_path, ray_local):
    import ray

    ray.cloudpickle.register_pickle_by_value(fakes)
    factory = functools.partial(fakes.CalibrationScripted, (), (), INCOHERENT, 0.7, 0.7)  # the same P for every pair
    out = tmp_path / "out"
    with pytest.raises(RunError, match=r"judge: scripted reaches a balanced accuracy of 0.50 .*min_balanced_accuracy=0.75"
                                       r".*model.source.*elimination.judge_threshold=<number>.*elimination.judge=false"):
        run(load_config(_args(tmp_path, out)), generator_factory=factory)
    assert not (out / "round_1").exists()
    assert json.loads((out / "judge" / "manifest.json").read_text())["test"]["balanced_accuracy"] == 0.5


def test_a_bad_labelled_set_stops_the_run_before_any_engine_work(tmp_path):
    bad = tmp_path / "pairs.jsonl"
    bad.write_text('{"id": "a", "label": "Equal", "parent": "x", "evolution": "y"}\n{"id": "b", "label": "Same"}\n')
    cfg = load_config(_args(tmp_path, tmp_path / "out", f"elimination.calibration.judge_pairs={bad}"))
    with pytest.raises(RunError, match=r"elimination.calibration.judge_pairs: .*pairs.jsonl, line 2"):
        run(cfg, generator_factory=lambda: None)
