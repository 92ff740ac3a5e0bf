"""How much each response token's loss counts in one verl actor update, under the research code's verl 0.4.1
and under each `loss_agg_mode` of verl 0.9.1 (the one this project runs).

A PPO mini-batch is split over data-parallel ranks, and each rank's share into micro-batches; every micro-batch
runs forward and backward, the gradients add up over a rank's micro-batches, and FSDP averages them over the
ranks. The update's gradient is therefore sum over tokens of weight(token) * d loss(token), and the weights
alone tell the aggregation modes apart:

- verl 0.4.1 `token-mean` (research): a micro-batch's losses are averaged over its own T_m tokens, then divided
  by the accumulation steps M (micro-batches per rank): weight = 1 / (T_m * M * D) for D ranks.
- verl 0.9.1 `token-mean`: weight = 1 / N, N = the tokens of the whole mini-batch over all ranks.
- verl 0.9.1 `token-sum`: weight = 1.
- verl 0.9.1 `seq-mean-token-sum`: weight = 1 / G, G = the sequences of the mini-batch (its
  `global_batch_size`, ppo_mini_batch_size * rollout.n).
- verl 0.9.1 `seq-mean-token-mean`: weight = 1 / (G * L_i), L_i = the token's own response length.
- verl 0.9.1 `seq-mean-token-sum-norm`: weight = 1 / (G * H), H = `loss_scale_factor`, or without one the
  padded width of the micro-batch's loss mask.

The masks here are laid out as verl splits them: shape (ranks, micro_batches, sequences, tokens), 1 on a
response token and 0 on padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

RESEARCH = "verl-0.4.1-token-mean"
VERL_MODES = ("token-mean", "token-sum", "seq-mean-token-sum", "seq-mean-token-mean", "seq-mean-token-sum-norm")
MODES = (RESEARCH, *VERL_MODES)


def _checked_mask(mask) -> np.ndarray:
    mask = np.asarray(mask, dtype=np.float64)
    if mask.ndim != 4:
        raise ValueError(f"mask must be (ranks, micro_batches, sequences, tokens), got shape {mask.shape}")
    if not np.isin(mask, (0.0, 1.0)).all():
        raise ValueError("mask must hold only 0 and 1")
    return mask


def token_weights(mask, mode: str, loss_scale_factor: int | None = None) -> np.ndarray:
    """Each token's weight in the update's gradient (0 on padding), same shape as `mask`."""
    mask = _checked_mask(mask)
    ranks, micro_batches, sequences, width = mask.shape
    sequences_in_batch = ranks * micro_batches * sequences
    if mode == RESEARCH:
        micro_tokens = mask.sum(axis=(2, 3), keepdims=True)
        if (micro_tokens == 0).any():
            raise ValueError("a micro-batch without response tokens has no token-mean")
        per_token = 1.0 / (micro_tokens * micro_batches * ranks)
    elif mode == "token-mean":
        per_token = 1.0 / mask.sum()
    elif mode == "token-sum":
        per_token = 1.0
    elif mode == "seq-mean-token-sum":
        per_token = 1.0 / sequences_in_batch
    elif mode == "seq-mean-token-mean":
        lengths = mask.sum(axis=3, keepdims=True)
        per_token = 1.0 / (sequences_in_batch * np.where(lengths > 0, lengths, 1.0))
    elif mode == "seq-mean-token-sum-norm":
        per_token = 1.0 / (sequences_in_batch * (loss_scale_factor or width))
    else:
        raise ValueError(f"unknown loss aggregation {mode!r}; known: {', '.join(MODES)}")
    return mask * per_token


def aggregated_loss(losses, mask, mode: str, loss_scale_factor: int | None = None) -> float:
    """The update's loss: the per-token `losses` weighted as `mode` weights them (summed over micro-batches,
    averaged over ranks, as the gradients are)."""
    weights = token_weights(mask, mode, loss_scale_factor)
    losses = np.asarray(losses, dtype=np.float64)
    if losses.shape != weights.shape:
        raise ValueError(f"losses shape {losses.shape} differs from mask shape {weights.shape}")
    return float((weights * losses).sum())


@dataclass(frozen=True)
class WeightComparison:
    """One mode's token weights against the research's (verl 0.4.1) on the same mini-batch."""

    scale: float  # total weight / the research's total weight (the research's total is 1)
    moved: float  # share of the gradient weight on other tokens once both totals are 1 (total variation)
    least_ratio: float  # smallest weight / research weight over the tokens, totals made 1
    most_ratio: float  # largest such ratio


def compare_to_research(mask, mode: str, loss_scale_factor: int | None = None) -> WeightComparison:
    mask = _checked_mask(mask)
    ours = token_weights(mask, mode, loss_scale_factor)
    research = token_weights(mask, RESEARCH)
    tokens = mask > 0
    ours_share, research_share = ours[tokens] / ours.sum(), research[tokens] / research.sum()
    ratios = ours_share / research_share
    return WeightComparison(
        scale=float(ours.sum() / research.sum()),
        moved=float(np.abs(ours_share - research_share).sum() / 2),
        least_ratio=float(ratios.min()),
        most_ratio=float(ratios.max()),
    )


def split_mini_batch(lengths, ranks: int, micro_batch_size: int, width: int | None = None) -> np.ndarray:
    """The mask of a mini-batch whose responses have `lengths`, in dispatch order: consecutive equal chunks to
    the ranks, each chunk cut into consecutive micro-batches of `micro_batch_size` sequences."""
    lengths = np.asarray(lengths, dtype=np.int64)
    width = int(lengths.max()) if width is None else width
    if ranks < 1 or micro_batch_size < 1:
        raise ValueError(f"ranks ({ranks}) and micro_batch_size ({micro_batch_size}) must be at least 1")
    if len(lengths) % (ranks * micro_batch_size):
        raise ValueError(
            f"{len(lengths)} sequences do not split into {ranks} ranks of micro-batches of {micro_batch_size}"
        )
    if lengths.min() < 0 or lengths.max() > width:
        raise ValueError(f"response lengths must lie in 0..{width}")
    mask = (np.arange(width) < lengths[:, None]).astype(np.float64)
    return mask.reshape(ranks, -1, micro_batch_size, width)
