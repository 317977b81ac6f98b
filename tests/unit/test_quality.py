"""Quality rules as pure batch functions (no Ray), and their config checks."""

import pyarrow as pa
import pytest

from evol_ray import columns as C
from evol_ray.checks import quality
from evol_ray.config import ConfigError, QualityConfig, load_config

GOOD_Q = "Explain how photosynthesis turns light into chemical energy."
GOOD_A = "Plants capture light with chlorophyll and store its energy as sugar through two stages."

SCHEMA = pa.schema([(C.ID, pa.string()), (C.STATUS, pa.string()), (C.REASON, pa.string()),
                    (C.INSTRUCTION, pa.string()), (C.RESPONSE, pa.string())])


def run(pairs, q=None, status=C.KEPT):
    rows = [{C.ID: str(i), C.STATUS: status, C.REASON: None if status == C.KEPT else C.R_SORRY,
             C.INSTRUCTION: ins, C.RESPONSE: ans} for i, (ins, ans) in enumerate(pairs)]
    out = quality.check(pa.Table.from_pylist(rows, schema=SCHEMA), q or QualityConfig())
    return [(r[C.STATUS], r[C.REASON]) for r in out.to_pylist()]


@pytest.mark.parametrize("ins, ans, reason", [
    (GOOD_Q, GOOD_A, None),
    (GOOD_Q + "\x07", GOOD_A, C.R_NON_PRINTABLE),
    (GOOD_Q, GOOD_A + "\ufffd", C.R_NON_PRINTABLE),
    ("Why?", GOOD_A, C.R_INSTRUCTION_LENGTH),
    (GOOD_Q, "", C.R_ANSWER_LENGTH),
    (GOOD_Q, "I'm sorry, but I can't help with that request today.", C.R_REFUSAL),
    (GOOD_Q, "As an AI language model, I have no opinion. " + GOOD_A, C.R_REFUSAL),
    (GOOD_Q, "```python\nprint(1)\n", C.R_UNBALANCED_FENCE),
    (GOOD_Q, "```python\nprint(1)\n```", None),
    (GOOD_Q, "Explain how photosynthesis turns light into chemical energy!", C.R_REPEATS_INSTRUCTION),
])
def test_each_rule_names_its_reason(ins, ans, reason):
    expected = (C.KEPT, None) if reason is None else (C.ELIMINATED, reason)
    assert run([(ins, ans)]) == [expected]


def test_tabs_and_newlines_are_printable():
    assert run([(GOOD_Q, "Step 1:\tlook.\r\nStep 2: " + GOOD_A)]) == [(C.KEPT, None)]


@pytest.mark.parametrize("bad", ["\x00", "\x1b[31m", "\x7f", "line\rover", "end\r", "\x0c"])
def test_control_characters_are_not_printable(bad):
    assert run([(GOOD_Q, GOOD_A + bad)]) == [(C.ELIMINATED, C.R_NON_PRINTABLE)]
    assert run([(GOOD_Q + bad, GOOD_A)]) == [(C.ELIMINATED, C.R_NON_PRINTABLE)]


def test_final_only_keeps_just_the_hygiene_rule():
    q = QualityConfig()
    only = quality.final_only(q)
    assert quality.enabled_rules(only) == [C.R_NON_PRINTABLE]
    q.non_printable.enabled = False
    assert quality.enabled_rules(quality.final_only(q)) == []


def test_disabled_rule_and_thresholds_from_config():
    q = QualityConfig()
    q.refusal.enabled = False
    q.instruction_length.min_chars = 2
    assert run([("Why?", "I'm sorry, but I can't do that at all.")], q) == [(C.KEPT, None)]
    q.answer_length.max_chars = 10
    assert run([(GOOD_Q, GOOD_A)], q) == [(C.ELIMINATED, C.R_ANSWER_LENGTH)]


def test_rows_not_kept_are_left_alone():
    assert run([("Why?", "")], status=C.ELIMINATED) == [(C.ELIMINATED, C.R_SORRY)]


