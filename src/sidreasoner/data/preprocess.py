"""Raw Amazon reviews -> items, users, interactions and sliding-window samples (MiniOneRec protocol).

Order of filters: item titles (`data.title_rule`; several records of one asin: `data.duplicate_meta`)
-> reviews inside the time window (UTC; `data.window_end_cut`) -> reviews of kept items -> repeated
(user, item) reviews (`data.repeats`: all kept, or the earliest only) -> iterative user/item k-core
until stable. With `data.window_widen_below_items`, the window's start moves back a year at a time,
and the filters run again, while fewer items survive. Then per-user chronological sequences, sliding
windows (history = previous <= max_history interactions), and a GLOBAL chronological 8:1:1 split by
the target's timestamp (or, with `data.split=leave_last_out`, each user's last sample is test and the one
before valid); ids and ties follow `data.id_order`. Every drop is counted by reason in the
metrics. Raw reviews are streamed once into compact integer columns. A shop's own export (data.format
interactions or recbole) is read by `sidreasoner.data.tables` into the same item records and columns, and
from there on takes exactly this path.
"""

from __future__ import annotations

import csv
import datetime as dt
import hashlib
import math
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from tqdm import tqdm

from sidreasoner.artifacts import research_layout
from sidreasoner.artifacts.dataset import SPLITS, Dataset
from sidreasoner.artifacts.raw import RawData
from sidreasoner.config import Config, DataConfig
from sidreasoner.config.schema import LEAVE_LAST_OUT, file_name_problem
from sidreasoner.data import tables
from sidreasoner.data.from_research import dataset_from_bundle
from sidreasoner.data.raw import FieldCounts, ItemMeta, LineStats, iter_meta, iter_reviews
from sidreasoner.io import atomic_file, write_json


class PreprocessError(ValueError):
    """Too little data survives, or the raw folder is unusable; the message says which filter and why."""


@dataclass
class RawManifest:
    format: str
    category: str
    reviews: Path
    meta: Path
    source: str
    bundle: Path | None = None  # format research: the bundle's folder
    review_files: list[Path] = field(default_factory=list)  # formats interactions/recbole: the events' files
    meta_files: list[Path] = field(default_factory=list)  # and the items' files
    # several categories: (category, reviews, meta) of each, in the order of data.category
    parts: list[tuple[str, Path, Path]] = field(default_factory=list)


@dataclass
class Columns:
    """Compact review columns: codes index `users` / the kept-items list."""

    user: np.ndarray  # int64 user codes
    item: np.ndarray  # int64 item codes
    ts: np.ndarray  # int64 seconds
    rating: np.ndarray  # float32
    users: list[str]  # raw user id per code
    unknown_ts: np.ndarray | None = None  # timestamps of the read reviews whose item was dropped or is unknown


# ---------------------------------------------------------------- manifest


def read_manifest(raw: RawData) -> RawManifest:
    """The raw folder's manifest, its names checked and its files checked against their recorded digests."""
    raw = RawData.at(raw)
    path = raw.file(RawData.MANIFEST)
    try:
        data = raw.manifest()
    except ValueError as err:
        raise PreprocessError(f"{path}: not valid JSON: {err}") from err
    keys = (
        ("format", "category", "bundle")
        if data.get("format") == "research"
        else ("format", "category", "reviews", "meta")
    )
    for key in keys:
        if not isinstance(data.get(key), str) or not data[key]:
            raise PreprocessError(f"{path}: key '{key}' is missing or not a string")
        problem = file_name_problem(data[key]) if key != "format" else None
        if problem:  # these name files inside the raw and dataset folders: never a path leading out
            raise PreprocessError(f"{path}: key '{key}': {problem}")
    if data["format"] == "research":
        check_raw_files(raw, data.get("files"), [])
        return RawManifest(
            data["format"],
            data["category"],
            raw.path,
            raw.path,
            str(data.get("source", "")),
            bundle=raw.file(data["bundle"]),
        )
    out = RawManifest(
        data["format"],
        data["category"],
        raw.file(data["reviews"]),
        raw.file(data["meta"]),
        str(data.get("source", "")),
    )
    if data["format"] in tables.TABLE_FORMATS:
        return _table_manifest(raw, data, out)
    out.parts = _category_parts(raw, data.get("categories")) or [(out.category, out.reviews, out.meta)]
    for _, reviews, meta in out.parts:
        for key, file in (("reviews", reviews), ("meta", meta)):
            if not file.is_file():
                raise PreprocessError(f"{path}: '{key}' names {file.name!r}, which is not in {raw.path}")
    check_raw_files(raw, data.get("files"), [f.name for _, reviews, meta in out.parts for f in (reviews, meta)])
    return out


