"""WizardLM's elimination rules (arXiv 2304.12244, section 3.3) as pure functions.

Words are counted and compared as `evol_ray.checks.text` defines them, like every other check.

Each check takes text and thresholds and returns the reason name from `evol_ray.columns` when the
evolution failed, or None. The LLM-judged rule 1 (no information gain) lives in `chain.py`, since it
needs the engine; `judge_says_equal` here only reads its verdict.
"""

from __future__ import annotations

from typing import Iterable, Optional

from evol_ray import columns as C
from evol_ray.checks.text import words_of
from evol_ray.evolve.prompts import JUDGE_EQUAL

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


def judge_says_equal(verdict: str) -> bool:
    """Rule 1 reads the judge's forced choice: only an exact "Equal" means no information gain."""
    return verdict.strip() == JUDGE_EQUAL


def clean_evolution(text: str) -> str:
    """Trim what models commonly wrap around a rewritten instruction: surrounding whitespace and
    quotes. Markers are not removed: an evolution that echoes them is eliminated by rule 4."""
    t = text.strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'`":
        t = t[1:-1].strip()
    return t
