"""A shop's own export (data.format=interactions or recbole) -> the records and columns the Amazon readers give.

Two tables: events (user id, item id, timestamp, optional rating) and items (item id, title, optional
description, and the `data.item_text_columns`). Parquet, CSV and JSON lines (optionally gzipped, one file or a
folder of part files) are read by pyarrow in record batches, so a file larger than memory works; RecBole atomic
files are tab-separated with typed headers (`user_id:token`), the type suffix dropped. Column names come from
`data.columns`. Events are converted batch by batch with pyarrow compute and numpy, never a Python object per
row; items (a catalogue, far smaller) become `ItemMeta` records. Everything after reading is preprocess's.

Timestamps are detected per column on its first value: a timestamp column, epoch seconds, epoch
milliseconds (a first value of 1e11 or more: 1e11 seconds is year 5138), or ISO-8601 text (`2024-05-01`,
`2024-05-01T10:30:00`, fractions of a second, a zone `Z`/`+02:00`/`-0500`; UTC when none). An event whose user,
item or time is missing or unusable, a rating that is not a number, an item row without an id or a title, and
a CSV line with the wrong number of fields are counted by reason; above `data.max_malformed_fraction` of a
table the step fails naming the file, the first bad row and the column.
"""

from __future__ import annotations

import difflib
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.dataset as ds

from sidreasoner.artifacts.raw import RawData
from sidreasoner.config import DataConfig
from sidreasoner.data.raw import (
    FLOAT32_MAX,
    MAX_SECONDS,
    ItemMeta,
    RawDataError,
    clean_text,
    minionerec_description,
    minionerec_title,
)

TABLE_FORMATS = ("interactions", "recbole")
BATCH_ROWS = 1 << 20
MS_FROM = 1e11  # a first epoch value this large is milliseconds
_NUMBER = r"^\s*[+-]?\d+(\.\d*)?\s*$"
_ISO = (
    r"^\s*(?P<date>\d{4}-\d{2}-\d{2})(?:[T ](?P<hm>\d{2}:\d{2})(?P<sec>:\d{2})?(?:[.,]\d+)?)?\s*"
    r"(?P<zone>[Zz]|[+-]\d{2}(?::?\d{2})?)?\s*$"
)
log = logging.getLogger(__name__)


@dataclass
class Table:
    """One table of the export: its files (in order) and their kind (parquet, csv, json, recbole)."""

    files: list[Path]
    kind: str

    @classmethod
    def of(cls, files: list[Path]) -> Table:
        kinds = {RawData.table_kind(f.name) for f in files}
        if len(kinds) != 1 or None in kinds:
            raise RawDataError(f"{files[0].parent}: the table's files mix or lack formats: {[f.name for f in files]}")
        return cls(files, kinds.pop())


def _file_format(kind: str, column_types: dict[str, pa.DataType] | None = None, on_bad_row=None, names=None):
    if kind == "parquet":
        return ds.ParquetFileFormat()
    if kind == "json":
        return ds.JsonFileFormat()
    recbole = kind == "recbole"
    parse = pacsv.ParseOptions(delimiter="\t" if recbole else ",", quote_char=False if recbole else '"')
    if on_bad_row is not None:
        parse.invalid_row_handler = on_bad_row
    read = pacsv.ReadOptions(block_size=1 << 24)
    if names is not None:  # recbole: the typed header replaced by the bare names
        read = pacsv.ReadOptions(block_size=1 << 24, column_names=names, skip_rows=1)
    convert = pacsv.ConvertOptions(column_types=column_types or {}, strings_can_be_null=True)
    return ds.CsvFileFormat(parse_options=parse, read_options=read, convert_options=convert)


def _skip(row) -> str:
    return "skip"


def _names(path: Path, kind: str) -> tuple[list[str], list[str] | None]:
    """The columns a file has, and for RecBole the bare names that replace its typed header."""
    try:
        names = ds.dataset(str(path), format=_file_format(kind, on_bad_row=_skip)).schema.names  # counted later
    except (pa.ArrowInvalid, OSError) as err:
        raise RawDataError(f"{path}: cannot read it as {kind}: {err}") from err
    if kind != "recbole":
        return names, None
    bare = [n.split(":", 1)[0] for n in names]
    return bare, bare


