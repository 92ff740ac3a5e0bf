"""The one place models and tokenizers are loaded from folders (a hub id, a local folder or a bucket
folder) and saved to them."""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from sidreasoner import storage
from sidreasoner.artifacts.model import ModelFolder
from sidreasoner.config.overrides import BUCKET_SCHEMES

log = logging.getLogger(__name__)


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
    local = bucket_model_cache() / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:16]
    if not ModelFolder.at(local).is_model():
        log.info("downloading model %s to %s", uri, local)
        storage.download_dir(uri, local, require_marker=False)
    if not ModelFolder.at(local).is_model():
        raise ModelSourceError(
            f"model source {uri!r}: no {ModelFolder.HF_CONFIG} there; expected a saved Hugging Face model folder"
        )
    return local


# A Hugging Face repo id: `name` or `namespace/name` (huggingface_hub's validate_repo_id).
HUB_ID = re.compile(r"[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?(?:/[A-Za-z0-9](?:[\w.-]*[A-Za-z0-9])?)?")
# What a saved model folder must hold, by how a message names it: file names or glob patterns.
MODEL_FILES = {
    ModelFolder.HF_CONFIG: (ModelFolder.HF_CONFIG,),
    "safetensors weights": ("*.safetensors",),
    "tokenizer files": (ModelFolder.HF_TOKENIZER, ModelFolder.HF_TOKENIZER_CONFIG),
}


def check_model_source(source: str) -> None:
    """A source that is not a hub id must be a saved model folder: a ModelSourceError naming the folder
    and what is missing, before transformers takes a missing folder for a repo id or asks for a
    tokenizer library to convert files that are not there."""
    path = Path(source).expanduser()
    if not path.exists():
        if HUB_ID.fullmatch(source) and ".." not in source and "--" not in source:
            return
        raise ModelSourceError(f"model folder {source} does not exist")
    if not path.is_dir():
        raise ModelSourceError(f"model {source} is a file; expected a saved Hugging Face model folder")
    missing = [
        what
        for what, patterns in MODEL_FILES.items()
        if not any(next(path.glob(pattern), None) for pattern in patterns)
    ]
    if missing:
        raise ModelSourceError(
            f"{source} is not a saved Hugging Face model folder: it has no {' and no '.join(missing)}"
        )


def load_model_and_tokenizer(source: str | Path, revision: str = "", dtype: torch.dtype = torch.float32):
    """From a hub id, a local folder or a bucket folder, never running remote code, weights from
    safetensors only."""
    source = str(source)
    if source.startswith(BUCKET_SCHEMES):
        source = str(fetch_bucket_model(source))
    check_model_source(source)
    kwargs = {"revision": revision} if revision else {}
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False, **kwargs)
    model = AutoModelForCausalLM.from_pretrained(
        source, trust_remote_code=False, use_safetensors=True, dtype=dtype, **kwargs
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def save_model(model, tokenizer, out: str | os.PathLike) -> None:
    """The model's and the tokenizer's files, as Hugging Face saves them, into folder `out` (a path or a
    ModelFolder handle)."""
    out = Path(out)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
