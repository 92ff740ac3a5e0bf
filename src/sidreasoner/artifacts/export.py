"""ModelExport: the export-model step's output, the record of where the Stage 3 model was pushed."""

from __future__ import annotations

from typing import Any

from sidreasoner.artifacts.base import Artifact


class ModelExport(Artifact):
    kind = "model export"
    kfp_type = "Model"
    writer = "export-model"

    RECORD = "export.json"  # uri, files, sizes

    def record(self) -> dict[str, Any]:
        return self.read_json(self.RECORD, "where the model was pushed")

    def write_record(self, record: dict[str, Any]) -> None:
        self.write_json(self.RECORD, record)
