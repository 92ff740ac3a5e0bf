"""Built-in demo dataset: Amazon-2018-format raw files with learnable sequential structure.

Items belong to categories and to *series* (`series_length` items each, e.g. "Acme Gel Pen Vol. 3");
titles share words per series and per category, so a text encoder places related items close. Each
user picks 1-3 series (Zipf-skewed popularity) and walks through them in order, with a `noise` share
of random popular items interleaved, so "next item in the series" beats popularity by a wide margin.
With `dirt`, the files also carry what real files have: truncated JSON lines, HTML entities in
titles, missing/empty/overlong titles and exact-duplicate review lines; the counts are returned.
"""

from __future__ import annotations

import datetime as dt
import gzip
from pathlib import Path

import numpy as np
import orjson

from sidreasoner.config import DemoDataConfig

# (category, nouns, adjectives, sequel word): words shared by every item of a category.
THEMES: list[tuple[str, list[str], list[str], str]] = [
    (
        "Office Writing",
        ["Gel Pen", "Fountain Pen", "Marker Set", "Pencil Kit"],
        ["Smooth", "Fine", "Bold", "Quick-Dry"],
        "Vol.",
    ),
    (
        "Paper and Notebooks",
        ["Notebook", "Sketchbook", "Planner", "Journal"],
        ["Dotted", "Ruled", "Spiral", "Hardcover"],
        "Edition",
    ),
    (
        "Audio",
        ["Headphones", "Earbuds", "Speaker", "Soundbar"],
        ["Wireless", "Noise-Cancelling", "Portable", "Studio"],
        "Gen",
    ),
    (
        "Board Games",
        ["Strategy Game", "Card Game", "Puzzle Box", "Dice Game"],
        ["Family", "Party", "Cooperative", "Classic"],
        "Expansion",
    ),
    (
        "Kitchen",
        ["Chef Knife", "Frying Pan", "Cookbook", "Spice Rack"],
        ["Stainless", "Nonstick", "Cast Iron", "Bamboo"],
        "Part",
    ),
    (
        "Garden",
        ["Seed Kit", "Planter", "Pruning Shears", "Hose Nozzle"],
        ["Organic", "Heirloom", "Ergonomic", "Ceramic"],
        "Season",
    ),
    (
        "Fitness",
        ["Yoga Mat", "Resistance Band", "Dumbbell", "Jump Rope"],
        ["Eco", "Heavy-Duty", "Adjustable", "Lightweight"],
        "Level",
    ),
    (
        "Video Games",
        ["Adventure Game", "Racing Game", "Puzzle Game", "Shooter"],
        ["Retro", "Open-World", "Arcade", "Tactical"],
        "Chapter",
    ),
    (
        "Crafts",
        ["Yarn Pack", "Paint Set", "Bead Kit", "Embroidery Hoop"],
        ["Pastel", "Neon", "Metallic", "Vintage"],
        "Collection",
    ),
    (
        "Pet Supplies",
        ["Dog Toy", "Cat Tree", "Aquarium Filter", "Bird Feeder"],
        ["Chew-Proof", "Plush", "Quiet", "Deluxe"],
        "Size",
    ),
    (
        "Tools",
        ["Drill Bit Set", "Socket Wrench", "Tape Measure", "Tool Bag"],
        ["Titanium", "Magnetic", "Compact", "Pro"],
        "Series",
    ),
    (
        "Books",
        ["Mystery Novel", "Fantasy Saga", "Science Primer", "Cookery Guide"],
        ["Illustrated", "Annotated", "Pocket", "Collector's"],
        "Book",
    ),
]
BRANDS = [
    "Acme",
    "Northwind",
    "Contoso",
    "Globex",
    "Initech",
    "Umbrella",
    "Stark",
    "Wayne",
    "Hooli",
    "Vandelay",
    "Pied Piper",
    "Soylent",
    "Tyrell",
    "Wonka",
    "Cyberdyne",
    "Oscorp",
]
ENTITY_BRANDS = ["Smith &amp; Sons", "Baker &amp; Co", "&quot;Prime&quot; Goods"]  # html entities, planted with dirt
NAME_SUFFIX = ["Alpha", "Nova", "Zen", "Max", "Luxe", "Core", "Edge", "Air", "Flow", "Peak"]
START = dt.datetime(2016, 1, 1, tzinfo=dt.UTC).timestamp()
END = dt.datetime(2018, 12, 31, tzinfo=dt.UTC).timestamp()
DAY = 86_400
MIN_INTERACTIONS = 7
ALNUM = np.array(list("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"))


