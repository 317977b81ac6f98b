"""Stable identities and the per-row randomness derived from them.

Every choice evol-ray makes at random (the evolution operation: `recipes.choose_op`; the engine's
sampling seed) is a hash of (`seed`, row id, round, ...) through `unit_float`, never global random
state: the same run makes the same choices however the data is partitioned, retried or resumed.
"""

from __future__ import annotations

import hashlib


def _digest(*parts: object) -> bytes:
    h = hashlib.blake2b(digest_size=16)
    for p in parts:
        h.update(str(p).encode("utf-8"))
        h.update(b"\x1f")  # unit separator: ("ab", "c") and ("a", "bc") differ
    return h.digest()


def content_id(text: str) -> str:
    """Id of a seed derived from its content (used when no id column is configured)."""
    return _digest("seed", text).hex()


def repeat_id(first_id: str, occurrence: int) -> str:
    """Id of the `occurrence`-th (1, 2, ...) further seed whose content id is `first_id`: two
    identical seed rows (or two blank ones) never share an id."""
    return _digest("repeat", first_id, occurrence).hex()


def child_id(parent_id: str, round_no: int) -> str:
    """Id of the instruction evolved from `parent_id` in `round_no`."""
    return _digest("child", parent_id, round_no).hex()


def trial_id(row_id: str, step: int, candidate: int) -> str:
    """Id of Auto Evol's trial of candidate method `candidate` of `step` on row `row_id`."""
    return _digest("trial", row_id, step, candidate).hex()


def unit_float(*parts: object) -> float:
    """A number in [0, 1) that depends only on `parts`."""
    return int.from_bytes(_digest(*parts)[:8], "big") / 2**64


def request_seed(seed: int, row_id: str, round_no: int, step: str) -> int:
    """Sampling seed for one engine request: reproducible per row, round and step."""
    return int.from_bytes(_digest("sample", seed, row_id, round_no, step)[:4], "big") & 0x7FFFFFFF
