"""Streaming readers for raw Amazon review/meta files (2018 and 2023 formats).

Files are JSON lines, plain or gzipped (detected by magic bytes, not by name); a UTF-8 byte-order mark
and CRLF line endings are accepted. Malformed lines, and records whose fields are unusable (an id that is
not a string, a rating or timestamp that is not a finite number in range), are counted by reason and
skipped; a file that is not JSON lines at all, or whose malformed share is above the budget, is rejected
with a `RawDataError` naming the file, the first bad line and the reasons. Fields are never eval()'d.
"""

from __future__ import annotations

import gzip
import html
import io
import math
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal, NamedTuple

import orjson

Format = Literal["amazon2018", "amazon2023"]
FORMATS: tuple[str, ...] = ("amazon2018", "amazon2023")
TitleRule = Literal["minionerec", "unescape"]
GZIP_MAGIC = b"\x1f\x8b"
UTF8_BOM = b"\xef\xbb\xbf"
PROBE_LINES = 50  # when the first this-many non-empty lines all fail, the file is not JSON lines
SNIPPET_CHARS = 60  # of a bad line, in error messages


class RawDataError(ValueError):
    """A raw data file is unusable; the message names the file, the line and what is wrong."""


class Review(NamedTuple):
    user: str
    asin: str
    rating: float
    timestamp: int  # seconds since the epoch, UTC


class ItemMeta(NamedTuple):
    asin: str
    title: str | None  # None when the record has no title field (preprocess counts it)
    description: str
    brand: str
    categories: list[str]


@dataclass
class LineStats:
    """Counts filled in while `iter_json_lines` runs."""

    lines: int = 0  # non-empty lines seen
    valid: int = 0
    malformed: int = 0
    first_bad_line: int | None = None
    first_bad_snippet: str = ""  # quoted and escaped (repr)

    @property
    def malformed_fraction(self) -> float:
        return self.malformed / self.lines if self.lines else 0.0


