"""Raw Amazon reviews -> items, users, interactions and sliding-window samples (MiniOneRec protocol).

Order of filters: item titles (present, non-empty, <= max_title_words words) -> reviews inside the
time window (UTC days, inclusive) -> reviews of kept items -> duplicate (user, item) reviews (the
earliest kept) -> iterative user/item k-core until stable. Then per-user chronological sequences,
sliding windows (history = previous <= max_history items), and a GLOBAL chronological 8:1:1 split by
the target's timestamp. Raw reviews are streamed once into compact integer columns.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import time
from array import array
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from sidreasoner.config import Config, DataConfig
from sidreasoner.data.raw import FieldCounts, ItemMeta, LineStats, iter_meta, iter_reviews
from sidreasoner.io import atomic_dir, atomic_file, read_json, write_json

SPLITS = ("train", "valid", "test")
MANIFEST = "manifest.json"


class PreprocessError(ValueError):
    """Too little data survives, or the raw folder is unusable; the message says which filter and why."""


@dataclass
class RawManifest:
    format: str
    category: str
    reviews: Path
    meta: Path
    source: str


@dataclass
class Columns:
    """Compact review columns: codes index `users` / the kept-items list."""

    user: np.ndarray  # int64 user codes
    item: np.ndarray  # int64 item codes
    ts: np.ndarray  # int64 seconds
    rating: np.ndarray  # float32
    users: list[str]  # raw user id per code


# ---------------------------------------------------------------- manifest


def read_manifest(raw_dir: Path) -> RawManifest:
    path = Path(raw_dir) / MANIFEST
    if not path.is_file():
        raise PreprocessError(f"{path}: missing; the raw folder must come from download-data")
    try:
        data = read_json(path)
    except ValueError as err:
        raise PreprocessError(f"{path}: not valid JSON: {err}") from err
    for key in ("format", "category", "reviews", "meta"):
        if not isinstance(data.get(key), str) or not data[key]:
            raise PreprocessError(f"{path}: key '{key}' is missing or not a string")
    out = RawManifest(data["format"], data["category"], Path(raw_dir) / data["reviews"],
                      Path(raw_dir) / data["meta"], str(data.get("source", "")))
    for key in ("reviews", "meta"):
        if not getattr(out, key).is_file():
            raise PreprocessError(f"{path}: '{key}' names {data[key]!r}, which is not in {raw_dir}")
    return out


# ---------------------------------------------------------------- items


def title_problem(title: str | None, max_words: int) -> str | None:
    """Why an (already unescaped, stripped) title is unusable, or None when it is kept."""
    if title is None:
        return "missing_title"
    if not title:
        return "empty_title"
    if len(title.split()) > max_words:
        return "long_title"
    return None


def load_items(path: Path, fmt: str, data: DataConfig, metrics: dict[str, float]) -> dict[str, ItemMeta]:
    """Items with usable titles, by asin (first record of an asin wins); drops are counted in metrics."""
    stats, counts, dropped = LineStats(), FieldCounts(), Counter()
    kept: dict[str, ItemMeta] = {}
    seen: set[str] = set()
    for item in iter_meta(path, fmt, data.max_malformed_fraction, stats, counts):
        if item.asin in seen:
            dropped["duplicate_asin"] += 1
            continue
        seen.add(item.asin)
        problem = title_problem(item.title, data.max_title_words)
        if problem:
            dropped[problem] += 1
        else:
            kept[item.asin] = item
    metrics.update(raw_meta_lines=stats.lines, malformed_meta_lines=stats.malformed)
    metrics.update({f"meta_records_skipped_{k}": v for k, v in sorted(counts.skipped.items())})
    for reason in ("missing_title", "empty_title", "long_title", "duplicate_asin"):
        metrics[f"items_dropped_{reason}"] = dropped[reason]
    return kept


# ---------------------------------------------------------------- reviews


def window_seconds(data: DataConfig) -> tuple[int, int]:
    """[lo, hi) in epoch seconds for the inclusive UTC day window (open ends -> int64 extremes)."""
    lo, hi = -(2**62), 2**62
    if data.time_window.start:
        lo = int(dt.datetime.combine(data.time_window.start, dt.time(), dt.timezone.utc).timestamp())
    if data.time_window.end:
        end = data.time_window.end + dt.timedelta(days=1)
        hi = int(dt.datetime.combine(end, dt.time(), dt.timezone.utc).timestamp())
    return lo, hi


def read_review_columns(path: Path, fmt: str, data: DataConfig, item_codes: dict[str, int],
                        metrics: dict[str, float]) -> Columns:
    """One streaming pass: keep (user code, item code, ts, rating) of in-window reviews of kept items."""
    stats, counts = LineStats(), FieldCounts()
    lo, hi = window_seconds(data)
    users: dict[str, int] = {}
    u_col, i_col, t_col, r_col = array("q"), array("q"), array("q"), array("f")
    out_of_window = unknown = 0
    reviews = iter_reviews(path, fmt, data.max_malformed_fraction, stats, counts)
    for user, asin, rating, ts in tqdm(reviews, desc=f"reading {path.name}", unit=" reviews", mininterval=2):
        if not lo <= ts < hi:
            out_of_window += 1
            continue
        code = item_codes.get(asin)
        if code is None:
            unknown += 1
            continue
        u_col.append(users.setdefault(user, len(users)))
        i_col.append(code)
        t_col.append(ts)
        r_col.append(rating)
    metrics.update(raw_review_lines=stats.lines, malformed_review_lines=stats.malformed,
                   reviews_dropped_out_of_window=out_of_window, reviews_dropped_unknown_item=unknown)
    metrics.update({f"review_records_skipped_{k}": v for k, v in sorted(counts.skipped.items())})
    metrics["reviews_read"] = stats.valid - counts.total
    return Columns(np.frombuffer(u_col, np.int64), np.frombuffer(i_col, np.int64),
                   np.frombuffer(t_col, np.int64), np.frombuffer(r_col, np.float32), list(users))


def dedupe_mask(user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """True for the earliest review of each (user, item) pair (file order breaks timestamp ties)."""
    if len(user) == 0:
        return np.zeros(0, bool)
    key = user * (int(item.max()) + 1) + item
    order = np.lexsort((np.arange(len(key)), ts, key))
    first = np.ones(len(key), bool)
    first[1:] = key[order][1:] != key[order][:-1]
    mask = np.zeros(len(key), bool)
    mask[order[first]] = True
    return mask


def k_core_mask(user: np.ndarray, item: np.ndarray, k: int) -> tuple[np.ndarray, int]:
    """Iterative k-core: drop users/items with < k interactions until stable.

    Returns the kept-rows mask and the number of passes that removed something.
    """
    mask = np.ones(len(user), bool)
    rounds = 0
    while mask.any():
        u_cnt = np.bincount(user[mask], minlength=int(user.max()) + 1)
        i_cnt = np.bincount(item[mask], minlength=int(item.max()) + 1)
        new = mask & (u_cnt[user] >= k) & (i_cnt[item] >= k)
        if new.sum() == mask.sum():
            break
        mask, rounds = new, rounds + 1
    return mask, rounds


# ---------------------------------------------------------------- samples


def _dense_ids(codes: np.ndarray, names: list[str]) -> tuple[np.ndarray, list[str]]:
    """Map the used codes to contiguous ids ordered by name; returns (code -> id table, names by id)."""
    used = np.unique(codes)
    used_sorted = sorted(used.tolist(), key=lambda c: names[c])
    table = np.full(len(names), -1, np.int64)
    table[np.asarray(used_sorted, np.int64)] = np.arange(len(used_sorted))
    return table, [names[c] for c in used_sorted]


def user_sequences(user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row order grouping users, chronological inside each user, ties by item id (= asin order), stable."""
    return np.lexsort((np.arange(len(user)), item, ts, user))


