"""Reader of a research data bundle: the folder the MiniOneRec/SIDReasoner code reads (`data/Amazon`).

Layout: the files `artifacts.research_layout` names, any sensible subset (`<Cat>` is the category, e.g.
`Office_Products`): each split's samples (`<split>/<Cat>_*.csv`, or the exports' `split_csv`), the SID index
(item id -> SID codes, one per level), the item texts (item id -> {"title", "description", ...}), the catalogue
(`info/<Cat>_*.txt`, or the exports' `info_txt`: `SID<TAB>title<TAB>item id` per item), the item narratives
(item id -> {..., "llm_stage2": narrative}), the integrated narratives (samples + `integrated_narrative`,
`reasoning_path`; the samples by ids and SIDs, or by SIDs only: the four columns the research code reads)
and the general reasoning chats (JSON lines, see below).

Every function here is pure over local files and returns plain Python. List fields of the CSVs are
Python list literals (`['a', "b's"]`, `[384, 289]`); they are parsed with `ast.literal_eval` (JSON and
a regular expression first, for speed), never `eval`. Rows that cannot be parsed are counted by reason
and skipped; a file whose malformed share is above `max_malformed_fraction` is rejected with a
`ResearchDataError` naming the file, the first bad row and the field. Structural faults (a missing file
or column, a malformed SID index, an item id missing from the index) are errors naming the file, the
row or item and the value. Row order is kept exactly.

The text rules follow the research code, so that the same texts reach training:
- item narratives (`llm_stage2`) and history narratives (`integrated_narrative`): only the text after
  the last `</think>` when there is one, stripped; otherwise the text unchanged;
- reasoning paths: a missing or blank one is dropped; one that starts with `<think>` keeps the text
  after the last `</think>`, or is dropped when `</think>` never comes;
- a CSV cell that pandas' `read_csv` would read as NaN (empty, `NA`, `nan`, `null`, ...) is missing;
- general reasoning: `random.Random(seed).sample(lines, sample)` when `sample > 0` (the research code
  seeds the global generator with the same seed and calls `random.sample`: the same draw), then
  conversations with no assistant message are dropped.
"""

from __future__ import annotations

import ast
import csv
import json
import random
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import orjson

from sidreasoner.artifacts import research_layout
from sidreasoner.artifacts.research_layout import (
    ID_COLUMNS,
    ID_SID_COLUMNS,
    NARRATIVE_COLUMNS,
    SID_COLUMNS,
    SPLIT_COLUMNS,
    SPLITS,
)
from sidreasoner.config.schema import file_name_problem
from sidreasoner.data.literals import json_or_literal, snippet

# Cells pandas.read_csv reads as NaN by default: the research code sees these as missing.
PANDAS_NA = frozenset(
    {
        "",
        "#N/A",
        "#N/A N/A",
        "#NA",
        "-1.#IND",
        "-1.#QNAN",
        "-NaN",
        "-nan",
        "1.#IND",
        "1.#QNAN",
        "<NA>",
        "N/A",
        "NA",
        "NULL",
        "NaN",
        "None",
        "n/a",
        "nan",
        "null",
    }
)
THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
SNIPPET_CHARS = 80
CSV_FIELD_LIMIT = 1 << 28  # narratives and descriptions can exceed the csv module's 128 KiB default
ARROW_MAGIC = (b"ARROW1", b"\xff\xff\xff\xff")  # Arrow IPC file / stream: read with pyarrow
UTF8_BOM = b"\xef\xbb\xbf"

_CODE = re.compile(r"<([a-z])_(0|[1-9][0-9]*)>")
_SID = re.compile(r"(?:<[a-z]_(?:0|[1-9][0-9]*)>)+")
_SID_LIST = re.compile(r"\[(?:'(?:<[a-z]_(?:0|[1-9][0-9]*)>)+'(?:, '(?:<[a-z]_(?:0|[1-9][0-9]*)>)+')*)?\]")
_LETTERS = "abcdefghijklmnopqrstuvwxyz"


class ResearchDataError(ValueError):
    """A research bundle file is unusable; the message names the file, the row or item, and the field."""


def _snippet(value: Any) -> str:
    return snippet(value, SNIPPET_CHARS)


# ---------------------------------------------------------------- finding the files


@dataclass(frozen=True)
class BundleFiles:
    """The files of one category in a bundle folder; None where absent."""

    root: Path
    category: str
    train: Path | None = None
    valid: Path | None = None
    test: Path | None = None
    index: Path | None = None
    items: Path | None = None
    info: Path | None = None
    item_narratives: Path | None = None  # research_layout.item_narratives_json
    integrated_narratives: Path | None = None  # research_layout.integrated_narrative_csv
    general_reasoning: Path | None = None  # research_layout.GENERAL_REASONING

    @property
    def splits(self) -> dict[str, Path]:
        """The split CSVs present, in train, valid, test order."""
        return {s: p for s in SPLITS if (p := getattr(self, s)) is not None}

    def describe(self) -> str:
        """One line per file kind: its path relative to the root, or `missing`."""
        names = (
            "train",
            "valid",
            "test",
            "index",
            "items",
            "info",
            "item_narratives",
            "integrated_narratives",
            "general_reasoning",
        )
        out = []
        for name in names:
            path = getattr(self, name)
            out.append(f"{name}: {path.relative_to(self.root) if path else 'missing'}")
        return "; ".join(out)


def _one_match(folder: Path, category: str, ext: str) -> Path | None:
    """`<Cat>.<ext>` or `<Cat>_*.<ext>` in `folder`; an error when several match."""
    if not folder.is_dir():
        return None
    found = sorted({p for p in [folder / f"{category}.{ext}", *folder.glob(f"{category}_*.{ext}")] if p.is_file()})
    if len(found) > 1:
        raise ResearchDataError(
            f"{folder}: several files for category {category!r}: {', '.join(p.name for p in found)}; keep one"
        )
    return found[0] if found else None


