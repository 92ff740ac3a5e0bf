"""Small research bundles in the MiniOneRec/SIDReasoner `data/Amazon` layout, with the real files' quirks.

`write_bundle` writes one category's splits, index, item.json, info and the SIDReasoner extras, and
returns what a correct reader must find. `break_bundle` then damages a written bundle in one named way
and returns where the damage is (file, row or line, field, item).

The CSVs are written like the released ones: the csv module's minimal quoting, list fields as Python
list literals (`str(list)`), SIDs as concatenated codes. With `quirks=True` the first items and user
carry the released files' oddities:

- titles with double quotes, an apostrophe and double quotes together, commas, a backslash, non-ASCII;
- descriptions: an empty string, a list literal of empty strings, a list literal that does not parse
  (kept whole), a plain string, a list literal of two texts (the usual case);
- SIDs shared by two items (4, 5) and by three items (7, 8, 9);
- user A0 buys items 0, 1, 0, 2: a history of length 1 (train), a target inside its own history
  (valid), a history with a repeated item (test);
- item narratives: one after a `<think>` block, one missing, one empty after `</think>`;
- integrated narratives (the train rows): an empty narrative, an unclosed `<think>` reasoning, a reasoning
  after a `<think>` block, an empty reasoning, one empty after `</think>`, and `NaN` read as missing;
- general chats: content as a list of text parts, a `messages` string in JSON instead of Python, a chat
  without an assistant message, quotes and newlines inside content.
"""

from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

SUFFIX = "_5_2016-10-2018-11"
HEADER = ["user_id", "history_item_title", "item_title", "history_item_id", "item_id", "history_item_sid", "item_sid"]
# The integrated narratives' columns the research code reads (a bundle's file may have only these).
NARRATIVE_HEADER = ["history_item_sid", "item_sid", "reasoning_path", "integrated_narrative"]
MAX_HISTORY = 10

BRANDS = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Stark", "Wayne", "Wonka"]
NOUNS = [
    "Gel Pen",
    "Stapler",
    "Binder",
    "Notebook",
    "Desk Lamp",
    "Paper Tray",
    "Calculator",
    "Label Maker",
    "Tape Dispenser",
    "Whiteboard",
    "Folder Set",
    "Shredder",
]
QUIRKY_TITLES = {
    0: 'Pendaflex Hanging Folder Tabs, 2", Clear, 25 Tabs',
    1: 'Scotch\'s "Magic" Tape, 3/4 x 1000 Inches',
    2: 'Acme Ruler, 12" / 30 cm, [Metal] \\ Steel',
    3: "Café Notebook – A5, Dotted",
}
# item -> (description as stored in item.json, the texts a reader must find)
QUIRKY_DESCRIPTIONS = {
    1: ("", []),
    2: ("['', '  ']", []),
    3: ("['It's a notebook, dotted']", ["['It's a notebook, dotted']"]),  # unparseable: kept whole
    4: ("A plain description, not a list.", ["A plain description, not a list."]),
}
SHARED_SIDS = [(4, 5), (7, 8, 9)]
QUIRKY_SEQUENCE = [0, 1, 0, 2]  # user A0


def _title(i: int, quirks: bool) -> str:
    if quirks and i in QUIRKY_TITLES:
        return QUIRKY_TITLES[i]
    return f"{BRANDS[i % len(BRANDS)]} {NOUNS[(i // len(BRANDS)) % len(NOUNS)]} Model {i}"


def _description(i: int, title: str, quirks: bool, words: int) -> tuple[str, list[str]]:
    if quirks and i in QUIRKY_DESCRIPTIONS:
        return QUIRKY_DESCRIPTIONS[i]
    texts = [
        f"The {title} is built for daily office use." + " Reliable and simple." * words,
        f"Item {i}: comes with a one-year warranty.",
    ]
    return str(texts), texts


def _codes(n_items: int, rng: random.Random, quirks: bool) -> list[list[str]]:
    seen: set[tuple[int, int, int]] = set()
    out: list[list[str]] = []
    for _ in range(n_items):
        while True:
            c = (rng.randrange(256), rng.randrange(256), rng.randrange(256))
            if c not in seen:
                seen.add(c)
                break
        out.append([f"<a_{c[0]}>", f"<b_{c[1]}>", f"<c_{c[2]}>"])
    if quirks:
        for group in SHARED_SIDS:
            for i in group[1:]:
                if i < n_items:
                    out[i] = list(out[group[0]])
    return out