def _category_parts(raw: RawData, parts: Any) -> list[tuple[str, Path, Path]]:
    """The manifest's `categories` (several categories): (category, reviews file, meta file) of each."""
    if parts is None:
        return []
    path = raw.file(RawData.MANIFEST)
    if not isinstance(parts, list) or len(parts) < 2:
        raise PreprocessError(f"{path}: key 'categories' must list two or more categories")
    out = []
    for n, part in enumerate(parts):
        for key in ("category", "reviews", "meta"):
            problem = file_name_problem(part.get(key) if isinstance(part, dict) else None)
            if problem:
                raise PreprocessError(f"{path}: categories[{n}].{key}: {problem}")
        out.append((part["category"], raw.file(part["reviews"]), raw.file(part["meta"])))
    return out


def _table_manifest(raw: RawData, data: dict[str, Any], out: RawManifest) -> RawManifest:
    """A shop export's manifest: `reviews` and `meta` name a table file each, or a folder of part files."""
    files = data.get("files") if isinstance(data.get("files"), dict) else {}
    for key in ("reviews", "meta"):
        names = sorted(n for n in files if n == data[key] or n.startswith(data[key] + "/"))
        if not names:
            raise PreprocessError(f"{raw.file(RawData.MANIFEST)}: 'files' lists no file of {key} {data[key]!r}")
        setattr(out, f"{'review' if key == 'reviews' else 'meta'}_files", [raw.file(n) for n in names])
    check_raw_files(raw, data.get("files"), [])
    return out


def check_raw_files(raw: RawData, files: Any, needed: list[str]) -> None:
    """Each file the manifest lists (the `needed` ones among them) still has the size and sha256 that
    download-data recorded: a raw file changed since would silently change the dataset."""
    raw = RawData.at(raw)
    if not isinstance(files, dict) or not files:
        raise PreprocessError(
            f"{raw.file(RawData.MANIFEST)}: key 'files' (each raw file's bytes and sha256) is missing or empty; "
            "the raw folder must come from download-data"
        )
    for name in needed:
        if name not in files:
            raise PreprocessError(
                f"{raw.file(RawData.MANIFEST)}: 'files' does not list {name!r}, so it cannot be checked"
            )
    for name, want in files.items():
        _check_raw_file(raw, name, want)


def _check_raw_file(raw: RawData, name: Any, want: Any) -> None:
    manifest = raw.file(RawData.MANIFEST)
    parts = PurePosixPath(str(name)).parts
    if not name or str(name).startswith("/") or ".." in parts or "\\" in str(name):
        raise PreprocessError(f"{manifest}: 'files' names {name!r}, which is not a file in {raw.path}")
    try:
        size, sha256 = int(want["bytes"]), str(want["sha256"])
    except (TypeError, KeyError, ValueError):
        raise PreprocessError(f"{manifest}: 'files' entry {name!r} needs 'bytes' and 'sha256'") from None
    path = raw.file(name)
    changed = "the raw file changed after download-data; run download-data again"
    if not path.is_file():
        raise PreprocessError(f"{path}: missing, but {manifest.name} lists it; {changed}")
    if path.stat().st_size != size:
        raise PreprocessError(f"{path}: {path.stat().st_size} bytes where {manifest.name} says {size}; {changed}")
    with open(path, "rb") as fh:
        got = hashlib.file_digest(fh, "sha256").hexdigest()
    if got != sha256:
        raise PreprocessError(f"{path}: sha256 {got} where {manifest.name} says {sha256}; {changed}")


# ---------------------------------------------------------------- items


TITLE_PROBLEMS = ("missing_title", "html_title", "empty_title", "short_title", "long_title")


def title_problem(title: str | None, max_words: int, rule: str = "unescape") -> str | None:
    """Why a title (already cleaned by `rule`, see `data.title_rule`) is unusable, or None when it is kept.

    unescape: non-empty, <= max_words whitespace-separated words. minionerec: no scraped HTML
    ('<span id'), more than one character, <= max_words words separated by single spaces.
    """
    if title is None:
        return "missing_title"
    if rule == "minionerec":
        if "<span id" in title:
            return "html_title"
        if len(title) <= 1:
            return "short_title" if title else "empty_title"
        return "long_title" if len(title.split(" ")) > max_words else None
    if not title:
        return "empty_title"
    if len(title.split()) > max_words:
        return "long_title"
    return None


