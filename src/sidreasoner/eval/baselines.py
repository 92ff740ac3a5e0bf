"""The `evaluate-baselines` step: popularity and random rankings, ranked at SID level so they go through the
same metric code as the models (item level by the same SID -> items expansion) and are written as the same
Evaluation."""

from __future__ import annotations

import os
import time
from collections import Counter
from collections.abc import Mapping, Sequence

import numpy as np

from sidreasoner.artifacts import Dataset, Evaluation, SidIndex
from sidreasoner.config import Config
from sidreasoner.eval.catalogue import Catalogue
from sidreasoner.eval.predictions import load_split, prediction_rows, rows_metrics, write_evaluation


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


def evaluate_baselines(
    cfg: Config,
    dataset_dir: Dataset | os.PathLike,
    sid_index_dir: SidIndex | os.PathLike,
    out_dir: Evaluation | os.PathLike,
) -> dict[str, float]:
    """Popularity (train-split target counts) and random (seeded) rankings, same metrics and layout."""
    start = time.time()
    dataset = Dataset.at(dataset_dir)
    ec = cfg.eval
    cat = Catalogue.load(sid_index_dir, dataset)
    ks = ec.reported_ks
    kmax = max(ks)
    train = dataset.split("train", ["item_id"])
    pop_sids, pop_scores = popularity_ranking(train["item_id"].tolist(), cat.sid_of_item, cat.catalogue, kmax)
    rows: list[dict] = []
    metrics: dict[str, float] = {}
    for split in ec.splits:
        df = load_split(dataset, split, cat, ec.max_users)
        n = len(df)
        rand = random_rankings(cat.catalogue, n, kmax, cfg.seed)
        for mode, sids, scores in (
            ("popularity", [pop_sids] * n, [pop_scores] * n),
            ("random", rand, [[0.0] * kmax] * n),
        ):
            part = prediction_rows(df, split, mode, sids, scores, [""] * n, cat, kmax)
            rows.extend(part)
            metrics.update(rows_metrics(f"{split}_{mode}", part, cat, ks))
            metrics[f"{split}_{mode}_users"] = float(n)
    metrics["wall_seconds"] = time.time() - start
    record = {
        "kind": "baselines",
        "modes": ["popularity", "random"],
        "splits": ec.splits,
        "ks": ks,
        "catalogue_size": len(cat.catalogue),
        "items": len(cat.sid_of_item),
    }
    write_evaluation(out_dir, rows, metrics, record)
    return metrics
