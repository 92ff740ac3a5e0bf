"""Stage 3 `trl` backend throughput on CPU: rollout + reward + GRPO update, in completions per second.

Each configuration runs the real step function (`sidreasoner.rl.stage3.rl_stage3`, TRL's
GRPOTrainer with our SID reward and RL data) for a few optimizer steps on the built-in tiny Qwen3
architecture, RANDOM INIT with SID tokens (throughput does not depend on what the model knows,
only on its size and on the lengths it generates). Data: a synthetic catalogue of 3-level SIDs
(codebook 32, the demo preset's) and users with 10-item histories, in the pipeline's formats.

Completions per second = optimizer steps x train_batch_size prompts x num_generations / training
wall time (what the step reports as `samples_per_s`). Every configuration runs in one process, one
after another, so their ratios are comparable; the absolute figures depend on how busy the machine is.

    .venv/bin/python benchmarks/rl_bench.py [--steps 4] [--threads 1] [--out benchmarks/out/rl_bench.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parent.parent / "tests" / "helpers"))
from models import build_tiny_model, random_codes  # noqa: E402

from sidreasoner import config  # noqa: E402
from sidreasoner.artifacts import Dataset, SidIndex  # noqa: E402
from sidreasoner.rl import stage3  # noqa: E402
from sidreasoner.sid.codes import sid_tokens  # noqa: E402

# (label, hidden size, layers, num_generations, max_response_length)
CONFIGS = [
    ("demo model (hidden 64, 2 layers), G=4, 64 new tokens", 64, 2, 4, 64),
    ("demo model, G=8, 64 new tokens", 64, 2, 8, 64),
    ("demo model, G=4, 128 new tokens", 64, 2, 4, 128),
    ("larger tiny (hidden 256, 4 layers), G=4, 64 new tokens", 256, 4, 4, 64),
]


def write_data(root: Path, n_items: int, n_users: int, history: int, seed: int) -> tuple[Path, Path, np.ndarray]:
    codes = random_codes(n_items, 3, 32, seed)
    rng = np.random.default_rng(seed)
    dataset, sid_index = Dataset(root / "dataset"), SidIndex(root / "sid_index")
    dataset.path.mkdir(parents=True)
    sid_index.path.mkdir(parents=True)
    rows = [
        {
            "user_id": u,
            "history_item_ids": rng.choice(n_items, history, replace=False).tolist(),
            "item_id": int(rng.integers(n_items)),
            "timestamp": u,
        }
        for u in range(n_users)
    ]
    for split in ("train", "valid", "test"):
        dataset.write_split(split, pd.DataFrame(rows))
    sid_index.write_index({i: sid_tokens(c) for i, c in enumerate(codes)})
    return dataset.path, sid_index.path, codes


def run_one(
    root: Path,
    dataset: Path,
    sid_index: Path,
    codes: np.ndarray,
    hidden: int,
    layers: int,
    generations: int,
    max_new: int,
    steps: int,
    seed: int,
) -> dict:
    model_dir = root / f"model_{hidden}_{layers}"
    if not model_dir.exists():
        build_tiny_model(model_dir, codes, codebook=32, seed=seed, hidden=hidden, layers=layers, vocab=600)
    params = sum(t.numel() for t in load_file(model_dir / "model.safetensors").values())
    tag = f"{hidden}_{layers}_{generations}_{max_new}"
    cfg = config.load(
        "demo",
        [
            "stage3.backend=trl",
            f"stage3.num_generations={generations}",
            "stage3.train_batch_size=4",
            f"stage3.micro_batch_size={4 * generations}",
            f"stage3.max_steps={steps}",
            f"stage3.max_response_length={max_new}",
            f"stage3.save_steps={steps}",
            "stage3.valid_samples=1",
            f"stage3.checkpoint_dir={root / 'ckpt' / tag}",
            f"seed={seed}",
        ],
    )
    t0 = time.perf_counter()
    # stage3.prompts=train (the demo's): the corpus folder is not read.
    metrics = stage3.rl_stage3(cfg, model_dir, dataset, sid_index, root / "corpus", root / f"out_{tag}")
    return {
        "samples_per_s": metrics["samples_per_s"],
        "train_wall_seconds": metrics["train_wall_seconds"],
        "step_wall_seconds": time.perf_counter() - t0,
        "completion_length_mean": metrics["completion_length_mean"],
        "steps": metrics["steps"],
        "parameters": params,
    }


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4, help="optimizer steps per configuration")
    ap.add_argument("--threads", type=int, default=1, help="1: the machine is shared; 2 threads on 2 busy cores thrash")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/out/rl_bench.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    results = {"threads": args.threads, "steps": args.steps, "prompts_per_step": 4, "runs": []}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        dataset, sid_index, codes = write_data(root, n_items=500, n_users=200, history=10, seed=args.seed)
        for label, hidden, layers, generations, max_new in CONFIGS:
            row = {
                "config": label,
                "num_generations": generations,
                "max_response_length": max_new,
                **run_one(root, dataset, sid_index, codes, hidden, layers, generations, max_new, args.steps, args.seed),
            }
            results["runs"].append(row)
            print(json.dumps(row))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