def _sequences(
    n_users: int, n_items: int, rng: random.Random, quirks: bool, min_len: int, max_len: int, repeat: float
) -> list[list[int]]:
    seqs = [list(QUIRKY_SEQUENCE)] if quirks else []
    while len(seqs) < n_users:
        seq: list[int] = []
        for _ in range(rng.randint(min_len, max_len)):
            seq.append(rng.choice(seq) if seq and repeat and rng.random() < repeat else rng.randrange(n_items))
        seqs.append(seq)
    return seqs


def _write_csv(path: Path, header: list[str], rows: list[list]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)


def _csv_row(s: dict) -> list:
    return [
        s["user_id"],
        str(s["history_titles"]),
        s["item_title"],
        str(s["history_item_ids"]),
        s["item_id"],
        str(s["history_sids"]),
        s["item_sid"],
    ]


def _narrative_texts(n: int, s: dict, words: int) -> tuple[str, str, str | None, str | None]:
    """(narrative cell, reasoning cell, expected narrative, expected reasoning) for train row n (0-based)."""
    hist = ", ".join(s["history_sids"])
    narrative = f"The user bought {hist}, then {s['item_sid']}." + " They like tidy desks." * words
    reasoning = f"The last purchase was {s['history_sids'][-1]}; a matching item follows." + " Consider it." * words
    cells = {
        1: ("", reasoning),
        2: (narrative, "<think>unfinished thought"),
        3: (narrative, "<think>draft</think>\nFinal reasoning for row 4."),
        4: (narrative, ""),
        5: ("NaN", reasoning),
        6: (f"<think>plan</think>\n {narrative} ", reasoning),
        7: (narrative, "<think>all thought</think>  "),
    }
    cell_n, cell_r = cells.get(n, (narrative, reasoning))
    want_n = {1: None, 5: None, 6: narrative}.get(n, narrative)
    want_r = {2: None, 3: "Final reasoning for row 4.", 4: None, 7: ""}.get(n, reasoning)
    return cell_n, cell_r, want_n, want_r


def _general(n_general: int, quirks: bool, words: int) -> tuple[list[str], list[list[dict]]]:
    """(JSON lines, expected normalised conversations in file order)."""
    lines, expected = [], []
    for k in range(n_general):
        msgs = [
            {"role": "system", "content": "You are a careful assistant."},
            {"role": "user", "content": f"Question {k}: what is {k} + {k}?" + " Explain." * words},
            {"role": "assistant", "content": f"<think>add</think>\n{2 * k}"},
        ]
        want = [dict(m) for m in msgs]
        encoded = str(msgs)
        if quirks and k == 1:
            msgs[1]["content"] = [{"type": "text", "text": "Part one."}, {"type": "text", "text": "Part two."}]
            want[1]["content"] = "Part one.\nPart two."
            encoded = str(msgs)
        elif quirks and k == 2:
            encoded = json.dumps(msgs)  # a JSON string rather than a Python literal
        elif quirks and k == 3:
            msgs = msgs[:2]  # no assistant message: dropped after sampling
            want = None
            encoded = str(msgs)
        elif quirks and k == 4:
            msgs[1]["content"] = 'He said "it\'s fine",\nthen left.'
            want[1]["content"] = msgs[1]["content"]
            encoded = str(msgs)
        lines.append(json.dumps({"messages": encoded, "source": "bench"}))
        expected.append(want)
    return lines, expected