def _file(path: Path) -> Path | None:
    return path if path.is_file() else None


def _present_categories(root: Path) -> list[str]:
    suffix = research_layout.INDEX_JSON_SUFFIX
    cats = {p.name.removesuffix(suffix) for p in root.glob(research_layout.index_json("*"))}
    for split in SPLITS:
        cats |= {re.sub(r"_\d.*$", "", p.stem) for p in (root / split).glob("*.csv")}
    return sorted(cats)


def _listing(root: Path, limit: int = 20) -> str:
    """Files in `root` and its sub-folders (two levels: the bundle's depth), the first `limit` named."""
    files = sorted(str(p.relative_to(root)) for p in [*root.glob("*"), *root.glob("*/*")] if p.is_file())
    if not files:
        return "nothing"
    return ", ".join(files[:limit]) + (f", ... ({len(files) - limit} more)" if len(files) > limit else "")


def find_bundle(folder: str | Path, category: str) -> BundleFiles:
    """Locate the files of `category` under `folder` (the research code's `data/Amazon`).

    Raises ResearchDataError when the folder is missing or holds no split CSV of the category; the
    message lists what the folder holds and the categories present.
    """
    root = Path(folder)
    if not root.is_dir():
        raise ResearchDataError(f"{root}: no such folder")
    problem = file_name_problem(category)
    if problem:  # it is put into file names and glob patterns
        raise ResearchDataError(f"{root}: category {problem}")
    files = BundleFiles(
        root=root,
        category=category,
        **{s: _one_match(root / s, category, "csv") for s in SPLITS},
        index=_file(root / research_layout.index_json(category)),
        items=_file(root / research_layout.item_json(category)),
        info=_one_match(root / research_layout.INFO_FOLDER, category, "txt"),
        item_narratives=_file(root / research_layout.item_narratives_json(category)),
        integrated_narratives=_file(root / research_layout.integrated_narrative_csv(category)),
        general_reasoning=_file(root / research_layout.GENERAL_REASONING),
    )
    if not files.splits:
        hint = ""
        if (root / "data" / "Amazon").is_dir():
            hint = f" ({root / 'data' / 'Amazon'} exists: is that the bundle folder?)"
        cats = _present_categories(root)
        raise ResearchDataError(
            f"{root}: no split CSV for category {category!r} (looked for "
            f"{research_layout.split_csv('train|valid|test', category)} and "
            f"{category}_*.csv){hint}. Categories present: {', '.join(cats) or 'none'}. "
            f"Files found: {_listing(root)}"
        )
    return files


# ---------------------------------------------------------------- field parsers


class _Bad(Exception):
    """One malformed row: `reason` is the counter key, `column` and `detail` go into the message."""

    def __init__(self, reason: str, column: str, detail: str):
        super().__init__(reason)
        self.reason, self.column, self.detail = reason, column, detail


def _literal(text: str, column: str) -> Any:
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise _Bad(f"unparseable_{column}", column, f"not a Python literal: {_snippet(text)}") from None


def _list_literal(text: str, column: str) -> list:
    value = _literal(text, column)
    if not isinstance(value, list):
        raise _Bad(f"not_list_{column}", column, f"not a list: {_snippet(text)}")
    return value


def _int_list(text: str, column: str) -> list[int]:
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError:
        value = _list_literal(text, column)
    if not isinstance(value, list):
        raise _Bad(f"not_list_{column}", column, f"not a list: {_snippet(text)}")
    for v in value:
        if type(v) is not int or v < 0:
            raise _Bad(f"not_int_{column}", column, f"{v!r} is not a non-negative integer id")
    return value


def _text_list(text: str, column: str) -> list[str]:
    value = _list_literal(text, column)
    for v in value:
        if not isinstance(v, str):
            raise _Bad(f"not_text_{column}", column, f"{v!r} is not a string")
    return value


def sid_levels(sid: str) -> int | None:
    """The number of levels of a well-formed SID (`<a_1><b_2><c_3>` -> 3), None when malformed
    (anything around the codes, letters out of order, leading zeros)."""
    if not _SID.fullmatch(sid):
        return None
    letters = [m.group(1) for m in _CODE.finditer(sid)]
    return len(letters) if "".join(letters) == _LETTERS[: len(letters)] else None


class _SidCheck:
    """Validates SID strings once each (a bundle has a few thousand distinct ones)."""

    def __init__(self, levels: int | None):
        self.levels = levels
        self.good: set[str] = set()

    def __call__(self, sid: str, column: str) -> None:
        if sid in self.good:
            return
        n = sid_levels(sid) if isinstance(sid, str) else None
        if n is None:
            raise _Bad(f"bad_sid_{column}", column, f"not a SID like <a_1><b_2><c_3>: {_snippet(sid)}")
        if self.levels is not None and n != self.levels:
            raise _Bad(f"bad_sid_{column}", column, f"{sid} has {n} levels, expected {self.levels}")
        self.good.add(sid)


def _sid_list(text: str, column: str, check: _SidCheck) -> list[str]:
    if _SID_LIST.fullmatch(text):
        value = _SID.findall(text)
    else:
        value = _text_list(text, column)
    for sid in value:
        check(sid, column)
    return value


def _int_field(text: str, column: str) -> int:
    text = text.strip()
    if not text.isdigit() or not text.isascii():
        raise _Bad(f"not_int_{column}", column, f"not a non-negative integer: {_snippet(text)}")
    return int(text)


def _missing(cell: str) -> bool:
    return cell in PANDAS_NA or not cell.strip()


# ---------------------------------------------------------------- CSV rows


