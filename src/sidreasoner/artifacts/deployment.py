"""Deployment: the deploy-model step's output, the KServe InferenceService it applied and where it serves."""

from __future__ import annotations

from typing import Any

from sidreasoner.artifacts.base import Artifact


class Deployment(Artifact):
    kind = "deployment"
    kfp_type = "Model"
    writer = "deploy-model"

    MANIFEST = "inferenceservice.json"  # the InferenceService as deploy-model applied it
    RECORD = "deployment.json"  # name, namespace, url, generation
    RECORD_KEYS = ("name", "namespace", "url", "generation")

    def manifest(self) -> dict[str, Any]:
        return self.read_json(self.MANIFEST, "the applied InferenceService")

    def record(self) -> dict[str, Any]:
        record = self.read_json(self.RECORD, "where the model serves")
        missing = [key for key in self.RECORD_KEYS if key not in record]
        if missing:
            raise self.problem(self.RECORD, f"no {', '.join(map(repr, missing))}")
        return record

    def write(self, manifest: dict[str, Any], record: dict[str, Any]) -> None:
        self.write_json(self.MANIFEST, manifest)
        self.write_json(self.RECORD, {key: record[key] for key in self.RECORD_KEYS})
