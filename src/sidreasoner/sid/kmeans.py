"""Seeded batched k-means in torch, with an optional size-constrained (balanced) assignment.

Balanced assignment caps every cluster at `capacity` items, which keeps all codes in use and
spreads items over codes (fewer SID collisions) at a small cost in quantization error.
"""

from __future__ import annotations

import math

import torch


def sq_dists(x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """Squared euclidean distances [N, K] between rows of x [N, D] and c [K, D]."""
    d = (x * x).sum(1, keepdim=True) - 2.0 * x @ c.T + (c * c).sum(1)[None, :]
    return d.clamp_min_(0.0)


def capacity_for(n: int, k: int, balance: float) -> int | None:
    """Items allowed per cluster: ceil(balance * n / k); None (no cap) when balance <= 0."""
    if balance <= 0:
        return None
    if balance < 1:
        raise ValueError(f"balance must be 0 (off) or >= 1, got {balance}")
    return max(1, math.ceil(balance * n / k))


def _rank_within(choice: torch.Tensor, cost: torch.Tensor, k: int) -> torch.Tensor:
    """Rank of each proposer among those proposing to the same cluster, cheapest first."""
    order = torch.argsort(cost, stable=True)
    order = order[torch.argsort(choice[order], stable=True)]
    counts = torch.bincount(choice, minlength=k)
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.empty_like(choice)
    rank[order] = torch.arange(len(choice)) - starts[choice[order]]
    return rank


def balanced_assign(dist: torch.Tensor, capacity: int | None) -> torch.Tensor:
    """Assign each row to a column, at most `capacity` rows per column (greedy rounds of proposals).

    Each round, every unassigned row proposes to its nearest non-full column; a column accepts its
    closest proposers up to its remaining room. With capacity None this is plain argmin.
    """
    n, k = dist.shape
    if capacity is None:
        return dist.argmin(1)
    if capacity * k < n:
        raise ValueError(f"capacity {capacity} x {k} clusters cannot hold {n} items")
    assign = torch.full((n,), -1, dtype=torch.long)
    room = torch.full((k,), capacity, dtype=torch.long)
    while True:
        free = torch.nonzero(assign < 0).flatten()
        if len(free) == 0:
            return assign
        d = dist[free].masked_fill(room[None, :] <= 0, float("inf"))
        cost, choice = d.min(1)
        rank = _rank_within(choice, cost, k)
        accept = rank < room[choice]
        assign[free[accept]] = choice[accept]
        room -= torch.bincount(choice[accept], minlength=k)


def kmeans_pp_init(x: torch.Tensor, k: int, gen: torch.Generator, trials: int | None = None) -> torch.Tensor:
    """Greedy k-means++ seeding, seeded by `gen`: each step draws `trials` candidates by D^2 weighting
    and keeps the one that lowers the total squared distance most. `trials` defaults to 2 + ln k, as
    scikit-learn's: with one candidate per step, clearly separated clusters often end up merged under
    one code while another cluster is split, which makes SID collisions (benchmarks/README.md)."""
    n = len(x)
    trials = trials or 2 + int(math.log(k))
    sq_norms = (x * x).sum(1)  # computed once: each step needs only x @ candidates

    def dists_to(idx: torch.Tensor) -> torch.Tensor:  # [len(idx), n]
        return (sq_norms[idx, None] - 2.0 * (x[idx] @ x.T) + sq_norms[None, :]).clamp_min_(0.0)

    first = torch.randint(n, (1,), generator=gen)
    chosen = [int(first)]
    closest = dists_to(first)[0]
    for _ in range(1, k):
        total = closest.sum()
        probs = closest / total if total > 0 else torch.full_like(closest, 1.0 / n)
        candidates = torch.multinomial(probs, trials, replacement=True, generator=gen)
        merged = torch.minimum(closest[None, :], dists_to(candidates))
        best = int(merged.sum(1).argmin())
        chosen.append(int(candidates[best]))
        closest = merged[best]
    return x[chosen]


def _update_centers(x: torch.Tensor, assign: torch.Tensor, centers: torch.Tensor) -> torch.Tensor:
    k = len(centers)
    sums = torch.zeros_like(centers).index_add_(0, assign, x)
    counts = torch.bincount(assign, minlength=k).to(x.dtype)
    new = sums / counts.clamp_min(1)[:, None]
    empty = counts == 0
    if empty.any():
        # re-seed empty clusters on the items worst served by their current center
        err = (x - new[assign]).pow(2).sum(1)
        worst = torch.argsort(err, descending=True, stable=True)[: int(empty.sum())]
        new[empty] = x[worst]
    return new


def kmeans(
    x: torch.Tensor, k: int, gen: torch.Generator, iters: int = 30, balance: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lloyd's k-means from k-means++ seeds. Returns (centers [k, D], assignment [N])."""
    if len(x) < k:
        raise ValueError(f"k-means needs at least k={k} points, got {len(x)}")
    capacity = capacity_for(len(x), k, balance)
    centers = kmeans_pp_init(x, k, gen)
    assign = balanced_assign(sq_dists(x, centers), capacity)
    for _ in range(iters):
        centers = _update_centers(x, assign, centers)
        new_assign = balanced_assign(sq_dists(x, centers), capacity)
        if torch.equal(new_assign, assign):
            break
        assign = new_assign
    return centers, assign