class Sample(NamedTuple):
    """One row of a split CSV."""

    user_id: str
    history_item_ids: list[int]
    item_id: int
    history_titles: list[str]
    item_title: str
    history_sids: list[str]
    item_sid: str


class NarrativeRow(NamedTuple):
    """One row of the integrated narratives CSV: the sample and its two texts (None when missing). The ids
    are None in a file without id columns (the research code reads only the SIDs and the texts)."""

    user_id: str | None
    history_item_ids: list[int] | None
    item_id: int | None
    history_sids: list[str]
    item_sid: str
    history_narrative: str | None
    reasoning_path: str | None


@dataclass
class Skips:
    """Rows or records read and skipped, by reason; the first skipped one described."""

    read: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_bad: str = ""

    @property
    def total(self) -> int:
        return sum(self.skipped.values())

    @property
    def fraction(self) -> float:
        return self.total / self.read if self.read else 0.0

    def skip(self, reason: str, where: str) -> None:
        self.skipped[reason] += 1
        if not self.first_bad:
            self.first_bad = where

    def check_budget(self, path: Path, max_malformed_fraction: float, unit: str = "rows") -> None:
        if self.fraction > max_malformed_fraction:
            reasons = ", ".join(f"{k}: {v}" for k, v in sorted(self.skipped.items()))
            raise ResearchDataError(
                f"{path}: {self.total} of {self.read} {unit} ({self.fraction:.1%}) are malformed, above "
                f"max_malformed_fraction={max_malformed_fraction} ({reasons}); first: {self.first_bad}"
            )


@dataclass
class SplitRows:
    """A split CSV read: the valid samples in file order and, for each, its 1-based data row number."""

    path: Path
    samples: list[Sample]
    row_numbers: list[int]
    skips: Skips

    @property
    def rows_with_repeated_history_items(self) -> int:
        return sum(1 for s in self.samples if len(set(s.history_item_ids)) < len(s.history_item_ids))

    @property
    def rows_with_target_in_history(self) -> int:
        return sum(1 for s in self.samples if s.item_id in s.history_item_ids)

    def metrics(self, prefix: str) -> dict[str, float]:
        out = {
            f"{prefix}_rows": len(self.samples),
            f"{prefix}_rows_read": self.skips.read,
            f"{prefix}_rows_repeated_history_items": self.rows_with_repeated_history_items,
            f"{prefix}_rows_target_in_history": self.rows_with_target_in_history,
        }
        out.update({f"{prefix}_skipped_{k}": v for k, v in sorted(self.skips.skipped.items())})
        return out


@dataclass
class NarrativeRows:
    """The integrated narratives CSV read; `texts` counts the texts missing or dropped, by reason;
    `has_ids` is False for a file with the SID columns only (its rows' ids are None)."""

    path: Path
    rows: list[NarrativeRow]
    row_numbers: list[int]
    skips: Skips
    texts: Counter
    has_ids: bool = True

    def metrics(self, prefix: str = "narrative") -> dict[str, float]:
        out = {
            f"{prefix}_rows": len(self.rows),
            f"{prefix}_rows_read": self.skips.read,
            f"{prefix}_history_narratives": sum(r.history_narrative is not None for r in self.rows),
            f"{prefix}_reasoning_paths": sum(r.reasoning_path is not None for r in self.rows),
        }
        out.update({f"{prefix}_skipped_{k}": v for k, v in sorted(self.skips.skipped.items())})
        out.update({f"{prefix}_{k}": v for k, v in sorted(self.texts.items())})
        return out


def _open_csv(path: Path) -> tuple[Iterator[tuple[int, int, list[str]]], list[str], Any]:
    """(iterator of (row number, start line, fields) over non-blank records, header, file handle)."""
    path = Path(path)
    if not path.is_file():
        raise ResearchDataError(f"{path}: no such file")
    if csv.field_size_limit() < CSV_FIELD_LIMIT:
        csv.field_size_limit(CSV_FIELD_LIMIT)
    fh = open(path, newline="", encoding="utf-8-sig")
    reader = csv.reader(fh)
    try:
        header = [h.strip() for h in next(reader)]
    except StopIteration:
        fh.close()
        raise ResearchDataError(f"{path}: empty file (no header row)") from None
    except (csv.Error, UnicodeDecodeError) as err:
        fh.close()
        raise ResearchDataError(f"{path}: cannot read the header row: {err}") from None
    dup = sorted({h for h in header if header.count(h) > 1})
    if dup:
        fh.close()
        raise ResearchDataError(f"{path}: column(s) {', '.join(dup)} appear more than once in the header")

    def rows() -> Iterator[tuple[int, int, list[str]]]:
        row_no, line = 0, reader.line_num
        try:
            for fields in reader:
                start, line = line + 1, reader.line_num
                if not fields or fields == [""]:
                    continue
                row_no += 1
                yield row_no, start, fields
        except (csv.Error, UnicodeDecodeError) as err:
            raise ResearchDataError(f"{path}: cannot read the CSV after line {line}: {err}") from None
        finally:
            fh.close()

    return rows(), header, fh


def _columns(path: Path, header: list[str], required: tuple[str, ...], fh: Any) -> dict[str, int]:
    missing = [c for c in required if c not in header]
    if missing:
        fh.close()
        raise ResearchDataError(f"{path}: missing column(s) {', '.join(missing)} (the header has: {', '.join(header)})")
    return {c: header.index(c) for c in header}


