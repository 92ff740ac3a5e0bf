"""RQ-VAE (Zeghidour et al.; TIGER's Semantic ID tokenizer) in torch.

Encoder MLP -> latent -> residual VQ (levels x codebook_size) -> decoder MLP. Loss: reconstruction
MSE + the levels' ||sg(r) - e||^2 + beta ||r - sg(e)||^2 (summed, or averaged with `quant_loss=mean`),
straight-through gradients.

Two recipes, chosen by `RQVAEConfig` (config/schema.py):

- the project's defaults, built against codebook collapse (MiniOneRec's RQ-VAE uses ~50 of 256
  first-level codes): a short autoencoder warm-up, then every level's codebook initialised by
  (balanced) k-means on the encoder outputs / residuals; codes left unused are re-seeded on random
  residuals of their level; the final assignment may cap items per code (`balance`);
- MiniOneRec's rq/rqvae.py (the paper presets): raw embeddings, Xavier-normal layers, k-means init on
  the untrained encoder's outputs, AdamW (no weight decay) with a linear learning-rate warm-up,
  gradient norm clipped, level losses averaged, the residual passed on without gradient (only the
  first level's commitment reaches the encoder), nearest codes, and the parameters of the evaluation
  (every `select_every` epochs) whose SIDs have the fewest duplicates.

The embeddings go to the training device once. When one batch holds the whole catalogue (the paper presets:
a batch of 20,480, ~3,500 items) every epoch is one step on those rows as they are; `train_loss` in the
metrics is the training loss of the kept epoch (the last, or the selected one).
"""

from __future__ import annotations

import copy
import math
import os
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sidreasoner.config import RQVAEConfig
from sidreasoner.sid.kmeans import balanced_assign, capacity_for, sq_dists
from sidreasoner.sid.rkmeans import QuantizeResult, residual_kmeans