def load_items(
    path: Path | list[tuple[str, Path]],
    fmt: str,
    data: DataConfig,
    metrics: dict[str, float],
    category_of: dict[str, str] | None = None,
) -> dict[str, ItemMeta]:
    """Items with usable titles, by asin; drops are counted in metrics.

    Several records of one asin (`items_dropped_duplicate_asin` counts the later ones): with
    data.duplicate_meta=first only the first counts; with `last` the item keeps the title of its last
    record with a usable title and the other fields of its last record, and is dropped (for the last
    record's title problem) only when no record has a usable title.

    `path` may be a list of (category, meta file) of several categories: their records are read as one
    stream in that order, so an asin in two categories is a duplicate record under the same rule, and
    `category_of` receives each asin's category (that of its first record, or last with `last`).
    """
    stats, counts = LineStats(), FieldCounts()
    shared: set[str] = set()
    if isinstance(path, list):
        items = _tagged_meta(path, fmt, data, stats, counts, category_of if category_of is not None else {}, shared)
    else:
        items = iter_meta(path, fmt, data.max_malformed_fraction, stats, counts, data.title_rule)
    kept, dropped = keep_items(items, data)
    metrics.update(raw_meta_lines=stats.lines, malformed_meta_lines=stats.malformed)
    if isinstance(path, list):
        metrics["items_in_several_categories"] = len(shared)
    metrics.update({f"meta_records_skipped_{k}": v for k, v in sorted(counts.skipped.items())})
    for reason in (*TITLE_PROBLEMS, "duplicate_asin"):
        metrics[f"items_dropped_{reason}"] = dropped[reason]
    return kept


def _tagged_meta(parts, fmt: str, data: DataConfig, stats, counts, category_of: dict[str, str], shared: set[str]):
    """The meta records of several categories' files in order; `shared` gets the asins met in two of them."""
    for category, path in parts:
        for item in iter_meta(path, fmt, data.max_malformed_fraction, stats, counts, data.title_rule):
            if category_of.get(item.asin, category) != category:
                shared.add(item.asin)
            if data.duplicate_meta == "last" or item.asin not in category_of:
                category_of[item.asin] = category
            yield item


def load_table_items(files: list[Path], data: DataConfig, metrics: dict[str, float]) -> dict[str, ItemMeta]:
    """A shop export's items with usable titles, by item id, under the same rules as `load_items`."""
    kept, dropped = keep_items(tables.iter_items(files, data, metrics), data)
    for reason in (*TITLE_PROBLEMS, "duplicate_asin"):
        metrics[f"items_dropped_{reason}"] = dropped[reason]
    return kept


def keep_items(items, data: DataConfig) -> tuple[dict[str, ItemMeta], Counter]:
    """The items with usable titles by asin (see `load_items`), and the drops by reason."""
    dropped: Counter = Counter()
    records: dict[str, ItemMeta] = {}
    titles: dict[str, str] = {}
    problems: dict[str, str] = {}
    for item in items:
        if item.asin in records:
            dropped["duplicate_asin"] += 1
            if data.duplicate_meta == "first":
                continue
        records[item.asin] = item
        problem = title_problem(item.title, data.max_title_words, data.title_rule)
        if problem is None:
            titles[item.asin] = item.title
        else:
            problems[item.asin] = problem
    kept = {asin: rec._replace(title=titles[asin]) for asin, rec in records.items() if asin in titles}
    dropped.update(problems[asin] for asin in records if asin not in titles)
    return kept, dropped


# ---------------------------------------------------------------- reviews


DAY_SECONDS = 86_400
_NO_START = object()


def _utc_midnight(day: dt.date) -> int:
    return int(dt.datetime.combine(day, dt.time(), dt.UTC).timestamp())


def year_back(day: dt.date, years: int) -> dt.date:
    """`day` `years` years earlier (Feb 29 -> Feb 28)."""
    try:
        return day.replace(year=day.year - years)
    except ValueError:
        return day.replace(year=day.year - years, day=28)


def widest_start(data: DataConfig) -> dt.date | None:
    """The earliest start the time window can widen to (its own start when it never widens)."""
    start = data.time_window.start
    if not start or not data.window_widen_below_items:
        return start
    return year_back(start, max(0, start.year - data.window_earliest_start_year))


