"""The token weights of verl's loss aggregation: the research's verl 0.4.1 `token-mean` (per micro-batch) against
verl 0.9.1's modes, by hand on a tiny mini-batch, against verl 0.9.1's own `agg_loss`, and on a batch of the
research run's shape."""

from __future__ import annotations

from dataclasses import astuple

import numpy as np
import pytest

from sidreasoner.rl import loss_weighting as lw

# 2 ranks x 2 micro-batches x 2 sequences, width 4; micro-batch token counts 4, 4 | 8, 2 (18 in all).
LENGTHS = [1, 3, 2, 2, 4, 4, 1, 1]
MASK = lw.split_mini_batch(LENGTHS, ranks=2, micro_batch_size=2)
# One loss value per micro-batch (1, 2 | 3, 4) on each of its tokens.
LOSSES = np.arange(1.0, 5.0).reshape(2, 2, 1, 1) * np.ones((2, 2, 2, 4))


def _per_sequence(weights: np.ndarray) -> list[float]:
    """The weight of a sequence's tokens (all equal within a sequence in every mode)."""
    rows = weights.reshape(-1, weights.shape[-1])
    return [float(row[0]) for row in rows]


def test_the_mini_batch_is_split_as_verl_dispatches_it():
    assert MASK.shape == (2, 2, 2, 4)
    assert MASK.sum(axis=(2, 3)).tolist() == [[4.0, 4.0], [8.0, 2.0]]
    assert MASK[0, 0].tolist() == [[1, 0, 0, 0], [1, 1, 1, 0]]


@pytest.mark.parametrize(
    ("mode", "per_sequence"),
    [
        # 1 / (micro-batch tokens x 2 accumulation steps x 2 ranks)
        (lw.RESEARCH, [1 / 16, 1 / 16, 1 / 16, 1 / 16, 1 / 32, 1 / 32, 1 / 8, 1 / 8]),
        ("token-mean", [1 / 18] * 8),
        ("token-sum", [1.0] * 8),
        ("seq-mean-token-sum", [1 / 8] * 8),
        ("seq-mean-token-mean", [1 / 8, 1 / 24, 1 / 16, 1 / 16, 1 / 32, 1 / 32, 1 / 8, 1 / 8]),
        ("seq-mean-token-sum-norm", [1 / 32] * 8),
    ],
)
def test_token_weights_by_hand(mode, per_sequence):
    weights = lw.token_weights(MASK, mode)
    assert _per_sequence(weights) == pytest.approx(per_sequence, rel=1e-15)
    assert (weights[MASK == 0] == 0).all()


def test_aggregated_losses_by_hand():
    # research: the mean of the 4 micro-batch means; 0.9.1 token-mean: (4*1 + 4*2 + 8*3 + 2*4) / 18
    assert lw.aggregated_loss(LOSSES, MASK, lw.RESEARCH) == pytest.approx(2.5, rel=1e-15)
    assert lw.aggregated_loss(LOSSES, MASK, "token-mean") == pytest.approx(44 / 18, rel=1e-15)
    assert lw.aggregated_loss(LOSSES, MASK, "seq-mean-token-mean") == pytest.approx(2.5, rel=1e-15)
    assert lw.aggregated_loss(LOSSES, MASK, "seq-mean-token-sum-norm", loss_scale_factor=8) == pytest.approx(
        44 / 64, rel=1e-15
    )


def test_research_equals_token_mean_when_every_micro_batch_has_as_many_tokens():
    mask = lw.split_mini_batch([1, 3, 2, 2, 3, 1, 4, 0], ranks=2, micro_batch_size=2)
    assert (lw.token_weights(mask, lw.RESEARCH) == lw.token_weights(mask, "token-mean")).all()
    assert lw.compare_to_research(mask, "token-mean") == lw.WeightComparison(1.0, 0.0, 1.0, 1.0)


def test_research_over_token_mean_is_mean_micro_tokens_over_own_micro_tokens():
    ratio = lw.token_weights(MASK, lw.RESEARCH)[MASK > 0] / lw.token_weights(MASK, "token-mean")[MASK > 0]
    # mean micro-batch tokens 18 / 4 = 4.5 over 4, 4 | 8, 2
    assert sorted(set(ratio.round(12))) == [0.5625, 1.125, 2.25]
    cmp = lw.compare_to_research(MASK, "token-mean")
    assert cmp.scale == pytest.approx(1.0, rel=1e-15)
    # the 2 tokens of the 2-token micro-batch get 1/18 instead of 1/8, the 8 of the 4-token ones 1/18 instead
    # of 1/16: 2 * (1/8 - 1/18) + 8 * (1/16 - 1/18) = 7/36 of the weight moves to the 8-token micro-batch
    assert cmp.moved == pytest.approx(7 / 36, rel=1e-12)
    assert (cmp.least_ratio, cmp.most_ratio) == pytest.approx((1 / 2.25, 1 / 0.5625), rel=1e-12)
    # seq-mean-token-mean differs only inside the first micro-batch: 1/8 instead of 1/16 on its 1-token
    # sequence, 1/24 instead of 1/16 on the 3 tokens of the other
    by_sequence = lw.compare_to_research(MASK, "seq-mean-token-mean")
    assert astuple(by_sequence) == pytest.approx((1.0, 1 / 16, 2 / 3, 2.0), rel=1e-12)


