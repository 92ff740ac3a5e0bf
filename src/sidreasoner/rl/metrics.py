"""The `rl-stage3` step's summary metrics, computed the same way for every backend."""

from __future__ import annotations

import math


def _mean(xs: list[float]) -> float:
    return sum(xs) / len(xs) if xs else float("nan")


def summary_metrics(
    per_step: list[dict],
    global_step: int,
    resumed_from: int,
    n_prompts: int,
    skipped: int,
    completions_done: int,
    train_wall: float,
    wall: float,
) -> dict[str, float]:
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
