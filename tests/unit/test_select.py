"""`evol-ray select`'s parts: the two ratings per row (scripted engine double) and the greedy,
diversity-aware choice."""

import asyncio

import numpy as np
import pyarrow as pa
import pytest

from evol_ray import columns as C
from evol_ray.analysis.score import SCORES
from evol_ray.config import load_config
from evol_ray.evolve import prompts
from evol_ray.handoff import select as sel

CFG = load_config(["input.path=x", "output.path=y", "model.source=m"])


def ratings(scores):
    """Rows r0, r1, ... with (difficulty, quality) pairs (None: unrated)."""
    rows = [{C.ID: f"r{i}", C.ROOT_ID: f"s{i}", C.ROUND: 1, C.OP: "deepen", C.INSTRUCTION: f"Task {i}.",
             C.RESPONSE: f"Answer {i}.", C.DIFFICULTY: d, C.QUALITY: q, C.ERROR: None}
            for i, (d, q) in enumerate(scores)]
    return pa.Table.from_pylist(rows, schema=C.RATINGS_SCHEMA)


def test_budget_keeps_exactly_n_highest_products_first():
    t = ratings([(2.0, 9.0), (8.0, 8.0), (5.0, 5.0), (9.0, 1.0), (7.0, 7.0)])
    out = sel.choose(t, 3, sel.PairSkip(np.zeros((0, 2), np.int64)), seed=0)
    assert out[C.ID].to_pylist() == ["r1", "r4", "r2"]  # 64, 49, 25
    assert out[C.SELECT_SCORE].to_pylist() == [64.0, 49.0, 25.0] and out[C.SELECT_RANK].to_pylist() == [1, 2, 3]
    assert out.schema == C.SELECTED_SCHEMA


def test_a_near_duplicate_of_a_chosen_row_is_skipped_and_the_next_taken():
    t = ratings([(8.0, 8.0), (7.9, 8.0), (5.0, 5.0), (1.0, 1.0)])
    out = sel.choose(t, 2, sel.PairSkip(np.array([[0, 1]])), seed=0)
    assert out[C.ID].to_pylist() == ["r0", "r2"]  # r1 scores higher than r2 but is r0's near-twin


def test_unrated_rows_are_never_chosen_and_a_small_set_gives_what_it_has():
    t = ratings([(None, None), (3.0, 3.0)])
    assert sel.choose(t, 5, sel.PairSkip(np.zeros((0, 2), np.int64)), seed=0)[C.ID].to_pylist() == ["r1"]


def test_ties_are_broken_by_the_seed_deterministically():
    t = ratings([(5.0, 5.0)] * 6)
    picks = {s: sel.choose(t, 3, sel.PairSkip(np.zeros((0, 2), np.int64)), seed=s)[C.ID].to_pylist() for s in range(4)}
    assert picks[0] == sel.choose(t, 3, sel.PairSkip(np.zeros((0, 2), np.int64)), seed=0)[C.ID].to_pylist()
    assert len({tuple(v) for v in picks.values()}) > 1


class TwoRaters:
    """Mass on "10" for the difficulty prompt, on "1" for the quality prompt."""

    def __init__(self):
        self.prompts = []

    async def score_choices(self, prompt, choices):
        self.prompts.append(prompt)
        top = "10" if "difficulty" in prompt else "1"
        return {c: (0.0 if c == top else -30.0) for c in choices}


def test_each_row_gets_two_unbiased_expected_scores():
    gen = TwoRaters()
    row = {C.ID: "a", C.ROOT_ID: "a", C.ROUND: 0, C.OP: None, C.INSTRUCTION: "Name a bird.", C.RESPONSE: "Robin."}
    out = asyncio.run(sel.rate_pair(gen, row, CFG.score.template, CFG.select.quality_template))
    assert out[C.DIFFICULTY] == pytest.approx(10.0) and out[C.QUALITY] == pytest.approx(1.0)
    assert any("Robin." in p for p in gen.prompts) and len(gen.prompts) == 2
    assert set(out) == set(C.RATINGS_SCHEMA.names) and len(SCORES) == 10
    assert "{response}" in prompts.QUALITY_TEMPLATE


def test_budget_and_template_errors(tmp_path):
    with pytest.raises(sel.SelectError, match="--budget 0"):
        sel.select_run(str(tmp_path), 0)
    from evol_ray.config import ConfigError
    with pytest.raises(ConfigError, match="select.quality_template"):
        load_config(["input.path=x", "output.path=y", "model.source=m", "select.quality_template=no fields"])


def test_embedding_distance_skips_a_close_row_and_keeps_a_far_one():
    t = ratings([(8.0, 8.0), (7.9, 8.0), (7.0, 7.0), (1.0, 1.0)])
    # r1 points almost where r0 does (cos 0.995); r2 is orthogonal; r3 has no embedding
    vecs = [[1.0, 0.0, 0.0], [0.995, 0.0999, 0.0], [0.0, 1.0, 0.0], None]
    out = sel.choose(t, 3, sel.CosineSkip(vecs, threshold=0.95), seed=0)
    assert out[C.ID].to_pylist() == ["r0", "r2", "r3"]
    loose = sel.choose(t, 3, sel.CosineSkip(vecs, threshold=0.999), seed=0)
    assert loose[C.ID].to_pylist() == ["r0", "r1", "r2"]  # below the threshold: not too close


class Embedder:
    def __init__(self, fail_on=None):
        self.fail_on = fail_on

    async def embed(self, text):
        if text == self.fail_on:
            raise RuntimeError("embedding failed")
        return [3.0, 4.0]


def test_embed_row_unit_length_or_a_named_error():
    ok = asyncio.run(sel.embed_row(Embedder(), {C.ID: "a", C.INSTRUCTION: "Name a bird."}))
    assert ok[C.EMBEDDING] == pytest.approx([0.6, 0.8]) and ok[C.ERROR] is None
    bad = asyncio.run(sel.embed_row(Embedder(fail_on="x"), {C.ID: "b", C.INSTRUCTION: "x"}))
    assert bad[C.EMBEDDING] is None and "embedding failed" in bad[C.ERROR]
    assert set(ok) == set(C.EMBEDDINGS_SCHEMA.names)