def _missing_column(path: Path, key: str, name: str, have: list[str]) -> RawDataError:
    close = difflib.get_close_matches(name, have, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    fix = f" (map it: --set {key}=<column>)" if key.startswith("data.columns.") else ""
    return RawDataError(f"{path}: no column {name!r} ({key}{fix}); the file has {', '.join(map(repr, have))}{hint}")


def _pick(path: Path, have: list[str], data: DataConfig, keys: list[str], optional: list[str]) -> dict[str, str]:
    """key -> the file's column for each wanted field; an optional one left at its default name may be absent."""
    defaults = type(data.columns)()
    picked = {}
    for key in keys + optional:
        name = getattr(data.columns, key)
        if name in have:
            picked[key] = name
        elif key in keys or name != getattr(defaults, key):
            raise _missing_column(path, f"data.columns.{key}", name, have)
    return picked


@dataclass
class _Bad:
    """Rows counted as unusable, per reason, with the first one's file, row and column. Rows are numbered
    1, 2, … after the header in each file, counting the lines skipped for a wrong number of fields."""

    lines: int = 0
    malformed: int = 0  # CSV lines with the wrong number of fields
    skipped: Counter = field(default_factory=Counter)
    first: tuple[int, int, str] | None = None  # (file index, row, message) of the earliest bad row
    skipped_rows: dict[int, list[int]] = field(default_factory=dict)  # file index -> rows of malformed lines
    seen: set = field(default_factory=set)

    def malformed_line(self, file_index: int, path: Path, line) -> None:
        """pyarrow's invalid_row_handler call for `line` (a scan may report one line twice: counted once)."""
        if line.number is not None and (file_index, line.number) in self.seen:
            return
        self.seen.add((file_index, line.number))
        self.malformed += 1
        self.lines += 1  # a line read, though not a row
        row = line.number - 1 if line.number is not None else 0  # line 1 is the header
        self.skipped_rows.setdefault(file_index, []).append(row)
        fields = f"{line.actual_columns} fields where the header has {line.expected_columns}"
        self._keep_first(file_index, row, f"{path} row {row}: {fields}")

    def _keep_first(self, file_index: int, row: int, message: str) -> None:
        if self.first is None or (file_index, row) < self.first[:2]:
            self.first = (file_index, row, message)

    def _file_row(self, file_index: int, read_row: int) -> int:
        """The row number of the `read_row`-th row read from the file (1-based), past its skipped lines."""
        row = read_row
        for skipped in sorted(self.skipped_rows.get(file_index, [])):
            if skipped > row:
                break
            row += 1
        return row

    def note(self, reasons: list[tuple[str, np.ndarray, str]], file_index: int, path: Path, offset: int) -> None:
        """Count each (reason, mask, what the first row's message says) of a batch; keep the earliest row."""
        earliest = None
        for reason, mask, message in reasons:
            rows = np.flatnonzero(mask)
            if len(rows):
                self.skipped[reason] += len(rows)
                earliest = min(earliest or (rows[0], message), (rows[0], message))
        if earliest is not None and (self.first is None or self.first[0] == file_index):
            row = self._file_row(file_index, offset + int(earliest[0]) + 1)
            self._keep_first(file_index, row, f"{path} row {row}, {earliest[1]}")

    def check(self, what: Path, budget: float) -> None:
        bad = self.malformed + sum(self.skipped.values())
        fraction = bad / self.lines if self.lines else 0.0
        if self.lines == 0:
            raise RawDataError(f"{what}: the table has no rows")
        if fraction > budget:
            reasons = Counter(self.skipped)
            reasons["malformed_line"] += self.malformed
            listed = ", ".join(f"{r}: {n}" for r, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])) if n)
            raise RawDataError(
                f"{what}: {bad} of {self.lines} rows ({fraction:.1%}) are malformed or unusable, above "
                f"data.max_malformed_fraction={budget} ({listed}; first: {self.first[2] if self.first else ''})"
            )


def _batches(
    table: Table, columns: list[str], bad: _Bad, string_columns: list[str]
) -> Iterator[tuple[int, Path, int, pa.RecordBatch]]:
    """(file index, file, rows of the file read before the batch, batch) of `columns`, file after file."""
    for file_index, path in enumerate(table.files):
        have, names = _names(path, table.kind)
        missing = [c for c in columns if c not in have]
        if missing:
            raise _missing_column(path, "a column the table's first file has", missing[0], have)

        def on_bad_row(line, file_index=file_index, path=path):
            bad.malformed_line(file_index, path, line)
            return "skip"

        types = {c: pa.string() for c in string_columns if c in have} if table.kind in ("csv", "recbole") else None
        fmt = _file_format(table.kind, types, on_bad_row, names)
        offset = 0
        try:
            for batch in ds.dataset(str(path), format=fmt).to_batches(columns=columns, batch_size=BATCH_ROWS):
                yield file_index, path, offset, batch
                offset += batch.num_rows
        except (pa.ArrowInvalid, OSError) as err:
            raise RawDataError(f"{path}: unreadable after row {offset}: {err}") from err


