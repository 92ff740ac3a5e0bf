"""The `rl-stage3` step: GRPO on the Stage 2 model with the backend `stage3.backend`, into a raw
checkpoint (`sidreasoner.rl.checkpoint`) that `merge-checkpoint` turns into a plain model."""

from __future__ import annotations

from pathlib import Path

from sidreasoner.config import Config
from sidreasoner.rl import trl_backend, verl_backend


def rl_stage3(
    cfg: Config, stage2_model_dir: Path, dataset_dir: Path, sid_index_dir: Path, corpus_dir: Path, checkpoint_dir: Path
) -> dict[str, float]:
    """The corpus is read only with stage3.prompts=narrated: its samples.parquet names the training samples
    whose prompts RL trains on."""
    args = (cfg, Path(stage2_model_dir), Path(dataset_dir), Path(sid_index_dir), Path(corpus_dir), Path(checkpoint_dir))
    backend = cfg.stage3.backend
    if backend == "verl":
        return verl_backend.train_verl(*args)
    if backend == "trl":
        return trl_backend.train_trl(*args)
    raise ValueError(f"unknown stage3.backend {backend!r}")
