"""Embeddings: the embed-items step's output, one vector per item (row i = item_id i) and how they were made."""

from __future__ import annotations

from typing import Any

from sidreasoner.artifacts.base import Artifact


class Embeddings(Artifact):
    kind = "embeddings"
    kfp_type = "Dataset"
    writer = "embed-items"

    VECTORS = "embeddings.npy"  # float32 [N, dim]
    META = "meta.json"  # encoder, dimension, counts

    def vectors(self):
        import numpy as np

        return np.load(self.require(self.VECTORS, "the item vectors"), allow_pickle=False)

    def meta(self) -> dict[str, Any]:
        return self.read_json(self.META, "how the vectors were made")

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.write_json(self.META, meta)
