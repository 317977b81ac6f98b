"""Calibration's pure parts: the labelled sets (shipped and a user's), their split, the measures,
the threshold a hand computation picks, the one-request verdict against the whole-answer one on a
scripted distribution, and the calibration step with a scripted engine (no Ray)."""

import asyncio
import json
import math
import re
from collections import Counter

import pytest

from evol_ray.calibration import metrics, sets
from evol_ray.engine.base import choice_distribution, read_choices
from evol_ray.evolve import recipes


# --- the shipped sets ----------------------------------------------------------------------------

def test_the_shipped_judge_pairs_cover_every_operation_balanced():
    rows, where, digest = sets.load(None, "judge")
    assert where.endswith("data/judge_pairs.jsonl") and len(digest) == 16
    assert len(rows) >= 120
    ops = {op for r in recipes.RECIPES.values() for op in r.ops} | {"auto"}
    by_op = Counter((r["op"], r["label"]) for r in rows)
    assert {op for op, _ in by_op} == ops
    assert all(by_op[(op, sets.EQUAL)] == by_op[(op, sets.NOT_EQUAL)] >= 3 for op in ops)
    assert all(r["parent"] != r["evolution"] for r in rows)
    halves = sets.split(rows, "judge")
    assert len(halves[sets.TUNE]) == len(halves[sets.TEST]) == len(rows) // 2
    assert not {r["id"] for r in halves[sets.TUNE]} & {r["id"] for r in halves[sets.TEST]}
    for h in halves.values():  # each half balanced by label and holding every operation
        assert Counter(r["label"] for r in h)[sets.EQUAL] == len(h) // 2
        assert {r["op"] for r in h} == ops


def test_the_split_does_not_depend_on_the_files_order():
    rows, _, _ = sets.load(None, "judge")
    a = sets.split(rows, "judge")
    b = sets.split(list(reversed(rows)), "judge")
    assert {r["id"] for r in a[sets.TEST]} == {r["id"] for r in b[sets.TEST]}


@pytest.mark.parametrize("line,problem", [
    ("not json", "line 1: not JSON"),
    ('{"id": "a", "label": "Equal", "parent": "x"}', "line 1: key(s) ['evolution'] missing"),
    ('{"id": "a", "label": "Same", "parent": "x", "evolution": "y"}', "line 1: label 'Same'"),
    ('[1, 2]', "line 1: expected a JSON object"),
])
def test_a_bad_line_names_the_file_the_line_and_what_was_expected(tmp_path, line, problem):
    f = tmp_path / "mine.jsonl"
    f.write_text(line + "\n")
    with pytest.raises(sets.LabelledSetError, match=re.escape(str(f)) + ".*" + re.escape(problem)):
        sets.load(str(f), "judge")