def mlp(dims: list[int]) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(dims[:-1], dims[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(dims) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class RQVAE(nn.Module):
    def __init__(
        self,
        in_dim: int,
        hidden_dims: list[int],
        latent_dim: int,
        levels: int,
        k: int,
        beta: float,
        quant_loss: str = "sum",
        deep_commitment: bool = True,
        weight_init: str = "torch",
    ):
        super().__init__()
        self.encoder = mlp([in_dim, *hidden_dims, latent_dim])
        self.decoder = mlp([latent_dim, *reversed(hidden_dims), in_dim])
        self.codebooks = nn.Parameter(torch.randn(levels, k, latent_dim) * 0.1)
        self.beta = beta
        self.quant_loss = quant_loss
        self.deep_commitment = deep_commitment
        if weight_init == "xavier_normal":
            for module in self.modules():
                if isinstance(module, nn.Linear):
                    nn.init.xavier_normal_(module.weight)
                    nn.init.zeros_(module.bias)

    def quantize(self, z: torch.Tensor, capacity: int | None = None):
        """Residual VQ. Returns (z_q, codes [N, L], vq loss, residual inputs per level [L, N, D])."""
        residual, z_q = z, torch.zeros_like(z)
        codes, inputs, losses = [], [], []
        for book in self.codebooks:
            inputs.append(residual)
            dist = sq_dists(residual.detach(), book.detach())
            idx = balanced_assign(dist if capacity is None else dist.cpu(), capacity).to(dist.device)
            e = book[idx]
            losses.append(F.mse_loss(e, residual.detach()) + self.beta * F.mse_loss(residual, e.detach()))
            z_q = z_q + e
            # without deep commitment the next level's input carries no gradient, so its commitment
            # loss no longer trains the encoder
            residual = residual - e.detach() if self.deep_commitment else (residual - e).detach()
            codes.append(idx)
        loss = torch.stack(losses).sum() if self.quant_loss == "sum" else torch.stack(losses).mean()
        return z_q, torch.stack(codes, 1), loss, torch.stack(inputs)

    def forward(self, x: torch.Tensor):
        z = self.encoder(x)
        z_q, codes, vq_loss, inputs = self.quantize(z)
        x_hat = self.decoder(z + (z_q - z).detach())
        return x_hat, codes, vq_loss, inputs


def _kmeans_init(model: RQVAE, x: torch.Tensor, gen: torch.Generator, iters: int, balance: float) -> None:
    with torch.no_grad():
        z = model.encoder(x).cpu()
        levels, k, _ = model.codebooks.shape
        _, books, _, _ = residual_kmeans(z, levels, k, gen, iters=iters, balance=balance)
        model.codebooks.copy_(books.to(model.codebooks.device))


def _reseed_dead(model: RQVAE, codes: torch.Tensor, inputs: torch.Tensor, gen: torch.Generator) -> int:
    """Move every code unused in `codes` onto a random residual of its level; returns how many."""
    levels, k, _ = model.codebooks.shape
    n_dead = 0
    with torch.no_grad():
        for level in range(levels):
            dead = torch.bincount(codes[:, level], minlength=k) == 0
            n = int(dead.sum())
            if n:
                pick = torch.randint(inputs.shape[1], (n,), generator=gen).to(inputs.device)
                model.codebooks[level, dead] = inputs[level, pick]
                n_dead += n
    return n_dead


def _batches(n: int, batch_size: int, gen: torch.Generator) -> list[torch.Tensor]:
    if batch_size >= n:
        return [torch.arange(n)]
    return list(torch.randperm(n, generator=gen).split(batch_size))


def _epoch_batches(x: torch.Tensor, batch_size: int, gen: torch.Generator, gather: bool) -> Iterator[torch.Tensor]:
    """The epoch's batches. A batch that holds the whole catalogue is `x` itself, already on the device: no
    index sent to the device and no copy of the rows each step (`gather` keeps that per-step indexing, the
    reference the tests and benchmarks/rqvae_bench.py compare with). The full batch keeps the catalogue's
    order: every loss is a mean over rows, and the codes come back per row."""
    if batch_size >= len(x) and not gather:
        yield x
        return
    for idx in _batches(len(x), batch_size, gen):
        yield x[idx.to(x.device)]


def constant_after_warmup(warmup_steps: int):
    """Learning-rate factor of step s: s / warmup_steps during the warm-up (0 at the first step), then 1."""
    return lambda step: step / max(1, warmup_steps) if step < warmup_steps else 1.0


def _train_epoch(model, opt, sched, batches: Iterator[torch.Tensor], quantize: bool, grad_clip: float):
    """One pass over `batches`; returns the last batch's codes and level inputs, and the mean of the steps'
    losses as a tensor on the device (read only at the end of training: no synchronisation per step)."""
    codes = inputs = None
    total, steps = 0.0, 0
    for xb in batches:
        if quantize:
            x_hat, codes, vq_loss, inputs = model(xb)
            loss = F.mse_loss(x_hat, xb) + vq_loss
        else:
            loss = F.mse_loss(model.decoder(model.encoder(xb)), xb)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip > 0:
            nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        sched.step()
        total, steps = total + loss.detach(), steps + 1
    return codes, inputs, total / steps


def duplicate_rate(codes: torch.Tensor) -> float:
    """1 - distinct SIDs / items (MiniOneRec's `collision_rate`)."""
    return 1.0 - len(torch.unique(codes, dim=0)) / len(codes)


def _codes(model: RQVAE, x: torch.Tensor, capacity: int | None) -> torch.Tensor:
    with torch.no_grad():
        return model.quantize(model.encoder(x), capacity)[1]


def train_rqvae(
    x: torch.Tensor, rq: RQVAEConfig, levels: int, k: int, gen: torch.Generator, *, gather_batches: bool = False
) -> tuple[RQVAE, dict]:
    """Train on `x` (on the device it trains on). `gather_batches` indexes every step's rows out of `x` even
    when one batch holds them all, as before the full-batch path; the results are the same."""
    model = RQVAE(
        x.shape[1],
        list(rq.hidden_dims),
        rq.latent_dim,
        levels,
        k,
        rq.beta,
        rq.quant_loss,
        rq.deep_commitment,
        rq.weight_init,
    ).to(x.device)
    opt = torch.optim.Adam(model.parameters(), lr=rq.lr)
    steps_per_epoch = math.ceil(len(x) / rq.batch_size)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, constant_after_warmup(rq.lr_warmup_epochs * steps_per_epoch))

    def epoch_batches() -> Iterator[torch.Tensor]:
        return _epoch_batches(x, rq.batch_size, gen, gather_batches)

    for _ in range(rq.warmup_epochs):
        _train_epoch(model, opt, sched, epoch_batches(), False, rq.grad_clip)
    if rq.kmeans_init:
        _kmeans_init(model, x, gen, rq.kmeans_iters, rq.balance)
    capacity = capacity_for(len(x), k, rq.balance)
    select_every = min(rq.select_every, rq.epochs)
    best: tuple[float, int, dict] | None = None
    n_reseeded = 0
    epoch_losses = []
    for epoch in range(rq.epochs):
        codes, inputs, loss = _train_epoch(model, opt, sched, epoch_batches(), True, rq.grad_clip)
        epoch_losses.append(loss)
        if rq.reseed_every and (epoch + 1) % rq.reseed_every == 0 and epoch + 1 < rq.epochs:
            if rq.batch_size < len(x):  # judge usage on the whole catalogue, not one batch
                with torch.no_grad():
                    _, codes, _, inputs = model.quantize(model.encoder(x))
            n_reseeded += _reseed_dead(model, codes, inputs, gen)
        if select_every and (epoch + 1) % select_every == 0:
            # on the device: one encoder pass, nearest codes (no balance cap in the research recipe), one
            # synchronisation for the count, and a copy of the parameters there when they are the best so far
            rate = duplicate_rate(_codes(model, x, capacity))
            if best is None or rate < best[0]:  # the earliest of equally good evaluations
                best = (rate, epoch + 1, copy.deepcopy(model.state_dict()))
    metrics = {"codes_reseeded": float(n_reseeded), "train_loss": float(epoch_losses[-1])}
    if best is not None:
        model.load_state_dict(best[2])
        metrics.update(
            {
                "selected_epoch": float(best[1]),
                "selected_duplicate_rate": best[0],
                "train_loss": float(epoch_losses[best[1] - 1]),
            }
        )
    return model, metrics


def _standardize(x: torch.Tensor) -> torch.Tensor:
    x = x - x.mean(0, keepdim=True)
    return x / x.std().clamp_min(1e-12)


def resolve_device(device: str) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError("sid.rqvae.device is 'cuda' but no CUDA device is available")
        # deterministic cuBLAS (the quantize step runs with torch.use_deterministic_algorithms)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    return torch.device(device)


def rqvae_quantize(emb: np.ndarray, rq: RQVAEConfig, levels: int, k: int, seed: int) -> QuantizeResult:
    """Train an RQ-VAE on the embeddings (centred and scaled with `rq.standardize`) and return every item's codes."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(np.ascontiguousarray(emb, dtype=np.float32)).to(resolve_device(rq.device))
    if rq.standardize:
        x = _standardize(x)
    model, metrics = train_rqvae(x, rq, levels, k, gen)
    model.eval()
    with torch.no_grad():
        z = model.encoder(x)
        z_q, codes, _, inputs = model.quantize(z, capacity_for(len(x), k, rq.balance))
        recon = F.mse_loss(model.decoder(z_q), x)
        last = sq_dists(inputs[-1], model.codebooks[-1])
    metrics.update({"recon_mse": float(recon), "latent_residual_mse": float((z - z_q).pow(2).mean())})
    books = model.codebooks.detach().cpu().numpy().copy()
    return QuantizeResult(codes.cpu().numpy().astype(np.int64), books, last.cpu().numpy(), metrics)
