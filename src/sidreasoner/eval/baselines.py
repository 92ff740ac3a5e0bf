"""Popularity and random baselines, ranked at SID level so they go through the same metric code as
the models (item level by the same SID -> items expansion)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np


def popularity_ranking(
    train_item_ids: Sequence[int], sid_of_item: Mapping[int, str], catalogue: Sequence[str], k: int
) -> tuple[list[str], list[float]]:
    """The k SIDs whose items occur most often as train-split targets (a SID's count is the sum of
    its items'); ties broken by SID string, so the ranking is deterministic. SIDs never seen rank
    last, in catalogue order."""
    counts: Counter[str] = Counter()
    for item in train_item_ids:
        sid = sid_of_item.get(int(item))
        if sid is not None:
            counts[sid] += 1
    ranked = sorted(catalogue, key=lambda s: (-counts.get(s, 0), s))[:k]
    return ranked, [float(counts.get(s, 0)) for s in ranked]


def random_rankings(catalogue: Sequence[str], n_users: int, k: int, seed: int) -> list[list[str]]:
    """Per user, k distinct SIDs drawn uniformly (seeded)."""
    rng = np.random.default_rng(seed)
    k = min(k, len(catalogue))
    return [[catalogue[i] for i in rng.choice(len(catalogue), size=k, replace=False)] for _ in range(n_users)]
