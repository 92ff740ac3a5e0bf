"""HR@K and NDCG@K (1/log2(rank+2)) from ranked lists and targets, at SID level (as the paper:
a hit when the target's SID is among the top-K SIDs) and item level (each predicted SID expanded to
its items in a fixed order, truncated to K, so a colliding SID counts once per item)."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence


def target_rank(ranked: Sequence[Hashable], target: Hashable) -> int | None:
    """0-based rank of the first occurrence of `target` in `ranked`, or None."""
    for i, x in enumerate(ranked):
        if x == target:
            return i
    return None


def hr_ndcg(
    ranked_lists: Sequence[Sequence[Hashable]], targets: Sequence[Hashable], ks: Sequence[int]
) -> dict[str, float]:
    """{'hr@K', 'ndcg@K'} averaged over users (0.0 for no users). Only the top K of each list count."""
    if len(ranked_lists) != len(targets):
        raise ValueError(f"{len(ranked_lists)} ranked lists but {len(targets)} targets")
    out: dict[str, float] = {}
    n = len(targets)
    ranks = [target_rank(r, t) for r, t in zip(ranked_lists, targets, strict=True)]
    for k in ks:
        if k < 1:
            raise ValueError(f"K must be >= 1, got {k}")
        hits = [r for r in ranks if r is not None and r < k]
        out[f"hr@{k}"] = len(hits) / n if n else 0.0
        out[f"ndcg@{k}"] = sum(1.0 / math.log2(r + 2) for r in hits) / n if n else 0.0
    return out


def expand_to_items(ranked_sids: Sequence[str], sid_items: Mapping[str, Sequence[int]], k: int) -> list[int]:
    """Predicted SIDs -> item ids: each SID's items in the order of `sid_items` (sorted item ids by
    convention), duplicates dropped, truncated to k. SIDs with no items are skipped."""
    out: list[int] = []
    seen: set[int] = set()
    for sid in ranked_sids:
        for item in sid_items.get(sid, ()):
            if item not in seen:
                seen.add(item)
                out.append(int(item))
                if len(out) >= k:
                    return out
    return out


def sid_item_map(item_ids: Sequence[int], sids: Sequence[str]) -> dict[str, list[int]]:
    """SID -> its items, sorted by item id (the fixed order item-level metrics use)."""
    out: dict[str, list[int]] = {}
    for item, sid in sorted(zip((int(i) for i in item_ids), sids, strict=True)):
        out.setdefault(sid, []).append(item)
    return out


def sid_and_item_metrics(
    ranked_sids: Sequence[Sequence[str]],
    target_sids: Sequence[str],
    target_items: Sequence[int],
    sid_items: Mapping[str, Sequence[int]],
    ks: Sequence[int],
) -> dict[str, float]:
    """SID-level 'hr@K'/'ndcg@K' and item-level 'item_hr@K'/'item_ndcg@K'."""
    out = hr_ndcg(ranked_sids, target_sids, ks)
    kmax = max(ks)
    items = [expand_to_items(r, sid_items, kmax) for r in ranked_sids]
    out.update({f"item_{k}": v for k, v in hr_ndcg(items, [int(t) for t in target_items], ks).items()})
    return out
