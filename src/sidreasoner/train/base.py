"""The `prepare-base-model` step: the built-in tiny Qwen3 (its tokenizer trained on the run's own
texts), a hub id, or a saved folder (local or in a bucket), saved as the base model."""

from __future__ import annotations

import os
import random
import time

from sidreasoner.artifacts import Corpus, Dataset, ModelFolder
from sidreasoner.config import Config
from sidreasoner.model import prompts, tiny
from sidreasoner.model.loading import load_model_and_tokenizer, save_model

MAX_TOKENIZER_TEXTS = 8000


def _tiny_texts(dataset: Dataset, corpus: Corpus) -> list[str]:
    """The item texts and the corpus' narratives and reasoning paths (a seeded sample of them), then the
    prompts' wording: what the tiny model's tokenizer is trained on."""
    texts: list[str] = []
    for row in dataset.items().itertuples(index=False):
        cats = row.categories if row.categories is not None else []
        texts.append(" ".join(str(x) for x in (row.title, row.description, row.brand, " > ".join(map(str, cats))) if x))
    for present, read, cols in (
        (corpus.has_items, corpus.items, ["narrative"]),
        (corpus.has_samples, corpus.samples, ["history_narrative", "reasoning_path"]),
    ):
        if present():
            frame = read(cols)
            for col in cols:
                texts.extend(t for t in frame[col].tolist() if isinstance(t, str))
    if len(texts) > MAX_TOKENIZER_TEXTS:  # enough for a small BPE; keeps the step to seconds
        texts = random.Random(0).sample(texts, MAX_TOKENIZER_TEXTS)
    texts.extend(prompts.ALL_WORDING * 20)  # the prompts' own wording, so the tokenizer covers it well
    return texts


def prepare_base_model(
    cfg: Config, dataset_dir: str | os.PathLike, corpus_dir: str | os.PathLike, model_dir: str | os.PathLike
) -> dict[str, float]:
    start = time.time()
    source = cfg.model.base
    with ModelFolder.writing(model_dir) as out:
        if source == "tiny":
            texts = _tiny_texts(Dataset.at(dataset_dir), Corpus.at(corpus_dir))
            tokenizer = tiny.train_tokenizer(texts, cfg.model.tiny.vocab_size)
            model = tiny.build_model(cfg.model.tiny, tokenizer, cfg.seed)
            info = {"source": "tiny", "tokenizer_texts": len(texts)}
        else:
            model, tokenizer = load_model_and_tokenizer(source, cfg.model.revision)
            info = {"source": source, "revision": cfg.model.revision}
        save_model(model, tokenizer, out)
        n_params = sum(p.numel() for p in model.parameters())
        info.update({"parameters": n_params, "vocab_size": len(tokenizer), "architecture": type(model).__name__})
        out.write_base_model(info)
    return {"parameters": float(n_params), "vocab_size": float(len(tokenizer)), "wall_seconds": time.time() - start}
