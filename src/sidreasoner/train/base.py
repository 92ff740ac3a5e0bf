"""The `prepare-base-model` step: the built-in tiny Qwen3 (its tokenizer trained on the run's own
texts), a hub id, or a saved folder (local or in a bucket), saved as the base model."""

from __future__ import annotations

import random
import time
from pathlib import Path

import pandas as pd

from sidreasoner.config import Config
from sidreasoner.io import atomic_dir, write_json
from sidreasoner.model import prompts, tiny
from sidreasoner.model.loading import load_model_and_tokenizer, save_model

MAX_TOKENIZER_TEXTS = 8000


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
    if len(texts) > MAX_TOKENIZER_TEXTS:  # enough for a small BPE; keeps the step to seconds
        texts = random.Random(0).sample(texts, MAX_TOKENIZER_TEXTS)
    texts.extend(prompts.ALL_WORDING * 20)  # the prompts' own wording, so the tokenizer covers it well
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