# ---------------------------------------------------------------- values


def _ids(arr: pa.Array, path: Path, column: str) -> pa.Array:
    """Ids as trimmed strings, null where missing or blank; integers become their decimal text."""
    if pa.types.is_integer(arr.type):
        return pc.cast(arr, pa.string())
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type) or pa.types.is_null(arr.type)):
        raise RawDataError(f"{path}: column {column!r} holds {arr.type}; an id must be a string or an integer")
    text = pc.utf8_trim_whitespace(arr.cast(pa.string()))
    return pc.if_else(pc.equal(text, ""), pa.scalar(None, pa.string()), text)


def _blank(arr: pa.Array) -> np.ndarray:
    """True where a value is null or (text) blank."""
    missing = pc.is_null(arr)
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        missing = pc.or_kleene(missing, pc.equal(pc.utf8_trim_whitespace(arr), ""))
    return np.asarray(missing.to_numpy(zero_copy_only=False), bool)


def _numbers(arr: pa.Array) -> np.ndarray:
    """float64 of a numeric or numeric-text array; NaN where null or not a number."""
    if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
        ok = pc.match_substring_regex(arr, _NUMBER)
        arr = pc.cast(pc.if_else(ok, pc.utf8_trim_whitespace(arr), pa.scalar(None, pa.string())), pa.float64())
    elif not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
        return np.full(len(arr), np.nan)
    return pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)


def _iso_seconds(arr: pa.Array) -> np.ndarray:
    """Epoch seconds of ISO-8601 texts (UTC when no zone); NaN where not one (or not a real date)."""
    for whole in (pa.timestamp("ns", tz="UTC"), pa.timestamp("ns")):  # fast: a batch all with, or all without, zones
        try:
            nanoseconds = pc.cast(pc.cast(arr, whole), pa.int64())
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            continue
        seconds = (pc.fill_null(nanoseconds, 0).to_numpy() // 1_000_000_000).astype(np.float64)  # floor
        seconds[np.asarray(pc.is_null(nanoseconds).to_numpy(zero_copy_only=False), bool)] = np.nan
        return seconds
    parts = pc.extract_regex(arr, _ISO)
    date, hm, sec, zone = (pc.struct_field(parts, n) for n in ("date", "hm", "sec", "zone"))
    hm = pc.if_else(pc.equal(hm, ""), "00:00", hm)
    sec = pc.if_else(pc.equal(sec, ""), ":00", sec)
    local = pc.strptime(
        pc.binary_join_element_wise(date, " ", hm, sec, ""), "%Y-%m-%d %H:%M:%S", "s", error_is_null=True
    )
    real_day = pc.equal(pc.strftime(local, "%Y-%m-%d"), date)  # strptime rolls 02-30 over to 03-01
    local = pc.if_else(real_day, local, pa.scalar(None, local.type))
    digits = pc.replace_substring(zone, ":", "")
    sign = pc.if_else(pc.starts_with(zone, "-"), -1, 1)
    hours = pc.cast(
        pc.if_else(pc.greater(pc.utf8_length(digits), 1), pc.utf8_slice_codeunits(digits, 1, 3), "0"), pa.int64()
    )
    minutes = pc.cast(
        pc.if_else(pc.greater(pc.utf8_length(digits), 3), pc.utf8_slice_codeunits(digits, 3, 5), "0"), pa.int64()
    )
    offset = pc.multiply(sign, pc.add(pc.multiply(hours, 3600), pc.multiply(minutes, 60)))
    seconds = pc.subtract(pc.cast(local, pa.int64()), offset)
    return pc.cast(seconds, pa.float64()).to_numpy(zero_copy_only=False)


@dataclass
class TimeColumn:
    """How one timestamp column is read, decided on its first non-blank value."""

    kind: str = ""  # timestamp | seconds | milliseconds | iso8601

    def decide(self, arr: pa.Array) -> None:
        if self.kind or len(arr) == 0:
            return
        if pa.types.is_timestamp(arr.type) or pa.types.is_date(arr.type):
            self.kind = "timestamp"
            return
        present = pc.drop_null(arr)
        if pa.types.is_string(present.type) or pa.types.is_large_string(present.type):
            present = pc.filter(present, pc.not_equal(pc.utf8_trim_whitespace(present), ""))
            if len(present) and not pc.match_substring_regex(present[:1], _NUMBER)[0].as_py():
                self.kind = "iso8601"
                return
        first = _numbers(present[:1])
        if len(first) and np.isfinite(first[0]):
            self.kind = "milliseconds" if abs(first[0]) >= MS_FROM else "seconds"

    def problem(self) -> str:
        """What an unusable value of this column is not, for messages."""
        want = {"seconds": "epoch seconds", "milliseconds": "epoch milliseconds", "iso8601": "an ISO-8601 time"}
        what = want.get(self.kind, "a time")
        return f"not {what} (as the column's first value is) between 1970 and 9999"

    def seconds(self, arr: pa.Array) -> np.ndarray:
        """Epoch seconds as float64, NaN where unusable (missing values are told apart by the caller)."""
        if self.kind == "timestamp":
            if pa.types.is_date(arr.type):
                arr = pc.cast(arr, pa.timestamp("s"))
            per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[arr.type.unit]
            values = pc.cast(arr, pa.int64()).to_numpy(zero_copy_only=False).astype(np.float64)
            return np.floor(values / per_second)
        if self.kind == "iso8601":
            if not (pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type)):
                return np.full(len(arr), np.nan)
            return _iso_seconds(arr)
        return np.floor(_numbers(arr) / (1000 if self.kind == "milliseconds" else 1))


