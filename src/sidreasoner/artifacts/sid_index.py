"""SidIndex: the quantize-sids step's output, item -> SID codes, the catalogue of valid SIDs, the codebooks,
and the research-code layout of the dataset with its SIDs (`research/`)."""

from __future__ import annotations

import re
from typing import Any

import sidreasoner.artifacts.research_layout as research_layout
from sidreasoner.artifacts.base import Artifact

CODE_TOKEN = re.compile(r"<[a-z]_\d+>")


class SidIndex(Artifact):
    kind = "SID index"
    kfp_type = "Dataset"
    writer = "quantize-sids"

    SIDS = "sids.parquet"  # item_id, codes (one per level), sid (the codes joined)
    INDEX = "index.json"  # {"<item_id>": ["<a_1>", "<b_2>", "<c_3>"]}
    CATALOGUE = "catalogue.json"  # sorted list of every valid SID
    QUANTIZER = "quantizer.json"  # method, settings, collision and usage figures
    CODEBOOKS = "codebooks.npy"  # float32 [levels, codebook_size, dim]
    RESEARCH = research_layout.FOLDER  # the dataset with its SIDs in the MiniOneRec/SIDReasoner layout

    def research_file(self, name: str):
        """A file of the research-layout export, `name` from artifacts.research_layout."""
        return self.file(f"{self.RESEARCH}/{name}")

    def index(self) -> dict[int, list[str]]:
        """item id -> its codes, one per level."""
        return {int(k): list(v) for k, v in self.read_json(self.INDEX, "item id -> SID codes").items()}

    def sid_map(self) -> dict[int, str]:
        """item id -> its SID (codes joined)."""
        return {item: "".join(codes) for item, codes in self.index().items()}

    def catalogue(self) -> list[str]:
        """Every valid SID, sorted (the index's SIDs when the folder has no catalogue file)."""
        if self.has(self.CATALOGUE):
            return sorted(set(self.read_json(self.CATALOGUE)))
        return sorted(set(self.sid_map().values()))

    def catalogue_path(self):
        return self.require(self.CATALOGUE, "the valid SIDs")

    def code_tokens(self, order: str = "numeric") -> list[str]:
        """Every code token of the index and the catalogue, by level then code number (numeric), or as sorted
        strings (lexicographic: <a_0>, <a_100>, <a_101>, ..., <a_10>, <a_110>, ..., the research code's order)."""
        tokens = {t for codes in self.index().values() for t in codes}
        for sid in self.catalogue():
            tokens.update(CODE_TOKEN.findall(sid))
        if order == "lexicographic":
            return sorted(tokens)
        if order != "numeric":
            raise ValueError(f"unknown SID token order {order!r}: numeric or lexicographic")
        return sorted(tokens, key=lambda t: (t[1], int(t[3:-1])))

    def sids(self, columns=("item_id", "sid")):
        return self.read_frame(self.SIDS, columns, "item id -> SID")

    def quantizer(self) -> dict[str, Any]:
        return self.read_json(self.QUANTIZER, "how the SIDs were made")

    def write_index(self, index: dict[int, list[str]]) -> None:
        """item id -> SID codes, and the catalogue it implies (every distinct SID, sorted)."""
        self.write_json(self.INDEX, {str(k): list(v) for k, v in index.items()})
        self.write_json(self.CATALOGUE, sorted({"".join(v) for v in index.values()}))

    def write_research_index(self, category: str, index: dict[int, list[str]]) -> None:
        """Only the research layout's SID index (the export of a dataset without sample splits)."""
        codes = {str(k): list(v) for k, v in index.items()}
        self.write_json(f"{self.RESEARCH}/{research_layout.index_json(category)}", codes)

    def write_sids(self, table) -> None:
        self.write_table(self.SIDS, table)

    def write_quantizer(self, meta: dict[str, Any]) -> None:
        self.write_json(self.QUANTIZER, meta)

    def write_codebooks(self, books) -> None:
        import numpy as np

        np.save(self.file(self.CODEBOOKS), np.asarray(books, np.float32))
