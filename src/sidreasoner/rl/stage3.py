"""The `rl-stage3` step: GRPO on the Stage 2 model with the backend `stage3.backend`, into a raw
checkpoint (`sidreasoner.rl.checkpoint`) that `merge-checkpoint` turns into a plain model."""

from __future__ import annotations

import math
from pathlib import Path

from sidreasoner.config import Config


def rl_stage3(cfg: Config, stage2_model_dir: Path, dataset_dir: Path, sid_index_dir: Path,
              checkpoint_dir: Path) -> dict[str, float]:
    args = (cfg, Path(stage2_model_dir), Path(dataset_dir), Path(sid_index_dir), Path(checkpoint_dir))
    backend = cfg.stage3.backend
    if backend == "verl":
        from sidreasoner.rl import verl_backend

        return verl_backend.train_verl(*args)
    if backend == "trl":
        from sidreasoner.rl import trl_backend

        return trl_backend.train_trl(*args)
    raise ValueError(f"unknown stage3.backend {backend!r}")


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def summary_metrics(per_step: list[dict], global_step: int, resumed_from: int, n_prompts: int, skipped: int,
                    completions_done: int, train_wall: float, wall: float) -> dict[str, float]:
    """The step's metrics, the same for every backend: reward at the start and end of training (mean
    of the first and last k steps), KL, completion length, throughput and wall time."""
    rewards = [p["reward"] for p in per_step]
    k = max(1, min(5, math.ceil(len(rewards) / 4))) if rewards else 1
    kls = [p["kl"] for p in per_step if p.get("kl") is not None]
    lengths = [p["completion_length"] for p in per_step if p.get("completion_length") is not None]
    return {
        "reward_first": _mean(rewards[:k]),
        "reward_last": _mean(rewards[-k:]),
        "reward_mean": _mean(rewards),
        "reward_max": max(rewards) if rewards else float("nan"),
        "reward_min": min(rewards) if rewards else float("nan"),
        "kl_mean": _mean(kls),
        "kl_last": kls[-1] if kls else float("nan"),
        "completion_length_mean": _mean(lengths),
        "steps": float(global_step),
        "resumed_from_step": float(resumed_from),
        "prompts": float(n_prompts),
        "prompts_skipped_too_long": float(skipped),
        "samples_per_s": completions_done / train_wall if train_wall > 0 else 0.0,
        "train_wall_seconds": train_wall,
        "wall_seconds": wall,
    }