def _parse_ids_sids(
    fields: list[str], col: dict[str, int], check: _SidCheck
) -> tuple[str, list[int], int, list[str], str]:
    user = fields[col["user_id"]].strip()
    if not user:
        raise _Bad("missing_user_id", "user_id", "empty")
    hist = _int_list(fields[col["history_item_id"]], "history_item_id")
    if not hist:
        raise _Bad("empty_history", "history_item_id", "the history is empty")
    item = _int_field(fields[col["item_id"]], "item_id")
    sids = _sid_list(fields[col["history_item_sid"]], "history_item_sid", check)
    if len(sids) != len(hist):
        raise _Bad("length_mismatch", "history_item_sid", f"{len(sids)} SIDs for {len(hist)} history item ids")
    item_sid = fields[col["item_sid"]].strip()
    check(item_sid, "item_sid")
    return user, hist, item, sids, item_sid


def _parse_sids(fields: list[str], col: dict[str, int], check: _SidCheck) -> tuple[list[str], str]:
    sids = _sid_list(fields[col["history_item_sid"]], "history_item_sid", check)
    if not sids:
        raise _Bad("empty_history", "history_item_sid", "the history is empty")
    item_sid = fields[col["item_sid"]].strip()
    check(item_sid, "item_sid")
    return sids, item_sid


def _parse_sample(fields: list[str], col: dict[str, int], check: _SidCheck) -> Sample:
    user, hist, item, sids, item_sid = _parse_ids_sids(fields, col, check)
    titles = _text_list(fields[col["history_item_title"]], "history_item_title")
    if len(titles) != len(hist):
        raise _Bad("length_mismatch", "history_item_title", f"{len(titles)} titles for {len(hist)} history item ids")
    return Sample(user, hist, item, titles, fields[col["item_title"]], sids, item_sid)


def _read_rows(path: Path, required: tuple[str, ...], parse, max_malformed_fraction: float, header_check=None):
    rows, header, fh = _open_csv(path)
    col = _columns(path, header, required, fh)
    if header_check is not None:
        try:
            header_check(header)
        except ResearchDataError:
            fh.close()
            raise
    width = len(header)
    out, numbers, skips = [], [], Skips()
    for row_no, line, fields in rows:
        skips.read += 1
        try:
            if len(fields) != width:
                raise _Bad("field_count", "", f"{len(fields)} fields, the header has {width}")
            out.append(parse(fields, col))
            numbers.append(row_no)
        except _Bad as bad:
            where = f"row {row_no} (line {line})" + (f", field {bad.column}" if bad.column else "")
            skips.skip(bad.reason, f"{where}: {bad.detail}")
    skips.check_budget(path, max_malformed_fraction)
    return out, numbers, skips


def read_split(path: str | Path, max_malformed_fraction: float = 0.05, levels: int | None = None) -> SplitRows:
    """Read one split CSV (`<split>/<Cat>_*.csv`), columns in any order.

    A row is malformed (counted under its reason and skipped) when a list field is not a list literal
    (`unparseable_<col>`, `not_list_<col>`), an id is not a non-negative integer (`not_int_<col>`), a
    title is not a string (`not_text_<col>`), a SID is malformed or, when `levels` is given, has another
    number of levels (`bad_sid_<col>`), the history's ids, titles and SIDs differ in length
    (`length_mismatch`), the history is empty (`empty_history`), the user id is empty
    (`missing_user_id`) or the row has another number of fields than the header (`field_count`).
    """
    path = Path(path)
    check = _SidCheck(levels)
    samples, numbers, skips = _read_rows(
        path, SPLIT_COLUMNS, lambda f, c: _parse_sample(f, c, check), max_malformed_fraction
    )
    return SplitRows(path, samples, numbers, skips)


def strip_think(text: str) -> str:
    """The text after the last `</think>`, stripped, when there is one; otherwise `text` unchanged."""
    return text.split(THINK_CLOSE)[-1].strip() if THINK_CLOSE in text else text


def reasoning_text(text: str) -> str | None:
    """A reasoning path as the research code uses it: None when blank, or when it opens `<think>`
    without closing it; the text after the last `</think>` when it opens with `<think>`."""
    if not text.strip():
        return None
    if text.strip().startswith(THINK_OPEN):
        return text.split(THINK_CLOSE)[-1].strip() if THINK_CLOSE in text else None
    return text


def read_integrated_narratives(
    path: str | Path, max_malformed_fraction: float = 0.05, levels: int | None = None
) -> NarrativeRows:
    """Read the integrated narratives CSV (`research_layout.integrated_narrative_csv`): each row's user,
    history, target, history narrative (`integrated_narrative`) and reasoning path (`reasoning_path`).

    The columns history_item_sid, item_sid and at least one of the two texts are required; user_id,
    history_item_id and item_id are read when all three are there (`has_ids`), and the ids are None when
    none is (the research code reads only the SID columns and the texts); some but not all of them is an
    error. Rows are validated like `read_split` (titles are not read). Texts are counted in
    `texts`: `history_narrative_missing`, `history_narrative_empty_after_think`, `reasoning_path_missing`,
    `reasoning_path_unclosed_think` (each of these texts is None), and `reasoning_path_empty_after_think`
    (kept as "": the research code trains on it with an empty think block).
    """
    path = Path(path)
    check = _SidCheck(levels)
    texts: Counter = Counter()
    has_ids = _has_id_columns(path)

    def parse(fields: list[str], col: dict[str, int]) -> NarrativeRow:
        if has_ids:
            user, hist, item, sids, item_sid = _parse_ids_sids(fields, col, check)
        else:
            user, hist, item = None, None, None
            sids, item_sid = _parse_sids(fields, col, check)
        narrative = reasoning = None
        if "integrated_narrative" in col:
            cell = fields[col["integrated_narrative"]]
            if _missing(cell):
                texts["history_narrative_missing"] += 1
            else:
                narrative = strip_think(cell) or None
                if narrative is None:
                    texts["history_narrative_empty_after_think"] += 1
        if "reasoning_path" in col:
            cell = fields[col["reasoning_path"]]
            if _missing(cell):
                texts["reasoning_path_missing"] += 1
            else:
                reasoning = reasoning_text(cell)
                if reasoning is None:
                    texts["reasoning_path_unclosed_think"] += 1
                elif not reasoning:
                    texts["reasoning_path_empty_after_think"] += 1
        return NarrativeRow(user, hist, item, sids, item_sid, narrative, reasoning)

    def header_check(header: list[str]) -> None:
        if not any(c in header for c in NARRATIVE_COLUMNS):
            raise ResearchDataError(
                f"{path}: missing column integrated_narrative and reasoning_path (one at least "
                f"is needed; the header has: {', '.join(header)})"
            )

    required = ID_SID_COLUMNS if has_ids else SID_COLUMNS
    out, numbers, skips = _read_rows(path, required, parse, max_malformed_fraction, header_check)
    # Texts of rows skipped as malformed are not counted: parse raised before reaching them.
    return NarrativeRows(path, out, numbers, skips, texts, has_ids)


