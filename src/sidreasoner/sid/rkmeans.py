"""Residual k-means: level l clusters the residual left by levels 0..l-1."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from sidreasoner.sid.codes import collision_stats
from sidreasoner.sid.kmeans import kmeans, sq_dists


@dataclass
class QuantizeResult:
    codes: np.ndarray  # int64 [N, levels]
    codebooks: np.ndarray  # float32 [levels, K, D] (D = embedding dim for rkmeans, latent dim for rqvae)
    last_dists: np.ndarray  # float32 [N, K]: last-level input residual to each last-level code
    metrics: dict[str, float]


def residual_kmeans(
    x: torch.Tensor, levels: int, k: int, gen: torch.Generator, iters: int = 30, balance: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Returns (codes [N, L], codebooks [L, K, D], last-level distances [N, K], final residual [N, D])."""
    residual = x.clone()
    codes, books = [], []
    last = residual
    for _ in range(levels):
        last = residual
        centers, assign = kmeans(residual, k, gen, iters=iters, balance=balance)
        codes.append(assign)
        books.append(centers)
        residual = residual - centers[assign]
    return torch.stack(codes, 1), torch.stack(books), sq_dists(last, books[-1]), residual


def restart_seeds(seed: int, restarts: int) -> list[int]:
    """Independent seeds for the restarts of one run (numpy SeedSequence children of `seed`)."""
    children = np.random.SeedSequence(seed).spawn(restarts)
    return [int(child.generate_state(1, np.uint32)[0]) for child in children]


def fit_residual_kmeans(x: torch.Tensor, levels: int, k: int, seed: int, iters: int, balance: float) -> QuantizeResult:
    gen = torch.Generator().manual_seed(seed)
    codes, books, last_dists, residual = residual_kmeans(x, levels, k, gen, iters=iters, balance=balance)
    metrics = {
        "residual_mse": float(residual.pow(2).mean()),
        "relative_residual": float(residual.pow(2).sum() / x.pow(2).sum().clamp_min(1e-12)),
    }
    return QuantizeResult(codes.numpy().astype(np.int64), books.numpy(), last_dists.numpy(), metrics)


def rkmeans_quantize(
    emb: np.ndarray,
    levels: int,
    k: int,
    seed: int,
    iters: int = 30,
    balance: float = 1.0,
    restarts: int = 1,
    target: float = 0.0,
) -> QuantizeResult:
    """Residual k-means on the raw embeddings (seeded, deterministic).

    With restarts > 1, fits from `restart_seeds(seed, restarts)` in turn and keeps the one whose
    nearest-code SIDs collide least (ties: lower residual error), as the research code's RQ-VAE trainer
    keeps its fewest-collision checkpoint; a fit whose collision rate is at most `target` ends the
    search. No item is moved off its nearest code here: that is collision handling, which comes after
    (sid.collision).
    """
    if restarts < 1:
        raise ValueError(f"restarts must be >= 1, got {restarts}")
    x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
    fits, colliding = [], []
    for restart_seed in restart_seeds(seed, restarts):
        fits.append(fit_residual_kmeans(x, levels, k, restart_seed, iters, balance))
        colliding.append(collision_stats(fits[-1].codes)["n_colliding_items"])
        if colliding[-1] <= target * len(x):
            break
    best = min(range(len(fits)), key=lambda r: (colliding[r], fits[r].metrics["relative_residual"]))
    chosen = fits[best]
    chosen.metrics.update(
        {
            "restarts_run": float(len(fits)),
            "restart_chosen": float(best),
            "collision_rate_worst_restart": max(colliding) / len(x),
        }
    )
    return chosen
