"""Validation of teacher text: a leading think block stripped, SIDs in the catalogue (repaired when
unambiguous), length bounds, and the leak check for reasoning paths.

Every check returns the (possibly repaired) text or a rejection reason from `REASONS`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

# Runs of SID-looking tokens, tolerating whitespace between tokens ("<a_1> <b_2><c_3>").
SID_RUN = re.compile(r"<[a-z]_\d+>(?:\s*<[a-z]_\d+>)*")
_TOKEN = re.compile(r"<([a-z])_(\d+)>")
ADJACENT_CHARS = 120  # how far from a bad SID a title may sit to count as "right next to it"
TRAILING = " \t\r\n.!,;:)]}*`'\"»"

THINK_TAG = re.compile(r"</?think\s*>", re.IGNORECASE)

REASONS = (
    "request_failed",
    "empty",
    "truncated",
    "think_only",
    "think_tags",
    "invalid_sid",
    "too_short",
    "too_long",
    "missing_final_sid",
    "wrong_final_sid",
    "leak_sid",
    "leak_title",
)


@dataclass
class Checked:
    text: str | None
    reason: str | None = None
    detail: str = ""
    repaired: int = 0
    think_stripped: bool = False

    @property
    def ok(self) -> bool:
        return self.reason is None


def _norm(text: str) -> str:
    return " ".join(text.lower().split())


def _as_words(phrase: str) -> re.Pattern:
    """`phrase` (normalised) where it stands as whole words: a title "Ink" is not in "think"."""
    return re.compile(rf"(?<![^\W_]){re.escape(phrase)}(?![^\W_])")


def _mentions(text: str, phrase: str) -> bool:
    return bool(phrase) and _as_words(phrase).search(text) is not None


def _codes(sid: str) -> list[tuple[str, int]]:
    return [(m.group(1), int(m.group(2))) for m in _TOKEN.finditer(sid)]


def _near_miss(written: str, context: Iterable[str]) -> set[str]:
    """Context SIDs that `written` matches but for one code, or that it is a truncated prefix of."""
    w = _codes(written)
    out = set()
    for sid in context:
        c = _codes(sid)
        if len(c) == len(w) and sum(a != b for a, b in zip(c, w, strict=True)) == 1:
            out.add(sid)
        elif 0 < len(w) < len(c) and c[: len(w)] == w:
            out.add(sid)
    return out


def _titles_in(segment: str, titles: dict[str, set[str]]) -> set[str]:
    """SIDs of every context item whose title is in `segment` (several when items share a title)."""
    seg = _norm(segment)
    return {sid for title, sids in titles.items() if _mentions(seg, title) for sid in sids}


def _pick(by_title: set[str], by_code: set[str]) -> str | None:
    """The one SID that the adjacent titles and the near-miss codes point at, or None."""
    if len(by_title) == 1 and (not by_code or by_code == by_title):
        return next(iter(by_title))
    if not by_title and len(by_code) == 1:
        return next(iter(by_code))
    both = by_title & by_code
    if len(by_title) > 1 and len(both) == 1:  # a shared title, settled by the codes
        return next(iter(both))
    return None


def repair_sids(text: str, catalogue: frozenset[str] | set[str], context: list[tuple[str, str]]) -> Checked:
    """Every SID run in `text` must be in `catalogue`. A run that is not is repaired when exactly one
    item of `context` ((title, sid) pairs: the items the prompt showed) explains it: its title sits
    right next to the run, or its SID differs from the run in one code / extends a truncated run.
    Runs written with spaces between tokens are normalised. Otherwise the text is rejected."""
    titles: dict[str, set[str]] = {}
    for title, sid in context:
        titles.setdefault(_norm(title), set()).add(sid)
    context_sids = {sid for _, sid in context}
    runs = list(SID_RUN.finditer(text))
    out, pos, repaired = [], 0, 0
    for n, m in enumerate(runs):
        written = re.sub(r"\s+", "", m.group(0))
        fixed = written
        if written not in catalogue:
            prev_end = runs[n - 1].end() if n else 0
            next_start = runs[n + 1].start() if n + 1 < len(runs) else len(text)
            before = text[max(prev_end, m.start() - ADJACENT_CHARS) : m.start()]
            after = text[m.end() : min(next_start, m.end() + ADJACENT_CHARS)]
            neighbours = {re.sub(r"\s+", "", runs[k].group(0)) for k in (n - 1, n + 1) if 0 <= k < len(runs)}
            by_title = (_titles_in(before, titles) | _titles_in(after, titles)) - neighbours
            by_code = _near_miss(written, context_sids)
            fixed = _pick(by_title, by_code)
            if fixed is None:
                why = "ambiguous" if (by_title or by_code) else "no candidate"
                return Checked(None, "invalid_sid", f"{written} is not in the catalogue ({why})")
            repaired += 1
        out.append(text[pos : m.start()])
        out.append(fixed)
        pos = m.end()
    out.append(text[pos:])
    return Checked("".join(out), repaired=repaired)


def strip_think(text: str) -> Checked:
    """The text after a leading think block, which reasoning teachers (Qwen3, DeepSeek-R1) write before
    their answer; Stage 2 wraps the reasoning in a think block of its own. A reply whose first tag closes
    the block was opened by the server's chat template. Rejected: a reply that is only a think block,
    and one that still holds think tags after it."""
    first = THINK_TAG.search(text)
    if first is None:
        return Checked(text)
    closing = first.group(0).startswith("</")
    if not closing and first.start() > 0 and text[: first.start()].strip():
        return Checked(None, "think_tags", f"a think tag at character {first.start()}, after the answer began")
    close = first if closing else THINK_TAG.search(text, first.end())
    if close is None or not close.group(0).startswith("</"):
        return Checked(None, "think_only", "the think block is never closed")
    rest = text[close.end() :].strip()
    if not rest:
        return Checked(None, "think_only", "nothing follows the think block")
    stray = THINK_TAG.search(rest)
    if stray is not None:
        return Checked(None, "think_tags", f"{stray.group(0)} still in the text after the leading think block")
    return Checked(rest, think_stripped=True)


def check_length(text: str, bounds: tuple[int, int]) -> Checked:
    n = len(text.split())
    if n < bounds[0]:
        return Checked(None, "too_short", f"{n} words < {bounds[0]}")
    if n > bounds[1]:
        return Checked(None, "too_long", f"{n} words > {bounds[1]}")
    return Checked(text)


def check_reasoning_end(
    text: str,
    target_sid: str,
    target_title: str,
    history_titles: Iterable[str] = (),
    final_sid: bool = True,
    history_sids: Iterable[str] = (),
) -> Checked:
    """The path must END with the target SID (trailing punctuation is dropped) and must not name the
    target item before that. Leaks are judged by item: a mention that can name a history item is not
    one, so a history title equal to the target's (variants of one product often share a title) or
    containing it (a longer title) is recapping the history, and so is the target's SID when the
    target is itself in the history (a repeat purchase). With `final_sid=False` (paths written to
    precede the answer, as the research corpus's are) a path may also end without a SID; one that
    ends with a SID must still end with the target's."""
    body = text.rstrip(TRAILING)
    runs = list(SID_RUN.finditer(body))
    ends_with_sid = bool(runs) and runs[-1].end() == len(body)
    if not ends_with_sid and final_sid:
        return Checked(None, "missing_final_sid", "the path does not end with a SID")
    earlier, before = runs, body
    if ends_with_sid:
        final = re.sub(r"\s+", "", runs[-1].group(0))
        if final != target_sid:
            return Checked(None, "wrong_final_sid", f"ends with {final}, the target is {target_sid}")
        earlier, before = runs[:-1], body[: runs[-1].start()]
    repeat_purchase = target_sid in set(history_sids)
    if not repeat_purchase and any(re.sub(r"\s+", "", r.group(0)) == target_sid for r in earlier):
        return Checked(None, "leak_sid", "the target SID appears before the final answer")
    title = _norm(target_title)
    if title:
        masked = _norm(before)
        for other in sorted({_norm(t) for t in history_titles}, key=len, reverse=True):
            if _mentions(other, title):
                masked = _as_words(other).sub(" ", masked)
        if _mentions(masked, title):
            return Checked(None, "leak_title", "the target title appears before the final answer")
    return Checked(body if ends_with_sid else text)


def validate_text(
    kind: str,
    text: str | None,
    *,
    catalogue: frozenset[str] | set[str],
    context: list[tuple[str, str]],
    bounds: tuple[int, int],
    target: tuple[str, str] | None = None,
    history_titles: Iterable[str] = (),
    final_sid: bool = True,
    history_sids: Iterable[str] = (),
) -> Checked:
    """All checks for one text of `kind` (item | history | reasoning); `target` = (sid, title)."""
    if text is None or not text.strip():
        return Checked(None, "empty", "empty reply")
    unwrapped = strip_think(text.strip())
    if not unwrapped.ok:
        return unwrapped
    checked = _check_body(
        kind, unwrapped.text, catalogue, context, bounds, target, history_titles, final_sid, history_sids
    )
    checked.think_stripped = unwrapped.think_stripped
    return checked


def _check_body(
    kind: str,
    text: str,
    catalogue: frozenset[str] | set[str],
    context: list[tuple[str, str]],
    bounds: tuple[int, int],
    target: tuple[str, str] | None,
    history_titles: Iterable[str],
    final_sid: bool,
    history_sids: Iterable[str],
) -> Checked:
    checked = repair_sids(text, catalogue, context)
    if not checked.ok:
        return checked
    repaired = checked.repaired
    if kind == "reasoning":
        assert target is not None
        checked = check_reasoning_end(checked.text, target[0], target[1], history_titles, final_sid, history_sids)
        if not checked.ok:
            return checked
    checked = check_length(checked.text, bounds)
    checked.repaired = repaired
    return checked
