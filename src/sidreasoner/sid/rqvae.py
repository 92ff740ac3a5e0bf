"""RQ-VAE (Zeghidour et al.; TIGER's Semantic ID tokenizer) in torch, built to avoid codebook collapse.

Encoder MLP -> latent -> residual VQ (levels x codebook_size) -> decoder MLP. Loss: reconstruction
MSE + per level ||sg(r) - e||^2 + beta ||r - sg(e)||^2, straight-through gradients.

Against collapse (MiniOneRec's RQ-VAE uses ~50 of 256 first-level codes):
- a short autoencoder warm-up, then every level's codebook is initialised by (balanced) k-means on
  the encoder outputs / residuals;
- codes left unused in an epoch are re-seeded on random residuals of their level;
- the final assignment may cap items per code (`balance`), like residual k-means.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sidreasoner.config import RQVAEConfig
from sidreasoner.sid.kmeans import balanced_assign, capacity_for, sq_dists
from sidreasoner.sid.rkmeans import QuantizeResult, residual_kmeans


def mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:])):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    def __init__(self, in_dim: int, hidden_dims: list[int], latent_dim: int, levels: int, k: int, beta: float):
        super().__init__()
        self.encoder = mlp([in_dim, *hidden_dims, latent_dim])
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), in_dim])
        self.codebooks = nn.Parameter(torch.randn(levels, k, latent_dim) * 0.1)
        self.beta = beta

    def quantize(self, z: torch.Tensor, capacity: int | None = None):
        """Residual VQ. Returns (z_q, codes [N, L], vq loss, residual inputs per level [L, N, D])."""
        residual, z_q = z, torch.zeros_like(z)
        codes, inputs, loss = [], [], z.new_zeros(())
        for book in self.codebooks:
            inputs.append(residual)
            idx = balanced_assign(sq_dists(residual.detach(), book.detach()), capacity)
            e = book[idx]
            loss = loss + F.mse_loss(e, residual.detach()) + self.beta * F.mse_loss(residual, e.detach())
            z_q = z_q + e
            residual = residual - e.detach()
            codes.append(idx)
        return z_q, torch.stack(codes, 1), loss, torch.stack(inputs)

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        z_q, codes, vq_loss, inputs = self.quantize(z)
        x_hat = self.decoder(z + (z_q - z).detach())
        return x_hat, codes, vq_loss, inputs


def _kmeans_init(model: RQVAE, x: torch.Tensor, gen: torch.Generator, balance: float) -> None:
    with torch.no_grad():
        z = model.encoder(x)
        levels, k, _ = model.codebooks.shape
        _, books, _, _ = residual_kmeans(z, levels, k, gen, iters=20, balance=balance)
        model.codebooks.copy_(books)


def _reseed_dead(model: RQVAE, codes: torch.Tensor, inputs: torch.Tensor, gen: torch.Generator) -> int:
    """Move every code unused in `codes` onto a random residual of its level; returns how many."""
    levels, k, _ = model.codebooks.shape
    n_dead = 0
    with torch.no_grad():
        for level in range(levels):
            dead = torch.bincount(codes[:, level], minlength=k) == 0
            n = int(dead.sum())
            if n:
                pick = torch.randint(inputs.shape[1], (n,), generator=gen)
                model.codebooks[level, dead] = inputs[level, pick]
                n_dead += n
    return n_dead


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    if batch_size >= n:
        return [torch.arange(n)]
    return list(torch.randperm(n, generator=gen).split(batch_size))


def _train_epoch(model, opt, x, batch_size, gen, quantize: bool):
    for idx in _batches(len(x), batch_size, gen):
        xb = x[idx]
        if quantize:
            x_hat, codes, vq_loss, inputs = model(xb)
            loss = F.mse_loss(x_hat, xb) + vq_loss
        else:
            loss = F.mse_loss(model.decoder(model.encoder(xb)), xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return (codes, inputs) if quantize else (None, None)


def train_rqvae(x: torch.Tensor, rq: RQVAEConfig, levels: int, k: int, gen: torch.Generator) -> tuple[RQVAE, dict]:
    model = RQVAE(x.shape[1], list(rq.hidden_dims), rq.latent_dim, levels, k, rq.beta)
    opt = torch.optim.Adam(model.parameters(), lr=rq.lr)
    for _ in range(rq.warmup_epochs):
        _train_epoch(model, opt, x, rq.batch_size, gen, quantize=False)
    if rq.kmeans_init:
        _kmeans_init(model, x, gen, rq.balance)
    n_reseeded = 0
    for epoch in range(rq.epochs):
        codes, inputs = _train_epoch(model, opt, x, rq.batch_size, gen, quantize=True)
        if rq.reseed_every and (epoch + 1) % rq.reseed_every == 0 and epoch + 1 < rq.epochs:
            if rq.batch_size < len(x):  # judge usage on the whole catalogue, not one batch
                with torch.no_grad():
                    _, codes, _, inputs = model.quantize(model.encoder(x))
            n_reseeded += _reseed_dead(model, codes, inputs, gen)
    return model, {"codes_reseeded": float(n_reseeded)}


def _standardize(emb: np.ndarray) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32))
    x = x - x.mean(0, keepdim=True)
    return x / x.std().clamp_min(1e-12)


def rqvae_quantize(emb: np.ndarray, rq: RQVAEConfig, levels: int, k: int, seed: int) -> QuantizeResult:
    """Train an RQ-VAE on the (centred, scaled) embeddings and return every item's codes."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = _standardize(emb)
    model, metrics = train_rqvae(x, rq, levels, k, gen)
    model.eval()
    with torch.no_grad():
        z = model.encoder(x)
        z_q, codes, _, inputs = model.quantize(z, capacity_for(len(x), k, rq.balance))
        recon = F.mse_loss(model.decoder(z_q), x)
        last = sq_dists(inputs[-1], model.codebooks[-1])
    metrics.update({"recon_mse": float(recon), "latent_residual_mse": float((z - z_q).pow(2).mean())})
    books = model.codebooks.detach().numpy().copy()
    return QuantizeResult(codes.numpy().astype(np.int64), books, last.numpy(), metrics)
