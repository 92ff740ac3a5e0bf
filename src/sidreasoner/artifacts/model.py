"""ModelFolder: a saved Hugging Face model (the base model, each SFT stage's model, the merged Stage 3 model)
with the records the steps that made it keep beside the weights."""

from __future__ import annotations

from typing import Any

from sidreasoner.artifacts.base import Artifact


class ModelFolder(Artifact):
    kind = "model folder"
    kfp_type = "Model"
    writer = "prepare-base-model, sft-stage1/2 or merge-checkpoint"

    # Hugging Face's own files, which a loadable model folder must hold.
    HF_CONFIG = "config.json"
    HF_TOKENIZER = "tokenizer.json"
    HF_TOKENIZER_CONFIG = "tokenizer_config.json"
    HF_GENERATION_CONFIG = "generation_config.json"
    HF_REQUIRED = (HF_CONFIG, HF_TOKENIZER_CONFIG)
    # Ours.
    BASE_MODEL = "base_model.json"  # prepare-base-model: where the model came from
    TRAINING = "training.json"  # a training step's record: settings, metrics, per-step figures
    LOSS_CURVE = "loss_curve.html"  # an SFT stage's loss curve
    REWARD_CURVE = "reward_curve.html"  # a Stage 3 model's reward curve (carried from its checkpoint)
    RL_DATA = "rl_data"  # the Stage 3 prompts (carried from its checkpoint)
    MERGE = "merge.json"  # merge-checkpoint: what was merged, and the reload check

    def is_model(self) -> bool:
        return self.file(self.HF_CONFIG).is_file()

    def training(self) -> dict[str, Any]:
        return self.read_json(self.TRAINING, "the training step's record")

    def has_training(self) -> bool:
        return self.file(self.TRAINING).is_file()

    def write_training(self, record: dict[str, Any]) -> None:
        self.write_json(self.TRAINING, record)

    def write_loss_curve(self, html: str) -> None:
        self.write_text(self.LOSS_CURVE, html)

    def base_model(self) -> dict[str, Any]:
        return self.read_json(self.BASE_MODEL, "where the base model came from")

    def write_base_model(self, record: dict[str, Any]) -> None:
        self.write_json(self.BASE_MODEL, record)

    def merge_record(self) -> dict[str, Any]:
        return self.read_json(self.MERGE, "what merge-checkpoint merged")

    def write_merge_record(self, record: dict[str, Any]) -> None:
        self.write_json(self.MERGE, record)
