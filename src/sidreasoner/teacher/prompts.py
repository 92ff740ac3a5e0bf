"""Chat prompts for the `openai` teacher: item narratives, history narratives, reasoning paths.

SIDs are written as the exact tokens (`<a_12><b_7><c_3>`). Changing any text here changes the
cache keys (they hash the messages), so old cached replies are simply not reused.
"""

from __future__ import annotations

from sidreasoner.teacher.context import Context, Item

PROMPT_VERSION = 1
DESCRIPTION_WORDS = 80

SYSTEM = (
    "You write training text for a recommender system that refers to products by Semantic IDs (SIDs). "
    "A SID is a short sequence of tokens such as <a_12><b_7><c_3>. Copy every SID exactly as given: "
    "same tokens, same order, no spaces inside, no brackets added or removed. Never invent a SID. "
    "Reply with the requested text only: no preamble, no markdown headings, no lists of options."
)


def _trim(text: str, words: int) -> str:
    parts = text.split()
    return " ".join(parts[:words]) + (" ..." if len(parts) > words else "")


def item_card(item: Item, description: bool = True) -> str:
    lines = [f"SID: {item.sid}", f"Title: {item.title}"]
    if item.brand:
        lines.append(f"Brand: {item.brand}")
    if item.categories:
        lines.append(f"Categories: {' > '.join(item.categories)}")
    if description and item.description:
        lines.append(f"Description: {_trim(item.description, DESCRIPTION_WORDS)}")
    return "\n".join(lines)


def history_lines(ctx: Context, history: list[int]) -> str:
    out = []
    for n, item_id in enumerate(history, 1):
        it = ctx.items[item_id]
        extra = ", ".join(x for x in (it.brand, " > ".join(it.categories)) if x)
        out.append(f"{n}. {it.sid} | {it.title}" + (f" | {extra}" if extra else ""))
    return "\n".join(out)


def item_messages(ctx: Context, item: Item, words: tuple[int, int]) -> list[dict[str, str]]:
    follow = [ctx.items[i] for i, _ in ctx.top_next(item.item_id, 3)]
    follow_text = "\n".join(f"- {f.sid} | {f.title}" for f in follow) or "- (none recorded)"
    user = (
        "Task: item narrative.\n"
        f"Write a narrative of {max(words[0], 40)}-{min(words[1], 150)} words about the item below that "
        "interleaves its SID with its meaning: what it is, who buys it, and what it goes with. Mention the "
        f"item's SID {item.sid} at least once, written exactly like that. You may mention items that "
        "shoppers often buy next, each by its SID exactly as listed.\n\n"
        f"Item:\n{item_card(item)}\n\n"
        f"Items often bought next:\n{follow_text}"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def history_messages(ctx: Context, history: list[int], words: tuple[int, int]) -> list[dict[str, str]]:
    user = (
        "Task: history narrative.\n"
        f"Tell this user's purchase history, oldest first, as one flowing paragraph of "
        f"{max(words[0], 30)}-{min(words[1], 200)} words. Refer to every item by its SID exactly as "
        "listed, each followed by a short gloss of what it is in parentheses, and point out the "
        "tastes and patterns the history shows (categories, brands, series).\n\n"
        f"Purchase history (oldest first):\n{history_lines(ctx, history)}"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]


def reasoning_messages(ctx: Context, history: list[int], target: Item, words: tuple[int, int]) -> list[dict[str, str]]:
    user = (
        "Task: reasoning path.\n"
        "Reason step by step over this user's purchase history about what they are likely to buy "
        "next: their categories, brands, series and how their interests develop. "
        f"Write {max(words[0], 40)}-{min(words[1], 200)} words. Refer to history items by their SIDs "
        "exactly as listed.\n\n"
        f"Purchase history (oldest first):\n{history_lines(ctx, history)}\n\n"
        "Hidden guidance (the item the user actually bought next; use it only to steer the reasoning "
        "towards it):\n"
        f"Target SID (hidden guidance): {target.sid}\n"
        f"{item_card(target, description=False)}\n\n"
        "Rules: do NOT mention the target's title or its SID anywhere in the reasoning, and do not "
        "say that you were given it; describe instead the kind of item the reasoning leads to. "
        f"End with exactly one final line: Recommended item: {target.sid}"
    )
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": user}]
