"""RawData: the download-data step's output, the raw files of a source and the manifest that describes them."""

from __future__ import annotations

from typing import Any

from sidreasoner.artifacts.base import Artifact


class RawData(Artifact):
    kind = "raw data"
    kfp_type = "Dataset"
    writer = "download-data"

    MANIFEST = "manifest.json"  # which files hold reviews and metadata, their format, sizes and sha256
    BUNDLE = "bundle"  # format research: the research bundle's files, under their names in the bundle

    # Formats interactions and recbole: a shop's export, copied under its own names. Each table is one file
    # `<stem><suffix>` or a folder `<stem>/` of part files (Spark, BigQuery, Snowflake exports).
    EVENTS_TABLE = "interactions"
    ITEMS_TABLE = "items"
    TABLE_SUFFIXES = (".parquet", ".csv", ".csv.gz", ".jsonl", ".jsonl.gz", ".json", ".json.gz")
    RECBOLE_EVENTS = ".inter"
    RECBOLE_ITEMS = ".item"
    # A Hugging Face dataset's two tables, written as one Parquet file each.
    HF_TABLE_FILES = {EVENTS_TABLE: f"{EVENTS_TABLE}.parquet", ITEMS_TABLE: f"{ITEMS_TABLE}.parquet"}

    @classmethod
    def table_kind(cls, name: str) -> str | None:
        """parquet | csv | json for a table file name (part files: `.snappy.parquet`, `.csv.gz`), else None."""
        base = name.rsplit("/", 1)[-1].removesuffix(".gz")
        if base.startswith(("_", ".")):  # _SUCCESS, .crc and other writers' side files
            return None
        for suffix, kind in ((".parquet", "parquet"), (".csv", "csv"), (".jsonl", "json"), (".json", "json")):
            if base.endswith(suffix):
                return kind
        if name.endswith((cls.RECBOLE_EVENTS, cls.RECBOLE_ITEMS)):
            return "recbole"
        return None

    @classmethod
    def table_files(cls, names: list[str], fmt: str, stem: str) -> list[str]:
        """Of a source folder's relative file names, those of one table: `stem` is `interactions`/`items`
        (format interactions: `<stem><suffix>`, or the part files under `<stem>/`, sorted), or for recbole the
        dataset name (`<stem>.inter` / `<stem>.item`, chosen by the caller)."""
        if fmt == "recbole":
            return [stem] if stem in names else []
        for suffix in cls.TABLE_SUFFIXES:
            if stem + suffix in names:
                return [stem + suffix]
        return sorted(n for n in names if n.startswith(stem + "/") and cls.table_kind(n) not in (None, "recbole"))

    def manifest(self) -> dict[str, Any]:
        return self.read_json(self.MANIFEST, "what the folder holds")

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.write_json(self.MANIFEST, manifest)
