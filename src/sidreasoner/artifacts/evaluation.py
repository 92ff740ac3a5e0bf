"""Evaluation: an evaluate-stageN or evaluate-baselines output, the metrics, the ranked predictions of every
evaluated sample, and the record of how they were made."""

from __future__ import annotations

from typing import Any

from sidreasoner.artifacts.base import Artifact


class Evaluation(Artifact):
    kind = "evaluation"
    kfp_type = "Dataset"
    writer = "evaluate-stageN or evaluate-baselines"

    METRICS = "metrics.json"  # {"<split>_<mode>_hr@K": value, ...}
    PREDICTIONS = "predictions.parquet"  # one row per evaluated sample and mode
    RECORD = "eval.json"  # settings, catalogue size, a Stage 3 model's per-step rewards

    def metrics(self) -> dict[str, float]:
        return self.read_json(self.METRICS, "the evaluation's metrics")

    def predictions(self, columns=None):
        return self.read_frame(self.PREDICTIONS, columns, "the ranked predictions")

    def record(self) -> dict[str, Any]:
        """eval.json, or {} for a folder without one."""
        return self.read_json(self.RECORD) if self.has(self.RECORD) else {}

    def write(self, predictions, metrics: dict[str, float], record: dict[str, Any]) -> None:
        self.write_table(self.PREDICTIONS, predictions)
        self.write_json(self.METRICS, metrics)
        self.write_json(self.RECORD, record)
