"""Residual k-means: level l clusters the residual left by levels 0..l-1."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

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


def rkmeans_quantize(
    emb: np.ndarray, levels: int, k: int, seed: int, iters: int = 30, balance: float = 1.0
) -> QuantizeResult:
    """Residual k-means on the raw embeddings (seeded, deterministic)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
    codes, books, last_dists, residual = residual_kmeans(x, levels, k, gen, iters=iters, balance=balance)
    metrics = {
        "residual_mse": float(residual.pow(2).mean()),
        "relative_residual": float(residual.pow(2).sum() / x.pow(2).sum().clamp_min(1e-12)),
    }
    return QuantizeResult(codes.numpy().astype(np.int64), books.numpy(), last_dists.numpy(), metrics)