def _has_id_columns(path: Path) -> bool:
    """Whether the narrative CSV's header has the id columns: all of them (True) or none (False)."""
    _, header, fh = _open_csv(path)
    fh.close()
    present = [c for c in ID_COLUMNS if c in header]
    if present and len(present) < len(ID_COLUMNS):
        missing = [c for c in ID_COLUMNS if c not in header]
        raise ResearchDataError(
            f"{path}: missing column(s) {', '.join(missing)} (the header has: {', '.join(header)}); a narrative "
            f"file has all of {', '.join(ID_COLUMNS)} or none of them (then its rows are known by "
            f"{' and '.join(SID_COLUMNS)}, as the research code reads them)"
        )
    return bool(present)


# ---------------------------------------------------------------- JSON files


def _load_json_object(path: str | Path, what: str) -> tuple[Path, dict]:
    path = Path(path)
    if not path.is_file():
        raise ResearchDataError(f"{path}: no such file")

    def pairs(items: list[tuple[str, Any]]) -> dict:
        obj = dict(items)
        if len(obj) != len(items):
            dup = sorted({k for k, _ in items if sum(1 for k2, _ in items if k2 == k) > 1})[:5]
            raise ResearchDataError(f"{path}: key(s) {', '.join(map(repr, dup))} appear more than once")
        return obj

    try:
        obj = json.loads(path.read_bytes(), object_pairs_hook=pairs)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ResearchDataError(f"{path}: not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise ResearchDataError(f"{path}: expected a JSON object of {what}, got {type(obj).__name__}")
    return path, obj


def _item_key(path: Path, key: str) -> int:
    if not (key.isascii() and key.isdigit()) or str(int(key)) != key:
        raise ResearchDataError(f"{path}: item id {key!r} is not a non-negative integer written plainly")
    return int(key)


@dataclass
class SidIndex:
    """A SID index read: item id -> its codes; items sharing a SID are reported, never dropped."""

    path: Path
    codes: dict[int, list[str]]
    levels: int
    duplicates: dict[str, list[int]]  # SID -> the items that share it (only SIDs held by 2+ items)

    @property
    def colliding_items(self) -> int:
        return sum(len(v) for v in self.duplicates.values())

    def sid(self, item_id: int) -> str:
        return "".join(self.codes[item_id])

    def metrics(self, prefix: str = "sid") -> dict[str, float]:
        return {
            f"{prefix}_items": len(self.codes),
            f"{prefix}_levels": self.levels,
            f"{prefix}_duplicate_sids": len(self.duplicates),
            f"{prefix}_colliding_items": self.colliding_items,
        }


def read_sid_index(path: str | Path, levels: int | None = None) -> SidIndex:
    """Read and validate a SID index (`research_layout.index_json`): item id -> `["<a_60>", "<b_159>", "<c_203>"]`.

    Every item must have the same number of codes (`levels` when given), each well-formed with the
    level letters in order a, b, c, ...; errors name the file, the item id and the code.
    """
    path, obj = _load_json_object(path, "item id -> SID codes")
    if not obj:
        raise ResearchDataError(f"{path}: the index is empty")
    codes: dict[int, list[str]] = {}
    by_sid: dict[str, list[int]] = {}
    expected = levels
    for key, value in obj.items():
        item = _item_key(path, key)
        if not isinstance(value, list) or not value:
            raise ResearchDataError(f"{path}: item {key}: expected a non-empty list of codes, got {_snippet(value)}")
        if expected is None:
            expected = len(value)
        if len(value) != expected:
            raise ResearchDataError(
                f"{path}: item {key} has {len(value)} codes {value}, expected {expected}"
                + (f" (levels={levels})" if levels is not None else " (as the first item)")
            )
        for level, code in enumerate(value):
            match = _CODE.fullmatch(code) if isinstance(code, str) else None
            if match is None:
                raise ResearchDataError(f"{path}: item {key}: code {level + 1} {_snippet(code)} is not like <a_12>")
            if match.group(1) != _LETTERS[level]:
                raise ResearchDataError(
                    f"{path}: item {key}: code {level + 1} {code} should be level "
                    f"{_LETTERS[level]!r} (<{_LETTERS[level]}_N>)"
                )
        codes[item] = list(value)
        by_sid.setdefault("".join(value), []).append(item)
    duplicates = {sid: items for sid, items in by_sid.items() if len(items) > 1}
    return SidIndex(path, codes, expected, duplicates)


class Item(NamedTuple):
    """One entry of the item texts file. `description` holds its texts: a list literal's non-blank strings,
    a plain string as one text, an unparseable list literal as one text (as the research code keeps it)."""

    title: str
    description: list[str]
    brand: str
    categories: list[str]


def research_description(item: Item) -> str:
    """The description the research code's item tasks use: the longest text (the first of equal length),
    else the title."""
    return max(item.description, key=len) if item.description else item.title


def _description(value: Any, counts: Counter) -> list[str]:
    if value is None:
        value = ""
    if isinstance(value, str):
        if value.startswith("[") and value.endswith("]"):  # the research code's test, unstripped
            try:
                parsed = ast.literal_eval(value)
            except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
                counts["description_unparsed_list"] += 1
                return [value]
            value = parsed if isinstance(parsed, list) else [value]
        else:
            value = [value] if value.strip() else []
    if not isinstance(value, list):
        counts["description_not_text"] += 1
        return []
    texts = [v for v in value if isinstance(v, str) and v.strip()]
    if any(not isinstance(v, str) for v in value):
        counts["description_non_text_parts"] += 1
    if not texts:
        counts["description_empty"] += 1
    return texts


def _counted(prefix: str, counts: Counter) -> dict[str, float]:
    """A reader's counts as metrics: `<prefix>_<what>`, sorted."""
    return {f"{prefix}_{k}": v for k, v in sorted(counts.items())}


def _categories(value: Any) -> list[str]:
    if isinstance(value, list):
        return [v.strip() for v in value if isinstance(v, str) and v.strip()]
    if isinstance(value, str):
        return [c.strip() for c in value.split(",") if c.strip()]
    return []


@dataclass
class Items:
    """The item texts file read; `counts` says how many descriptions were empty, unparsed, ..."""

    path: Path
    items: dict[int, Item]
    counts: Counter

    def metrics(self, prefix: str = "items") -> dict[str, float]:
        return {f"{prefix}": len(self.items), **_counted(prefix, self.counts)}


def read_items(path: str | Path) -> Items:
    """Read the item texts (`research_layout.item_json`): item id -> {"title", "description", "brand", "categories"}.

    A missing or non-string title is an error naming the item. Descriptions become lists of texts
    (see `Item`); brand and categories are optional (categories: a list or a comma-joined string).
    """
    path, obj = _load_json_object(path, "item id -> item fields")
    counts: Counter = Counter()
    items: dict[int, Item] = {}
    for key, value in obj.items():
        item = _item_key(path, key)
        if not isinstance(value, dict):
            raise ResearchDataError(f"{path}: item {key}: expected an object, got {_snippet(value)}")
        title = value.get("title")
        if not isinstance(title, str):
            raise ResearchDataError(
                f"{path}: item {key}: field title is "
                f"{'missing' if title is None else 'not a string: ' + _snippet(title)}"
            )
        if not title.strip():
            counts["empty_title"] += 1
        brand = value.get("brand")
        items[item] = Item(
            title,
            _description(value.get("description"), counts),
            brand if isinstance(brand, str) else "",
            _categories(value.get("categories")),
        )
    return Items(path, items, counts)


class InfoLine(NamedTuple):
    sid: str
    title: str
    item_id: int


def read_info(path: str | Path) -> list[InfoLine]:
    """Read the catalogue (`info/<Cat>_*.txt`: `SID<TAB>title<TAB>item id` per line; the evaluation's).
    The title is everything between the first and the last tab; a malformed line is an error naming it."""
    path = Path(path)
    if not path.is_file():
        raise ResearchDataError(f"{path}: no such file")
    out = []
    with open(path, encoding="utf-8-sig") as fh:
        for line_no, line in enumerate(fh, start=1):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            sid, _, rest = line.partition("\t")
            title, _, item = rest.rpartition("\t")
            if not rest or "\t" not in rest:
                raise ResearchDataError(
                    f"{path}: line {line_no}: expected SID<TAB>title<TAB>item id, got {_snippet(line)}"
                )
            if sid_levels(sid.strip()) is None:
                raise ResearchDataError(f"{path}: line {line_no}: {_snippet(sid)} is not a SID")
            if not (item.strip().isascii() and item.strip().isdigit()):
                raise ResearchDataError(f"{path}: line {line_no}: item id {_snippet(item)} is not an integer")
            out.append(InfoLine(sid.strip(), title, int(item)))
    return out


@dataclass
class ItemNarratives:
    """The item narratives file read: item id -> narrative (`llm_stage2`, after `</think>`), file order."""

    path: Path
    texts: dict[int, str]
    counts: Counter

    def metrics(self, prefix: str = "item_narratives") -> dict[str, float]:
        return {f"{prefix}": len(self.texts), **_counted(prefix, self.counts)}


def read_item_narratives(path: str | Path) -> ItemNarratives:
    """Read the item narratives file (`research_layout.item_narratives_json`: item id -> {..., "llm_stage2": text}).

    Entries without `llm_stage2` (`missing_llm_stage2`), with a non-string one (`not_text`) or with no
    text left after `</think>` (`empty`) are counted and skipped; `think_stripped` counts the texts cut
    at `</think>`.
    """
    path, obj = _load_json_object(path, "item id -> item narrative fields")
    counts: Counter = Counter()
    texts: dict[int, str] = {}
    for key, value in obj.items():
        item = _item_key(path, key)
        if not isinstance(value, dict) or "llm_stage2" not in value:
            counts["missing_llm_stage2"] += 1
            continue
        text = value["llm_stage2"]
        if not isinstance(text, str):
            counts["not_text"] += 1
            continue
        if THINK_CLOSE in text:
            counts["think_stripped"] += 1
        text = strip_think(text)
        if not text.strip():
            counts["empty"] += 1
            continue
        texts[item] = text
    return ItemNarratives(path, texts, counts)


# ---------------------------------------------------------------- general reasoning chats


@dataclass
class GeneralReasoning:
    """General reasoning chats: each a list of {"role", "content"} with string content.

    `skips` counts the lines dropped as malformed (out of `skips.read` non-blank lines); `counts` the
    normalisations (`multi_part_content`, `non_text_part`, `none_content`) and, after sampling,
    `no_assistant` (conversations dropped for having no assistant message)."""

    path: Path
    conversations: list[list[dict[str, str]]]
    skips: Skips
    counts: Counter
    sampled: int  # conversations drawn before dropping those without an assistant message

    def metrics(self, prefix: str = "general") -> dict[str, float]:
        out = {
            f"{prefix}_conversations": len(self.conversations),
            f"{prefix}_lines_read": self.skips.read,
            f"{prefix}_sampled": self.sampled,
        }
        out.update({f"{prefix}_skipped_{k}": v for k, v in sorted(self.skips.skipped.items())})
        out.update(_counted(prefix, self.counts))
        return out


def _content(value: Any, counts: Counter) -> str:
    if value is None:
        counts["none_content"] += 1
        return ""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        texts = []
        for part in value:
            if isinstance(part, dict) and part.get("type", "text") == "text" and isinstance(part.get("text"), str):
                texts.append(part["text"])
            elif isinstance(part, str):
                texts.append(part)
            else:
                counts["non_text_part"] += 1
        if len(texts) > 1:
            counts["multi_part_content"] += 1
        if texts:
            return "\n".join(texts)
    raise _Bad("bad_content", "messages", f"content is not text: {_snippet(value)}")


def _conversation(messages: Any, counts: Counter) -> list[dict[str, str]]:
    if isinstance(messages, str):
        try:
            messages = json_or_literal(messages)
        except ValueError:
            raise _Bad("unparseable_messages", "messages", f"not a list literal: {_snippet(messages)}") from None
    if not isinstance(messages, list):
        raise _Bad("not_list_messages", "messages", f"not a list of messages: {_snippet(messages)}")
    if not messages:
        raise _Bad("empty_messages", "messages", "no messages")
    out = []
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("role"), str) or "content" not in m:
            raise _Bad("bad_message", "messages", f"a message without role/content: {_snippet(m)}")
        out.append({"role": m["role"], "content": _content(m["content"], counts)})
    return out


