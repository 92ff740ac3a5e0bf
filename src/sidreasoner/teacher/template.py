"""The `template` teacher: deterministic text from item metadata and train-split co-occurrence
statistics, with no model. It writes the same three kinds of text as the `openai` teacher and goes
through the same validation; its artifacts say `templated: true`."""

from __future__ import annotations

from collections import Counter

from sidreasoner.teacher.context import Context, Item

DESCRIPTION_WORDS = 40


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
        story = (f"The user's purchases, oldest first: first {_gloss(items[0])}{middle}, "
                 f"and most recently {_gloss(items[-1])}.")
    parts = [story]
    cats = Counter(it.main_category for it in items if it.main_category)
    if cats:
        cat, k = _top(cats)
        parts.append(f"{k} of the {n} items are {cat} items" +
                     (f", across {len(cats)} categories in all." if len(cats) > 1 else "."))
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


def reasoning_path(ctx: Context, history: list[int], target: Item) -> str:
    items = [ctx.items[i] for i in history]
    n, last = len(items), items[-1]
    recent = ", ".join(f"{it.sid} ({_q(it.title)})" for it in items[-3:])
    parts = [f"The user has bought {n} item{'s' if n != 1 else ''}; the most recent "
             f"{'ones are' if min(n, 3) > 1 else 'one is'} {recent}."]
    cats = Counter(it.main_category for it in items if it.main_category)
    if cats:
        cat, k = _top(cats)
        line = f"Category: {k} of {n} items are {cat} items"
        if last.main_category and last.main_category != cat:
            line += f", and the latest one is {_a(last.main_category)} item"
        parts.append(line + ".")
    brands = Counter(it.brand for it in items if it.brand)
    if brands:
        brand, k = _top(brands)
        parts.append(f"Brand: {brand} accounts for {k} of {n} purchases" +
                     (f", and the latest one is from {last.brand}." if last.brand and last.brand != brand else "."))
    same_series = [it for it in items if it.series and it.series == target.series]
    if same_series:
        where = "the latest item" if last.series == target.series else "earlier items"
        parts.append(f"Series: {where} belong{'s' if where == 'the latest item' else ''} to the "
                     f"{_q(target.series)} line ({len(same_series)} installment"
                     f"{'s' if len(same_series) != 1 else ''} in the history), so another installment of "
                     "that line is a natural next step.")
    elif last.series:
        parts.append(f"Series: the latest item belongs to the {_q(last.series)} line, but the user's "
                     "interests may move on to something else.")
    followers = ctx.next_counts.get(last.item_id)
    if followers:
        total = sum(followers.values())
        same_cat = sum(c for i, c in followers.items() if ctx.items[i].main_category == target.main_category)
        line = f"Co-occurrence: of the {total} purchases that followed {last.sid} in the training data, {same_cat}"
        line += f" were {target.main_category} items" if target.main_category else " were in the same category"
        if target.brand:
            same_brand = sum(c for i, c in followers.items() if ctx.items[i].brand == target.brand)
            line += f" and {same_brand} were from {target.brand}"
        parts.append(line + ".")
    kind = " ".join(x for x in (target.brand, target.fine_category or target.main_category) if x) or "related"
    tail = " that continues that line" if same_series else ""
    parts.append(f"So the next purchase is most likely {_a(kind)} item{tail}.")
    parts.append(f"Recommended item: {target.sid}")
    return " ".join(parts)
