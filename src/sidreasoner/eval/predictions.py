"""What the evaluate and evaluate-baselines steps share: the samples of a split they rank, one prediction
row per sample and mode from its ranked SIDs, the metrics of those rows, and the evaluation they write."""

from __future__ import annotations

import os
from typing import Any

import pandas as pd

from sidreasoner.artifacts import Dataset, Evaluation
from sidreasoner.eval.catalogue import Catalogue
from sidreasoner.eval.metrics import expand_to_items, sid_and_item_metrics, target_rank


def load_split(dataset: Dataset, split: str, cat: Catalogue, max_users: int = 0) -> pd.DataFrame:
    """The split's samples whose target has a SID, the first `max_users` of them when set."""
    df = Dataset.at(dataset).split(split)
    df = df[df["item_id"].map(lambda i: int(i) in cat.sid_of_item)].reset_index(drop=True)
    return df.head(max_users) if max_users else df


def prediction_rows(
    df: pd.DataFrame, split: str, mode: str, ranked_sids, scores, reasonings, cat: Catalogue, kmax: int
) -> list[dict]:
    """One row per sample of `df` (Evaluation.PREDICTION_COLUMNS), from its ranked SIDs and their scores."""
    rows = []
    for r, sids, sc, reasoning in zip(df.itertuples(index=False), ranked_sids, scores, reasonings, strict=True):
        target_sid = cat.sid_of_item[int(r.item_id)]
        items = expand_to_items(sids, cat.sid_items, kmax)
        rank = target_rank(sids[:kmax], target_sid)
        rows.append(
            {
                "user_id": r.user_id,
                "split": split,
                "mode": mode,
                "target_item_id": int(r.item_id),
                "target_sid": target_sid,
                "history_item_ids": [int(i) for i in r.history_item_ids],
                "pred_sids": list(sids[:kmax]),
                "pred_scores": [float(s) for s in sc[:kmax]],
                "pred_item_ids": items,
                "pred_titles": [cat.title(i) for i in items],
                "hit_rank": -1 if rank is None else int(rank),
                "reasoning": reasoning or "",
            }
        )
    return rows


def rows_metrics(prefix: str, rows: list[dict], cat: Catalogue, ks: list[int]) -> dict[str, float]:
    """SID- and item-level HR/NDCG@K of the rows, each key prefixed '<split>_<mode>_'. In a dataset of several
    categories also each category's, over the rows whose target item is of it, the key suffixed '_<category>'
    ('test_think_hr@10_Office_Products'), and its number of rows ('<split>_<mode>_users_<category>')."""
    out = {f"{prefix}_{k}": float(v) for k, v in _metrics(rows, cat, ks).items()}
    by_category: dict[str, list[dict]] = {}
    for r in rows:
        if cat.categories:
            by_category.setdefault(cat.categories[int(r["target_item_id"])], []).append(r)
    for category, part in sorted(by_category.items()):
        out.update({f"{prefix}_{k}_{category}": float(v) for k, v in _metrics(part, cat, ks).items()})
        out[f"{prefix}_users_{category}"] = float(len(part))
    return out


def _metrics(rows: list[dict], cat: Catalogue, ks: list[int]) -> dict[str, float]:
    return sid_and_item_metrics(
        [r["pred_sids"] for r in rows],
        [r["target_sid"] for r in rows],
        [r["target_item_id"] for r in rows],
        cat.sid_items,
        ks,
    )


def write_evaluation(out_dir: str | os.PathLike, rows: list[dict], metrics: dict, record: dict[str, Any]) -> None:
    with Evaluation.writing(out_dir) as evaluation:
        evaluation.write(rows, metrics, record)