def _general_records(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, the line's `messages` value, or a _Bad) for JSON lines; rows for an Arrow IPC file."""
    with open(path, "rb") as fh:
        magic = fh.read(6)
    if magic.startswith(ARROW_MAGIC):
        import pyarrow as pa

        with open(path, "rb") as fh:
            try:
                reader = pa.ipc.open_file(fh) if magic == ARROW_MAGIC[0] else pa.ipc.open_stream(fh)
                table = reader.read_all()
            except pa.ArrowInvalid as err:
                raise ResearchDataError(f"{path}: not a readable Arrow file: {err}") from None
        if "messages" not in table.column_names:
            raise ResearchDataError(f"{path}: no column messages (columns: {', '.join(table.column_names)})")
        yield from enumerate(table.column("messages").to_pylist(), start=1)
        return
    with open(path, "rb") as fh:
        for line_no, raw in enumerate(fh, start=1):
            if line_no == 1 and raw.startswith(UTF8_BOM):  # orjson rejects a byte-order mark
                raw = raw[len(UTF8_BOM) :]
            if not raw.strip():
                continue
            text = _snippet(raw.decode("utf-8", "replace"))
            try:
                obj = orjson.loads(raw)
            except orjson.JSONDecodeError:
                yield line_no, _Bad("not_json", "", f"not a JSON line: {text}")
                continue
            if not isinstance(obj, dict) or "messages" not in obj:
                yield line_no, _Bad("missing_messages", "messages", f"no messages field: {text}")
                continue
            yield line_no, obj["messages"]


def _last_assistant(conversation: list[dict[str, str]]) -> str:
    """The last assistant message's content (the research code's training target), "" when none."""
    return next((m["content"] for m in reversed(conversation) if m["role"] == "assistant"), "")


def read_general_reasoning(
    path: str | Path, sample: int = -1, seed: int = 0, max_malformed_fraction: float = 0.05
) -> GeneralReasoning:
    """Read the general reasoning chats (`research_layout.GENERAL_REASONING`): JSON lines whose `messages`
    field is a string holding a list of chat messages (Python or JSON literal; an Arrow IPC file with a
    `messages` column is read too).

    Content is normalised to a string: a list of parts becomes its text parts joined by newlines.
    Malformed lines (`not_json`, `missing_messages`, `unparseable_messages`, `not_list_messages`,
    `empty_messages`, `bad_message`, `bad_content`) are counted and skipped; above `max_malformed_fraction`
    the read fails naming the file and the first bad line. With `sample > 0`, `sample` conversations are
    drawn with `random.Random(seed).sample` (all of them, in file order, when there are not more); then
    those whose last assistant message is missing or empty are dropped (`no_assistant`).
    """
    path = Path(path)
    if not path.is_file():
        raise ResearchDataError(f"{path}: no such file")
    skips, counts, convs = Skips(), Counter(), []
    for line_no, value in _general_records(path):
        skips.read += 1
        try:
            if isinstance(value, _Bad):
                raise value
            convs.append(_conversation(value, counts))
        except _Bad as bad:
            skips.skip(bad.reason, f"line {line_no}: {bad.detail}")
    if skips.read and not convs:
        raise ResearchDataError(f"{path}: no usable line among {skips.read}; first: {skips.first_bad}")
    skips.check_budget(path, max_malformed_fraction, unit="lines")
    if 0 < sample < len(convs):
        convs = random.Random(seed).sample(convs, sample)
    sampled = len(convs)
    kept = [c for c in convs if _last_assistant(c)]
    if len(kept) < sampled:
        counts["no_assistant"] = sampled - len(kept)
    return GeneralReasoning(path, kept, skips, counts, sampled)


# ---------------------------------------------------------------- cross-file checks


@dataclass
class Consistency:
    """How the split rows agree with the SID index and the item texts (ids missing there are errors instead)."""

    sid_mismatch_rows: int = 0  # rows whose target or history SID differs from the index's
    title_mismatch_rows: int = 0  # rows whose target or history title differs from the item texts'
    index_items_without_meta: int = 0  # index items absent from the item texts
    info_mismatch_lines: int = 0  # info lines whose item is not in the index or whose SID differs from it
    first_sid_mismatch: str = ""
    first_title_mismatch: str = ""

    def metrics(self, prefix: str = "consistency") -> dict[str, float]:
        return {
            f"{prefix}_sid_mismatch_rows": self.sid_mismatch_rows,
            f"{prefix}_title_mismatch_rows": self.title_mismatch_rows,
            f"{prefix}_index_items_without_meta": self.index_items_without_meta,
            f"{prefix}_info_mismatch_lines": self.info_mismatch_lines,
        }


def check_item_ids(
    splits: dict[str, SplitRows],
    index: SidIndex | None,
    items: Items | None,
    narratives: NarrativeRows | None = None,
    info: list[InfoLine] | None = None,
) -> Consistency:
    """Every item id of the splits (and of the narrative rows, when they have ids) must be in the SID index and
    the item texts: else a ResearchDataError naming the file, the row, the field and the id. SIDs and titles
    that differ from theirs are counted, with the first of each described; so are info lines that disagree
    with the index."""
    out = Consistency()
    if index is not None and items is not None:
        out.index_items_without_meta = sum(1 for i in index.codes if i not in items.items)
    if index is not None and info is not None:
        out.info_mismatch_lines = sum(1 for x in info if x.item_id not in index.codes or index.sid(x.item_id) != x.sid)
    tables: list[tuple[Path, list, list[int]]] = [(s.path, s.samples, s.row_numbers) for s in splits.values()]
    if narratives is not None and narratives.has_ids:  # a file without ids is matched by its SIDs instead
        tables.append((narratives.path, narratives.rows, narratives.row_numbers))
    for path, rows, numbers in tables:
        for row_no, row in zip(numbers, rows, strict=True):
            ids = [("item_id", row.item_id)] + [("history_item_id", h) for h in row.history_item_ids]
            for name, ref in (("index", index.codes if index else None), ("items", items.items if items else None)):
                if ref is None:
                    continue
                for column, item in ids:
                    if item not in ref:
                        source = index.path if name == "index" else items.path
                        raise ResearchDataError(f"{path}: row {row_no}, field {column}: item {item} is not in {source}")
            if index is not None:
                want = [index.sid(row.item_id)] + [index.sid(h) for h in row.history_item_ids]
                got = [row.item_sid] + list(row.history_sids)
                if want != got:
                    out.sid_mismatch_rows += 1
                    if not out.first_sid_mismatch:
                        k = next(n for n, (a, b) in enumerate(zip(want, got, strict=True)) if a != b)
                        out.first_sid_mismatch = (
                            f"{path}: row {row_no}: item {ids[k][1]} has SID {got[k]} here, {want[k]} in {index.path}"
                        )
            if items is not None and isinstance(row, Sample):
                want = [items.items[row.item_id].title] + [items.items[h].title for h in row.history_item_ids]
                got = [row.item_title] + list(row.history_titles)
                if want != got:
                    out.title_mismatch_rows += 1
                    if not out.first_title_mismatch:
                        k = next(n for n, (a, b) in enumerate(zip(want, got, strict=True)) if a != b)
                        out.first_title_mismatch = (
                            f"{path}: row {row_no}: item {ids[k][1]} has title "
                            f"{_snippet(got[k])} here, {_snippet(want[k])} in {items.path}"
                        )
    return out


# ---------------------------------------------------------------- everything at once


@dataclass
class ResearchBundle:
    files: BundleFiles
    splits: dict[str, SplitRows]
    index: SidIndex | None
    items: Items | None
    info: list[InfoLine] | None
    item_narratives: ItemNarratives | None
    narratives: NarrativeRows | None
    general: GeneralReasoning | None
    consistency: Consistency
    metrics: dict[str, float]


def read_bundle(
    folder: str | Path,
    category: str,
    *,
    levels: int | None = None,
    max_malformed_fraction: float = 0.05,
    general_sample: int = -1,
    seed: int = 0,
) -> ResearchBundle:
    """Find and read every file of `category` in `folder`, check the item ids across files, and collect
    flat metrics (rows, skips by reason, duplicates, text counts). Absent optional files are None."""
    files = find_bundle(folder, category)
    index = read_sid_index(files.index, levels) if files.index else None
    levels = index.levels if index is not None else levels
    splits = {s: read_split(p, max_malformed_fraction, levels) for s, p in files.splits.items()}
    items = read_items(files.items) if files.items else None
    info = read_info(files.info) if files.info else None
    item_narratives = read_item_narratives(files.item_narratives) if files.item_narratives else None
    narratives = (
        read_integrated_narratives(files.integrated_narratives, max_malformed_fraction, levels)
        if files.integrated_narratives
        else None
    )
    general = (
        read_general_reasoning(files.general_reasoning, general_sample, seed, max_malformed_fraction)
        if files.general_reasoning
        else None
    )
    consistency = check_item_ids(splits, index, items, narratives, info)
    metrics: dict[str, float] = {}
    for s, rows in splits.items():
        metrics.update(rows.metrics(s))
    for part in (index, items, item_narratives, narratives, general):
        if part is not None:
            metrics.update(part.metrics())
    if info is not None:
        metrics["info_lines"] = len(info)
    metrics.update(consistency.metrics())
    return ResearchBundle(files, splits, index, items, info, item_narratives, narratives, general, consistency, metrics)
