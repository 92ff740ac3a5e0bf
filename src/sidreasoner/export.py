"""The `export-model` step: push the final (merged) model folder to the user's bucket.

`export.uri` names the destination folder (s3://, minio://, gs://, file:// or a path). The upload
goes through `sidreasoner.storage.upload_dir`, which writes the `_SUCCESS` manifest last, so a reader
(`prepare-base-model` with that URI as `model.base`, or `storage.download_dir`) never takes a half-
uploaded model for a complete one. A destination that already holds a complete, different model is
refused unless `export.overwrite` is set; one that holds exactly these files is left as it is.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from sidreasoner import storage
from sidreasoner.config import Config, ConfigError
from sidreasoner.io import atomic_dir, write_json
from sidreasoner.storage._common import digest_file

log = logging.getLogger(__name__)

# What a saved Hugging Face model folder must hold to be worth exporting.
REQUIRED_FILES = ("config.json", "tokenizer_config.json")


def _local_manifest(model_dir: Path) -> dict[str, dict]:
    """What upload_dir's `_SUCCESS` manifest would list for `model_dir`: path -> size, MD5."""
    digests = {rel: digest_file(model_dir / rel) for rel in storage.local_files(model_dir)}
    return {rel: {"size": d.size, "md5": d.md5} for rel, d in digests.items()}


def _check_model_folder(model_dir: Path) -> None:
    missing = [name for name in REQUIRED_FILES if not (model_dir / name).is_file()]
    if not any(model_dir.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise FileNotFoundError(f"export-model: {model_dir} is not a saved Hugging Face model (missing: {', '.join(missing)})")


def _same_files(remote: dict, local: dict[str, dict]) -> bool:
    theirs = {rel: (int(meta.get("size", -1)), meta.get("md5")) for rel, meta in remote["files"].items()}
    return theirs == {rel: (meta["size"], meta["md5"]) for rel, meta in local.items()}


def export_model(cfg: Config, model_dir: Path, export_dir: Path) -> dict[str, float]:
    """Upload `model_dir` to `cfg.export.uri`; `export_dir` records where it went (export.json)."""
    start = time.time()
    uri = cfg.export.uri.strip()
    if not uri:
        raise ConfigError("export.uri is empty: set it (--set export.uri=s3://bucket/models/run-1) to export the model")
    model_dir = Path(model_dir)
    _check_model_folder(model_dir)
    local = _local_manifest(model_dir)
    remote = storage.read_marker(uri)
    if remote is not None and _same_files(remote, local):
        log.info("export-model: %s already holds this model; nothing uploaded", uri)
        manifest, uploaded = remote, False
    elif remote is not None and not cfg.export.overwrite:
        raise FileExistsError(f"export-model: {uri} already holds a different complete model "
                              "(set export.overwrite=true to replace it)")
    else:
        manifest, uploaded = storage.upload_dir(model_dir, uri), True
    with atomic_dir(Path(export_dir)) as tmp:
        write_json(tmp / "export.json", {"uri": uri, "uploaded": uploaded, "files": manifest["files"],
                                         "total_bytes": manifest["total_bytes"]})
    seconds = time.time() - start
    return {"files": float(len(manifest["files"])), "bytes": float(manifest["total_bytes"]),
            "uploaded": float(uploaded), "wall_seconds": seconds}
