"""Stage3Checkpoint: the rl-stage3 step's raw output, weights in one of three formats (a saved model, a LoRA
adapter, verl's FSDP shards) named by its manifest, with the run's record, reward curve and prompts."""

from __future__ import annotations

from typing import Any

from sidreasoner.artifacts.base import Artifact
from sidreasoner.artifacts.dataset import SPLITS


class Stage3Checkpoint(Artifact):
    kind = "Stage 3 checkpoint"
    kfp_type = "Model"
    writer = "rl-stage3"

    MANIFEST = "checkpoint.json"  # format, path of the weights inside the folder
    TRAINING = "training.json"  # the RL run's record: settings, metrics, per-step rewards
    REWARD_CURVE = "reward_curve.html"
    RL_DATA = "rl_data"  # the prompts, verl's Parquet schema: rl_data/train.parquet, rl_data/valid.parquet
    # What merge-checkpoint carries into the merged model folder (the same names there).
    CARRIED = (TRAINING, REWARD_CURVE, RL_DATA)

    @staticmethod
    def rl_data_file(split: str) -> str:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}: one of {', '.join(SPLITS)}")
        return f"rl_data/{split}.parquet"

    def training(self) -> dict[str, Any]:
        return self.read_json(self.TRAINING, "the RL run's record")

    def write_training(self, record: dict[str, Any]) -> None:
        self.write_json(self.TRAINING, record)

    def write_reward_curve(self, html: str) -> None:
        self.write_text(self.REWARD_CURVE, html)
