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

import functools
from types import SimpleNamespace
from typing import Callable, Dict, List

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from evol_ray import columns as C
from evol_ray.checks import text
from evol_ray.checks.minhash import mix64, shingle_hashes
from evol_ray.rule import BATCH, Rule
from evol_ray.stage import Stage

# control characters but tab, newline and the CR of a CRLF line end; a lone CR is one too
_NON_PRINTABLE = r"[\x{0}-\x{8}\x{b}\x{c}\x{e}-\x{1f}\x{7f}\x{fffd}]|\r([^\n]|$)"
FENCE = "```"


def _text(col) -> pa.Array:
    col = col.combine_chunks() if isinstance(col, pa.ChunkedArray) else col
    return pc.fill_null(col, "")


class Texts:
    """The instructions and answers a rule reads, and their `text.normalize`d forms, each made
    once per batch however many rules read it."""

    def __init__(self, ins: pa.Array, ans: pa.Array) -> None:
        self.ins, self.ans = ins, ans

    @functools.cached_property
    def ins_norm(self) -> pa.Array:
        return text.normalize(self.ins)

    @functools.cached_property
    def ans_norm(self) -> pa.Array:
        return text.normalize(self.ans)

    def take(self, positions: np.ndarray) -> "Texts":
        """The same for the rows at `positions`, with what was already normalized."""
        out = Texts(self.ins.take(positions), self.ans.take(positions))
        for name in ("ins_norm", "ans_norm"):
            if name in self.__dict__:
                out.__dict__[name] = self.__dict__[name].take(positions)
        return out


def non_printable(t: Texts, q) -> np.ndarray:
    return _np(pc.or_(pc.match_substring_regex(t.ins, _NON_PRINTABLE),
                      pc.match_substring_regex(t.ans, _NON_PRINTABLE)))


def _outside(arr: pa.Array, lo: int, hi: int) -> np.ndarray:
    n = pc.utf8_length(arr).to_numpy(zero_copy_only=False)
    return (n < lo) | (n > hi)


def instruction_length(t: Texts, q) -> np.ndarray:
    return _outside(t.ins, q.instruction_length.min_chars, q.instruction_length.max_chars)


def answer_length(t: Texts, q) -> np.ndarray:
    return _outside(t.ans, q.answer_length.min_chars, q.answer_length.max_chars)


def refusal(t: Texts, q) -> np.ndarray:
    padded = pc.binary_join_element_wise(" ", t.ans_norm, " ", "")
    hit = np.zeros(len(t.ans), bool)
    for phrase in q.refusal.phrases:
        norm = text.normalize_one(phrase)
        if norm:
            hit |= _np(pc.match_substring(padded, f" {norm} "))
    return hit


def unbalanced_code_fence(t: Texts, q) -> np.ndarray:
    odd = lambda a: pc.count_substring(a, FENCE).to_numpy(zero_copy_only=False) % 2 == 1  # noqa: E731
    return odd(t.ins) | odd(t.ans)


def answer_repeats_instruction(t: Texts, q) -> np.ndarray:
    # Vectorized over the batch: each text's word n-grams as `minhash.shingle_hashes` (one uint64
    # per n-gram; a text of fewer than n words is one n-gram of all of them), each keyed with its
    # row, so one sort finds a row's distinct answer n-grams and a binary search those that the
    # same row's instruction has too. (A Python loop of sets per row cost 130 us a row, the
    # largest CPU cost of a round's commit.)
    n, rows = q.answer_repeats_instruction.ngram, len(t.ans)
    # a text without words has no n-gram: its placeholder shingle must match nothing, so each
    # row's is its own and the answer's differs from the instruction's
    blank = np.arange(rows, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    a_key, a_row = _row_keys(*shingle_hashes(t.ans_norm, n, blank))
    i_key, _ = _row_keys(*shingle_hashes(t.ins_norm, n, blank + np.uint64(1)))
    hit = i_key[np.minimum(np.searchsorted(i_key, a_key), len(i_key) - 1)] == a_key
    shared = np.bincount(a_row[hit], minlength=rows)
    grams = np.bincount(a_row, minlength=rows)  # a wordless answer: its placeholder, never shared
    return shared / grams >= q.answer_repeats_instruction.max_overlap


def _row_keys(flat: np.ndarray, offsets: np.ndarray) -> tuple:
    """Shingle hashes and row offsets -> (sorted distinct keys of (row, shingle), the row of each).
    A key is the shingle hash mixed with its row's: as collision-free as the 64-bit hashes."""
    row = np.repeat(np.arange(len(offsets) - 1), np.diff(offsets))
    key = mix64(flat ^ mix64(row.astype(np.uint64) + np.uint64(0x9E3779B97F4A7C15)))
    o = np.argsort(key)
    key, row = key[o], row[o]
    first = np.ones(len(key), bool)
    first[1:] = key[1:] != key[:-1]
    return key[first], row[first]


def _np(mask) -> np.ndarray:
    return pc.fill_null(mask, False).to_numpy(zero_copy_only=False)


def _rule(name: str, reads: tuple, fn: Callable, doc: str) -> Rule:
    """A quality rule: its name is its reason and its config key `quality.<name>`; its check takes
    a batch's `Texts` and the `quality` section and returns the mask of rows that fail."""
    return Rule(name, (name,), reads, BATCH, fn,
                lambda cfg: cfg.quality if getattr(cfg.quality, name).enabled else None, doc=doc)


# The order in which rules are tried.
QUALITY_RULES = (
    _rule(C.R_NON_PRINTABLE, (C.INSTRUCTION, C.RESPONSE), non_printable, "control or replacement characters"),
    _rule(C.R_INSTRUCTION_LENGTH, (C.INSTRUCTION,), instruction_length, "instruction outside its length bounds"),
    _rule(C.R_ANSWER_LENGTH, (C.RESPONSE,), answer_length, "answer outside its length bounds"),
    _rule(C.R_REFUSAL, (C.RESPONSE,), refusal, "the answer holds a refusal phrase"),
    _rule(C.R_UNBALANCED_FENCE, (C.INSTRUCTION, C.RESPONSE), unbalanced_code_fence, "an odd number of ``` fences"),
    _rule(C.R_REPEATS_INSTRUCTION, (C.INSTRUCTION, C.RESPONSE), answer_repeats_instruction,
          "the answer mostly restates the instruction"),
)
RULES: Dict[str, Callable] = {r.name: r.check for r in QUALITY_RULES}


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
    texts = Texts(_text(batch[C.INSTRUCTION]), _text(batch[C.RESPONSE]))
    at = np.arange(batch.num_rows)  # the batch rows `texts` holds
    reason = np.full(batch.num_rows, None, dtype=object)
    open_ = kept.copy()
    for name in enabled_rules(q):
        if not open_.any():
            break
        idx = np.flatnonzero(open_)
        if len(idx) < len(at):  # each rule sees only the rows still open
            texts, at = texts.take(np.searchsorted(at, idx)), idx
        failed = RULES[name](texts, q)
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
