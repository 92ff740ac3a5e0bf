"""Corpus: the synthesize-corpus step's output, the teacher's item narratives, history narratives and
reasoning paths, what was rejected, and the research-code layout of the same texts (`research/`)."""

from __future__ import annotations

import csv
from collections.abc import Iterable, Sequence
from typing import Any

import sidreasoner.artifacts.research_layout as research_layout
from sidreasoner.artifacts.base import Artifact
from sidreasoner.io import atomic_file


class Corpus(Artifact):
    kind = "corpus"
    kfp_type = "Dataset"
    writer = "synthesize-corpus"

    ITEMS = "items.parquet"  # item_id, sid, narrative (accepted item narratives)
    SAMPLES = "samples.parquet"  # sample (row of the train split), user_id, history, target, texts
    REJECTED = "rejected.parquet"  # kind, key, reason, detail, text
    META = "meta.json"  # teacher kind/model/params, templated, counts, metrics
    # the research layout's sample file: ids and SIDs, then the texts (the path before the narrative)
    INTEGRATED_COLUMNS = (*research_layout.ID_SID_COLUMNS, "reasoning_path", "integrated_narrative")

    @staticmethod
    def research_item_narratives_file(category: str) -> str:
        return f"{research_layout.FOLDER}/{research_layout.item_narratives_json(category)}"

    @staticmethod
    def research_integrated_file(category: str) -> str:
        return f"{research_layout.FOLDER}/{research_layout.integrated_narrative_csv(category)}"

    def items(self, columns=None):
        return self.read_frame(self.ITEMS, columns, "item narratives")

    def has_items(self) -> bool:
        return self.has(self.ITEMS)

    def samples(self, columns=None):
        return self.read_frame(self.SAMPLES, columns, "history narratives and reasoning paths")

    def has_samples(self) -> bool:
        return self.has(self.SAMPLES)

    def meta(self) -> dict[str, Any]:
        return self.read_json(self.META, "the teacher's record")

    def write_items(self, table) -> None:
        """item_id, sid, narrative."""
        self.write_table(self.ITEMS, table)

    def write_samples(self, table) -> None:
        """sample, user_id, history_item_ids, item_id, history_narrative, reasoning_path."""
        self.write_table(self.SAMPLES, table)

    def write_rejected(self, table) -> None:
        """kind, key, reason, detail, text."""
        self.write_table(self.REJECTED, table)

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.write_json(self.META, meta)

    def write_research_item_narratives(self, category: str, items: dict[str, dict[str, Any]]) -> None:
        """item id -> {"title", "description", "sid", "llm_stage2": narrative}, indented as the research code's."""
        import orjson

        with atomic_file(self.file(self.research_item_narratives_file(category))) as tmp:
            tmp.write_bytes(orjson.dumps(items, option=orjson.OPT_INDENT_2))

    def write_research_integrated(self, category: str, rows: Iterable[Sequence[Any]]) -> None:
        """The research layout's sample CSV: a header of INTEGRATED_COLUMNS, then `rows` in that order."""
        path = self.file(self.research_integrated_file(category))
        with atomic_file(path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(self.INTEGRATED_COLUMNS)
            writer.writerows(rows)