def _asins(rng: np.random.Generator, n: int) -> list[str]:
    out: list[str] = []
    seen: set[str] = set()
    while len(out) < n:
        code = "B0" + "".join(rng.choice(ALNUM, 8))
        if code not in seen:
            seen.add(code)
            out.append(code)
    return out


def _zipf(rng: np.random.Generator, n: int, alpha: float = 0.9) -> np.ndarray:
    weights = 1.0 / np.arange(1, n + 1) ** alpha
    weights = weights[rng.permutation(n)]
    return weights / weights.sum()


def _build_catalogue(cfg: DemoDataConfig, rng: np.random.Generator) -> tuple[list[dict], list[list[int]]]:
    """Meta records (Amazon 2018 fields) and the series (lists of item indices in walking order)."""
    themes = [THEMES[c % len(THEMES)] for c in range(cfg.num_categories)]
    num_series = max(1, cfg.num_items // cfg.series_length)
    asins = _asins(rng, cfg.num_items)
    items: list[dict] = []
    series: list[list[int]] = []
    for s in range(num_series):
        cat, nouns, adjs, sequel = themes[s % len(themes)]
        brand = BRANDS[int(rng.integers(len(BRANDS)))]
        name = (
            f"{brand} {adjs[int(rng.integers(len(adjs)))]} {nouns[int(rng.integers(len(nouns)))]} "
            f"{NAME_SUFFIX[s % len(NAME_SUFFIX)]}"
        )
        length = cfg.series_length if s < num_series - 1 else cfg.num_items - s * cfg.series_length
        members = []
        for k in range(1, length + 1):
            idx = len(items)
            members.append(idx)
            items.append(
                {
                    "asin": asins[idx],
                    "title": f"{name} {sequel} {k}",
                    "description": [f"Part {k} of the {name} series.", f"A {cat.lower()} favourite from {brand}."],
                    "brand": brand,
                    "category": ["Demo", cat, name.split(" ", 1)[1]],
                    "price": f"${5 + (idx * 7919) % 60}.99",
                }
            )
        series.append(members)
    return items, series


def _user_sequence(
    rng: np.random.Generator, cfg: DemoDataConfig, series: list[list[int]], series_p: np.ndarray, item_p: np.ndarray
) -> list[int]:
    want = int(rng.choice([1, 2, 3], p=[0.4, 0.35, 0.25]))
    order = rng.choice(len(series), size=min(len(series), 3 + want), replace=False, p=series_p)
    seq: list[int] = []
    for n_done, s in enumerate(order):
        if n_done >= want and len(seq) >= MIN_INTERACTIONS:
            break
        members = series[s]
        stop = len(members) if rng.random() < 0.7 else int(rng.integers(min(3, len(members)), len(members) + 1))
        for idx in members[:stop]:
            while rng.random() < cfg.noise:
                seq.append(int(rng.choice(len(item_p), p=item_p)))
            seq.append(idx)
    return seq


def _timestamps(rng: np.random.Generator, n: int) -> list[int]:
    gaps = rng.integers(1, 15, size=n) * DAY
    span = int(gaps.sum())
    first = int(rng.uniform(START, max(START + DAY, END - span))) // DAY * DAY
    return (first + np.concatenate([[0], np.cumsum(gaps[:-1])])).astype(np.int64).tolist()


def _review_lines(
    cfg: DemoDataConfig, rng: np.random.Generator, items: list[dict], series: list[list[int]]
) -> list[bytes]:
    series_p = _zipf(rng, len(series))
    item_p = _zipf(rng, len(items), alpha=1.1)
    lines: list[bytes] = []
    for u in range(cfg.num_users):
        user = f"A{u:06d}DEMO{int(rng.integers(1000, 9999))}"
        seq = _user_sequence(rng, cfg, series, series_p, item_p)
        seen: set[int] = set()
        for idx, ts in zip(seq, _timestamps(rng, len(seq)), strict=True):
            if idx in seen:  # a noise pick the user already had: skip, keeps (user, item) unique
                continue
            seen.add(idx)
            rating = float(rng.choice([3, 4, 5], p=[0.1, 0.3, 0.6]))
            lines.append(
                orjson.dumps(
                    {
                        "reviewerID": user,
                        "asin": items[idx]["asin"],
                        "overall": rating,
                        "unixReviewTime": ts,
                        "reviewText": f"Enjoyed {items[idx]['title']}.",
                        "summary": "Nice" if rating > 3 else "Okay",
                        "verified": True,
                    }
                )
            )
    return lines


def _pick(rng: np.random.Generator, pool: list[int], k: int) -> list[int]:
    chosen = rng.choice(len(pool), size=min(k, len(pool)), replace=False)
    return [pool[i] for i in sorted(chosen.tolist())]


def _dirty_titles(rng: np.random.Generator, items: list[dict], counts: dict[str, int]) -> None:
    n = len(items)
    picks = _pick(rng, list(range(n)), 4 * max(1, n // 100))
    per = len(picks) // 4
    for i in picks[:per]:
        del items[i]["title"]
    for i in picks[per : 2 * per]:
        items[i]["title"] = "   " if i % 2 else ""
    for i in picks[2 * per : 3 * per]:
        items[i]["title"] += " " + " ".join(["with extra long marketing words"] * 5)
    for i in picks[3 * per :]:
        brand = ENTITY_BRANDS[i % len(ENTITY_BRANDS)]
        old = items[i]["brand"]
        items[i]["title"] = items[i]["title"].replace(old, brand, 1)
        items[i]["description"] = [d.replace(old, brand) for d in items[i]["description"]]
        items[i]["brand"] = brand
    counts.update(missing_titles=per, empty_titles=per, long_titles=per, html_entity_titles=len(picks) - 3 * per)


def _insert_dirt(rng: np.random.Generator, lines: list[bytes], n_bad: int, n_dup: int) -> list[bytes]:
    """Insert truncated copies (malformed) and exact duplicates of random lines at random places."""
    extra = [lines[i][: max(1, len(lines[i]) // 2)] for i in _pick(rng, list(range(len(lines))), n_bad)]
    extra += [lines[i] for i in _pick(rng, list(range(len(lines))), n_dup)]
    out = lines + extra
    return [out[i] for i in rng.permutation(len(out))]


def _write_gz(path: Path, lines: list[bytes]) -> int:
    with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=6, mtime=0) as fh:
        fh.write(b"\n".join(lines) + b"\n")  # mtime=0 and no file name: byte-identical reruns
    return path.stat().st_size


def generate_demo_raw(cfg: DemoDataConfig, category: str, out_dir: Path, seed: int) -> dict[str, int]:
    """Write `<category>.json.gz` and `meta_<category>.json.gz` into out_dir; return planted counts."""
    rng = np.random.default_rng(seed)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    items, series = _build_catalogue(cfg, rng)
    reviews = _review_lines(cfg, rng, items, series)
    counts = {
        "items": len(items),
        "users": cfg.num_users,
        "reviews": len(reviews),
        "series": len(series),
        "missing_titles": 0,
        "empty_titles": 0,
        "long_titles": 0,
        "html_entity_titles": 0,
        "malformed_review_lines": 0,
        "malformed_meta_lines": 0,
        "duplicate_review_lines": 0,
    }
    if cfg.dirt:
        _dirty_titles(rng, items, counts)
    meta = [orjson.dumps(item) for item in items]
    if cfg.dirt:
        counts.update(
            malformed_meta_lines=max(1, len(meta) // 200),
            malformed_review_lines=max(1, len(reviews) // 1000),
            duplicate_review_lines=max(1, len(reviews) // 200),
        )
        meta = _insert_dirt(rng, meta, counts["malformed_meta_lines"], 0)
        reviews = _insert_dirt(rng, reviews, counts["malformed_review_lines"], counts["duplicate_review_lines"])
    else:
        reviews = [reviews[i] for i in rng.permutation(len(reviews))]
    _write_gz(out_dir / f"{category}.json.gz", reviews)
    _write_gz(out_dir / f"meta_{category}.json.gz", meta)
    return counts