def window_seconds(data: DataConfig, start: Any = _NO_START) -> tuple[int, int]:
    """[lo, hi) in epoch seconds of the UTC window (open ends -> int64 extremes); `start` replaces
    time_window.start. window_end_cut=day_end keeps the whole end day, day_start only up to its 00:00:00."""
    tw = data.time_window
    start = tw.start if start is _NO_START else start
    lo, hi = -(2**62), 2**62
    if start:
        lo = _utc_midnight(start)
    if tw.end:
        hi = _utc_midnight(tw.end) + (1 if data.window_end_cut == "day_start" else DAY_SECONDS)
    return lo, hi


def read_review_columns(
    path: Path | list[Path], fmt: str, data: DataConfig, item_codes: dict[str, int], metrics: dict[str, float]
) -> Columns:
    """One streaming pass: (user code, item code, ts, rating) of the reviews of kept items inside the widest
    window the time window can reach; of the other reviews inside it only the timestamp (`unknown_ts`).
    `path` may be a list of files (several categories), read as one stream in that order."""
    stats, counts = LineStats(), FieldCounts()
    lo, hi = window_seconds(data, widest_start(data))
    users: dict[str, int] = {}
    u_col, i_col, t_col, r_col, unknown_ts = array("q"), array("q"), array("q"), array("f"), array("q")
    out_of_window = 0
    paths = path if isinstance(path, list) else [path]
    reviews = (r for p in paths for r in iter_reviews(p, fmt, data.max_malformed_fraction, stats, counts))
    desc = f"reading {', '.join(p.name for p in paths)}"
    for user, asin, rating, ts in tqdm(reviews, desc=desc, unit=" reviews", mininterval=2):
        if not lo <= ts < hi:
            out_of_window += 1
            continue
        code = item_codes.get(asin)
        if code is None:
            unknown_ts.append(ts)
            continue
        u_col.append(users.setdefault(user, len(users)))
        i_col.append(code)
        t_col.append(ts)
        r_col.append(rating)
    metrics.update(
        raw_review_lines=stats.lines,
        malformed_review_lines=stats.malformed,
        reviews_dropped_out_of_window=out_of_window,
        reviews_dropped_unknown_item=len(unknown_ts),
    )
    metrics.update({f"review_records_skipped_{k}": v for k, v in sorted(counts.skipped.items())})
    metrics["reviews_read"] = stats.valid - counts.total
    return Columns(
        np.frombuffer(u_col, np.int64),
        np.frombuffer(i_col, np.int64),
        np.frombuffer(t_col, np.int64),
        np.frombuffer(r_col, np.float32),
        list(users),
        np.frombuffer(unknown_ts, np.int64),
    )


def read_table_columns(
    files: list[Path], data: DataConfig, item_codes: dict[str, int], metrics: dict[str, float]
) -> Columns:
    """`read_review_columns` for a shop export's events table (read in vectorised batches)."""
    window = window_seconds(data, widest_start(data))
    users, user, item, ts, rating, unknown_ts = tables.read_events(files, data, list(item_codes), window, metrics)
    return Columns(user, item, ts, rating, users, unknown_ts)


