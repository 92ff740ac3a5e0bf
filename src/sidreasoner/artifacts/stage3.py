"""Stage3Checkpoint: the rl-stage3 step's raw output, weights in one of three formats (a saved model, a LoRA
adapter, verl's FSDP shards) named by its manifest, with the run's record, reward curve and prompts.

The manifest names the format and the folder entry that holds the weights, plus any other keys the backend
records (backend, global_step, ...):
  {"format": "hf",        "path": "model"}    a saved Hugging Face model (TRL, full fine-tuning)
  {"format": "peft_lora", "path": "adapter"}  a peft LoRA adapter over the Stage 2 model (TRL, LoRA)
  {"format": "verl_fsdp", "path": "actor"}    verl's sharded FSDP actor checkpoint (its
                                               model_world_size_*_rank_*.pt, fsdp_config.json and
                                               huggingface/ folder)
"""

from __future__ import annotations

from typing import Any

from sidreasoner.artifacts.base import Artifact
from sidreasoner.artifacts.dataset import Dataset
from sidreasoner.artifacts.model import ModelFolder


class Stage3Checkpoint(Artifact):
    kind = "Stage 3 checkpoint"
    kfp_type = "Model"
    writer = "rl-stage3"

    MANIFEST = "checkpoint.json"  # format, path of the weights inside the folder
    # What merge-checkpoint carries into the merged model folder keeps the model folder's names, where the
    # evaluation reads the RL record: the RL run's record (settings, metrics, per-step rewards), the reward
    # curve, and the prompts in verl's Parquet schema (one file per split).
    TRAINING = ModelFolder.TRAINING
    REWARD_CURVE = ModelFolder.REWARD_CURVE
    RL_DATA = ModelFolder.RL_DATA
    CARRIED = (TRAINING, REWARD_CURVE, RL_DATA)
    FORMATS = ("hf", "peft_lora", "verl_fsdp")  # the manifest's formats (see the module docstring)

    @classmethod
    def rl_data_file(cls, split: str) -> str:
        return f"{cls.RL_DATA}/{Dataset.split_file(split)}"

    def manifest(self) -> dict[str, Any]:
        """The manifest, checked: a JSON object whose format is one of FORMATS and whose path is in the folder."""
        try:
            info = self.read_json(self.MANIFEST, "the weights' format and path")
        except ValueError as e:  # json.JSONDecodeError
            raise self.problem(self.MANIFEST, f"not JSON ({e})") from None
        if not isinstance(info, dict):
            raise self.problem(self.MANIFEST, "expected a JSON object")
        for key in ("format", "path"):
            if key not in info:
                raise self.problem(self.MANIFEST, f"missing key '{key}'")
        if info["format"] not in self.FORMATS:
            raise self.problem(self.MANIFEST, f"'format' is {info['format']!r}; allowed: {', '.join(self.FORMATS)}")
        if not self.file(info["path"]).exists():
            raise FileNotFoundError(f"{self.kind} {self.path}: {self.MANIFEST}: 'path' {info['path']!r} does not exist")
        return info

    def write_manifest(self, fmt: str, path: str, **extra) -> None:
        """The manifest naming the weights' format and the folder entry `path` that holds them (written last)."""
        if fmt not in self.FORMATS:
            raise ValueError(f"unknown checkpoint format {fmt!r}; allowed: {', '.join(self.FORMATS)}")
        if not self.file(path).exists():
            raise FileNotFoundError(f"{self.kind} {self.path}: '{path}' (the {fmt} files) does not exist")
        self.write_json(self.MANIFEST, {"format": fmt, "path": path, **extra})

    def training(self) -> dict[str, Any]:
        return self.read_json(self.TRAINING, "the RL run's record")

    def write_training(self, record: dict[str, Any]) -> None:
        self.write_json(self.TRAINING, record)

    def write_reward_curve(self, html: str) -> None:
        self.write_text(self.REWARD_CURVE, html)
