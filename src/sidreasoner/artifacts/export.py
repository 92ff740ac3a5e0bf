"""ModelExport: the export-model step's output, the record of where the Stage 3 model was pushed.

The exported folder holds the model's files at its top level and, under `catalogue/`, what the model
server needs besides the model: the SID index folder and the dataset's item table and record."""

from __future__ import annotations

from typing import Any

from sidreasoner.artifacts.base import Artifact


class ModelExport(Artifact):
    kind = "model export"
    kfp_type = "Model"
    writer = "export-model"

    RECORD = "export.json"  # uri, files, sizes
    # Inside the exported folder (paths relative to export.uri, and to where a server downloads it).
    CATALOGUE_SID_INDEX = "catalogue/sid_index"  # every file of the SID index folder
    CATALOGUE_DATASET = "catalogue/dataset"  # the dataset's items.parquet and stats.json only

    def record(self) -> dict[str, Any]:
        return self.read_json(self.RECORD, "where the model was pushed")

    def uri(self) -> str:
        """The folder the model was exported to (export.uri of the run that wrote this record)."""
        uri = self.record().get("uri")
        if not isinstance(uri, str) or not uri:
            raise self.problem(self.RECORD, "no 'uri' (the folder the model was exported to)")
        return uri

    def write_record(self, record: dict[str, Any]) -> None:
        self.write_json(self.RECORD, record)
