"""`quantize-sids` step: embeddings -> 3-level Semantic IDs, collisions handled (`sid.collision`).

Output: a `SidIndex` folder (artifacts.sid_index names its files): item id -> SID as a table (item_id, codes,
sid "<a_12><b_200><c_7>") and as codes per level, the sorted catalogue of valid SIDs, the codebooks (float32
[levels, codebook_size, dim]; rqvae: latent space, rkmeans: embedding space), the quantizer's record (method,
shape, settings), and the dataset with its SIDs in the MiniOneRec/SIDReasoner layout (artifacts.research_layout):
each split's samples, the catalogue text, the SID index and the item texts; only the SID index when the
dataset has no sample splits.
"""

from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from sidreasoner.artifacts import SPLITS, Dataset, Embeddings, SidIndex
from sidreasoner.config import Config
from sidreasoner.data.research import read_sid_index
from sidreasoner.io import read_json
from sidreasoner.sid.codes import code_usage, collision_stats, format_sid, parse_sid, sid_tokens
from sidreasoner.sid.collisions import resolve_collisions
from sidreasoner.sid.rkmeans import QuantizeResult, rkmeans_quantize
from sidreasoner.sid.rqvae import rqvae_quantize


def load_embeddings(embeddings: Embeddings | Path, nonfinite: str = "error") -> tuple[np.ndarray, int]:
    """The item vectors as float32, and how many NaN/infinite values were set to 0 (`nonfinite="zero"`,
    as MiniOneRec's rq/datasets.py does; "error" refuses them)."""
    embeddings = Embeddings.at(embeddings)
    emb = embeddings.vectors()
    if emb.ndim != 2 or not np.issubdtype(emb.dtype, np.floating):
        raise embeddings.problem(
            Embeddings.VECTORS, f"expected a float matrix [n_items, dim], got dtype {emb.dtype} shape {emb.shape}"
        )
    bad = ~np.isfinite(emb)
    if bad.any():
        if nonfinite != "zero":
            raise embeddings.problem(
                Embeddings.VECTORS,
                f"contains {int(bad.sum())} NaN or infinite values (sid.nonfinite_embeddings=zero sets them to 0)",
            )
        emb = np.where(bad, 0.0, emb)
    return emb.astype(np.float32, copy=False), int(bad.sum())


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
                cfg.seed_for("sid"),
                sid.kmeans_iters,
                sid.balance,
                sid.restarts,
                sid.restart_target,
            )
        return rqvae_quantize(emb, sid.rqvae, sid.levels, sid.codebook_size, cfg.seed_for("sid"))


def sids_table(codes: np.ndarray) -> pa.Table:
    return pa.table(
        {
            "item_id": pa.array(np.arange(len(codes)), pa.int64()),
            "codes": pa.array(codes.tolist(), pa.list_(pa.int64())),
            "sid": pa.array([format_sid(row) for row in codes.tolist()], pa.string()),
        }
    )


def write_research(out: SidIndex, dataset: Dataset, index: dict[int, list[str]], category: str) -> None:
    """The MiniOneRec/SIDReasoner layout in `out`'s research folder: the full export (split CSVs, catalogue
    text, SID index, item texts) when the dataset holds the train/valid/test splits, else only the SID index."""
    if all(dataset.file(Dataset.split_file(s)).is_file() for s in SPLITS):
        from sidreasoner.data.preprocess import write_research_csvs

        write_research_csvs(dataset, index, out.file(SidIndex.RESEARCH), category)
    else:
        out.write_research_index(category, index)


def write_sid_outputs(
    out: SidIndex, dataset: Dataset, codes: np.ndarray, books: np.ndarray, category: str, meta: dict
) -> None:
    index = {i: sid_tokens(row) for i, row in enumerate(codes.tolist())}
    out.write_sids(sids_table(codes))
    out.write_index(index)
    out.write_codebooks(books)
    out.write_quantizer(meta)
    write_research(out, dataset, index, category)


def import_sids(cfg: Config, dataset: Dataset | Path, out: SidIndex | Path) -> dict[str, float]:
    """sid.method=import: the SID index of the research bundle the dataset was made from (preprocess
    mapped it to the dataset's item ids), validated and written like a quantizer's. Items sharing a SID
    are kept and reported (`colliding_items`, `collision_rate_after`), never dropped."""
    dataset, out = Dataset.at(dataset), SidIndex.at(out)
    start = time.perf_counter()
    path = dataset.bundle_file(Dataset.BUNDLE_SID_INDEX, "the SID index (sid.method=import)")
    index = read_sid_index(path)
    n_items = dataset.num_items()
    missing = [i for i in range(n_items) if i not in index.codes]
    if missing:
        raise ValueError(
            f"{path}: items {missing[:10]} of the item table of {dataset.kind} {dataset.path} have no SID "
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
    category = dataset.category()
    meta = {
        "method": "import",
        "levels": index.levels,
        "codebook_size": codebook_size,
        "n_items": n_items,
        "category": category,
        "imported_from": read_json(dataset.bundle_file(Dataset.BUNDLE_RECORD, "the bundle record")),
        "duplicates": index.duplicates,
    }
    with SidIndex.writing(out) as tmp:
        write_sid_outputs(tmp, dataset, codes, np.zeros((index.levels, codebook_size, 0)), category, meta)
    metrics.update({"n_items": float(n_items), "wall_s": time.perf_counter() - start})
    return metrics


def quantize_sids(
    cfg: Config, dataset: Dataset | Path, embeddings: Embeddings | Path, out: SidIndex | Path
) -> dict[str, float]:
    """Quantize the item vectors into SIDs written atomically to `out`."""
    dataset, embeddings, out = Dataset.at(dataset), Embeddings.at(embeddings), SidIndex.at(out)
    if cfg.sid.method == "import":
        return import_sids(cfg, dataset, out)
    start = time.perf_counter()
    emb, n_zeroed = load_embeddings(embeddings, cfg.sid.nonfinite_embeddings)
    n_items = dataset.num_items()
    if n_items != len(emb):
        raise ValueError(
            f"{embeddings.file(Embeddings.VECTORS)} has {len(emb)} rows but "
            f"{dataset.file(Dataset.ITEMS)} has {n_items} items"
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
    category = dataset.category()
    meta = {
        "method": cfg.sid.method,
        "levels": cfg.sid.levels,
        "codebook_size": cfg.sid.codebook_size,
        "codebook_dim": int(result.codebooks.shape[-1]),
        "n_items": len(codes),
        "seed": cfg.seed_for("sid"),
        "category": category,
        "sid": cfg.sid.model_dump(mode="json"),
    }
    with SidIndex.writing(out) as tmp:
        write_sid_outputs(tmp, dataset, codes, result.codebooks, category, meta)
    metrics.update({"n_items": float(len(codes)), "wall_s": time.perf_counter() - start})
    return metrics