# ---------------------------------------------------------------- items


def _text_values(value) -> list[str]:
    if isinstance(value, list):
        return [t for t in (clean_text(v) for v in value if not isinstance(v, list | dict)) if t]
    text = clean_text(value) if value is not None else ""
    return [text] if text else []


def _title(value, rule: str) -> str | None:
    if value is None:
        return None
    return minionerec_title(value) if rule == "minionerec" else clean_text(value)


def iter_items(files: list[Path], data: DataConfig, metrics: dict[str, float]) -> Iterator[ItemMeta]:
    """The items table as ItemMeta records (brand empty; the text columns' values as categories)."""
    table, bad = Table.of(files), _Bad()
    have, _ = _names(table.files[0], table.kind)
    picked = _pick(table.files[0], have, data, ["item_id", "title"], ["description"])
    for name in data.item_text_columns:
        if name not in have:
            raise _missing_column(table.files[0], "data.item_text_columns", name, have)
    columns = list(dict.fromkeys([*picked.values(), *data.item_text_columns]))
    describe = minionerec_description if data.title_rule == "minionerec" else clean_text
    for file_index, path, offset, batch in _batches(table, columns, bad, columns):
        bad.lines += batch.num_rows
        ids = _ids(batch.column(picked["item_id"]), path, picked["item_id"])
        no_id = np.asarray(pc.is_null(ids).to_numpy(zero_copy_only=False), bool)
        no_title = _blank(batch.column(picked["title"])) & ~no_id
        bad.note(
            [
                ("missing_item_id", no_id, f"column {picked['item_id']!r}: missing"),
                ("missing_title", no_title, f"column {picked['title']!r}: missing"),
            ],
            file_index,
            path,
            offset,
        )
        titles = batch.column(picked["title"]).to_pylist()
        descriptions = batch.column(picked["description"]).to_pylist() if "description" in picked else None
        texts = [batch.column(c).to_pylist() for c in data.item_text_columns]
        for row, item_id in enumerate(ids.to_pylist()):
            if item_id is None:
                continue
            title = None if no_title[row] else _title(titles[row], data.title_rule)
            description = describe(descriptions[row]) if descriptions is not None else ""
            categories = [t for values in texts for t in _text_values(values[row])]
            yield ItemMeta(item_id, title, description, "", categories)
    bad.check(table.files[0] if len(table.files) == 1 else table.files[0].parent, data.max_malformed_fraction)
    metrics.update(raw_meta_lines=bad.lines, malformed_meta_lines=bad.malformed)
    metrics["meta_records_skipped_missing_item_id"] = bad.skipped["missing_item_id"]


# ---------------------------------------------------------------- events


@dataclass
class EventColumns:
    """The kept events, before user codes: user ids (Arrow strings), item codes, seconds, ratings."""

    users: list[pa.Array] = field(default_factory=list)
    items: list[np.ndarray] = field(default_factory=list)
    ts: list[np.ndarray] = field(default_factory=list)
    ratings: list[np.ndarray] = field(default_factory=list)
    unknown_ts: list[np.ndarray] = field(default_factory=list)


