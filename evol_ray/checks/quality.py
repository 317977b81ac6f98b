"""Quality filters on a round's kept rows (or on the final set): CPU `map_batches` stages.

Each rule is named by its reason in `evol_ray.columns` and switched and tuned in config
(`quality.<rule>`); a row failing one becomes status `eliminated` with that reason (the first rule
that fails, in the order of `RULES`). Rows that are not `kept` pass through untouched.

Reads `status`, `instruction`, `response`; writes `status`, `reason`.
  non_printable              control characters (other than tab, newline, CRLF) or U+FFFD in either
                             text; it also runs on the final set whenever it is on (`final_only`)
  instruction_length         instruction shorter than min_chars or longer than max_chars
  answer_length              answer likewise
  refusal                    the answer contains a refusal phrase (compared after text.normalize)
  unbalanced_code_fence      an odd number of ``` in the instruction or the answer
  answer_repeats_instruction at least max_overlap of the answer's word n-grams (ngram) are in the
                             instruction: the answer restates the question
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from evol_ray import columns as C
from evol_ray.checks import text
from evol_ray.stage import Stage

# control characters but tab, newline and the CR of a CRLF line end; a lone CR is one too
_NON_PRINTABLE = r"[\x{0}-\x{8}\x{b}\x{c}\x{e}-\x{1f}\x{7f}\x{fffd}]|\r([^\n]|$)"
FENCE = "```"


def _text(col) -> pa.Array:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return pc.fill_null(col, "")


def non_printable(ins: pa.Array, ans: pa.Array, q) -> np.ndarray:
    return _np(pc.or_(pc.match_substring_regex(ins, _NON_PRINTABLE),
                      pc.match_substring_regex(ans, _NON_PRINTABLE)))


def _outside(arr: pa.Array, lo: int, hi: int) -> np.ndarray:
    n = pc.utf8_length(arr).to_numpy(zero_copy_only=False)
    return (n < lo) | (n > hi)


def instruction_length(ins: pa.Array, ans: pa.Array, q) -> np.ndarray:
    return _outside(ins, q.instruction_length.min_chars, q.instruction_length.max_chars)


def answer_length(ins: pa.Array, ans: pa.Array, q) -> np.ndarray:
    return _outside(ans, q.answer_length.min_chars, q.answer_length.max_chars)


def refusal(ins: pa.Array, ans: pa.Array, q) -> np.ndarray:
    padded = pc.binary_join_element_wise(" ", text.normalize(ans), " ", "")
    hit = np.zeros(len(ans), bool)
    for phrase in q.refusal.phrases:
        norm = text.normalize_one(phrase)
        if norm:
            hit |= _np(pc.match_substring(padded, f" {norm} "))
    return hit


def unbalanced_code_fence(ins: pa.Array, ans: pa.Array, q) -> np.ndarray:
    odd = lambda a: pc.count_substring(a, FENCE).to_numpy(zero_copy_only=False) % 2 == 1  # noqa: E731
    return odd(ins) | odd(ans)


def answer_repeats_instruction(ins: pa.Array, ans: pa.Array, q) -> np.ndarray:
    # Python per row: it runs on rows the engine just produced, thousands per second is plenty.
    n = q.answer_repeats_instruction.ngram
    out = np.zeros(len(ans), bool)
    for i, (iw, aw) in enumerate(zip(text.words(text.normalize(ins)).to_pylist(),
                                     text.words(text.normalize(ans)).to_pylist())):
        grams = text.ngrams(aw, n)
        if grams:
            out[i] = len(grams & text.ngrams(iw, n)) / len(grams) >= q.answer_repeats_instruction.max_overlap
    return out


def _np(mask) -> np.ndarray:
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


# The order in which rules are tried; each name is also its reason and its config key.
RULES: Dict[str, Callable] = {
    C.R_NON_PRINTABLE: non_printable,
    C.R_INSTRUCTION_LENGTH: instruction_length,
    C.R_ANSWER_LENGTH: answer_length,
    C.R_REFUSAL: refusal,
    C.R_UNBALANCED_FENCE: unbalanced_code_fence,
    C.R_REPEATS_INSTRUCTION: answer_repeats_instruction,
}


def enabled_rules(q) -> List[str]:
    return [name for name in RULES if getattr(q, name).enabled]


# Rules that guard what a trainer reads: they run where the training set is written (the final
# set) even when `quality.in_final` is off, so no control byte reaches final/ (seeds included).
ALWAYS_IN_FINAL = (C.R_NON_PRINTABLE,)


def final_only(q):
    """`q` with every rule off but those of ALWAYS_IN_FINAL (as configured)."""
    return SimpleNamespace(**{name: getattr(q, name) if name in ALWAYS_IN_FINAL else _OFF for name in RULES})


_OFF = SimpleNamespace(enabled=False)


def check(batch: pa.Table, q) -> pa.Table:
    """Attempt rows -> the same rows, kept ones failing a rule eliminated with its name."""
    if batch.num_rows == 0:
        return batch
    kept = _np(pc.equal(batch[C.STATUS], C.KEPT))
    ins, ans = _text(batch[C.INSTRUCTION]), _text(batch[C.RESPONSE])
    reason = np.full(batch.num_rows, None, dtype=object)
    open_ = kept.copy()
    for name in enabled_rules(q):
        if not open_.any():
            break
        idx = np.flatnonzero(open_)
        failed = RULES[name](ins.take(idx), ans.take(idx), q)
        reason[idx[failed]] = name
        open_[idx[failed]] = False
    hit = pa.array(kept & ~open_)
    status = pc.if_else(hit, pa.scalar(C.ELIMINATED), batch[C.STATUS])
    reasons = pc.if_else(hit, pa.array(reason.tolist(), pa.string()), batch[C.REASON])
    batch = batch.set_column(batch.schema.get_field_index(C.STATUS), C.STATUS,
                             status.cast(batch.schema.field(C.STATUS).type))
    return batch.set_column(batch.schema.get_field_index(C.REASON), C.REASON,
                            reasons.cast(batch.schema.field(C.REASON).type))


CHECK = Stage(check)


def filter_rows(ds, q):
    """Dataset wiring: `check` as a CPU stage."""
    return CHECK(ds, q=q)
