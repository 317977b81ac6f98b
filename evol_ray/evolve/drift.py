"""Language drift: an evolution or an answer that slips into another writing system than the text
it came from (seen with Qwen2.5-Coder-1.5B: "... celebrating the light and duty of坚守 and
dedication."). Small multilingual models do it most; a training set then teaches a model to
switch language mid-sentence.

A text drifts from its reference (the parent instruction for an evolution, the instruction for
an answer) when it holds letters of a script family the reference has none of:
  * an ideographic or unspaced family (CJK: Han, kana, Hangul; Thai, Lao, Khmer, Myanmar): a
    single character counts;
  * any other family but Latin (Cyrillic, Greek, Arabic, Hebrew, the Indic scripts, ...): a word
    of two letters or more;
  * Latin, into a text whose reference is written in another family: only when Latin is most of
    the text's letters (a reply in English to a Chinese instruction), since names, code and
    units are written in Latin letters in every language.
No drift when either text asks for or names another language ("Translate into Japanese", "in
Spanish", "the Chinese word for ..."): that is the task. Letters are classified with the `regex`
package's Unicode script properties.
"""

from __future__ import annotations

from collections import Counter
from typing import Dict, Optional

import regex

from evol_ray import columns as C

# script family -> the scripts in it (Unicode script property names of `regex`)
FAMILIES: Dict[str, tuple] = {
    "latin": ("Latin",), "cyrillic": ("Cyrillic",), "greek": ("Greek",), "arabic": ("Arabic",),
    "hebrew": ("Hebrew",), "armenian": ("Armenian",), "georgian": ("Georgian",),
    "indic": ("Devanagari", "Bengali", "Gurmukhi", "Gujarati", "Oriya", "Tamil", "Telugu", "Kannada",
              "Malayalam", "Sinhala"),
    "cjk": ("Han", "Hiragana", "Katakana", "Hangul", "Bopomofo"),
    "southeast_asian": ("Thai", "Lao", "Khmer", "Myanmar"),
    "ethiopic": ("Ethiopic",),
}
UNSPACED = ("cjk", "southeast_asian")  # one character is a word
_LETTER = {fam: regex.compile("|".join(fr"\p{{Script={s}}}" for s in scripts)) for fam, scripts in FAMILIES.items()}
_ANY = regex.compile(r"\p{L}")

LANGUAGES = frozenset("""english chinese mandarin cantonese japanese korean french spanish german
    italian portuguese russian ukrainian polish czech dutch swedish norwegian danish finnish greek
    turkish arabic hebrew persian farsi hindi urdu bengali tamil telugu punjabi thai vietnamese
    indonesian malay tagalog swahili latin esperanto hungarian romanian bulgarian serbian croatian
    catalan""".split())
LANGUAGE_WORDS = frozenset("translate translated translating translation translations transliterate "
                           "transliteration language languages bilingual multilingual".split())
_WORD = regex.compile(r"\p{L}+")


def families(text: str) -> Counter:
    """Letters of `text` by script family."""
    out: Counter = Counter()
    for ch in _ANY.findall(text or ""):
        for fam, pattern in _LETTER.items():
            if pattern.match(ch):
                out[fam] += 1
                break
    return out


def _longest_word(text: str, family: str) -> int:
    pattern = _LETTER[family]
    return max((len(w) for w in _WORD.findall(text or "") if all(pattern.match(c) for c in w)), default=0)


def names_a_language(text: str) -> bool:
    """The text names a language or asks for a translation."""
    words = {w.lower() for w in _WORD.findall(text or "")}
    return bool(words & LANGUAGES or words & LANGUAGE_WORDS)


def drifts(text: str, reference: str) -> bool:
    """`text` holds letters of a script family that `reference` has none of (the module's rules)."""
    if not text or text.isascii():  # the common case: only Latin letters, which drift only by majority
        if not text or not any(c.isalpha() for c in text) or (reference or "").isascii():
            return False
    if names_a_language(text) or names_a_language(reference):
        return False
    have, ref = families(text), families(reference)
    letters = sum(have.values())
    for fam, n in have.items():
        if ref[fam]:
            continue
        if fam in UNSPACED:
            return True
        if fam == "latin":
            if ref and n > letters / 2:
                return True
        elif _longest_word(text, fam) >= 2:
            return True
    return False


def instruction_drifts(instruction: str, parent: str) -> Optional[str]:
    """The evolved instruction drifts from its parent: reason `language_drift`."""
    return C.R_LANGUAGE_DRIFT if drifts(instruction, parent) else None


def answer_drifts(answer: str, instruction: str) -> Optional[str]:
    """The answer drifts from its instruction: reason `language_drift`."""
    return C.R_LANGUAGE_DRIFT if drifts(answer, instruction) else None
