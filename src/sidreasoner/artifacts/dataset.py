"""Dataset: the preprocess step's output (items, users, interactions, the three sample splits, stats), the
research bundle's files it was imported from (`bundle/`), and its research-layout item file."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

import sidreasoner.artifacts.research_layout as research_layout
from sidreasoner.artifacts.base import Artifact, ArtifactFileMissing
from sidreasoner.io import atomic_file, file_name_problem

SPLITS = ("train", "valid", "test")


class Dataset(Artifact):
    kind = "dataset"
    kfp_type = "Dataset"
    writer = "preprocess"

    ITEMS = "items.parquet"  # item_id (0..N-1 in order), asin, title, description, brand, categories[, category]
    CATEGORY_COLUMN = "category"  # only in a dataset of several categories: the one each item was kept from
    USERS = "users.parquet"  # user_id, raw_user_id
    INTERACTIONS = "interactions.parquet"  # user_id, item_id, timestamp, rating
    STATS = "stats.json"  # category, format, source, metrics, data_config
    BUNDLE = "bundle"  # a research bundle's files, kept for the steps that import them
    BUNDLE_SID_INDEX = "bundle/sid_index.json"
    BUNDLE_ITEM_NARRATIVES = "bundle/item_narratives.parquet"
    BUNDLE_SAMPLE_NARRATIVES = "bundle/sample_narratives.parquet"
    BUNDLE_GENERAL = "bundle/general.jsonl"
    BUNDLE_RECORD = "bundle/import.json"

    @staticmethod
    def sample_schema():
        """The Parquet schema of a sample split: user_id, history_item_ids (oldest first), item_id, timestamp."""
        import pyarrow as pa

        return pa.schema(
            [
                ("user_id", pa.int64()),
                ("history_item_ids", pa.list_(pa.int64())),
                ("item_id", pa.int64()),
                ("timestamp", pa.int64()),
            ]
        )

    @staticmethod
    def split_file(split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: one of {', '.join(SPLITS)}")
        return f"{split}.parquet"

    @staticmethod
    def research_item_file(category: str) -> str:
        return f"{research_layout.FOLDER}/{research_layout.item_json(category)}"

    # ------------------------------------------------------------ readers

    def items(self, columns: Sequence[str] | None = None):
        """The item table as a pandas DataFrame."""
        return self.read_frame(self.ITEMS, columns, "the item table")

    def items_table(self, columns: Sequence[str] | None = None):
        return self.read_table(self.ITEMS, columns, "the item table")

    def num_items(self) -> int:
        return self.num_rows(self.ITEMS, "the item table")

    def titles(self) -> dict[int, str]:
        items = self.items_table(["item_id", "title"])
        return dict(zip(items["item_id"].to_pylist(), map(str, items["title"].to_pylist()), strict=True))

    def item_categories(self) -> dict[int, str]:
        """item_id -> its category in a dataset of several categories (data.category a list); {} otherwise."""
        import pyarrow.parquet as pq

        if self.CATEGORY_COLUMN not in pq.read_schema(self.require(self.ITEMS, "the item table")).names:
            return {}
        items = self.items_table(["item_id", self.CATEGORY_COLUMN])
        return dict(zip(items["item_id"].to_pylist(), items[self.CATEGORY_COLUMN].to_pylist(), strict=True))

    def split(self, name: str, columns: Sequence[str] | None = None):
        """One sample split (train, valid or test) as a pandas DataFrame."""
        return self.read_frame(self.split_file(name), columns, f"the {name} samples")

    def split_table(self, name: str, columns: Sequence[str] | None = None):
        return self.read_table(self.split_file(name), columns, f"the {name} samples")

    def interactions(self, columns: Sequence[str] | None = None):
        return self.read_frame(self.INTERACTIONS, columns, "the interactions")

    def stats(self) -> dict[str, Any]:
        return self.read_json(self.STATS, "the dataset's record: category, source, counts")

    def category(self) -> str:
        """The category the dataset was made from, as its stats record it (preprocess and the research import
        write it): it names the research-layout files of the steps that read the dataset."""
        category = self.stats().get("category")
        problem = file_name_problem(category)
        if problem:
            raise self.problem(self.STATS, f"the category {problem}")
        return category

    def has_stats(self) -> bool:
        return self.has(self.STATS)

    def bundle_file(self, name: str, what: str) -> Path:
        """A file kept from the research bundle the dataset was imported from; the error says how to get one."""
        path = self.file(name)
        if not path.is_file():
            made_from = self.stats().get("format") if self.has_stats() else None
            why = (
                "the bundle has no such file"
                if made_from == "research"
                else "the dataset was not made from a research bundle "
                "(set data.format=research and data.source to the bundle)"
            )
            raise ArtifactFileMissing(
                f"{self.kind} {self.path}: {name} ({what}) not found, so it cannot be imported: {why}"
            )
        return path

    def general_chats(self) -> Path | None:
        """The general-reasoning chats kept from a research bundle, or None."""
        path = self.file(self.BUNDLE_GENERAL)
        return path if path.is_file() else None

    # ------------------------------------------------------------ writers

    def write_items(self, table) -> None:
        self.write_table(self.ITEMS, table)

    def write_users(self, table) -> None:
        self.write_table(self.USERS, table)

    def write_interactions(self, table) -> None:
        self.write_table(self.INTERACTIONS, table)

    def write_split(self, name: str, table) -> None:
        self.write_table(self.split_file(name), table)

    @contextlib.contextmanager
    def split_writer(self, name: str, schema) -> Iterator:
        """A pyarrow ParquetWriter on one sample split, for writing it in row batches (call inside `writing`)."""
        import pyarrow.parquet as pq

        with pq.ParquetWriter(self.file(self.split_file(name)), schema) as writer:
            yield writer

    def write_research_items(self, category: str, items: dict[str, dict[str, str]]) -> None:
        """The research-layout item file: item id -> {"title", "description"}."""
        self._write_bytes(self.research_item_file(category), orjson.dumps(items, option=orjson.OPT_INDENT_2))

    def write_bundle_sid_index(self, index: dict[str, list[str]]) -> None:
        """The imported SID index: dataset item id -> SID codes, ids in numeric order."""
        ordered = dict(sorted(index.items(), key=lambda kv: int(kv[0])))
        self._write_bytes(self.BUNDLE_SID_INDEX, orjson.dumps(ordered))

    def write_bundle_item_narratives(self, table) -> None:
        """item_id, narrative."""
        self.write_table(self.BUNDLE_ITEM_NARRATIVES, table)

    def write_bundle_sample_narratives(self, table) -> None:
        """sample (train row), history_narrative, reasoning_path."""
        self.write_table(self.BUNDLE_SAMPLE_NARRATIVES, table)

    def write_bundle_general(self, chats: Iterable[list]) -> None:
        """The general-reasoning chats, one `{"messages": [...]}` per line."""
        with atomic_file(self.file(self.BUNDLE_GENERAL)) as tmp, open(tmp, "wb") as fh:
            for chat in chats:
                fh.write(orjson.dumps({"messages": chat}) + b"\n")

    def write_bundle_record(self, record: dict[str, Any]) -> None:
        """Where the bundle came from, which of its files were read, what was counted."""
        self.write_json(self.BUNDLE_RECORD, record)

    def _write_bytes(self, name: str, data: bytes) -> None:
        with atomic_file(self.file(name)) as tmp:
            Path(tmp).write_bytes(data)

    def write_stats(self, stats: dict[str, Any]) -> None:
        self.write_json(self.STATS, stats)
