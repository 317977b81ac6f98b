"""`words_of`'s plain-ASCII path gives exactly what the Arrow path (`words(normalize(...))`) gives."""

import random

import pyarrow as pa
import pytest

from evol_ray.checks.text import normalize, words, words_of

# letters of both cases, digits, every ASCII punctuation and symbol, every whitespace and some
# other control characters, and a few non-ASCII letters and symbols (the fallback path)
ALPHABET = ("aZ9" * 6 + "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~" + " " * 8 + "\t\n\r\f\v\x00\x1c\x1f\x7f"
            + "éＡ€—ß")


def arrow_words(text):
    return words(normalize(pa.array([text], pa.string())))[0].as_py()


@pytest.mark.parametrize("text", [None, "", "   ", "...", "Hello, World!", " a\tb\nc\r\nd\fe ",
                                  "x--y", "it's", "a\vb", "\x1cword\x1f", "Ｆｕｌｌ width", "Café!"])
def test_words_of_matches_arrow_path(text):
    assert words_of(text) == arrow_words(text)


def test_words_of_matches_arrow_path_on_random_text():
    rng = random.Random(17)
    for _ in range(3000):
        text = "".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 30)))
        assert words_of(text) == arrow_words(text), repr(text)


def test_words_of_plain_ascii():
    assert words_of("Explain, in DETAIL: why (not)?\n2 + 2 = 4") == ["explain", "in", "detail", "why", "not",
                                                                      "2", "2", "4"]
