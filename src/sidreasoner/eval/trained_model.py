"""The `load-model` step of the evaluate pipeline: a model trained elsewhere (model.base: a saved folder, a
hub id or a bucket URI), resolved by the code prepare-base-model uses, and refused unless its tokenizer
reads every code of the run's SID index as one token: the constrained decoder steps through SIDs one code
token at a time, and a model that never learnt these SIDs would be scored on codes it cannot write."""

from __future__ import annotations

import os
import time

from sidreasoner.artifacts import ModelFolder, SidIndex
from sidreasoner.config import Config
from sidreasoner.errors import ConfigError

SHOWN_TOKENS = 20  # missing tokens a message names before "..."


class SidTokensMissing(ValueError):
    pass


def missing_sid_tokens(tokenizer, codes: list[str]) -> list[str]:
    """The codes that `tokenizer` does not encode as exactly one token of their own, in `codes`' order."""
    return [
        code
        for code in codes
        if tokenizer.encode(code, add_special_tokens=False) != [tokenizer.convert_tokens_to_ids(code)]
    ]


def missing_tokens_message(source: str, missing: list[str], total: int) -> str:
    shown = ", ".join(missing[:SHOWN_TOKENS]) + (", ..." if len(missing) > SHOWN_TOKENS else "")
    return (
        f"model.base {source}: its tokenizer lacks {len(missing)} of the SID index's {total} tokens: {shown}. "
        "Evaluate a model trained on this SID index (its Stage 1 added these tokens); for the research "
        "checkpoints, the SIDs of the research bundle they were trained on (sid.method=import)"
    )


def require_model_source(cfg: Config) -> None:
    """A ConfigError unless model.base names a trained model (the built-in tiny model is only a start
    for training)."""
    if cfg.model.base == "tiny":
        raise ConfigError(
            "model.base=tiny is the built-in untrained model: the evaluate pipeline needs a trained model, "
            "e.g. --set model.base=<a saved folder, a hub id or an s3:// / gs:// / minio:// folder>"
        )


def load_model(
    cfg: Config, sid_index_dir: SidIndex | os.PathLike, model_dir: ModelFolder | os.PathLike
) -> dict[str, float]:
    """model.base as a model folder, once its tokenizer is known to hold every SID code token."""
    from sidreasoner.model.loading import load_model_and_tokenizer, save_model  # torch: only when the step runs

    start = time.time()
    require_model_source(cfg)
    source = cfg.model.base
    # "auto": the weights keep the dtype they were saved in (evaluate casts them as eval.dtype says).
    model, tokenizer = load_model_and_tokenizer(source, cfg.model.revision, dtype="auto")
    codes = SidIndex.at(sid_index_dir).code_tokens()
    missing = missing_sid_tokens(tokenizer, codes)
    if missing:
        raise SidTokensMissing(missing_tokens_message(source, missing, len(codes)))
    n_params = sum(p.numel() for p in model.parameters())
    with ModelFolder.writing(model_dir) as out:
        save_model(model, tokenizer, out)
        out.write_base_model(
            {
                "source": source,
                "revision": cfg.model.revision,
                "parameters": n_params,
                "vocab_size": len(tokenizer),
                "architecture": type(model).__name__,
                "sid_tokens": len(codes),
            }
        )
    return {
        "parameters": float(n_params),
        "vocab_size": float(len(tokenizer)),
        "sid_tokens": float(len(codes)),
        "wall_seconds": time.time() - start,
    }
