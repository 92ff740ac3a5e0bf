"""Evaluation: an evaluate-stageN or evaluate-baselines output, the metrics, the ranked predictions of every
evaluated sample, and the record of how they were made."""

from __future__ import annotations

from typing import Any

from sidreasoner.artifacts.base import Artifact


class Evaluation(Artifact):
    kind = "evaluation"
    kfp_type = "Dataset"
    writer = "evaluate-stageN or evaluate-baselines"

    # {"<split>_<mode>_hr@K", "..._ndcg@K", "..._item_hr@K", "..._item_ndcg@K", "..._users", "..._users_per_s",
    #  "..._seconds", "wall_seconds"}; modes "nonthink", "think" for models, "popularity", "random" for baselines
    METRICS = "metrics.json"
    PREDICTIONS = "predictions.parquet"  # one row per evaluated sample and mode, PREDICTION_COLUMNS
    # What was evaluated: kind, label, modes, splits, decoding, beams, ks, the scoring and rendering options
    # (score_suffix, empty_think, think_close), catalogue size, and a Stage 3 model's per-step rewards
    # (rl_per_step).
    RECORD = "eval.json"

    PREDICTION_COLUMNS = (
        "user_id",
        "split",
        "mode",
        "target_item_id",
        "target_sid",
        "history_item_ids",
        "pred_sids",  # the top-K SIDs
        "pred_scores",
        "pred_item_ids",  # item-level top-K
        "pred_titles",
        "hit_rank",  # SID level, -1: a miss
        "reasoning",
    )

    def metrics(self) -> dict[str, float]:
        return self.read_json(self.METRICS, "the evaluation's metrics")

    def predictions(self, columns=None):
        return self.read_frame(self.PREDICTIONS, columns, "the ranked predictions")

    def record(self) -> dict[str, Any]:
        """eval.json, or {} for a folder without one."""
        return self.read_json(self.RECORD) if self.has(self.RECORD) else {}

    def rl_per_step(self) -> list[dict[str, Any]]:
        """The per-step records of the RL run that trained the evaluated model ([] for any other model)."""
        return self.record().get("rl_per_step", [])

    def write(self, predictions, metrics: dict[str, float], record: dict[str, Any]) -> None:
        """`predictions`: a table, or row dicts holding PREDICTION_COLUMNS."""
        if isinstance(predictions, list):
            import pandas as pd

            predictions = pd.DataFrame(predictions, columns=list(self.PREDICTION_COLUMNS))
        self.write_table(self.PREDICTIONS, predictions)
        self.write_json(self.METRICS, metrics)
        self.write_json(self.RECORD, record)
