"""The elimination rules a recipe adds (`evolution.recipe`, `evol_ray.evolve.recipes`), as pure
functions on text, run by the chain after the answer like WizardLM's rules 2 and 3.

- `answer_without_code` (`elimination.code_answer`, on in the `code` recipe): the instruction asks
  for code (a request verb and a code noun in one sentence, "fix the bug ...", or "in Python" with a
  request), and the answer holds none: no fenced block, and fewer than two lines shaped like code
  (one is enough when it is the whole answer). WizardCoder trains on answers that are programs.
- `answer_without_number` (`elimination.math_answer`, on in the `math` recipe): the answer to a math
  word problem holds no number at all, in digits or words.

Each returns the reason name from `evol_ray.columns`, or None. Words are `checks.text`'s.
"""

from __future__ import annotations

import re
from typing import Optional

from evol_ray import columns as C
from evol_ray.checks.text import words_of

CODE_VERBS = frozenset("""write implement create build develop code program refactor fix debug
    modify rewrite complete optimize optimise extend convert translate port generate design
    define make add change update correct""".split())
CODE_NOUNS = frozenset("""function functions method methods class classes program programs script
    scripts code snippet query queries regex regexp algorithm implementation module api endpoint
    decorator generator iterator lambda subroutine procedure sql bash shell cli parser unittest
    test tests struct interface loop""".split())
# by their words after normalization ("C++" and "C#" read as "c"): one-letter and common-word
# names (C, R, Go) are left out
LANGUAGES = frozenset("""python javascript typescript java kotlin scala rust golang ruby php perl
    swift haskell cpp csharp sql bash shell julia lua elixir dart matlab""".split())
_SENTENCE = re.compile(r"(?<=[.!?])\s+|\n+")

_FENCE = re.compile(r"^\s*(```|~~~)", re.M)
# a line that looks like code in common languages: a keyword opening it, a call or an assignment
# opening it, or punctuation ending it that prose does not end with
_CODE_LINE = re.compile(
    r"^\s*(def |class |import |from \S+ import |#include|return\b|for \w+ in |for ?\(|while ?\(|"
    r"if ?\(|elif |else:|try:|except\b|function\b|const |let |var |public |private |static |fn |"
    r"func |SELECT |INSERT |UPDATE |DELETE |CREATE |print\(|console\.log|@\w+)"
    r"|^\s*[A-Za-z_][\w.\[\]]*\s*(=|\+=|-=|:=)\s*\S"
    r"|^\s*[\w.]+\(.*\)\s*;?\s*$"
    r"|[;{}]\s*$|^\s*[{}]|=>|->\s*\w+\s*:$|\):\s*$",
    re.I,
)


def asks_for_code(instruction: str) -> bool:
    """A sentence with a code-request verb and a code noun, or naming a programming language."""
    for sentence in _SENTENCE.split(instruction):
        w = set(words_of(sentence))
        if w & CODE_VERBS and (w & CODE_NOUNS or w & LANGUAGES):
            return True
    return False


def has_code(answer: str) -> bool:
    """A fenced block, two or more lines shaped like code, or one that is the whole answer."""
    if _FENCE.search(answer):
        return True
    lines = [x for x in answer.splitlines() if x.strip()]
    shaped = sum(1 for x in lines if _CODE_LINE.search(x))
    return shaped >= 2 or (shaped == 1 and len(lines) == 1)


def answer_without_code(instruction: str, answer: str) -> Optional[str]:
    if asks_for_code(instruction) and not has_code(answer):
        return C.R_NO_CODE
    return None


NUMBER_WORDS = frozenset("""zero one two three four five six seven eight nine ten eleven twelve
    thirteen fourteen fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty
    seventy eighty ninety hundred thousand million billion half halves third thirds quarter
    quarters twice double triple dozen percent""".split())
_DIGIT = re.compile(r"\d")


def answer_without_number(answer: str) -> Optional[str]:
    if _DIGIT.search(answer) or NUMBER_WORDS & set(words_of(answer)):
        return None
    return C.R_NO_NUMBER
