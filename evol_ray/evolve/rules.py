"""WizardLM's elimination rules (arXiv 2304.12244, section 3.3) as pure functions.

Words are counted and compared as `evol_ray.checks.text` defines them, like every other check.

Each check takes text and thresholds and returns the reason name from `evol_ray.columns` when the
evolution failed, or None. The LLM-judged rule 1 (no information gain) lives in `chain.py`, since it
needs the engine; `judge_says_equal` here only reads its verdict.
"""

from __future__ import annotations

import re
from typing import Iterable, Optional

from evol_ray import columns as C
from evol_ray.checks.text import words_of

# English stop words (the common NLTK/scikit-learn list, lower case).
STOP_WORDS = frozenset(
    """a about above after again against ain all am an and any are aren aren't as at be because been
    before being below between both but by can couldn couldn't d did didn didn't do does doesn doesn't
    doing don don't down during each few for from further had hadn hadn't has hasn hasn't have haven
    haven't having he her here hers herself him himself his how i if in into is isn isn't it it's its
    itself just ll m ma me mightn mightn't more most mustn mustn't my myself needn needn't no nor not
    now o of off on once only or other our ours ourselves out over own re s same shan shan't she
    she's should should've shouldn shouldn't so some such t than that that'll the their theirs them
    themselves then there these they this those through to too under until up ve very was wasn
    wasn't we were weren weren't what when where which while who whom why will with won won't
    wouldn wouldn't y you you'd you'll you're you've your yours yourself yourselves""".split()
)

def copied_prompt_words(instruction: str, phrases: Iterable[str]) -> Optional[str]:
    """Rule 4: the evolved instruction contains words of the evolving prompt (its markers)."""
    low = instruction.lower()
    if any(p.lower() in low for p in phrases if p):
        return C.R_COPIED_PROMPT
    return None


def short_apology(response: str, phrases: Iterable[str], max_words: int) -> Optional[str]:
    """Rule 2: the answer contains "sorry" (or another configured phrase) and is shorter than
    `max_words` words."""
    low = response.lower()
    if any(p.lower() in low for p in phrases if p) and len(words_of(response)) < max_words:
        return C.R_SORRY
    return None


def only_stopwords(response: str) -> Optional[str]:
    """Rule 3: the answer holds nothing but punctuation, whitespace and stop words (an empty
    answer counts too). Words are the project's one definition (`checks.text`): contractions
    split at the apostrophe ("don't" -> "don", "t"), both halves in the list."""
    if all(w in STOP_WORDS for w in words_of(response)):
        return C.R_STOPWORDS
    return None


def judge_says_equal(p_equal: float, threshold: float) -> bool:
    """Rule 1: the judge's probability that the two instructions are equal (no information gain),
    renormalized over its two answers, reaches `elimination.judge_threshold`."""
    return p_equal >= threshold


def clean_evolution(text: str) -> str:
    """Trim what models commonly wrap around a rewritten instruction: surrounding whitespace and
    quotes. Markers are not removed: an evolution that echoes them is eliminated by rule 4."""
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'`":
        t = t[1:-1].strip()
    return t


