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

    def manifest(self) -> dict[str, Any]:
        return self.read_json(self.MANIFEST, "what the folder holds")

    def write_manifest(self, manifest: dict[str, Any]) -> None:
        self.write_json(self.MANIFEST, manifest)
