from collections import Counter

from evol_ray import identity
from evol_ray.evolve import prompts, recipes


def test_op_choice_is_deterministic_and_depends_on_seed_id_round():
    w = {op: 1.0 for op in prompts.OPS}
    a = [recipes.choose_op(1, f"id{i}", 2, w) for i in range(200)]
    assert a == [recipes.choose_op(1, f"id{i}", 2, w) for i in range(200)]
    assert a != [recipes.choose_op(2, f"id{i}", 2, w) for i in range(200)]
    assert a != [recipes.choose_op(1, f"id{i}", 3, w) for i in range(200)]


def test_op_choice_is_near_uniform():
    w = {op: 1.0 for op in prompts.OPS}
    n = 60_000
    counts = Counter(recipes.choose_op(0, f"row-{i}", 1, w) for i in range(n))
    assert set(counts) == set(prompts.OPS)
    expected = n / len(prompts.OPS)
    chi2 = sum((c - expected) ** 2 / expected for c in counts.values())
    assert chi2 < 20.5  # 5 degrees of freedom, p = 0.001


def test_op_weights_are_respected():
    w = {op: 0.0 for op in prompts.OPS}
    w[prompts.BREADTH] = 3.0
    w[prompts.DEEPEN] = 1.0
    counts = Counter(recipes.choose_op(0, str(i), 1, w) for i in range(20_000))
    assert set(counts) == {prompts.BREADTH, prompts.DEEPEN}
    assert 0.72 < counts[prompts.BREADTH] / 20_000 < 0.78


def test_ids_are_stable_and_distinct():
    assert identity.content_id("a") == identity.content_id("a") != identity.content_id("b")
    assert identity.child_id("p", 1) != identity.child_id("p", 2)
    assert identity.child_id("p", 1) != identity.content_id("p")
    s = identity.request_seed(0, "x", 1, "evolve")
    assert 0 <= s < 2**31 and s != identity.request_seed(0, "x", 1, "answer")
