"""The `rl-stage3` step: GRPO on the Stage 2 model with the backend `stage3.backend`, into a raw
checkpoint (`Stage3Checkpoint`) that `merge-checkpoint` turns into a plain model."""

from __future__ import annotations

from pathlib import Path

from sidreasoner.artifacts import Corpus, Dataset, ModelFolder, SidIndex, Stage3Checkpoint
from sidreasoner.config import Config
from sidreasoner.rl import trl_backend, verl_backend


def rl_stage3(
    cfg: Config,
    stage2_model_dir: ModelFolder | Path,
    dataset_dir: Dataset | Path,
    sid_index_dir: SidIndex | Path,
    corpus_dir: Corpus | Path,
    checkpoint_dir: Stage3Checkpoint | Path,
) -> dict[str, float]:
    """The corpus is read only with stage3.prompts=narrated: its samples name the training samples whose
    prompts RL trains on."""
    args = (
        cfg,
        ModelFolder.at(stage2_model_dir),
        Dataset.at(dataset_dir),
        SidIndex.at(sid_index_dir),
        Corpus.at(corpus_dir),
        Stage3Checkpoint.at(checkpoint_dir),
    )
    backend = cfg.stage3.backend
    if backend == "verl":
        return verl_backend.train_verl(*args)
    if backend == "trl":
        return trl_backend.train_trl(*args)
    raise ValueError(f"unknown stage3.backend {backend!r}")
