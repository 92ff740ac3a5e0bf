"""The evaluation's view of a SID index and a dataset: item -> SID, SID -> items, the valid SIDs, and the
items' titles."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from sidreasoner.artifacts import Dataset, SidIndex
from sidreasoner.eval.metrics import sid_item_map


@dataclass
class Catalogue:
    sid_of_item: dict[int, str]
    sid_items: dict[str, list[int]]
    catalogue: list[str]  # every valid SID, sorted
    titles: dict[int, str]
    categories: dict[int, str] = field(default_factory=dict)  # item -> category, several categories only

    @classmethod
    def load(cls, sid_index: SidIndex | str | os.PathLike, dataset: Dataset | str | os.PathLike) -> Catalogue:
        sid_index, dataset = SidIndex.at(sid_index), Dataset.at(dataset)
        sids = sid_index.sids(["item_id", "sid"])
        return cls(
            sid_of_item={int(i): s for i, s in zip(sids["item_id"], sids["sid"], strict=True)},
            sid_items=sid_item_map(sids["item_id"].tolist(), sids["sid"].tolist()),
            catalogue=sid_index.catalogue(),
            titles=dataset.titles(),
            categories=dataset.item_categories(),
        )

    def history_sids(self, history) -> list[str]:
        return [self.sid_of_item[int(i)] for i in history if int(i) in self.sid_of_item]

    def title(self, item_id: int) -> str:
        return self.titles.get(int(item_id), f"item {item_id}")
