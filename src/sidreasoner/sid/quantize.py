"""`quantize-sids` step: embeddings -> 3-level Semantic IDs, collisions handled (`sid.collision`).

Output folder:
  sids.parquet        item_id (int64), codes (list<int64>), sid (str "<a_12><b_200><c_7>")
  index.json          {"<item_id>": ["<a_12>", "<b_200>", "<c_7>"]}
  catalogue.json      sorted list of valid SID strings
  codebooks.npy       float32 [levels, codebook_size, dim] (rqvae: latent space; rkmeans: embedding space)
  quantizer.json      method, shape and the settings used
  research/           MiniOneRec/SIDReasoner layout: {train,valid,test}/<Cat>.csv, info/<Cat>.txt,
                      index/<Cat>.index.json, index/<Cat>.item.json (only index/<Cat>.index.json
                      when data_dir has no train/valid/test splits)
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from sidreasoner.config import Config
from sidreasoner.data.from_research import bundle_file
from sidreasoner.data.preprocess import dataset_category
from sidreasoner.data.research import read_sid_index
from sidreasoner.io import atomic_dir, read_json, write_json
from sidreasoner.sid.codes import code_usage, collision_stats, format_sid, parse_sid, sid_tokens
from sidreasoner.sid.collisions import resolve_collisions
from sidreasoner.sid.rkmeans import QuantizeResult, rkmeans_quantize
from sidreasoner.sid.rqvae import rqvae_quantize


def load_embeddings(embeddings_dir: Path, nonfinite: str = "error") -> tuple[np.ndarray, int]:
    """The embeddings as float32, and how many NaN/infinite values were set to 0 (`nonfinite="zero"`,
    as MiniOneRec's rq/datasets.py does; "error" refuses them)."""
    path = Path(embeddings_dir) / "embeddings.npy"
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path} (the embed-items step writes it)")
    emb = np.load(path, allow_pickle=False)
    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.floating):
        raise ValueError(f"{path}: expected a float matrix [n_items, dim], got dtype {emb.dtype} shape {emb.shape}")
    bad = ~np.isfinite(emb)
    if bad.any():
        if nonfinite != "zero":
            raise ValueError(
                f"{path}: contains {int(bad.sum())} NaN or infinite values "
                "(sid.nonfinite_embeddings=zero sets them to 0)"
            )
        emb = np.where(bad, 0.0, emb)
    return emb.astype(np.float32, copy=False), int(bad.sum())


def _count_items(data_dir: Path) -> int:
    path = Path(data_dir) / "items.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"items file not found: {path} (the preprocess step writes it)")
    return pq.read_metadata(path).num_rows


@contextlib.contextmanager
def _deterministic():
    previous = torch.are_deterministic_algorithms_enabled()
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(previous)


def run_quantizer(cfg: Config, emb: np.ndarray) -> QuantizeResult:
    sid = cfg.sid
    if len(emb) < sid.codebook_size:
        raise ValueError(
            f"{len(emb)} items are fewer than sid.codebook_size={sid.codebook_size}: lower the codebook size"
        )
    with _deterministic():
        if sid.method == "rkmeans":
            return rkmeans_quantize(
                emb,
                sid.levels,
                sid.codebook_size,
                cfg.seed,
                sid.kmeans_iters,
                sid.balance,
                sid.restarts,
                sid.restart_target,
            )
        return rqvae_quantize(emb, sid.rqvae, sid.levels, sid.codebook_size, cfg.seed)


def sids_table(codes: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "item_id": pa.array(np.arange(len(codes)), pa.int64()),
            "codes": pa.array(codes.tolist(), pa.list_(pa.int64())),
            "sid": pa.array([format_sid(row) for row in codes.tolist()], pa.string()),
        }
    )


def write_research(out: Path, data_dir: Path, index: dict[str, list[str]], category: str) -> None:
    """MiniOneRec/SIDReasoner layout under `out/research`: the full export (CSVs, info, index, item)
    when `data_dir` holds the train/valid/test splits, else only `index/<Cat>.index.json`."""
    if all((Path(data_dir) / f"{s}.parquet").is_file() for s in ("train", "valid", "test")):
        from sidreasoner.data.preprocess import write_research_csvs

        write_research_csvs(data_dir, {int(i): t for i, t in index.items()}, out / "research", category)
    else:
        write_json(out / "research" / "index" / f"{category}.index.json", index)


