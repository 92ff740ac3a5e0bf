"""Semantic ID strings: `<a_12><b_200><c_7>` (level letters a, b, c, …; one token per level)."""

from __future__ import annotations

import re
import string
from collections.abc import Sequence

import numpy as np

LEVEL_LETTERS = string.ascii_lowercase
_TOKEN = re.compile(r"<([a-z])_(0|[1-9][0-9]*)>")


def level_letter(level: int) -> str:
    if not 0 <= level < len(LEVEL_LETTERS):
        raise ValueError(f"SID level {level} is out of range 0..{len(LEVEL_LETTERS) - 1}")
    return LEVEL_LETTERS[level]


def sid_tokens(codes: Sequence[int]) -> list[str]:
    """[12, 200, 7] -> ['<a_12>', '<b_200>', '<c_7>']."""
    out = []
    for level, code in enumerate(codes):
        code = int(code)
        if code < 0:
            raise ValueError(f"SID code must be >= 0, got {code} at level {level}")
        out.append(f"<{level_letter(level)}_{code}>")
    return out


def format_sid(codes: Sequence[int]) -> str:
    """[12, 200, 7] -> '<a_12><b_200><c_7>'."""
    return "".join(sid_tokens(codes))


def parse_sid(text: str, levels: int | None = None, codebook_size: int | None = None) -> list[int] | None:
    """Strict inverse of `format_sid`: the codes, or None when `text` is not exactly one SID.

    Rejects surrounding text or whitespace, levels out of order, leading zeros, and (when given)
    a wrong number of levels or a code >= codebook_size.
    """
    if not isinstance(text, str) or not text:
        return None
    codes: list[int] = []
    pos = 0
    while pos < len(text):
        match = _TOKEN.match(text, pos)
        if match is None or match.group(1) != LEVEL_LETTERS[len(codes)]:
            return None
        codes.append(int(match.group(2)))
        pos = match.end()
        if len(codes) == len(LEVEL_LETTERS) and pos < len(text):
            return None
    if levels is not None and len(codes) != levels:
        return None
    if codebook_size is not None and any(c >= codebook_size for c in codes):
        return None
    return codes


def collision_stats(codes: np.ndarray) -> dict[str, float]:
    """Collision figures for integer codes [N, levels].

    collision_rate: share of items whose full SID is shared with at least one other item.
    duplicate_rate: 1 - unique SIDs / N (MiniOneRec's `collision_rate`).
    """
    codes = np.asarray(codes)
    n = len(codes)
    if n == 0:
        return {"collision_rate": 0.0, "duplicate_rate": 0.0, "n_colliding_items": 0.0, "n_unique_sids": 0.0}
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    colliding = int((counts[inverse.reshape(-1)] > 1).sum())
    return {
        "collision_rate": colliding / n,
        "duplicate_rate": 1.0 - len(counts) / n,
        "n_colliding_items": float(colliding),
        "n_unique_sids": float(len(counts)),
    }


def code_usage(codes: np.ndarray, codebook_size: int) -> dict[str, float]:
    """codes_used_level_{i} (distinct codes) and code_usage_level_{i} (fraction of the codebook)."""
    codes = np.asarray(codes)
    out: dict[str, float] = {}
    for level in range(codes.shape[1]):
        used = len(np.unique(codes[:, level]))
        out[f"codes_used_level_{level}"] = float(used)
        out[f"code_usage_level_{level}"] = used / codebook_size
    return out