def test_first_failing_rule_wins_and_rows_keep_their_order():
    out = run([(GOOD_Q, GOOD_A), ("x\x01", ""), (GOOD_Q, "```")])
    assert out == [(C.KEPT, None), (C.ELIMINATED, C.R_NON_PRINTABLE), (C.ELIMINATED, C.R_UNBALANCED_FENCE)]


def test_every_rule_is_a_declared_reason_and_a_config_key():
    assert set(quality.RULES) == set(C.QUALITY_REASONS)
    assert all(hasattr(QualityConfig(), name) for name in quality.RULES)


BASE = ["input.path=s.json", "output.path=o", "model.source=m"]


@pytest.mark.parametrize("override, key", [
    ("quality.instruction_length.max_chars=5", "quality.instruction_length.max_chars"),
    ("quality.answer_repeats_instruction.max_overlap=0", "quality.answer_repeats_instruction.max_overlap"),
    ("dedup.threshold=1.5", "dedup.threshold"),
    ("dedup.bands=200", "dedup.bands"),
    ("dedup.ngram=0", "dedup.ngram"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(ConfigError, match=f"'{key}'"):
        load_config(BASE + [override])


def _repeats_row_by_row(ins, ans, ngram, max_overlap):
    """The rule's definition, one row at a time with Python sets of word n-grams."""
    from evol_ray.checks import text

    words = lambda xs: text.words(text.normalize(pa.array(xs))).to_pylist()  # noqa: E731
    out = []
    for iw, aw in zip(words(ins), words(ans)):
        grams = text.ngrams(aw, ngram)
        out.append(bool(grams) and len(grams & text.ngrams(iw, ngram)) / len(grams) >= max_overlap)
    return out


@pytest.mark.parametrize("ngram, max_overlap", [(1, 0.5), (2, 0.7), (3, 0.8), (3, 1.0)])
def test_answer_repeats_instruction_matches_its_definition_row_by_row(ngram, max_overlap):
    """The vectorized rule (n-gram hashes keyed by row, one sort) gives what Python sets of n-grams
    give, row by row: repeated n-grams counted once, texts shorter than n words, empty texts,
    non-ASCII words, answers that are part of, all of, or more than their instruction."""
    import random
    from types import SimpleNamespace

    rng = random.Random(7)
    vocab = ["a", "b", "c", "the", "x", "Y", "!", "é", "Straße", "ß", "  ", "\t"]
    ins, ans = [], []
    for _ in range(3000):
        i = " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 12)))
        a = rng.choice([i, i[: len(i) // 2], i + " z q", "",
                        " ".join(rng.choice(vocab) for _ in range(rng.randint(0, 12)))])
        ins.append(i)
        ans.append(a)
    q = SimpleNamespace(answer_repeats_instruction=SimpleNamespace(ngram=ngram, max_overlap=max_overlap))
    got = quality.answer_repeats_instruction(quality.Texts(pa.array(ins), pa.array(ans)), q).tolist()
    want = _repeats_row_by_row(ins, ans, ngram, max_overlap)
    assert got == want
    assert 0 < sum(want) < len(want)  # both outcomes occur


def test_rules_after_the_first_see_only_the_rows_still_open():
    """A row failing an early rule is not judged again; later rules still judge the others right
    (the normalized texts carried over from one rule to the next stay aligned with their rows)."""
    pairs = [(GOOD_Q, "I'm sorry, but I can't help with that request today."),
             (GOOD_Q, GOOD_A),
             ("Why?", GOOD_A),
             (GOOD_Q, "Explain how photosynthesis turns light into chemical energy!"),
             (GOOD_Q, "As an AI language model, I have no opinion. " + GOOD_A)]
    assert run(pairs) == [(C.ELIMINATED, C.R_REFUSAL), (C.KEPT, None), (C.ELIMINATED, C.R_INSTRUCTION_LENGTH),
                          (C.ELIMINATED, C.R_REPEATS_INSTRUCTION), (C.ELIMINATED, C.R_REFUSAL)]
