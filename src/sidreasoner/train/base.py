"""The `prepare-base-model` step and the one place models and tokenizers are loaded from folders."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import pandas as pd
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sidreasoner.config import Config
from sidreasoner.io import atomic_dir, write_json
from sidreasoner.train import tiny

log = logging.getLogger(__name__)

MAX_TOKENIZER_TEXTS = 8000
BUCKET_SCHEMES = ("s3://", "gs://", "minio://")


class ModelSourceError(ValueError):
    pass


def bucket_model_cache() -> Path:
    """Where bucket models are mirrored: beside the Hugging Face cache (the model-cache PVC on a
    cluster, so a retried pod does not download again), else ~/.cache/sidreasoner/models."""
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "sidreasoner-buckets"
    return Path.home() / ".cache" / "sidreasoner" / "models"


def fetch_bucket_model(uri: str) -> Path:
    """Mirror a model folder from s3://, minio:// or gs:// (all files; verified against the
    `_SUCCESS` manifest when the folder has one) into the local cache, once."""
    from sidreasoner import storage

    local = bucket_model_cache() / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    if not (local / "config.json").is_file():
        log.info("downloading model %s to %s", uri, local)
        storage.download_dir(uri, local, require_marker=False)
    if not (local / "config.json").is_file():
        raise ModelSourceError(f"model source {uri!r}: no config.json there; expected a saved Hugging Face model folder")
    return local


def load_model_and_tokenizer(source: str | Path, revision: str = "", dtype: torch.dtype = torch.float32):
    """From a hub id, a local folder or a bucket folder, never running remote code, weights from
    safetensors only."""
    source = str(source)
    if source.startswith(BUCKET_SCHEMES):
        source = str(fetch_bucket_model(source))
    kwargs = {"revision": revision} if revision else {}
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        source, trust_remote_code=False, use_safetensors=True, dtype=dtype, **kwargs
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def save_model(model, tokenizer, out: Path) -> None:
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _tiny_texts(dataset_dir: Path, corpus_dir: Path) -> list[str]:
    items = pd.read_parquet(dataset_dir / "items.parquet")
    texts: list[str] = []
    for row in items.itertuples(index=False):
        cats = row.categories if row.categories is not None else []
        texts.append(" ".join(str(x) for x in (row.title, row.description, row.brand, " > ".join(map(str, cats))) if x))
    for name, cols in (("items.parquet", ["narrative"]), ("samples.parquet", ["history_narrative", "reasoning_path"])):
        path = corpus_dir / name
        if path.exists():
            frame = pd.read_parquet(path, columns=cols)
            for col in cols:
                texts.extend(t for t in frame[col].tolist() if isinstance(t, str))
    # The prompts' own wording, so the tokenizer covers it well.
    from sidreasoner.train import prompts

    if len(texts) > MAX_TOKENIZER_TEXTS:  # enough for a small BPE; keeps the step to seconds
        import random

        texts = random.Random(0).sample(texts, MAX_TOKENIZER_TEXTS)
    texts.extend(prompts.ALL_WORDING * 20)
    return texts


def prepare_base_model(cfg: Config, dataset_dir: Path, corpus_dir: Path, model_dir: Path) -> dict[str, float]:
    start = time.time()
    source = cfg.model.base
    with atomic_dir(model_dir) as tmp:
        if source == "tiny":
            texts = _tiny_texts(Path(dataset_dir), Path(corpus_dir))
            tokenizer = tiny.train_tokenizer(texts, cfg.model.tiny.vocab_size)
            model = tiny.build_model(cfg.model.tiny, tokenizer, cfg.seed)
            info = {"source": "tiny", "tokenizer_texts": len(texts)}
        else:
            model, tokenizer = load_model_and_tokenizer(source, cfg.model.revision)
            info = {"source": source, "revision": cfg.model.revision}
        save_model(model, tokenizer, tmp)
        n_params = sum(p.numel() for p in model.parameters())
        info.update({"parameters": n_params, "vocab_size": len(tokenizer), "architecture": type(model).__name__})
        write_json(tmp / "base_model.json", info)
    return {"parameters": float(n_params), "vocab_size": float(len(tokenizer)), "wall_seconds": time.time() - start}