@dataclass
class FieldCounts:
    """Records skipped by a normaliser, per reason (`missing_<field>` / `invalid_<field>`); the first one's
    line and reason are kept for the error message."""

    skipped: Counter = field(default_factory=Counter)
    last_reason: str = ""
    first_bad_line: int | None = None
    first_bad_reason: str = ""

    @property
    def total(self) -> int:
        return sum(self.skipped.values())

    def skip(self, reason: str) -> None:
        self.skipped[reason] += 1
        self.last_reason = reason

    def note_line(self, line_no: int) -> None:
        """The record of `line_no` was just skipped (its reason is `last_reason`)."""
        if self.first_bad_line is None:
            self.first_bad_line, self.first_bad_reason = line_no, self.last_reason


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a plain or gzipped file for reading bytes; gzip is detected by its magic bytes."""
    path = Path(path)
    with open(path, "rb") as fh:
        magic = fh.read(2)
    if magic == GZIP_MAGIC:
        return io.BufferedReader(gzip.open(path, "rb"), buffer_size=1 << 20)
    return open(path, "rb", buffering=1 << 20)


def _snippet(raw: bytes) -> str:
    """The start of a bad line, quoted and escaped as repr does: no control character or terminal escape
    sequence of the file reaches the message."""
    text = raw.decode("utf-8", errors="replace").strip()
    return repr(text[:SNIPPET_CHARS] + ("..." if len(text) > SNIPPET_CHARS else ""))


def _bad_line_error(path: Path, stats: LineStats, why: str) -> RawDataError:
    return RawDataError(
        f"{path}: {why} (first bad line {stats.first_bad_line}: {stats.first_bad_snippet}). "
        "Expected one JSON object per line, plain or gzipped."
    )


def _parse(raw: bytes) -> dict | None:
    try:
        obj = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None
    return obj if isinstance(obj, dict) else None


def _record_bad(stats: LineStats, line_no: int, raw: bytes) -> None:
    stats.malformed += 1
    if stats.first_bad_line is None:
        stats.first_bad_line = line_no
        stats.first_bad_snippet = _snippet(raw)


def _check_end(path: Path, stats: LineStats, max_malformed_fraction: float) -> None:
    if stats.valid == 0:
        if stats.lines == 0:
            raise RawDataError(f"{path}: file is empty (no non-empty lines)")
        raise _bad_line_error(path, stats, f"no valid JSON lines among {stats.lines}")
    if stats.malformed_fraction > max_malformed_fraction:
        raise _bad_line_error(
            path,
            stats,
            f"{stats.malformed} of {stats.lines} lines ({stats.malformed_fraction:.1%}) are malformed, "
            f"above data.max_malformed_fraction={max_malformed_fraction}",
        )


def iter_json_lines(
    path: str | Path, max_malformed_fraction: float = 0.05, stats: LineStats | None = None
) -> Iterator[tuple[int, dict]]:
    """Yield (1-based line number, object) for each JSON-object line; count and skip bad lines.

    Raises RawDataError when the first PROBE_LINES non-empty lines all fail, when no line is valid,
    or when the malformed share at the end exceeds `max_malformed_fraction`. Pass `stats` to read
    the counts afterwards.
    """
    path = Path(path)
    stats = stats if stats is not None else LineStats()
    if not path.is_file():
        raise RawDataError(f"{path}: no such file")
    with open_binary(path) as fh:
        try:
            for line_no, raw in enumerate(fh, start=1):
                if line_no == 1 and raw.startswith(UTF8_BOM):  # orjson rejects a byte-order mark
                    raw = raw[len(UTF8_BOM) :]
                if not raw.strip():
                    continue
                stats.lines += 1
                obj = _parse(raw)
                if obj is None:
                    _record_bad(stats, line_no, raw)
                    if stats.valid == 0 and stats.malformed >= PROBE_LINES:
                        raise _bad_line_error(path, stats, f"the first {PROBE_LINES} lines are not JSON objects")
                    continue
                stats.valid += 1
                yield line_no, obj
        except (EOFError, gzip.BadGzipFile, OSError) as err:
            raise RawDataError(
                f"{path}: cannot read (truncated or corrupt gzip?) after line {stats.lines}: {err}"
            ) from err
    _check_end(path, stats, max_malformed_fraction)


# ---------------------------------------------------------------- normalisers


def clean_text(value: Any) -> str:
    """HTML-unescaped, stripped text; lists are joined with spaces; None -> ''."""
    if value is None:
        return ""
    if isinstance(value, list):
        return " ".join(t for t in (clean_text(v) for v in value) if t)
    if not isinstance(value, str):
        value = str(value)
    return " ".join(html.unescape(value).split())


def _text_list(value: Any) -> list[str]:
    if not isinstance(value, list):
        value = [value] if value else []
    return [t for t in (clean_text(v) for v in value if not isinstance(v, list | dict)) if t]


_REVIEW_FIELDS: dict[str, tuple[str, str, str, str]] = {
    "amazon2018": ("reviewerID", "asin", "overall", "unixReviewTime"),
    "amazon2023": ("user_id", "parent_asin", "rating", "timestamp"),
}
_TS_DIVISOR = {"amazon2018": 1, "amazon2023": 1000}  # 2023 timestamps are milliseconds


def _check_format(fmt: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown raw format {fmt!r}; allowed: {', '.join(FORMATS)}")


def _id_field(rec: dict, key: str, counts: FieldCounts) -> str | None:
    """An id is a non-blank string, never coerced (a `true` must not become the id "True")."""
    value = rec.get(key)
    if value is None or (isinstance(value, str) and not value.strip()):
        counts.skip(f"missing_{key}")
        return None
    if not isinstance(value, str):
        counts.skip(f"invalid_{key}")
        return None
    return value.strip()


def _finite(value: Any) -> float | int | None:
    """A JSON number (not a boolean) or a numeric string, when finite; ints stay exact."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _number(rec: dict, key: str, counts: FieldCounts) -> float | int | None:
    value = rec.get(key)
    if value is None or value == "":
        counts.skip(f"missing_{key}")
        return None
    number = _finite(value)
    if number is None:
        counts.skip(f"invalid_{key}")
    return number


FLOAT32_MAX = 3.4028234e38  # ratings are stored as float32


def _rating(rec: dict, key: str, counts: FieldCounts) -> float | None:
    number = _number(rec, key, counts)
    if number is None:
        return None
    if not abs(number) <= FLOAT32_MAX:
        counts.skip(f"invalid_{key}")
        return None
    return float(number)


# Review times are kept between the epoch and the end of year 9999 (what a datetime can hold).
MAX_SECONDS = 253_402_300_800


def _timestamp(rec: dict, key: str, divisor: int, counts: FieldCounts) -> int | None:
    number = _number(rec, key, counts)
    if number is None:
        return None
    seconds = int(number) // divisor
    if not 0 <= seconds < MAX_SECONDS:
        counts.skip(f"invalid_{key}")
        return None
    return seconds


def normalize_review(rec: dict, fmt: Format, counts: FieldCounts) -> Review | None:
    """One raw review -> Review(user, asin, rating, timestamp seconds), or None (counted) if unusable."""
    user_key, asin_key, rating_key, ts_key = _REVIEW_FIELDS[fmt]
    user = _id_field(rec, user_key, counts)
    if user is None:
        return None
    asin = _id_field(rec, asin_key, counts)
    if asin is None:
        return None
    rating = _rating(rec, rating_key, counts)
    if rating is None:
        return None
    ts = _timestamp(rec, ts_key, _TS_DIVISOR[fmt], counts)
    if ts is None:
        return None
    return Review(user, asin, rating, ts)