# --- an evolution that is not an instruction (named, switchable: `elimination.not_instruction`) --
# Seen with real models: the rewriter answers the parent (a function with its code, a training
# plan), returns a bare title ("Tradition Rise: The Great Baker's Mix"), or talks about its
# rewriting ("Here is a more complex version:"). An instruction asks for something: a question,
# an imperative verb opening one of its clauses, or a request phrase. Judged on its words only,
# so it holds for any model size.
REQUEST_VERBS = frozenset(
    """adapt add analyse analyze answer apply argue arrange assess assume build calculate
    categorize check choose cite clarify classify compare compile complete compose compute
    condense consider construct convert correct count create critique debug decide define derive
    describe design detail determine develop devise diagnose discuss display distinguish divide
    document draft draw edit elaborate enumerate estimate evaluate examine explain explore
    express extract figure fill find fix format formulate generate give group guess help
    highlight identify illustrate imagine implement improve include indicate infer interpret
    investigate justify label list locate make map match measure mention modify name note offer
    optimize order organize outline paraphrase parse pick plan predict prepare present proofread
    propose prove provide rank rate recommend refactor reformulate rephrase replace research
    respond restate revise reword rewrite schedule select separate share shorten show simplify
    simulate sketch solve sort specify state suggest summarise summarize support tell test
    translate turn use validate verify walk write""".split()
)
REQUEST_PHRASES = ("can you", "could you", "would you", "if you could", "please", "i want", "i need", "i would like",
                   "i'd like", "help me", "your task", "you are", "you will", "act as", "pretend",
                   "given ", "suppose", "let's", "how to", "what to", "come up with", "sum up")
# Openers no instruction starts with; and openers that are meta only when the first sentence
# speaks of the rewriting ("Here is a harder version:" but not "Here is a list of numbers: sort it").
META_OPENERS = ("sure", "certainly", "of course", "okay", "ok,", "this rewritten", "the rewritten",
                "i have rewritten", "i've rewritten", "i rewrote", "i have created", "i've created",
                "i made", "a more complex version", "a harder version", "a more difficult version",
                "rewritten version")
WEAK_META_OPENERS = ("here is", "here's", "here are", "below is", "this version", "this new", "the new")
META_WORDS = frozenset("version rewrite rewritten rewrote harder complex difficult prompt instruction".split())
# the phrases as the text is compared: normalized words ("i'd like" -> "i d like"), word-bounded
_REQUEST_PATTERNS = tuple(f" {' '.join(words_of(p))} " for p in REQUEST_PHRASES)
_CLAUSE_END = re.compile(r"[.!?:;,\n]+")
_SENTENCE_END = re.compile(r"[.!?:;\n]+")
QUESTION_WORDS = frozenset("what why how when where which who whom whose is are do does did can could "
                           "should would will shall may might".split())


def _clauses(text: str, pattern: re.Pattern) -> list[list[str]]:
    """The words of each piece of `text` split at `pattern`."""
    return [words_of(c) for c in pattern.split(text) if c.strip()]


def asks_for_something(text: str) -> bool:
    """A question mark, a request phrase anywhere, a clause that opens with a request verb, or a
    sentence that opens with a question word."""
    if "?" in text:
        return True
    padded = f" {' '.join(words_of(text))} "
    if any(p in padded for p in _REQUEST_PATTERNS):
        return True
    # a request verb may open any clause ("In 200 words, explain ..."); a question word only a
    # sentence: after a comma, "which", "who" or "is" open relative clauses of statements
    for w in _clauses(text, _CLAUSE_END):
        head = w[1:] if w and w[0] in ("please", "now", "then", "also", "and", "finally", "next") else w
        if head and head[0] in REQUEST_VERBS:
            return True
    if any(w and w[0] in QUESTION_WORDS for w in _clauses(text, _SENTENCE_END)):
        return True
    return False


def not_an_instruction(evolution: str) -> Optional[str]:
    """`meta_talk` when it opens by talking about the rewriting; else, when it asks for nothing,
    `bare_title` if it is short and unpunctuated like a heading, or `answers_parent`."""
    low = evolution.strip().lower()
    if low.startswith(META_OPENERS):
        return C.R_META_TALK
    if low.startswith(WEAK_META_OPENERS) and META_WORDS & set((_clauses(low, _CLAUSE_END) or [[]])[0]):
        return C.R_META_TALK
    if asks_for_something(evolution):
        return None
    first_line = evolution.strip().splitlines()[0] if evolution.strip() else ""
    if len(words_of(evolution)) <= 12 and "\n" not in evolution.strip() and not first_line.rstrip().endswith("."):
        return C.R_BARE_TITLE
    return C.R_ANSWERS_PARENT