def dedupe_mask(user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """True for the earliest review of each (user, item) pair (file order breaks timestamp ties)."""
    if len(user) == 0:
        return np.zeros(0, bool)
    key = user * (int(item.max()) + 1) + item
    order = np.argsort(key, kind="stable")  # one sort; each pair's rows stay in file order
    key_sorted, ts_sorted = key[order], ts[order]
    starts = np.flatnonzero(np.r_[True, key_sorted[1:] != key_sorted[:-1]])
    earliest = np.repeat(np.minimum.reduceat(ts_sorted, starts), np.diff(np.r_[starts, len(key)]))
    at_min = np.flatnonzero(ts_sorted == earliest)  # positions holding their pair's earliest time
    group = np.searchsorted(starts, at_min, side="right")
    first = at_min[np.r_[True, group[1:] != group[:-1]]]  # the first of those in file order
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
    used = np.flatnonzero(np.bincount(codes, minlength=len(names)))  # codes are 0..len(names)-1
    used_names = [names[c] for c in used.tolist()]
    # Arrow sorts by UTF-8 bytes, which is code point order: the order of sorted() on str (names are unique).
    by_name = pc.sort_indices(pa.array(used_names, pa.string())).to_numpy()
    table = np.full(len(names), -1, np.int64)
    table[used[by_name]] = np.arange(len(used))
    return table, [used_names[n] for n in by_name.tolist()]


def user_sequences(user: np.ndarray, item: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """Row order grouping users, chronological inside each user, ties by item id (= asin order), stable."""
    if len(ts) and (int(ts.max()) - int(ts.min()) + 1) * (int(item.max()) + 1) < 2**62:
        time_then_item = (ts - ts.min()) * (int(item.max()) + 1) + item  # one key: two sorts instead of three
        return np.lexsort((time_then_item, user))  # lexsort is stable
    return np.lexsort((item, ts, user))


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


def chronological_split(
    ts: np.ndarray, user: np.ndarray, pos: np.ndarray, fractions: tuple[float, float, float]
) -> dict[str, np.ndarray]:
    """Sample indices per split: sorted by (timestamp, user_id, position), first 80% train, etc."""
    order = np.lexsort((pos, user, ts))
    a, b = split_bounds(len(order), fractions)
    return {"train": order[:a], "valid": order[a:b], "test": order[b:]}


def leave_last_out_split(user: np.ndarray, pos: np.ndarray) -> dict[str, np.ndarray]:
    """Sample indices per split, per user, as SASRec's and BERT4Rec's data_partition: the sample whose target
    is the user's last interaction is test, the one before valid, the earlier ones train; a user with fewer
    than 3 interactions gives train samples only. Samples grouped by user in position order (`sliding_windows`)."""
    n = len(user)
    starts = np.flatnonzero(np.r_[True, user[1:] != user[:-1]]) if n else np.zeros(0, np.int64)
    per_user = np.diff(np.r_[starts, n])  # samples of the user = its interactions - 1
    samples_of_user = np.repeat(per_user, per_user)
    from_last = samples_of_user - pos  # 0 for the sample of the user's last interaction
    held_out = samples_of_user >= 2
    test, valid = held_out & (from_last == 0), held_out & (from_last == 1)
    return {
        "train": np.flatnonzero(~(test | valid)),
        "valid": np.flatnonzero(valid),
        "test": np.flatnonzero(test),
    }


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


# The metrics that count each drop reason of reviews / items: metric -> reason, or, for a key ending in '_',
# a prefix whose metrics are named <prefix><reason>.
REVIEW_DROPS = {
    "review_records_skipped_": "",
    "malformed_review_lines": "malformed_line",
    "reviews_dropped_out_of_window": "out_of_window",
    "reviews_dropped_unknown_item": "unknown_or_dropped_item",
}
ITEM_DROPS = {
    "meta_records_skipped_": "",
    "malformed_meta_lines": "malformed_line",
    **{f"items_dropped_{p}": p for p in ("missing_title", "html_title", "empty_title", "short_title", "long_title")},
}
DROP_HINTS = {
    "out_of_window": "check data.time_window",
    "unknown_or_dropped_item": "their items are not in the meta file or lost their titles: check data.max_title_words "
    "and data.title_rule",
    "malformed_line": "lines are not JSON objects",
    "missing": "is data.format right? amazon2018 names the fields reviewerID/asin/overall/unixReviewTime, "
    "amazon2023 user_id/parent_asin/rating/timestamp",
    "invalid": "ids must be strings, ratings and timestamps finite numbers in range",
    "title": "check data.max_title_words and data.title_rule",
}


def drop_reasons(metrics: dict[str, float], sources: dict[str, str]) -> list[tuple[str, int]]:
    """(reason, count) of the non-zero drops named by `sources`, the most frequent first (ties by name)."""
    counts: dict[str, int] = {}
    for key, value in metrics.items():
        for source, reason in sources.items():
            if key == source or (source.endswith("_") and key.startswith(source)):
                name = reason or key[len(source) :]
                counts[name] = counts.get(name, 0) + int(value)
    return sorted(((r, n) for r, n in counts.items() if n), key=lambda rn: (-rn[1], rn[0]))


def _require_some(n: int, what: str, path: Path, lines: float, reasons: list[tuple[str, int]]) -> None:
    """Fail when nothing is left, naming every drop reason with its count, the top one first and its hint."""
    if n:
        return
    top = reasons[0][0] if reasons else ""
    kind = top if top in DROP_HINTS else "title" if top.endswith("_title") else top.split("_")[0]
    hint = DROP_HINTS.get(kind, "")
    listed = ", ".join(f"{reason}: {count}" for reason, count in reasons) or "none counted"
    raise PreprocessError(
        f"no {what} left of the {int(lines)} lines of {path}; skipped or dropped by reason: "
        f"{listed}" + (f" ({top}: {hint})" if hint else "")
    )


@dataclass
class _Kept:
    """The rows of a window's reviews that survive the repeat and k-core filters, and what each dropped."""

    rows: np.ndarray  # indices into the read columns, in file order
    went_in: np.ndarray  # rows that entered the k-core
    duplicates: int
    k_core: int
    rounds: int
    items: int


def _keep_rows(cols: Columns, inside: np.ndarray, data: DataConfig) -> _Kept:
    rows = np.flatnonzero(inside)
    duplicates = 0
    if data.repeats == "earliest":
        first = dedupe_mask(cols.user[rows], cols.item[rows], cols.ts[rows])
        duplicates = int((~first).sum())
        rows = rows[first]
    core, rounds = k_core_mask(cols.user[rows], cols.item[rows], data.k_core)
    kept = rows[core]
    items = int(np.count_nonzero(np.bincount(cols.item[kept]))) if len(kept) else 0
    return _Kept(kept, rows, duplicates, int((~core).sum()), rounds, items)


def _filter_reviews(cols: Columns, data: DataConfig, metrics: dict[str, float], path: Path) -> Columns:
    """Window start (widened while too few items survive), repeats, k-core; counts each in metrics."""
    start, widenings, n_inside, kept = data.time_window.start, 0, -1, None
    while True:
        inside = cols.ts >= window_seconds(data, start)[0]
        if kept is None or int(inside.sum()) != n_inside:  # an unchanged window gives the same result
            n_inside, kept = int(inside.sum()), _keep_rows(cols, inside, data)
        if not (
            data.window_widen_below_items
            and start
            and kept.items < data.window_widen_below_items
            and start.year > data.window_earliest_start_year
        ):
            break
        start, widenings = year_back(start, 1), widenings + 1
    unknown = cols.unknown_ts if cols.unknown_ts is not None else np.zeros(0, np.int64)
    lo = window_seconds(data, start)[0]
    before_unknown = int((unknown < lo).sum())
    metrics["reviews_dropped_out_of_window"] += int((~inside).sum()) + before_unknown
    metrics["reviews_dropped_unknown_item"] -= before_unknown
    metrics.update(time_window_widenings=widenings, time_window_start_year=start.year if start else 0)
    _require_some(n_inside, "reviews", path, metrics["raw_review_lines"], drop_reasons(metrics, REVIEW_DROPS))
    metrics.update(
        reviews_dropped_duplicate=kept.duplicates, reviews_dropped_k_core=kept.k_core, k_core_iterations=kept.rounds
    )
    if len(kept.rows) == 0:
        u_in, i_in = cols.user[kept.went_in], cols.item[kept.went_in]
        _require(
            0,
            f"the iterative {data.k_core}-core filter",
            f"{len(u_in)} interactions of {len(np.unique(u_in))} users / {len(np.unique(i_in))} items went in; "
            f"lower data.k_core (now {data.k_core}) or use a larger category.",
        )
    r = kept.rows
    u, i, t = cols.user[r], cols.item[r], cols.ts[r]
    # After `earliest`, only the first of each pair went into the k-core, which only drops rows.
    metrics["interactions_repeated"] = 0 if data.repeats == "earliest" else int((~dedupe_mask(u, i, t)).sum())
    return Columns(u, i, t, cols.rating[r], cols.users)


def _write_tables(
    dataset: Dataset, cols: Columns, items: list[ItemMeta], users: list[str], category_of: dict[str, str]
) -> None:
    columns = {
        "item_id": pa.array(np.arange(len(items)), pa.int64()),
        "asin": [it.asin for it in items],
        "title": [it.title for it in items],
        "description": [it.description for it in items],
        "brand": [it.brand for it in items],
        "categories": pa.array([it.categories for it in items], pa.list_(pa.string())),
    }
    if category_of:  # several categories: the one each item was kept from
        columns[Dataset.CATEGORY_COLUMN] = [category_of[it.asin] for it in items]
    dataset.write_items(pa.table(columns))
    dataset.write_users(pa.table({"user_id": pa.array(np.arange(len(users)), pa.int64()), "raw_user_id": users}))
    dataset.write_interactions(
        pa.table({"user_id": cols.user, "item_id": cols.item, "timestamp": cols.ts, "rating": cols.rating})
    )


def _write_splits(dataset: Dataset, cols: Columns, data: DataConfig, metrics: dict[str, float]) -> None:
    s = sliding_windows(cols.user, data.max_history)
    if len(s.row) < data.min_samples:
        raise PreprocessError(
            f"only {len(s.row)} samples survive preprocessing (data.min_samples={data.min_samples}); "
            f"the {data.k_core}-core filter left {len(cols.user)} interactions. Lower data.k_core, widen "
            "data.time_window, or use a larger category."
        )
    user = cols.user[s.row]
    if data.split == LEAVE_LAST_OUT:
        parts = leave_last_out_split(user, s.pos)
        setting = (
            f"{LEAVE_LAST_OUT}: valid and test take users with 3 or more interactions, train users with 2 or more "
            "than 3"
        )
        metrics["users_train_only"] = len(np.unique(user)) - len(parts["test"])
    else:
        parts = chronological_split(cols.ts[s.row], user, s.pos, data.split)
        setting = str(list(data.split))
    for name, idx in parts.items():
        if len(idx) == 0:
            raise PreprocessError(f"the {name} split is empty ({len(s.row)} samples, data.split={setting})")
        _write_samples(dataset, name, cols, s.hist_start[idx], s.row[idx])
        metrics[f"samples_{name}"] = len(idx)


SAMPLE_SCHEMA = Dataset.sample_schema()
WRITE_BATCH = 1 << 18


def _write_samples(dataset: Dataset, split: str, cols: Columns, hist_start: np.ndarray, rows: np.ndarray) -> None:
    """One split's samples in row batches, so the history lists are never all materialised at once."""
    with dataset.split_writer(split, SAMPLE_SCHEMA) as writer:
        for lo in range(0, len(rows), WRITE_BATCH):
            r, h = rows[lo : lo + WRITE_BATCH], hist_start[lo : lo + WRITE_BATCH]
            writer.write_table(
                pa.table(
                    {
                        "user_id": cols.user[r],
                        "history_item_ids": history_lists(cols.item, h, r),
                        "item_id": cols.item[r],
                        "timestamp": cols.ts[r],
                    },
                    schema=SAMPLE_SCHEMA,
                )
            )


def _first_seen_ids(codes: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Ids in order of first appearance in `codes`: (code -> id table, codes by id)."""
    used, first = np.unique(codes, return_index=True)
    by_id = used[np.argsort(first, kind="stable")]
    table = np.full(size, -1, np.int64)
    table[by_id] = np.arange(len(by_id))
    return table, by_id


def _reindex(
    cols: Columns, kept_items: list[ItemMeta], id_order: str = "sorted"
) -> tuple[Columns, list[ItemMeta], list[str]]:
    """Contiguous ids and rows sorted per user chronologically (`cols` rows must be in file order).

    sorted: items by asin, users by raw id, equal timestamps by item id. first_seen (MiniOneRec): users
    by their first row, equal timestamps in file order, items by first use walking the users' sequences.
    """
    if id_order == "sorted":
        item_table, asins = _dense_ids(cols.item, [it.asin for it in kept_items])
        user_table, users = _dense_ids(cols.user, cols.users)
        u, i = user_table[cols.user], item_table[cols.item]
        order = user_sequences(u, i, cols.ts)
        by_asin = {it.asin: it for it in kept_items}
        return (
            Columns(u[order], i[order], cols.ts[order], cols.rating[order], users),
            [by_asin[a] for a in asins],
            users,
        )
    user_table, user_codes = _first_seen_ids(cols.user, len(cols.users))
    u = user_table[cols.user]
    order = np.lexsort((cols.ts, u))  # stable: equal timestamps in file order
    item_table, item_codes = _first_seen_ids(cols.item[order], len(kept_items))
    users = [cols.users[c] for c in user_codes.tolist()]
    return (
        Columns(u[order], item_table[cols.item[order]], cols.ts[order], cols.rating[order], users),
        [kept_items[c] for c in item_codes.tolist()],
        users,
    )


def _write_research_index(dataset: Dataset, category: str, items: list[ItemMeta]) -> None:
    dataset.write_research_items(
        category, {str(n): {"title": it.title, "description": it.description} for n, it in enumerate(items)}
    )


def preprocess(cfg: Config, raw_dir: RawData, out_dir: Dataset) -> dict[str, float]:
    """Run the whole protocol on `raw_dir` (from download-data) and write the dataset `out_dir` atomically."""
    started = time.perf_counter()
    data = cfg.data
    manifest = read_manifest(RawData.at(raw_dir))
    if manifest.bundle is not None:
        return dataset_from_bundle(cfg, manifest.bundle, manifest.category, manifest.source, out_dir)
    metrics: dict[str, float] = {}
    shop = manifest.format in tables.TABLE_FORMATS
    several = len(manifest.parts) > 1
    category_of: dict[str, str] = {}
    if shop:
        kept = load_table_items(manifest.meta_files, data, metrics)
    elif several:
        metas = [(category, meta) for category, _, meta in manifest.parts]
        kept = load_items(metas, manifest.format, data, metrics, category_of)
    else:
        kept = load_items(manifest.meta, manifest.format, data, metrics)
    kept_list = list(kept.values())
    _require_some(len(kept_list), "items", manifest.meta, metrics["raw_meta_lines"], drop_reasons(metrics, ITEM_DROPS))
    codes = {it.asin: n for n, it in enumerate(kept_list)}
    if shop:
        cols = read_table_columns(manifest.review_files, data, codes, metrics)
    else:
        reviews = [r for _, r, _ in manifest.parts] if several else manifest.reviews
        cols = read_review_columns(reviews, manifest.format, data, codes, metrics)
    cols = _filter_reviews(cols, data, metrics, manifest.reviews)
    cols, items, users = _reindex(cols, kept_list, data.id_order)
    metrics.update(
        users=len(users),
        items=len(items),
        interactions=len(cols.user),
        items_dropped_k_core=len(kept_list) - len(items),
    )
    with Dataset.writing(out_dir) as dataset:
        _write_splits(dataset, cols, data, metrics)
        _write_tables(dataset, cols, items, users, category_of)
        if several:
            kept_by_category = Counter(category_of[it.asin] for it in items)
            metrics.update({f"items_{c}": kept_by_category[c] for c, _, _ in manifest.parts})
        _write_research_index(dataset, manifest.category, items)
        metrics["wall_seconds"] = round(time.perf_counter() - started, 3)
        dataset.write_stats(
            {
                "category": manifest.category,
                "format": manifest.format,
                "source": manifest.source,
                "metrics": metrics,
                "data_config": data.model_dump(mode="json"),
            },
        )
    return metrics


# ---------------------------------------------------------------- research-code export


def _sid_string(sid_index: dict[int, list[str]], item_id: int) -> str:
    try:
        return "".join(sid_index[item_id])
    except KeyError:
        raise PreprocessError(f"SID index has no entry for item_id {item_id}") from None


def _split_rows(table: pa.Table, titles: list[str], sids: dict[int, str]) -> list[list[Any]]:
    rows = []
    for user, hist, item in zip(
        table["user_id"].to_pylist(), table["history_item_ids"].to_pylist(), table["item_id"].to_pylist(), strict=True
    ):
        rows.append(
            [
                user,
                repr([titles[h] for h in hist]),
                titles[item],
                repr(hist),
                item,
                repr([sids[h] for h in hist]),
                sids[item],
            ]
        )
    return rows


def _one_field(title: str) -> str:
    """A title as one tab-separated field: tabs and line breaks become spaces; other spacing stays as it is."""
    return title.translate({ord(c): " " for c in "\t\n\r"})


def write_research_csvs(dataset: Dataset, sid_index: dict[int, list[str]], out_dir: Path, category: str) -> None:
    """The dataset with its SIDs in the MiniOneRec/SIDReasoner layout (artifacts.research_layout) under `out_dir`:
    each split's samples as CSV, the catalogue text, the SID index and the item texts as JSON.

    List columns are Python-literal strings ("['A', 'B']", "[3, 7]"); SIDs are concatenated codes
    ("<a_1><b_2><c_3>"). Files are written atomically; call it inside the SID step's output folder.
    """
    problem = file_name_problem(category)
    if problem:
        raise PreprocessError(f"category {problem}")
    dataset, out_dir = Dataset.at(dataset), Path(out_dir)
    items = dataset.items_table(["item_id", "title", "description"])
    titles = items["title"].to_pylist()
    sids = {i: _sid_string(sid_index, i) for i in items["item_id"].to_pylist()}
    for split in SPLITS:
        samples = dataset.split_table(split, ["user_id", "history_item_ids", "item_id"])
        with atomic_file(out_dir / research_layout.split_csv(split, category)) as tmp, open(tmp, "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(research_layout.SPLIT_COLUMNS)
            writer.writerows(_split_rows(samples, titles, sids))
    with atomic_file(out_dir / research_layout.info_txt(category)) as tmp, open(tmp, "w") as fh:
        for item_id, title in enumerate(titles):
            fh.write(f"{sids[item_id]}\t{_one_field(title)}\t{item_id}\n")
    write_json(out_dir / research_layout.index_json(category), {str(i): list(sid_index[i]) for i in sids})
    descriptions = items["description"].to_pylist()
    write_json(
        out_dir / research_layout.item_json(category),
        {str(i): {"title": titles[i], "description": descriptions[i]} for i in sids},
    )
