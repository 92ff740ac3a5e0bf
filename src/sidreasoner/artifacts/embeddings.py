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

    def write_vectors(self, vectors) -> None:
        """Save the vectors as they are (call inside `writing`). numpy's short write on a full disk carries no
        errno; it is raised as ENOSPC naming the file, checked while the partial file still fills the disk."""
        import numpy as np

        from sidreasoner.errors import enospc_if_full

        path = self.file(self.VECTORS)
        try:
            np.save(path, vectors)
        except OSError as err:
            full = enospc_if_full(err, path)
            if full is err:
                raise
            raise full from err

    def write_meta(self, meta: dict[str, Any]) -> None:
        self.write_json(self.META, meta)