def write_bundle(
    root: str | Path,
    category: str = "Office_Products",
    n_users: int = 6,
    n_items: int = 12,
    seed: int = 0,
    quirks: bool = True,
    min_len: int = 4,
    max_len: int = 14,
    n_general: int = 6,
    text_words: int = 0,
    repeat: float = 0.0,
    narrative_ids: bool = True,
) -> dict:
    """Write a research bundle of `category` under `root`; return what a reader must find.

    Returns {"root", "category", "paths" (kind -> Path, as find_bundle names them), "items" (id -> {"title",
    "description" (as stored), "texts" (normalised), "codes", "sid"}), "duplicates" (SID -> item ids),
    "splits" (split -> list of row dicts with Sample's field names), "item_narratives" (id -> text),
    "narratives" (train row -> (history narrative, reasoning path), None when missing or dropped),
    "general" (normalised conversations in file order, None for those dropped)}.

    `text_words` lengthens every description, narrative and chat (the benchmark's realistic sizes);
    `repeat` is the chance that a user buys again an item already in their sequence; `narrative_ids=False`
    writes the integrated narratives with only the four columns the research code reads (NARRATIVE_HEADER).
    """
    if quirks and n_items < 10:
        raise ValueError("quirks need at least 10 items")
    root = Path(root)
    rng = random.Random(seed)
    codes = _codes(n_items, rng, quirks)
    items: dict[int, dict] = {}
    for i in range(n_items):
        title = _title(i, quirks)
        desc, texts = _description(i, title, quirks, text_words)
        items[i] = {
            "title": title,
            "description": desc,
            "texts": texts,
            "codes": codes[i],
            "sid": "".join(codes[i]),
            "brand": BRANDS[i % len(BRANDS)],
            "categories": "" if i % 2 else "Office Products,Paper",
        }
    by_sid: dict[str, list[int]] = {}
    for i, it in items.items():
        by_sid.setdefault(it["sid"], []).append(i)
    duplicates = {s: ids for s, ids in by_sid.items() if len(ids) > 1}

    splits: dict[str, list[dict]] = {"train": [], "valid": [], "test": []}
    for u, seq in enumerate(_sequences(n_users, n_items, rng, quirks, min_len, max_len, repeat)):
        for t in range(1, len(seq)):
            hist = seq[max(0, t - MAX_HISTORY) : t]
            split = "test" if t == len(seq) - 1 else "valid" if t == len(seq) - 2 else "train"
            splits[split].append(
                {
                    "user_id": f"A{u}",
                    "history_item_ids": hist,
                    "item_id": seq[t],
                    "history_titles": [items[h]["title"] for h in hist],
                    "item_title": items[seq[t]]["title"],
                    "history_sids": [items[h]["sid"] for h in hist],
                    "item_sid": items[seq[t]]["sid"],
                }
            )

    paths = {s: root / s / f"{category}{SUFFIX}.csv" for s in splits}
    for s, rows in splits.items():
        _write_csv(paths[s], HEADER, [_csv_row(r) for r in rows])
    index_dir = root / "index"
    index_dir.mkdir(parents=True, exist_ok=True)
    paths["index"] = index_dir / f"{category}.index.json"
    paths["index"].write_text(json.dumps({str(i): it["codes"] for i, it in items.items()}))
    paths["items"] = index_dir / f"{category}.item.json"
    paths["items"].write_text(
        json.dumps(
            {
                str(i): {
                    "title": it["title"],
                    "description": it["description"],
                    "brand": it["brand"],
                    "categories": it["categories"],
                }
                for i, it in items.items()
            },
            indent=2,
        )
    )
    paths["info"] = root / "info" / f"{category}{SUFFIX}.txt"
    paths["info"].parent.mkdir(parents=True, exist_ok=True)
    paths["info"].write_text("".join(f"{it['sid']}\t{it['title']}\t{i}\n" for i, it in items.items()), encoding="utf-8")

    enhanced, item_narratives = {}, {}
    for i, it in items.items():
        text = f"  {it['sid']} is the {it['title']}, a fine item." + " Useful at work." * text_words
        entry = {"title": it["title"], "llm_stage2": text}
        if quirks and i == 0:
            entry["llm_stage2"] = "<think>Plan the story.</think>\n\n Item 0 keeps your tabs in order.  "
            item_narratives[i] = "Item 0 keeps your tabs in order."
        elif quirks and i == 1:
            del entry["llm_stage2"]
        elif quirks and i == 2:
            entry["llm_stage2"] = "<think>Only thinking.</think>   "
        else:
            item_narratives[i] = text
        enhanced[str(i)] = entry
    paths["item_narratives"] = index_dir / f"{category}.item_enhanced_v2.json"
    paths["item_narratives"].write_text(json.dumps(enhanced, indent=2))

    narrative_rows, narratives = [], []
    for n, s in enumerate(splits["train"]):
        cell_n, cell_r, want_n, want_r = (
            _narrative_texts(n, s, text_words) if quirks else _narrative_texts(0, s, text_words)
        )
        if narrative_ids:
            narrative_rows.append(_csv_row(s) + [cell_n, cell_r])
        else:
            narrative_rows.append([str(s["history_sids"]), s["item_sid"], cell_r, cell_n])
        narratives.append((want_n, want_r))
    paths["integrated_narratives"] = index_dir / f"{category}.integrated_narrative.csv"
    header = HEADER + ["integrated_narrative", "reasoning_path"] if narrative_ids else NARRATIVE_HEADER
    _write_csv(paths["integrated_narratives"], header, narrative_rows)

    lines, general = _general(n_general, quirks, text_words)
    paths["general_reasoning"] = root / "general" / "sampled_data.arrow"
    paths["general_reasoning"].parent.mkdir(parents=True, exist_ok=True)
    paths["general_reasoning"].write_text("\n".join(lines) + "\n")
    return {
        "root": root,
        "category": category,
        "paths": paths,
        "items": items,
        "duplicates": duplicates,
        "splits": splits,
        "item_narratives": item_narratives,
        "narratives": narratives,
        "general": general,
    }