def write_sid_outputs(
    out: Path, data_dir: Path, codes: np.ndarray, books: np.ndarray, category: str, meta: dict
) -> None:
    index = {str(i): sid_tokens(row) for i, row in enumerate(codes.tolist())}
    pq.write_table(sids_table(codes), out / "sids.parquet")
    write_json(out / "index.json", index)
    write_json(out / "catalogue.json", sorted({"".join(t) for t in index.values()}))
    np.save(out / "codebooks.npy", books.astype(np.float32))
    write_json(out / "quantizer.json", meta)
    write_research(out, data_dir, index, category)


def import_sids(cfg: Config, data_dir: Path, out_dir: Path) -> dict[str, float]:
    """sid.method=import: the SID index of the research bundle the dataset was made from (preprocess
    mapped it to the dataset's item ids), validated and written like a quantizer's. Items sharing a SID
    are kept and reported (`colliding_items`, `collision_rate_after`), never dropped."""
    start = time.perf_counter()
    path = bundle_file(data_dir, "sid_index.json", "the SID index (sid.method=import)")
    index = read_sid_index(path)
    n_items = _count_items(data_dir)
    missing = [i for i in range(n_items) if i not in index.codes]
    if missing:
        raise ValueError(
            f"{path}: items {missing[:10]} of {Path(data_dir) / 'items.parquet'} have no SID "
            f"({len(missing)} of {n_items}); the bundle's index must hold every item"
        )
    codes = np.array([parse_sid("".join(index.codes[i])) for i in range(n_items)], dtype=np.int64)
    stats = collision_stats(codes)
    codebook_size = int(codes.max()) + 1
    metrics = {
        "imported": 1.0,
        "items": float(n_items),
        "levels": float(index.levels),
        "duplicate_sids": float(len(index.duplicates)),
        "colliding_items": float(index.colliding_items),
        "collision_rate_after": stats["collision_rate"],
        "duplicate_rate_after": stats["duplicate_rate"],
        **code_usage(codes, codebook_size),
    }
    category = dataset_category(data_dir)
    meta = {
        "method": "import",
        "levels": index.levels,
        "codebook_size": codebook_size,
        "n_items": n_items,
        "category": category,
        "imported_from": read_json(bundle_file(data_dir, "import.json", "the bundle record")),
        "duplicates": index.duplicates,
    }
    with atomic_dir(out_dir) as tmp:
        write_sid_outputs(tmp, Path(data_dir), codes, np.zeros((index.levels, codebook_size, 0)), category, meta)
    metrics.update({"n_items": float(n_items), "wall_s": time.perf_counter() - start})
    return metrics


def quantize_sids(cfg: Config, data_dir: Path, embeddings_dir: Path, out_dir: Path) -> dict[str, float]:
    """Quantize `embeddings_dir/embeddings.npy` into SIDs written atomically to `out_dir`."""
    if cfg.sid.method == "import":
        return import_sids(cfg, Path(data_dir), Path(out_dir))
    start = time.perf_counter()
    emb, n_zeroed = load_embeddings(embeddings_dir, cfg.sid.nonfinite_embeddings)
    n_items = _count_items(data_dir)
    if n_items != len(emb):
        raise ValueError(
            f"{Path(embeddings_dir) / 'embeddings.npy'} has {len(emb)} rows but "
            f"{Path(data_dir) / 'items.parquet'} has {n_items} items"
        )
    result = run_quantizer(cfg, emb)
    codes = result.codes
    metrics = {f"{k}_before": v for k, v in collision_stats(codes).items() if k.endswith("rate")}
    sid = cfg.sid
    if sid.collision != "none":
        codes, handled = resolve_collisions(
            codes,
            result.last_dists,
            sid.sinkhorn_rounds,
            sid.sinkhorn_epsilon,
            sid.sinkhorn_iters,
            sid.collision,
            sid.collision_leftover,
        )
        metrics.update(handled)
    after = collision_stats(codes)
    metrics.update({"collision_rate_after": after["collision_rate"], "duplicate_rate_after": after["duplicate_rate"]})
    metrics.update(code_usage(codes, cfg.sid.codebook_size))
    metrics["nonfinite_values_zeroed"] = float(n_zeroed)
    metrics.update(result.metrics)
    category = dataset_category(data_dir)
    meta = {
        "method": cfg.sid.method,
        "levels": cfg.sid.levels,
        "codebook_size": cfg.sid.codebook_size,
        "codebook_dim": int(result.codebooks.shape[-1]),
        "n_items": len(codes),
        "seed": cfg.seed,
        "category": category,
        "sid": cfg.sid.model_dump(mode="json"),
    }
    with atomic_dir(out_dir) as tmp:
        write_sid_outputs(tmp, Path(data_dir), codes, result.codebooks, category, meta)
    metrics.update({"n_items": float(len(codes)), "wall_s": time.perf_counter() - start})
    return metrics
