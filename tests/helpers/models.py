"""A random-init tiny Qwen3 model with SID tokens, and dataset / SID-index folders in the pipeline's
formats (the evaluation and RL tests' inputs)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from sidreasoner.config import TinyModelConfig
from sidreasoner.model import prompts, tiny
from sidreasoner.sid.codes import format_sid, sid_tokens
from sidreasoner.train.sft import extend_tokenizer

WORDS = (
    "red blue green lamp desk pen paper ink chair table cable mouse screen phone case bag book "
    "box cup mug note card clip tape glue user item likes next buys because series similar"
).split()


def random_codes(n_items: int, levels: int, codebook: int, seed: int = 0, collide: int = 0) -> np.ndarray:
    """Distinct random codes [n_items, levels]; the last `collide` items copy an earlier item's SID."""
    rng = np.random.default_rng(seed)
    seen: set[tuple[int, ...]] = set()
    rows = []
    while len(rows) < n_items - collide:
        r = tuple(int(x) for x in rng.integers(0, codebook, levels))
        if r not in seen:
            seen.add(r)
            rows.append(r)
    for i in range(collide):
        rows.append(rows[i])
    return np.array(rows, dtype=np.int64)


def build_tiny_model(
    out: Path,
    codes: np.ndarray,
    codebook: int,
    seed: int = 0,
    hidden: int = 64,
    layers: int = 2,
    vocab: int = 300,
    sid_init_std: float = 1.0,
):
    """Random-init tiny Qwen3 + BPE tokenizer with every SID code of `codes`' levels as a plain added
    token. SID embedding rows get random (not mean) values so SID logits do not tie."""
    texts = [" ".join(WORDS[(i * 7 + j) % len(WORDS)] for j in range(12)) for i in range(200)]
    texts += prompts.ALL_WORDING
    tok = tiny.train_tokenizer(texts, vocab)
    cfg = TinyModelConfig(
        hidden_size=hidden,
        num_layers=layers,
        num_heads=4,
        num_kv_heads=2,
        head_dim=16,
        intermediate_size=hidden * 2,
        vocab_size=vocab,
        max_positions=1024,
    )
    model = tiny.build_model(cfg, tok, seed)
    levels = codes.shape[1]
    all_codes = [t for lvl in range(levels) for t in (sid_tokens([0] * lvl + [c])[lvl] for c in range(codebook))]
    ids = extend_tokenizer(model, tok, all_codes)
    g = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        w = model.get_input_embeddings().weight
        w[ids] = torch.randn(len(ids), w.shape[1], generator=g) * sid_init_std
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    return model, tok


def write_sid_index(out: Path, item_ids, codes: np.ndarray) -> None:
    out.mkdir(parents=True, exist_ok=True)
    sids = [format_sid(c) for c in codes]
    pd.DataFrame(
        {"item_id": np.asarray(item_ids, dtype=np.int64), "codes": [list(map(int, c)) for c in codes], "sid": sids}
    ).to_parquet(out / "sids.parquet")
    (out / "index.json").write_text(json.dumps({str(i): sid_tokens(c) for i, c in zip(item_ids, codes, strict=True)}))
    (out / "catalogue.json").write_text(json.dumps(sorted(set(sids))))


def write_dataset(out: Path, n_items: int, n_users: int, seed: int = 0, hist: int = 5) -> None:
    """Users walk items in order i, i+1, …: learnable and deterministic."""
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(
        {
            "item_id": np.arange(n_items, dtype=np.int64),
            "title": [
                f"{WORDS[i % len(WORDS)]} {WORDS[(i // len(WORDS)) % len(WORDS)]} item {i}" for i in range(n_items)
            ],
        }
    ).to_parquet(out / "items.parquet")
    for split, n in (("train", n_users * 3), ("valid", n_users), ("test", n_users)):
        rows = []
        for u in range(n):
            start = int(rng.integers(0, n_items - hist - 1))
            hist_ids = [start + j for j in range(hist)]
            rows.append({"user_id": u, "history_item_ids": hist_ids, "item_id": start + hist, "timestamp": 1000 + u})
        pd.DataFrame(rows).to_parquet(out / f"{split}.parquet")