# ---------------------------------------------------------------- damaged variants


def _rewrite_row(path: Path, row: int, column: str, value: str) -> None:
    """Set `column` of data row `row` (1-based) of a CSV to `value`."""
    with open(path, newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    table[row][table[0].index(column)] = value
    with open(path, "w", newline="", encoding="utf-8") as fh:
        csv.writer(fh).writerows(table)


def _first_use(bundle: dict, item: int) -> tuple[str, int, str]:
    """(split, 1-based row, field) of the first reference to `item`, in the order a reader checks them:
    train, valid, test rows; in a row the target, then the history."""
    for split in ("train", "valid", "test"):
        for n, r in enumerate(bundle["splits"][split], start=1):
            if r["item_id"] == item:
                return split, n, "item_id"
            if item in r["history_item_ids"]:
                return split, n, "history_item_id"
    raise ValueError(f"item {item} is used by no row")


def break_bundle(bundle: dict, kind: str) -> dict:
    """Damage a bundle written by write_bundle in one way; return {"file": the damaged file's name, ...}.

    kinds: no_splits, missing_split (valid), missing_column (item_sid of test), item_not_in_index and
    item_not_in_items (item 2, with "split", "row", "field" of its first use), sid_wrong_levels (item 3
    gets two codes), sid_bad_letter (item 3's codes out of order), non_list_history and length_mismatch
    (test row 1: counted skips, with "row", "field", "reason"), messages_not_list (general line 2:
    a counted skip, with "line", "reason").
    """
    paths: dict[str, Path] = bundle["paths"]
    if kind == "no_splits":
        for s in ("train", "valid", "test"):
            shutil.rmtree(paths[s].parent)
        return {"file": None}
    if kind == "missing_split":
        paths["valid"].unlink()
        return {"file": paths["valid"].name}
    if kind == "missing_column":
        with open(paths["test"], newline="", encoding="utf-8") as fh:
            table = list(csv.reader(fh))
        drop = table[0].index("item_sid")
        with open(paths["test"], "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([r[:drop] + r[drop + 1 :] for r in table])
        return {"file": paths["test"].name, "column": "item_sid"}
    if kind in ("item_not_in_index", "item_not_in_items"):
        key = "index" if kind == "item_not_in_index" else "items"
        obj = json.loads(paths[key].read_text())
        del obj["2"]
        paths[key].write_text(json.dumps(obj))
        split, row, fld = _first_use(bundle, 2)
        return {
            "file": paths[split].name,
            "split": split,
            "row": row,
            "field": fld,
            "item": 2,
            "source": paths[key].name,
        }
    if kind in ("sid_wrong_levels", "sid_bad_letter"):
        obj = json.loads(paths["index"].read_text())
        obj["3"] = obj["3"][:2] if kind == "sid_wrong_levels" else [obj["3"][0], "<c_1>", "<b_2>"]
        paths["index"].write_text(json.dumps(obj))
        return {"file": paths["index"].name, "item": 3}
    if kind == "non_list_history":
        _rewrite_row(paths["test"], 1, "history_item_id", "384")
        return {"file": paths["test"].name, "row": 1, "field": "history_item_id", "reason": "not_list_history_item_id"}
    if kind == "length_mismatch":
        row = bundle["splits"]["test"][0]
        _rewrite_row(paths["test"], 1, "history_item_title", str(row["history_titles"] + ["Extra title"]))
        return {"file": paths["test"].name, "row": 1, "field": "history_item_title", "reason": "length_mismatch"}
    if kind == "messages_not_list":
        lines = paths["general_reasoning"].read_text().splitlines()
        lines[1] = json.dumps({"messages": "'hello'"})
        paths["general_reasoning"].write_text("\n".join(lines) + "\n")
        return {"file": paths["general_reasoning"].name, "line": 2, "reason": "not_list_messages"}
    raise ValueError(f"unknown kind {kind!r}")
