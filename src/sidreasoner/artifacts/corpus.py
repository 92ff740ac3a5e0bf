"""Corpus: the synthesize-corpus step's output, the teacher's item narratives, history narratives and
reasoning paths, what was rejected, and the research-code layout of the same texts (`research/`)."""

from __future__ import annotations

from typing import Any

from sidreasoner.artifacts import research_layout
from sidreasoner.artifacts.base import Artifact


class Corpus(Artifact):
    kind = "corpus"
    kfp_type = "Dataset"
    writer = "synthesize-corpus"

    ITEMS = "items.parquet"  # item_id, sid, narrative (accepted item narratives)
    SAMPLES = "samples.parquet"  # sample (row of the train split), user_id, history, target, texts
    REJECTED = "rejected.parquet"  # kind, key, reason, detail, text
    META = "meta.json"  # teacher kind/model/params, templated, counts, metrics

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

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.write_json(self.META, meta)
