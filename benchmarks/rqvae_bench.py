"""RQ-VAE training speed at the paper's shape: epochs/s on this CPU, FLOPs per epoch, 10,000-epoch projections.

The paper presets' `sid.rqvae` (MiniOneRec's rq/rqvae.py recipe: encoder 2560-2048-1024-512-256-128-64-32 and the
mirrored decoder, 3 levels x 256 codes, batch 20,480 >= the catalogue: one full-batch step an epoch) on
seeded synthetic unit vectors of the Office catalogue's shape (3,459 x 2,560, Qwen3-Embedding-4B's width).

Paths (train_rqvae's `gather_batches`):
  full      the batch is the embeddings tensor itself, already on the device
  gathered  every step indexes its rows out of the embeddings (x[arange(N)]: an index copied to the device, a
            copy of the rows), as before the full-batch path

It times `--epochs` of train_rqvae's epochs per path after one warm-up epoch (its once-only k-means init left
out), one duplicate-rate evaluation of the every-50-epochs selection, and the dispatch floor.

FLOPs (multiply-add = 2), N items, W = weights of the encoder's and decoder's Linear layers, W_enc the
encoder's, W_in its first layer's (2,560 x 2,048), L levels, K codes, D latent width:
  training step  2 N W (forward) + 4 N W - 2 N W_in (backward: input and weight gradients, none for x)
                 + L * 2 N K D (distances of the residuals to each level's codes; no gradient)
  selection      (2 N W_enc + L * 2 N K D) every `select_every` epochs
  not counted    the element-wise work (ReLU, losses, Adam over the 16.1 M parameters: memory-bound, about
                 0.5 GB of traffic a step, ~0.2 ms at H100 bandwidth)

The H100 projection is FLOPs / an assumed sustained fp32 rate (`--gpu-tflops`, 25 by default): torch leaves
TF32 off for fp32 matmuls, so cuBLAS SGEMM runs on the FP32 units (H100 SXM peak 67 TFLOP/s, PCIe 51); the
layers 2,048-2,560 wide (91% of the FLOPs) are large GEMMs that reach well over half of peak, the narrow ones
(<= 512 wide) far less; 25 is about 37% of the SXM peak (half the PCIe's), on the safe side. An epoch cannot
be shorter than the host's time to issue its ops: the dispatch floor, measured here on one thread with the
same layers 8 wide on 8 items (an upper bound for CUDA: on the CPU Adam updates tensor by tensor, on CUDA in a
few fused foreach kernels). The GPU runs the epoch while the host issues it, so an epoch takes the larger of
the two. The gathered path adds a copy of the rows (2 N dim 4 bytes, at an assumed 2 TB/s of the H100's 3.35)
and one synchronisation an epoch (its blocking index copy), which in a compute-bound epoch leaves the GPU idle
only for the few microseconds the host takes to issue the next kernel.

Run: .venv/bin/python benchmarks/rqvae_bench.py [--paths full gathered] [--epochs 2] [--n 3459] [--dim 2560]
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch

from sidreasoner import config
from sidreasoner.config import RQVAEConfig
from sidreasoner.sid.rqvae import RQVAE, _epoch_batches, _train_epoch, constant_after_warmup, duplicate_rate

LEVELS, CODES, SEED = 3, 256, 0
RECIPE_EPOCHS = 10_000


def embeddings(n: int, dim: int) -> torch.Tensor:
    x = np.random.default_rng(SEED).normal(size=(n, dim)).astype(np.float32)
    return torch.from_numpy(x / np.linalg.norm(x, axis=1, keepdims=True))


def paper_rqvae(**update) -> RQVAEConfig:
    return config.load("office").sid.rqvae.model_copy(update={"device": "cpu", **update})


def linear_weights(module: torch.nn.Module) -> list[int]:
    return [m.weight.numel() for m in module.modules() if isinstance(m, torch.nn.Linear)]


def flops_per_epoch(model: RQVAE, n: int, select_every: int) -> dict[str, float]:
    levels, k, d = model.codebooks.shape
    enc, dec = linear_weights(model.encoder), linear_weights(model.decoder)
    w, w_enc, w_in = sum(enc) + sum(dec), sum(enc), enc[0]
    distances = levels * 2 * n * k * d
    train = 2 * n * w + 4 * n * w - 2 * n * w_in + distances
    select = (2 * n * w_enc + distances) / select_every
    return {"params": sum(p.numel() for p in model.parameters()), "train": train, "select": select}


def seconds_per_epoch(x: torch.Tensor, rq: RQVAEConfig, epochs: int, gather: bool) -> float:
    """Training time per epoch (train_rqvae's epoch, without its k-means init and selection), after one warm-up
    epoch. The codebooks keep their random init: an epoch's work does not depend on their values."""
    torch.manual_seed(SEED)
    model = RQVAE(
        x.shape[1], list(rq.hidden_dims), rq.latent_dim, LEVELS, CODES, rq.beta, rq.quant_loss, rq.deep_commitment
    )
    opt = torch.optim.Adam(model.parameters(), lr=rq.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, constant_after_warmup(rq.lr_warmup_epochs))
    gen = torch.Generator().manual_seed(SEED)

    def epoch() -> None:
        _train_epoch(model, opt, sched, _epoch_batches(x, rq.batch_size, gen, gather), True, rq.grad_clip)

    epoch()
    start = time.perf_counter()
    for _ in range(epochs):
        epoch()
    return (time.perf_counter() - start) / epochs


def selection_seconds(x: torch.Tensor) -> float:
    """One duplicate-rate evaluation of the selection (encoder pass, nearest codes, distinct SIDs)."""
    torch.manual_seed(SEED)
    model = RQVAE(x.shape[1], [2048, 1024, 512, 256, 128, 64], 32, LEVELS, CODES, 0.25, weight_init="xavier_normal")
    with torch.no_grad():
        start = time.perf_counter()
        duplicate_rate(model.quantize(model.encoder(x))[1])
    return time.perf_counter() - start


def dispatch_floor(rq: RQVAEConfig, epochs: int) -> float:
    """Seconds an epoch takes with no work in it: the same layers, levels and optimizer state, 8 wide, on 8
    items, on one thread (with two, the threads' hand-offs on a shared machine swamp the figure)."""
    tiny = rq.model_copy(update={"hidden_dims": [8] * len(rq.hidden_dims)})
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return seconds_per_epoch(embeddings(8, 8), tiny, epochs, gather=False)
    finally:
        torch.set_num_threads(threads)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--paths", nargs="+", choices=["full", "gathered"], default=["full", "gathered"])
    ap.add_argument("--epochs", type=int, default=2, help="timed epochs per path, after one warm-up epoch")
    ap.add_argument("--n", type=int, default=3459, help="items (the Office catalogue: 3,459)")
    ap.add_argument("--dim", type=int, default=2560, help="embedding width (Qwen3-Embedding-4B: 2,560)")
    ap.add_argument("--gpu-tflops", type=float, default=25.0, help="assumed sustained fp32 TFLOP/s on an H100")
    ap.add_argument("--json", help="also write the figures to this file")
    args = ap.parse_args()

    rq = paper_rqvae(select_every=0)  # the selection is timed on its own
    x = embeddings(args.n, args.dim)
    model = RQVAE(args.dim, list(rq.hidden_dims), rq.latent_dim, LEVELS, CODES, rq.beta)
    flops = flops_per_epoch(model, args.n, paper_rqvae().select_every)
    per_epoch = flops["train"] + flops["select"]
    figures: dict = {
        "shape": f"{args.n} x {args.dim}, hidden {list(rq.hidden_dims)}, latent {rq.latent_dim}, {LEVELS} x {CODES}",
        "torch_threads": torch.get_num_threads(),
        "params_M": round(flops["params"] / 1e6, 2),
        "gflop_per_epoch": {"train": round(flops["train"] / 1e9, 1), "selection": round(flops["select"] / 1e9, 2)},
    }
    select_s = selection_seconds(x) / paper_rqvae().select_every
    dispatch_s = dispatch_floor(rq, 20)
    figures["dispatch_floor_ms_per_epoch"] = round(dispatch_s * 1e3, 1)
    for path in args.paths:
        epoch_s = seconds_per_epoch(x, rq, args.epochs, gather=path == "gathered") + select_s
        figures[f"cpu_{path}"] = {
            "s_per_epoch": round(epoch_s, 2),
            "epochs_per_s": round(1 / epoch_s, 4),
            "gflop_per_s": round(per_epoch / epoch_s / 1e9, 1),
            "h_for_10000_epochs": round(epoch_s * RECIPE_EPOCHS / 3600, 1),
        }
    gpu_compute_s = per_epoch / (args.gpu_tflops * 1e12)
    gpu_epoch_s = max(gpu_compute_s, dispatch_s)
    figures["h100_projection"] = {
        "assumed_fp32_tflop_per_s": args.gpu_tflops,
        "compute_ms_per_epoch": round(gpu_compute_s * 1e3, 1),
        "epoch_ms": round(gpu_epoch_s * 1e3, 1),
        "min_for_10000_epochs": round(gpu_epoch_s * RECIPE_EPOCHS / 60, 1),
        "gathered_copy_ms_per_epoch": round(2 * args.n * args.dim * 4 / 2e12 * 1e3, 3),
    }
    print(json.dumps(figures, indent=1))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(figures, f, indent=1)


if __name__ == "__main__":
    main()
