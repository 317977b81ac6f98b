"""An evolution that lost its input: it refers to data it no longer carries ("Identify the language
of the given sentence and then translate it to French", with the sentence gone; "Find the
grammatical error in the sentence." with none). Seen with Qwen2.5-Coder-1.5B and -0.5B: a rewrite
keeps the instruction's words and drops the input that Alpaca-style seeds carry on its next line.
Nobody can answer it, and an answer to it teaches a model to invent the missing text.

A reference to data is a determiner or pointer and a noun of data within a few words:
"the following sentence", "the given text", "this paragraph", "the table below", "the code
above", "the provided list of numbers". The instruction carries data when it also holds what such
a reference points at: a quoted span, text after a colon, a line of its own after the request, a
code block, a table, a JSON or XML object, or a list of numbers. Only a reference without any of
those is `lost_input`. Judged on the words alone, for any model size.
"""

from __future__ import annotations

import re
from typing import Optional

from evol_ray import columns as C

_NOUNS = (r"sentences?|paragraphs?|text|texts|passages?|excerpts?|articles?|essays?|stor(?:y|ies)|poems?|"
          r"code|snippets?|functions?|programs?|scripts?|tables?|data|dataset|list|lists|arrays?|json|xml|"
          r"csv|html|emails?|letters?|documents?|statements?|equations?|expressions?|words?|phrases?|"
          r"quotes?|quotations?|reviews?|tweets?|input|numbers|strings?|quer(?:y|ies)|sql|conversation|"
          r"dialogue|transcript|sequence|matrix|graph|chart|recipe|summary|description|example|"
          r"examples|sentence pairs|values|dates|names|items|lyrics|verse|song")
# "the following sentence", "the given two sentences", "these three numbers"
_POINTED = re.compile(r"\b(?:the|this|these|those|each|both)\s+(?:following|given|provided|above|below|"
                      r"attached|preceding|next|supplied|listed|mentioned|aforementioned|included|specified)"
                      r"(?:\s+[\w-]+){0,2}?\s+(?:" + _NOUNS + r")\b", re.I)
# "this sentence", "these numbers", "the sentence below", "the table above"
_THIS = re.compile(r"\b(?:this|these)\s+(?:[\w-]+\s+){0,1}?(?:" + _NOUNS + r")\b", re.I)
_AFTER = re.compile(r"\b(?:the|this|these)\s+(?:[\w-]+\s+){0,2}?(?:" + _NOUNS + r")\s+(?:below|above|here)\b", re.I)
# "the sentence" / "the text" as the object of a verb that works on given data, or after a
# preposition when the noun is a piece of writing ("the error in the sentence"; not "the role of
# the data in training", a topic)
_VERB_OBJECT = re.compile(r"\b(?:rewrite|summari[sz]e|translate|classify|correct|edit|paraphrase|proofread|"
                          r"analy[sz]e|sort|reverse|parse|debug|fix|refactor|optimi[sz]e|identify|count|"
                          r"extract|convert|label|categori[sz]e|shorten|simplify|punctuate|capitali[sz]e)\s+"
                          r"the\s+(?:sentence|paragraph|text|passage|excerpt|code|snippet|table|list|array|"
                          r"equation|expression|poem|article|email|review|tweet|string|word|phrase)\b", re.I)
_IN_WRITING = re.compile(r"\b(?:in|of|from)\s+the\s+(?:sentence|paragraph|passage|excerpt|poem|tweet|"
                         r"review|email)\b", re.I)

_QUOTED = re.compile(r"\"[^\"\n]{6,}\"|“[^”\n]{6,}”|'[^'\n]{10,}'|«[^»\n]{6,}»|`[^`\n]{3,}`")
_COLON = re.compile(r":\s*\S.{8,}", re.S)
_FENCE = re.compile(r"```|~~~")
_TABLE = re.compile(r"^\s*\|.*\|\s*$", re.M)
_STRUCT = re.compile(r"\{[^{}]*[:\"][^{}]*\}|<(\w+)[^>]*>.*?</\1>|\[[^\[\]]*[,\d\"'][^\[\]]*\]", re.S)
_NUMBERS = re.compile(r"-?\d+(?:\.\d+)?(?:\s*,\s*-?\d+(?:\.\d+)?){2,}")


def refers_to_data(instruction: str) -> bool:
    """A pointer to data: "the following sentence", "this paragraph", "the table below", ..."""
    return bool(_POINTED.search(instruction) or _THIS.search(instruction) or _AFTER.search(instruction)
                or _VERB_OBJECT.search(instruction) or _IN_WRITING.search(instruction))


def carries_data(instruction: str) -> bool:
    """A quoted span, text after a colon, a line of its own after the first, a code block, a
    table, a JSON/XML/list object, or a list of numbers."""
    t = instruction.strip()
    lines = [x for x in t.splitlines() if x.strip()]
    return bool(len(lines) > 1 and sum(len(x) for x in lines[1:]) >= 8
                or _QUOTED.search(t) or _COLON.search(t) or _FENCE.search(t) or _TABLE.search(t)
                or _STRUCT.search(t) or _NUMBERS.search(t))


def lost_input(instruction: str) -> Optional[str]:
    """`lost_input` when the instruction points at data it does not carry, else None."""
    if refers_to_data(instruction) and not carries_data(instruction):
        return C.R_LOST_INPUT
    return None