@dataclass
class Samples:
    """Sliding-window samples over interactions sorted by (user, time): one per non-first position."""

    row: np.ndarray  # index of the target interaction
    hist_start: np.ndarray  # first history row (inclusive); history is rows [hist_start, row)
    pos: np.ndarray  # target's position inside its user's sequence (>= 1)


def sliding_windows(user: np.ndarray, max_history: int) -> Samples:
    """`user` must be grouped (sorted). Target t of each sequence gets history = previous <= max_history."""
    n = len(user)
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if n else np.zeros(0, np.int64)
    lengths = np.diff(np.r_[starts, n])
    first = np.repeat(starts, lengths)
    rows = np.arange(n)
    pos = rows - first
    keep = pos >= 1
    row = rows[keep]
    return Samples(row, np.maximum(first[keep], row - max_history), pos[keep])


def split_bounds(n: int, fractions: tuple[float, float, float]) -> tuple[int, int]:
    """Cut points of n chronologically sorted samples: [0, a) train, [a, b) valid, [b, n) test."""
    a = math.floor(n * fractions[0] + 1e-9)
    b = math.floor(n * (fractions[0] + fractions[1]) + 1e-9)
    return a, b


def chronological_split(ts: np.ndarray, user: np.ndarray, pos: np.ndarray,
                        fractions: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """Sample indices per split: sorted by (timestamp, user_id, position), first 80% train, etc."""
    order = np.lexsort((pos, user, ts))
    a, b = split_bounds(len(order), fractions)
    return {"train": order[:a], "valid": order[a:b], "test": order[b:]}


def history_lists(item: np.ndarray, hist_start: np.ndarray, row: np.ndarray) -> pa.ListArray:
    """list<int64> of item[hist_start:row] per sample, built without a Python loop."""
    lengths = row - hist_start
    offsets = np.r_[0, np.cumsum(lengths)].astype(np.int32)
    flat = np.repeat(hist_start - offsets[:-1], lengths) + np.arange(int(offsets[-1]))
    return pa.ListArray.from_arrays(pa.array(offsets), pa.array(item[flat], pa.int64()))


# ---------------------------------------------------------------- the step


def _require(n: int, what: str, hint: str) -> None:
    if n == 0:
        raise PreprocessError(f"no data left after {what}. {hint}")


def _filter_reviews(cols: Columns, data: DataConfig, metrics: dict[str, float]) -> Columns:
    _require(len(cols.user), "the title and time-window filters",
             f"reviews out of window: {metrics['reviews_dropped_out_of_window']}, of unknown/dropped items: "
             f"{metrics['reviews_dropped_unknown_item']}. Check data.time_window and data.max_title_words.")
    keep = dedupe_mask(cols.user, cols.item, cols.ts)
    metrics["reviews_dropped_duplicate"] = int((~keep).sum())
    u, i, t, r = cols.user[keep], cols.item[keep], cols.ts[keep], cols.rating[keep]
    core, rounds = k_core_mask(u, i, data.k_core)
    metrics.update(reviews_dropped_k_core=int((~core).sum()), k_core_iterations=rounds)
    _require(int(core.sum()), f"the iterative {data.k_core}-core filter",
             f"{len(u)} interactions of {len(np.unique(u))} users / {len(np.unique(i))} items went in; "
             f"lower data.k_core (now {data.k_core}) or use a larger category.")
    return Columns(u[core], i[core], t[core], r[core], cols.users)


def _write_tables(out: Path, cols: Columns, items: list[ItemMeta], users: list[str]) -> None:
    pq.write_table(pa.table({
        "item_id": pa.array(np.arange(len(items)), pa.int64()),
        "asin": [it.asin for it in items], "title": [it.title for it in items],
        "description": [it.description for it in items], "brand": [it.brand for it in items],
        "categories": pa.array([it.categories for it in items], pa.list_(pa.string())),
    }), out / "items.parquet")
    pq.write_table(pa.table({"user_id": pa.array(np.arange(len(users)), pa.int64()), "raw_user_id": users}),
                   out / "users.parquet")
    pq.write_table(pa.table({"user_id": cols.user, "item_id": cols.item, "timestamp": cols.ts,
                             "rating": cols.rating}), out / "interactions.parquet")


def _write_splits(out: Path, cols: Columns, data: DataConfig, metrics: dict[str, float]) -> None:
    s = sliding_windows(cols.user, data.max_history)
    if len(s.row) < data.min_samples:
        raise PreprocessError(
            f"only {len(s.row)} samples survive preprocessing (data.min_samples={data.min_samples}); "
            f"the {data.k_core}-core filter left {len(cols.user)} interactions. Lower data.k_core, widen "
            "data.time_window, or use a larger category.")
    parts = chronological_split(cols.ts[s.row], cols.user[s.row], s.pos, data.split)
    for name, idx in parts.items():
        if len(idx) == 0:
            raise PreprocessError(f"the {name} split is empty ({len(s.row)} samples, data.split={list(data.split)})")
        _write_samples(out / f"{name}.parquet", cols, s.hist_start[idx], s.row[idx])
        metrics[f"samples_{name}"] = len(idx)


SAMPLE_SCHEMA = pa.schema([("user_id", pa.int64()), ("history_item_ids", pa.list_(pa.int64())),
                           ("item_id", pa.int64()), ("timestamp", pa.int64())])
WRITE_BATCH = 1 << 18


def _write_samples(path: Path, cols: Columns, hist_start: np.ndarray, rows: np.ndarray) -> None:
    """Samples in row batches, so the history lists are never all materialised at once."""
    with pq.ParquetWriter(path, SAMPLE_SCHEMA) as writer:
        for lo in range(0, len(rows), WRITE_BATCH):
            r, h = rows[lo:lo + WRITE_BATCH], hist_start[lo:lo + WRITE_BATCH]
            writer.write_table(pa.table({
                "user_id": cols.user[r], "history_item_ids": history_lists(cols.item, h, r),
                "item_id": cols.item[r], "timestamp": cols.ts[r],
            }, schema=SAMPLE_SCHEMA))


def _reindex(cols: Columns, kept_items: list[ItemMeta]) -> tuple[Columns, list[ItemMeta], list[str]]:
    """Contiguous ids: items by asin, users by raw id; rows sorted per user chronologically."""
    item_table, asins = _dense_ids(cols.item, [it.asin for it in kept_items])
    user_table, users = _dense_ids(cols.user, cols.users)
    u, i = user_table[cols.user], item_table[cols.item]
    order = user_sequences(u, i, cols.ts)
    by_asin = {it.asin: it for it in kept_items}
    return (Columns(u[order], i[order], cols.ts[order], cols.rating[order], users),
            [by_asin[a] for a in asins], users)


def _write_research_index(out: Path, category: str, items: list[ItemMeta]) -> None:
    index = {str(n): {"title": it.title, "description": it.description} for n, it in enumerate(items)}
    path = out / "research" / "index" / f"{category}.item.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(orjson.dumps(index, option=orjson.OPT_INDENT_2))


def preprocess(cfg: Config, raw_dir: Path, out_dir: Path) -> dict[str, float]:
    """Run the whole protocol on `raw_dir` (from download-data) and write `out_dir` atomically."""
    started = time.perf_counter()
    data = cfg.data
    manifest = read_manifest(Path(raw_dir))
    metrics: dict[str, float] = {}
    kept = load_items(manifest.meta, manifest.format, data, metrics)
    kept_list = list(kept.values())
    _require(len(kept_list), "the title filter", f"no item in {manifest.meta} has a usable title "
             f"(<= data.max_title_words={data.max_title_words} words).")
    codes = {it.asin: n for n, it in enumerate(kept_list)}
    cols = _filter_reviews(read_review_columns(manifest.reviews, manifest.format, data, codes, metrics), data, metrics)
    cols, items, users = _reindex(cols, kept_list)
    metrics.update(users=len(users), items=len(items), interactions=len(cols.user),
                   items_dropped_k_core=len(kept_list) - len(items))
    with atomic_dir(out_dir) as out:
        _write_splits(out, cols, data, metrics)
        _write_tables(out, cols, items, users)
        _write_research_index(out, manifest.category, items)
        metrics["wall_seconds"] = round(time.perf_counter() - started, 3)
        write_json(out / "stats.json", {
            "category": manifest.category, "format": manifest.format, "source": manifest.source,
            "metrics": metrics, "data_config": data.model_dump(mode="json"),
        })
    return metrics


# ---------------------------------------------------------------- research-code export


def _sid_string(sid_index: dict[int, list[str]], item_id: int) -> str:
    try:
        return "".join(sid_index[item_id])
    except KeyError:
        raise PreprocessError(f"SID index has no entry for item_id {item_id}") from None


def _split_rows(table: pa.Table, titles: list[str], sids: dict[int, str]) -> list[list[Any]]:
    rows = []
    for user, hist, item in zip(table["user_id"].to_pylist(), table["history_item_ids"].to_pylist(),
                                table["item_id"].to_pylist()):
        rows.append([user, repr([titles[h] for h in hist]), titles[item], repr(hist), item,
                     repr([sids[h] for h in hist]), sids[item]])
    return rows


def write_research_csvs(data_dir: Path, sid_index: dict[int, list[str]], out_dir: Path, category: str) -> None:
    """MiniOneRec/SIDReasoner layout: `{train,valid,test}/<Cat>.csv`, `info/<Cat>.txt`, `index/<Cat>.*.json`.

    List columns are Python-literal strings ("['A', 'B']", "[3, 7]"); SIDs are concatenated codes
    ("<a_1><b_2><c_3>"). Files are written atomically; call it inside the SID step's output folder.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    items = pq.read_table(data_dir / "items.parquet", columns=["item_id", "title", "description"])
    titles = items["title"].to_pylist()
    sids = {i: _sid_string(sid_index, i) for i in items["item_id"].to_pylist()}
    header = ["user_id", "history_item_title", "item_title", "history_item_id", "item_id",
              "history_item_sid", "item_sid"]
    for split in SPLITS:
        with atomic_file(out_dir / split / f"{category}.csv") as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(header)
            writer.writerows(_split_rows(pq.read_table(data_dir / f"{split}.parquet"), titles, sids))
    with atomic_file(out_dir / "info" / f"{category}.txt") as tmp, open(tmp, "w") as fh:
        for item_id, title in enumerate(titles):
            fh.write(f"{sids[item_id]}\t{' '.join(title.split())}\t{item_id}\n")
    write_json(out_dir / "index" / f"{category}.index.json", {str(i): list(sid_index[i]) for i in sids})
    descriptions = items["description"].to_pylist()
    write_json(out_dir / "index" / f"{category}.item.json",
               {str(i): {"title": titles[i], "description": descriptions[i]} for i in sids})
