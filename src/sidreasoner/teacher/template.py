"""The `template` teacher: deterministic text from item metadata and train-split co-occurrence
statistics, with no model. It writes the same three kinds of text as the `openai` teacher and goes
through the same validation; its artifacts say `templated: true`."""

from __future__ import annotations

import re
from collections import Counter

from sidreasoner.teacher.context import Context, Item

DESCRIPTION_WORDS = 40
_NUMBER = re.compile(r"(\d+)\s*$")
_LINES_CACHE: dict[int, tuple[list[Item], dict[str, set[int]]]] = {}


def _q(title: str) -> str:
    return f'"{title}"'


def _trim(text: str, words: int) -> str:
    parts = text.split()
    out = " ".join(parts[:words])
    if len(parts) > words:
        out += " ..."
    return out


def _a(phrase: str) -> str:
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def _gloss(it: Item) -> str:
    kind = " ".join(x for x in (it.brand, it.main_category) if x)
    return f"{it.sid} ({_q(it.title)}" + (f", {_a(kind)} item)" if kind else ")")


def _top(counter: Counter) -> tuple[str, int]:
    return sorted(counter.items(), key=lambda kv: (-kv[1], kv[0]))[0]


def item_narrative(ctx: Context, it: Item) -> str:
    parts = [f"{it.sid} is {_q(it.title)}" + (f", made by {it.brand}." if it.brand else ".")]
    cats = [c for c in it.categories if c and c != ctx.category] or list(it.categories)
    if cats:
        parts.append(f"It is listed under {' > '.join(cats)}.")
    if it.description:
        parts.append(_trim(it.description, DESCRIPTION_WORDS).rstrip(".") + ".")
    n = ctx.popularity.get(it.item_id, 0)
    parts.append(f"In the training interactions it was bought {n} time{'s' if n != 1 else ''}.")
    follow = ctx.top_next(it.item_id, 2)
    if follow:
        names = " and ".join(f"{ctx.items[i].sid} ({_q(ctx.items[i].title)})" for i, _ in follow)
        parts.append(f"Shoppers who buy {it.sid} often go on to {names}.")
    else:
        parts.append(f"No purchase that follows {it.sid} is frequent enough to report.")
    prev = ctx.top_prev(it.item_id, 1)
    if prev:
        p = ctx.items[prev[0][0]]
        parts.append(f"It is most often bought right after {p.sid} ({_q(p.title)}).")
    if it.series:
        parts.append(f"It belongs to the {_q(it.series)} line.")
    return " ".join(parts)


def history_narrative(ctx: Context, history: list[int]) -> str:
    items = [ctx.items[i] for i in history]
    n = len(items)
    if n == 1:
        story = f"The user has a single purchase so far: {_gloss(items[0])}."
    else:
        middle = "".join(f", then {_gloss(it)}" for it in items[1:-1])
        story = (
            f"The user's purchases, oldest first: first {_gloss(items[0])}{middle}, "
            f"and most recently {_gloss(items[-1])}."
        )
    parts = [story]
    cats = Counter(it.main_category for it in items if it.main_category)
    if cats:
        cat, k = _top(cats)
        parts.append(
            f"{k} of the {n} items are {cat} items"
            + (f", across {len(cats)} categories in all." if len(cats) > 1 else ".")
        )
    brands = Counter(it.brand for it in items if it.brand)
    if brands:
        brand, k = _top(brands)
        parts.append(f"The most frequent brand is {brand} ({k} of {n}).")
    series = Counter(it.series for it in items if it.series)
    if series:
        name, k = _top(series)
        if k > 1:
            parts.append(f"The user follows the {_q(name)} line through {k} installments.")
    return " ".join(parts)


def _installment(it: Item) -> int | None:
    """The number that ends a series title ('Acme Gel Pen Vol. 3' -> 3); None outside a series."""
    if not it.series:
        return None
    match = _NUMBER.search(it.title)
    return int(match.group(1)) if match else None


def _lines(ctx: Context) -> dict[str, set[int]]:
    """Every series of the catalogue and the installment numbers it has (built once per context)."""
    cached = _LINES_CACHE.get(id(ctx))
    if cached is not None and cached[0] is ctx.items:
        return cached[1]
    lines: dict[str, set[int]] = {}
    for it in ctx.items:
        number = _installment(it)
        if number is not None:
            lines.setdefault(it.series, set()).add(number)
    _LINES_CACHE.clear()
    _LINES_CACHE[id(ctx)] = (ctx.items, lines)
    return lines


def _open_line(ctx: Context, items: list[Item]) -> tuple[Item, int] | None:
    """(the user's latest item of the line they are walking, the number that comes next): the most recent
    line bought at least twice whose next installment the catalogue has, else the latest item's line when
    the catalogue has its next installment."""
    numbered = [it for it in items if _installment(it) is not None]
    counts = Counter(it.series for it in numbered)
    lines = [it.series for it in reversed(numbered) if counts[it.series] >= 2]
    if numbered and numbered[-1] is items[-1]:
        lines.append(items[-1].series)
    for line in dict.fromkeys(lines):
        reached = max((it for it in numbered if it.series == line), key=_installment)
        if _installment(reached) + 1 in _lines(ctx)[line]:
            return reached, _installment(reached) + 1
    return None


def _follow_up(ctx: Context, last: Item) -> str:
    """Where shoppers go after `last` in the training data, by line and number (else brand and category)."""
    follow = ctx.top_next(last.item_id, 1)
    if not follow:
        return "Nothing follows it often in the training data, so a popular item is the best guess."
    nxt = ctx.items[follow[0][0]]
    number = _installment(nxt)
    if number is not None:
        where = f"number {number} of the {_q(nxt.series)} line"
    else:
        kind = " ".join(x for x in (nxt.brand, nxt.main_category) if x)
        where = _a(kind) + " item" if kind else "another item"
    return f"Shoppers who buy it most often go on to {where}."


def reasoning_path(ctx: Context, history: list[int], target: Item) -> str:
    """A short deduction from what the teacher may know before the purchase: the history, the catalogue's
    series and the training data's follow-up counts. The target enters only as the closing SID, so the
    steps are the ones the model can walk itself at inference, whatever the user bought next."""
    items = [ctx.items[i] for i in history]
    opened = _open_line(ctx, items)
    if opened:
        reached, number = opened
        parts = [
            f"The user is walking a line; its latest installment is {reached.sid} ({_q(reached.title)}).",
            f"The next one, number {number}, is in the catalogue.",
        ]
    else:
        last = items[-1]
        ending = "; the catalogue has no next installment of its line" if last.series else ""
        parts = [f"Latest: {last.sid} ({_q(last.title)}){ending}.", _follow_up(ctx, last)]
    parts.append(f"Recommended item: {target.sid}")
    return " ".join(parts)