def minionerec_title(value: Any) -> str:
    """MiniOneRec's title cleaning: only `&quot;` and `&amp;` are replaced (other entities and any markup
    stay), then surrounding spaces and then surrounding double quotes are stripped; inner whitespace stays."""
    text = value if isinstance(value, str) else str(value)
    return text.replace("&quot;", '"').replace("&amp;", "&").strip(" ").strip('"')


def minionerec_description(value: Any) -> str:
    """MiniOneRec's description text: the raw field as Python prints it (a list keeps its brackets and
    quotes, which its embedding text then carries), tags removed, entities unescaped, whitespace
    collapsed; empty -> ''."""
    if not value:
        return ""
    text = html.unescape(re.sub(r"<[^>]+>", "", str(value))).replace("&quot;", '"').replace("&amp;", "&")
    return re.sub(r"\s+", " ", text).strip()


def _title(rec: dict, rule: TitleRule) -> str | None:
    if "title" not in rec or rec["title"] is None:
        return None
    return minionerec_title(rec["title"]) if rule == "minionerec" else clean_text(rec["title"])


def normalize_meta(rec: dict, fmt: Format, counts: FieldCounts, title_rule: TitleRule = "unescape") -> ItemMeta | None:
    """One raw meta record -> ItemMeta, or None (counted) when it has no item id.

    The title is cleaned by `title_rule`: `unescape` (every HTML entity, whitespace collapsed) or
    `minionerec` (`minionerec_title`, and an Amazon 2018 description as `minionerec_description`);
    the other text fields are always `clean_text`-ed.
    """
    if fmt == "amazon2018":
        asin = _id_field(rec, "asin", counts)
        if asin is None:
            return None
        describe = minionerec_description if title_rule == "minionerec" else clean_text
        return ItemMeta(
            asin,
            _title(rec, title_rule),
            describe(rec.get("description")),
            clean_text(rec.get("brand")),
            _text_list(rec.get("category")),
        )
    asin = _id_field(rec, "parent_asin", counts)
    if asin is None:
        return None
    description = clean_text(rec.get("description")) or clean_text(rec.get("features"))
    return ItemMeta(
        asin, _title(rec, title_rule), description, clean_text(rec.get("store")), _text_list(rec.get("categories"))
    )


def _iter_normalized(path, fmt, max_malformed_fraction, stats, counts, normalize):
    """Normalised records; malformed lines and unusable records share the one malformed-fraction budget."""
    _check_format(fmt)
    for line_no, rec in iter_json_lines(path, 1.0, stats):
        record = normalize(rec, fmt, counts)
        if record is None:
            counts.note_line(line_no)
        else:
            yield record
    _check_records(Path(path), stats, counts, max_malformed_fraction)


def _skip_reasons(stats: LineStats, counts: FieldCounts) -> str:
    """'reason: count, ...' of the skipped lines and records, the most frequent first (ties by name)."""
    reasons = Counter(counts.skipped)
    if stats.malformed:
        reasons["malformed_line"] += stats.malformed
    return ", ".join(f"{reason}: {n}" for reason, n in sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0])))


def _check_records(path: Path, stats: LineStats, counts: FieldCounts, max_malformed_fraction: float) -> None:
    bad = stats.malformed + counts.total
    fraction = bad / stats.lines if stats.lines else 0.0
    if fraction <= max_malformed_fraction:
        return
    if counts.first_bad_line is not None and (
        stats.first_bad_line is None or counts.first_bad_line < stats.first_bad_line
    ):
        first = f"first bad line {counts.first_bad_line}: {counts.first_bad_reason}"
    else:
        first = f"first bad line {stats.first_bad_line}: {stats.first_bad_snippet}"
    raise RawDataError(
        f"{path}: {bad} of {stats.lines} lines ({fraction:.1%}) are malformed or unusable, above "
        f"data.max_malformed_fraction={max_malformed_fraction} ({_skip_reasons(stats, counts)}; "
        f"{first})"
    )


def iter_reviews(
    path: str | Path, fmt: Format, max_malformed_fraction: float, stats: LineStats, counts: FieldCounts
) -> Iterator[Review]:
    """Normalised reviews of a raw review file; bad lines and unusable records are counted."""
    return _iter_normalized(path, fmt, max_malformed_fraction, stats, counts, normalize_review)


def iter_meta(
    path: str | Path,
    fmt: Format,
    max_malformed_fraction: float,
    stats: LineStats,
    counts: FieldCounts,
    title_rule: TitleRule = "unescape",
) -> Iterator[ItemMeta]:
    """Normalised item records of a raw meta file; bad lines and records without an id are counted."""

    def normalize(rec: dict, fmt: Format, counts: FieldCounts) -> ItemMeta | None:
        return normalize_meta(rec, fmt, counts, title_rule)

    return _iter_normalized(path, fmt, max_malformed_fraction, stats, counts, normalize)