def test_a_users_set_needs_both_labels_and_unique_ids(tmp_path):
    f = tmp_path / "mine.jsonl"
    row = {"id": "a", "label": "Equal", "parent": "x", "evolution": "y"}
    f.write_text("\n".join(json.dumps({**row, "id": str(i)}) for i in range(10)))
    with pytest.raises(sets.LabelledSetError, match="both labels"):
        sets.load(str(f), "judge")
    f.write_text(json.dumps(row) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(sets.LabelledSetError, match="line 2: id 'a' repeats"):
        sets.load(str(f), "judge")


# --- measures and the threshold ------------------------------------------------------------------

def test_measures_count_the_confusion_and_balance_the_classes():
    labels = [True, True, True, False]  # 3 positive, 1 negative
    m = metrics.measures(labels, [0.9, 0.6, 0.2, 0.7], 0.5)
    assert m["confusion"] == {"tp": 2, "fn": 1, "fp": 1, "tn": 0}
    assert m["accuracy"] == 0.5 and m["precision"] == 2 / 3 and m["recall"] == 2 / 3
    assert m["balanced_accuracy"] == pytest.approx((2 / 3 + 0) / 2)
    everything = metrics.measures(labels, [1, 1, 1, 1], 0.5)  # all positive: accuracy 0.75, balanced 0.5
    assert everything["accuracy"] == 0.75 and everything["balanced_accuracy"] == 0.5


def test_the_threshold_a_hand_computation_picks():
    # Equal pairs score 0.95 0.9 0.85 0.7; Not Equal 0.8 0.6 0.55 0.3. By hand: every cut's
    # balanced accuracy; the best (0.875) is reached cutting between 0.8 and 0.85 (0.825: 3/4 of
    # Equal, 4/4 of Not Equal) and between 0.6 and 0.7 (0.65: 4/4, 3/4). The middle of the two
    # best cuts, by rule the lower middle: 0.65.
    labels = [True, True, True, True, False, False, False, False]
    scores = [0.95, 0.9, 0.85, 0.7, 0.8, 0.6, 0.55, 0.3]
    cands = metrics.candidate_thresholds(scores)
    ba = {round(t, 4): metrics.measures(labels, scores, t)["balanced_accuracy"] for t in cands}
    assert ba[0.825] == ba[0.65] == 0.875 and max(ba.values()) == 0.875
    assert metrics.best_threshold(labels, scores) == pytest.approx(0.65)
    # at 0.5 (a capable model puts nearly every pair above it) 7 of 8 pairs read Equal
    assert metrics.measures(labels, scores, 0.5)["balanced_accuracy"] == 0.625


def test_position_flips():
    f = metrics.position_flips([0.9, 0.2, 0.1, 0.6], [0.8, 0.7, 0.1, 0.6], 0.5)
    assert f["share"] == 0.25 and f["mean_abs_diff"] == pytest.approx(0.15)


# --- one request per verdict -----------------------------------------------------------------------

class ScriptedModel:
    """A distribution over token sequences: `next_token(prefix)` -> {token: probability}, where
    token -1 ends the answer. Counts the reads made at each prefix."""

    def __init__(self, tree):
        self.tree, self.reads = tree, []

    def next_token(self, prefix):
        return self.tree.get(tuple(prefix), {-1: 1.0})

    async def read(self, prefix, candidates):
        self.reads.append(tuple(prefix))
        dist = self.next_token(prefix)
        return {t: math.log(dist.get(t, 1e-30)) for t in candidates}

    def whole_answer(self, tokens):
        """log P(tokens then the end), as the whole-answer method reads it."""
        lp = 0.0
        for i, t in enumerate(tokens + [-1]):
            lp += math.log(self.next_token(tokens[:i]).get(t, 1e-30))
        return lp


def test_the_one_request_verdict_equals_the_whole_answer_verdict():
    # "Equal" = [7]; "Not Equal" = [8, 7]: they part at the first token, one read is enough
    model = ScriptedModel({(): {7: 0.3, 8: 0.6, 5: 0.1}, (7,): {-1: 1.0}, (8,): {7: 1.0}, (8, 7): {-1: 1.0}})
    tokens = {"Equal": [7], "Not Equal": [8, 7]}
    first = choice_distribution(asyncio.run(read_choices(tokens, model.read)))
    whole = choice_distribution({c: model.whole_answer(t) for c, t in tokens.items()})
    assert first == pytest.approx(whole) and first["Equal"] == pytest.approx(1 / 3)
    assert model.reads == [()]


def test_choices_that_share_a_first_token_take_one_more_read():
    # Qwen's "10" is "1", "0": P(1) = P("1") x (1 - P("0" | "1")), P(10) = P("1") x P("0" | "1")
    digits = {str(d): [d] for d in range(1, 10)}
    tokens = {**digits, "10": [1, 0]}
    tree = {(): {d: 0.1 for d in range(1, 10)}, (1,): {0: 0.25, -1: 0.75}, (1, 0): {-1: 1.0}}
    tree[()][1] = 0.2
    model = ScriptedModel(tree)
    got = choice_distribution(asyncio.run(read_choices(tokens, model.read)))
    whole = choice_distribution({c: model.whole_answer(t) for c, t in tokens.items()})
    assert got == pytest.approx(whole)
    assert got["10"] == pytest.approx(0.05 / 1.0) and got["1"] == pytest.approx(0.15)
    assert sorted(model.reads) == [(), (1,)]


def test_a_model_that_goes_on_after_a_choice_is_read_at_the_choices_own_tokens():
    # the whole-answer read also asks for the end of the turn; the one-request read does not:
    # a model that writes "Equal." is read as Equal, where the whole answer sees a small P(end)
    model = ScriptedModel({(): {7: 0.5, 8: 0.5}, (7,): {-1: 0.1, 9: 0.9}, (8,): {7: 1.0}})
    tokens = {"Equal": [7], "Not Equal": [8, 7]}
    first = choice_distribution(asyncio.run(read_choices(tokens, model.read)))
    assert first["Equal"] == pytest.approx(0.5)