def read_events(
    files: list[Path], data: DataConfig, asins: list[str], window: tuple[int, int], metrics: dict[str, float]
):
    """(user ids by code, user codes, item codes, seconds, ratings, unknown-item seconds) of the events inside
    `window` whose item is in `asins` (codes = positions there), in file order; counts in `metrics`."""
    table, bad = Table.of(files), _Bad()
    have, _ = _names(table.files[0], table.kind)
    picked = _pick(table.files[0], have, data, ["user_id", "item_id", "timestamp"], ["rating"])
    columns = list(dict.fromkeys(picked.values()))
    known = pa.array(asins, pa.string())
    clock, out, out_of_window = TimeColumn(), EventColumns(), 0
    lo, hi = window
    for file_index, path, offset, batch in _batches(table, columns, bad, columns):
        bad.lines += batch.num_rows
        user = _ids(batch.column(picked["user_id"]), path, picked["user_id"])
        item = _ids(batch.column(picked["item_id"]), path, picked["item_id"])
        stamp = batch.column(picked["timestamp"])
        clock.decide(stamp)
        seconds = clock.seconds(stamp)
        rating = _ratings(batch, picked)
        reasons = [
            (
                "missing_user_id",
                "user_id",
                np.asarray(pc.is_null(user).to_numpy(zero_copy_only=False), bool),
                "missing",
            ),
            (
                "missing_item_id",
                "item_id",
                np.asarray(pc.is_null(item).to_numpy(zero_copy_only=False), bool),
                "missing",
            ),
            ("missing_timestamp", "timestamp", _blank(stamp), "missing"),
            (
                "invalid_timestamp",
                "timestamp",
                ~((seconds >= 0) & (seconds < MAX_SECONDS)),
                clock.problem(),
            ),
        ]
        if "rating" in picked:
            unusable = ~(np.abs(rating) <= FLOAT32_MAX) & ~_blank(batch.column(picked["rating"]))
            reasons.append(("invalid_rating", "rating", unusable, "not a number in float32's range"))
        usable, counted = np.ones(batch.num_rows, bool), []
        for reason, key, mask, why in reasons:  # a row counts once, for its first problem
            counted.append((reason, mask & usable, f"column {picked[key]!r}: {why}"))
            usable &= ~mask
        bad.note(counted, file_index, path, offset)
        secs = np.where(usable, seconds, -1).astype(np.int64)
        inside = usable & (secs >= lo) & (secs < hi)
        out_of_window += int((usable & ~inside).sum())
        codes = pc.fill_null(pc.index_in(item, value_set=known), -1).to_numpy(zero_copy_only=False).astype(np.int64)
        kept = inside & (codes >= 0)
        out.unknown_ts.append(secs[inside & ~kept])
        out.users.append(pc.filter(user, pa.array(kept)))
        out.items.append(codes[kept])
        out.ts.append(secs[kept])
        out.ratings.append(rating[kept].astype(np.float32))
    bad.check(table.files[0] if len(table.files) == 1 else table.files[0].parent, data.max_malformed_fraction)
    unknown_ts = np.concatenate(out.unknown_ts) if out.unknown_ts else np.zeros(0, np.int64)
    metrics.update(
        raw_review_lines=bad.lines,
        malformed_review_lines=bad.malformed,
        reviews_dropped_out_of_window=out_of_window,
        reviews_dropped_unknown_item=len(unknown_ts),
    )
    metrics.update({f"review_records_skipped_{k}": v for k, v in sorted(bad.skipped.items())})
    metrics["reviews_read"] = bad.lines - bad.malformed - sum(bad.skipped.values())
    for kind in ("timestamp", "seconds", "milliseconds", "iso8601"):
        metrics[f"timestamps_{kind}"] = float(clock.kind == kind)
    log.info("%s: timestamps read as %s", table.files[0], clock.kind)
    encoded = pa.chunked_array(out.users, pa.string()).combine_chunks().dictionary_encode()
    return (
        encoded.dictionary.to_pylist(),
        encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64),
        np.concatenate(out.items) if out.items else np.zeros(0, np.int64),
        np.concatenate(out.ts) if out.ts else np.zeros(0, np.int64),
        np.concatenate(out.ratings) if out.ratings else np.zeros(0, np.float32),
        unknown_ts,
    )


def _ratings(batch: pa.RecordBatch, picked: dict[str, str]) -> np.ndarray:
    if "rating" not in picked:
        return np.full(batch.num_rows, np.nan)
    return _numbers(batch.column(picked["rating"]))
