"""What every teacher reads: item metadata with SIDs, the catalogue, and train-split statistics."""

from __future__ import annotations

import functools
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from sidreasoner.artifacts import Dataset, SidIndex

_SERIES = re.compile(
    r"\s*(?:\b(?:vol\.?|volume|part|book|edition|chapter|season|level|gen|generation|series|expansion|"
    r"collection|size|no\.?|episode|issue)\s*)?#?\d+\s*$",
    re.IGNORECASE,
)


def series_of(title: str) -> str | None:
    """'Acme Gel Pen Vol. 3' -> 'Acme Gel Pen'; None when the title carries no trailing installment number."""
    stripped = _SERIES.sub("", title).strip(" -,:")
    return stripped if stripped and stripped != title.strip() else None


@dataclass(frozen=True)
class Item:
    item_id: int
    sid: str
    title: str
    brand: str
    categories: tuple[str, ...]
    description: str

    @property
    def main_category(self) -> str | None:
        """The category under the dataset root (Amazon lists the root first), else the only one."""
        cats = [c for c in self.categories if c]
        if len(cats) >= 2:
            return cats[1]
        return cats[0] if cats else None

    @property
    def fine_category(self) -> str | None:
        cats = [c for c in self.categories if c]
        return cats[-1] if cats else None

    @functools.cached_property
    def series(self) -> str | None:
        return series_of(self.title)


@dataclass
class Context:
    category: str
    items: list[Item]
    catalogue: frozenset[str]
    next_counts: dict[int, Counter] = field(default_factory=dict)  # item -> Counter(item bought next)
    prev_counts: dict[int, Counter] = field(default_factory=dict)  # item -> Counter(item bought before)
    popularity: Counter = field(default_factory=Counter)  # item -> times it is a training target

    def top_next(self, item_id: int, k: int = 2) -> list[tuple[int, int]]:
        counts = self.next_counts.get(item_id)
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k] if counts else []

    def top_prev(self, item_id: int, k: int = 1) -> list[tuple[int, int]]:
        counts = self.prev_counts.get(item_id)
        return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:k] if counts else []


def _clean(text) -> str:
    return " ".join(str(text).split()) if text is not None else ""


def load_context(dataset: Dataset | Path, sid_index: SidIndex | Path) -> tuple[Context, pa.Table]:
    """Items with SIDs, the catalogue and next-item statistics of the train split; also the train table."""
    dataset, sid_index = Dataset.at(dataset), SidIndex.at(sid_index)
    table = dataset.items_table().to_pylist()
    index = sid_index.index()
    catalogue = frozenset(sid_index.catalogue())
    items: list[Item] = []
    for pos, row in enumerate(table):
        item_id = int(row["item_id"])
        if item_id != pos:
            raise dataset.problem(Dataset.ITEMS, f"item_id must be 0..N-1 in order, row {pos} has {item_id}")
        tokens = index.get(item_id)
        if not tokens:
            raise sid_index.problem(SidIndex.INDEX, f"no SID for item_id {item_id}")
        sid = "".join(tokens)
        if sid not in catalogue:
            raise sid_index.problem(SidIndex.CATALOGUE, f"SID {sid} of item {item_id} is not in the catalogue")
        items.append(
            Item(
                item_id,
                sid,
                _clean(row.get("title")),
                _clean(row.get("brand")),
                tuple(_clean(c) for c in (row.get("categories") or [])),
                _clean(row.get("description")),
            )
        )
    category = dataset.category()
    train = dataset.split_table("train")
    ctx = Context(category, items, catalogue)
    nxt: dict[int, Counter] = defaultdict(Counter)
    prv: dict[int, Counter] = defaultdict(Counter)
    # Sliding windows overlap: each consecutive pair of a user's sequence is (history[-1], target)
    # of exactly one sample, so counting only that pair counts every transition once.
    for hist, target in zip(train["history_item_ids"].to_pylist(), train["item_id"].to_pylist(), strict=True):
        ctx.popularity[target] += 1
        if hist:
            nxt[hist[-1]][target] += 1
            prv[target][hist[-1]] += 1
    ctx.next_counts, ctx.prev_counts = dict(nxt), dict(prv)
    return ctx, train