def test_bad_inputs_name_what_is_wrong():
    with pytest.raises(ValueError, match="unknown loss aggregation 'micro-mean'"):
        lw.token_weights(MASK, "micro-mean")
    with pytest.raises(ValueError, match=r"mask must be \(ranks, micro_batches, sequences, tokens\)"):
        lw.token_weights(MASK[0], "token-mean")
    with pytest.raises(ValueError, match="9 sequences do not split into 2 ranks of micro-batches of 2"):
        lw.split_mini_batch([1] * 9, ranks=2, micro_batch_size=2)
    with pytest.raises(ValueError, match="a micro-batch without response tokens"):
        lw.token_weights(lw.split_mini_batch([0, 0, 1, 1], ranks=1, micro_batch_size=2), lw.RESEARCH)


# ---------------------------------------------------------------- against verl 0.9.1's own agg_loss


def _verl_weights(mask: np.ndarray, mode: str, loss_scale_factor: int | None = None) -> np.ndarray:
    """Run verl 0.9.1's agg_loss as its FSDP actor does and read each token's weight off the gradient: each
    micro-batch's loss is backpropagated (gradients add up per rank), then averaged over the ranks.
    The research's verl 0.4.1 token-mean is agg_loss without global batch info (a masked mean over the
    micro-batch, verl 0.4.1 core_algos.py:701-702) divided by the accumulation steps (dp_actor.py:469)."""
    torch = pytest.importorskip("torch")
    core_algos = pytest.importorskip("verl.trainer.ppo.core_algos")
    ranks, micro_batches, sequences, _ = mask.shape
    loss_mat = torch.zeros(mask.shape, dtype=torch.float64, requires_grad=True)
    loss_mask = torch.tensor(mask, dtype=torch.float64)
    global_info = {
        "dp_size": ranks,
        "batch_num_tokens": int(mask.sum()),
        "global_batch_size": ranks * micro_batches * sequences,
        "loss_scale_factor": loss_scale_factor,
    }
    rank_totals = []
    for r in range(ranks):
        total = 0
        for m in range(micro_batches):
            if mode == lw.RESEARCH:
                loss = core_algos.agg_loss(loss_mat[r, m], loss_mask[r, m], "token-mean") / micro_batches
            else:
                loss = core_algos.agg_loss(loss_mat[r, m], loss_mask[r, m], mode, **global_info)
            total = total + loss
        rank_totals.append(total)
    (sum(rank_totals) / ranks).backward()
    return loss_mat.grad.numpy()


@pytest.mark.parametrize("mode", lw.MODES)
def test_weights_are_verls_own(mode):
    mask = lw.split_mini_batch([1, 3, 2, 2, 4, 4, 1, 1, 0, 2, 3, 3], ranks=2, micro_batch_size=3)
    assert lw.token_weights(mask, mode) == pytest.approx(_verl_weights(mask, mode), rel=1e-7, abs=1e-15)


def test_scale_factor_is_verls_own():
    mask = lw.split_mini_batch(LENGTHS, ranks=2, micro_batch_size=2)
    ours = lw.token_weights(mask, "seq-mean-token-sum-norm", loss_scale_factor=1024)
    assert ours == pytest.approx(_verl_weights(mask, "seq-mean-token-sum-norm", 1024), rel=1e-12, abs=1e-15)


# ---------------------------------------------------------------- a batch of the research run's shape

PROMPTS, ROLLOUTS, RANKS, MICRO = 256, 16, 4, 8  # RL_training_script.sh:33,41,42,54 and its 4 GPUs


def research_shape_lengths(seed: int = 0) -> np.ndarray:
    """256 prompts x 16 rollouts of response lengths, group after group as verl repeats the prompts: a
    prompt's typical length (lognormal around 300 tokens) times a per-rollout spread, within 16..1024."""
    rng = np.random.default_rng(seed)
    typical = np.exp(rng.normal(np.log(300), 0.4, size=(PROMPTS, 1)))
    lengths = typical * np.exp(rng.normal(0.0, 0.3, size=(PROMPTS, ROLLOUTS)))
    return np.clip(np.rint(lengths), 16, 1024).astype(np.int64).ravel()


def balanced_order(lengths: np.ndarray) -> np.ndarray:
    """The sequence order after verl's `_balance_batch` (trainer.balance_batch, on by default in 0.4.1 and
    0.9.1): equal-size partitions of similar token totals, one per rank, each in its original order."""
    balancing = pytest.importorskip("verl.utils.seqlen_balancing")
    parts = balancing.get_seqlen_balanced_partitions(lengths.tolist(), k_partitions=RANKS, equal_size=True)
    return np.array([i for part in parts for i in sorted(part)])


def _figures(mask: np.ndarray) -> dict[str, tuple[float, float, float, float]]:
    figures = {}
    for mode in lw.VERL_MODES:
        cmp = lw.compare_to_research(mask, mode, loss_scale_factor=1024)
        figures[mode] = (round(cmp.scale, 4), round(cmp.moved, 4), round(cmp.least_ratio, 3), round(cmp.most_ratio, 3))
    return figures


def test_research_shape_figures():
    # The figures docs/paper-parity.md quotes: (scale, weight moved, least and most ratio to the research's).
    lengths = research_shape_lengths(seed=0)
    mask = lw.split_mini_batch(lengths[balanced_order(lengths)], RANKS, MICRO, width=1024)
    assert mask.shape == (4, 128, 8, 1024)
    micro_tokens = mask.sum(axis=(2, 3))
    assert (int(micro_tokens.min()), int(micro_tokens.mean()), int(micro_tokens.max())) == (952, 2710, 5847)
    assert _figures(mask) == {
        "token-mean": (1.0, 0.1192, 0.351, 2.157),
        "token-sum": (1387604.0, 0.1192, 0.351, 2.157),
        "seq-mean-token-sum": (338.7705, 0.1192, 0.351, 2.157),
        "seq-mean-token-mean": (1.0, 0.1557, 0.302, 5.047),
        "seq-mean-token-sum-norm": (0.3308, 0.1192, 0.351, 2.157),
    }
