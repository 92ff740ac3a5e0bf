"""The `export-model` step: push the final (merged) model folder to the user's bucket.

`export.uri` names the destination folder (s3://, minio://, gs://, file:// or a path). The upload
goes through `sidreasoner.storage.upload_dir`, which writes the `_SUCCESS` manifest last, so a reader
(`prepare-base-model` with that URI as `model.base`, or `storage.download_dir`) never takes a half-
uploaded model for a complete one. The destination ends holding exactly the exported files and the
marker: files of an older model there are deleted.

Whose the destination is decides what may be deleted. One holding exactly these files is left as
it is. One holding a different model of ours (its `_SUCCESS`), or files without our marker (someone
else's folder), is refused unless `export.overwrite` is set. An export writes `_EXPORTING` before it
touches anything and removes it last, so a retry that finds it resumes its own interrupted export
without needing `export.overwrite`. A symbolic link in a local target is never ours: it is refused even
then, and `export.overwrite` removes the link itself, never what it points to.

Beside the model's files the export holds the serving catalogue (`ModelExport.CATALOGUE_SID_INDEX`: the SID
index folder; `ModelExport.CATALOGUE_DATASET`: the dataset's item table and record), so that the folder alone
is what `sidreasoner serve` (and KServe's storage initializer) needs. It is one upload with one manifest: the
guarantees above hold for the catalogue too.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sidreasoner import storage
from sidreasoner.artifacts import Dataset, ModelExport, ModelFolder, SidIndex
from sidreasoner.config import Config, ConfigError
from sidreasoner.storage._common import digest_file
from sidreasoner.storage.api import symlinks

log = logging.getLogger(__name__)

# Written into the target before anything there changes, removed once `_SUCCESS` is in place.
PENDING = "_EXPORTING"
PENDING_FORMAT = "sidreasoner.export/pending-v1"


def _local_manifest(model_dir: Path) -> dict[str, dict]:
    """What upload_dir's `_SUCCESS` manifest would list for `model_dir`: path -> size, MD5."""
    digests = {rel: digest_file(model_dir / rel) for rel in storage.local_files(model_dir)}
    return {rel: {"size": d.size, "md5": d.md5} for rel, d in digests.items()}


def _check_model_folder(model: ModelFolder) -> None:
    """Refuse a folder that is not a saved Hugging Face model, which alone is worth exporting."""
    missing = [name for name in ModelFolder.HF_REQUIRED if not model.file(name).is_file()]
    if not any(model.path.glob("*.safetensors")):
        missing.append("*.safetensors")
    if missing:
        raise FileNotFoundError(
            f"export-model: {model.path} is not a saved Hugging Face model (missing: {', '.join(missing)})"
        )


def _link(target: Path, link: Path) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target.resolve(), link)


@contextmanager
def _staged(model: ModelFolder, sid_index: SidIndex, dataset: Dataset) -> Iterator[Path]:
    """A temp folder laid out as the export (the model's files, then the catalogue) made of symbolic links to
    the step's inputs: nothing is copied; the upload reads through the links."""
    top = sorted(p.name for p in model.path.iterdir())
    clash = [name for name in top if name == Path(ModelExport.CATALOGUE_SID_INDEX).parts[0]]
    if clash:
        raise FileExistsError(f"export-model: {model.path} holds '{clash[0]}', the name of the exported catalogue")
    sid_index.require(SidIndex.INDEX, "item id -> SID codes")
    items = dataset.require(Dataset.ITEMS, "the item table")
    stats = dataset.require(Dataset.STATS, "the dataset's record")
    with tempfile.TemporaryDirectory(prefix="export-") as tmp:
        stage = Path(tmp)
        for name in top:
            _link(model.path / name, stage / name)
        _link(sid_index.path, stage / ModelExport.CATALOGUE_SID_INDEX)
        _link(items, stage / ModelExport.CATALOGUE_DATASET / Dataset.ITEMS)
        _link(stats, stage / ModelExport.CATALOGUE_DATASET / Dataset.STATS)
        yield stage


def _check_not_a_file(uri: str) -> None:
    loc = storage.parse_uri(uri)
    if loc.scheme == "file" and Path(loc.key).exists() and not Path(loc.key).is_dir():
        raise FileExistsError(f"export-model: export.uri {uri} is a file; it must name a folder")


def _same_files(remote: dict, local: dict[str, dict]) -> bool:
    theirs = {rel: (int(meta.get("size", -1)), meta.get("md5")) for rel, meta in remote["files"].items()}
    return theirs == {rel: (meta["size"], meta["md5"]) for rel, meta in local.items()}


def _target_state(uri: str) -> tuple[dict | None, set[str], bool]:
    """(our completion manifest or None, every other file there, whether an export of ours is pending)."""
    try:
        manifest = storage.read_marker(uri)
    except storage.IncompleteUploadError:  # a `_SUCCESS` another tool wrote (Hadoop's are empty)
        manifest = None
    try:
        present = set(storage.list_files(uri))
    except storage.NotFoundError:
        present = set()
    if manifest is None and storage.exists(f"{uri.rstrip('/')}/{storage.MARKER}"):
        present.add(storage.MARKER)
    pending = PENDING in present
    present.discard(PENDING)
    return manifest, present, pending


def _few(names: set[str]) -> str:
    shown = sorted(names)[:3]
    return ", ".join(shown) + (f", … ({len(names)} in all)" if len(names) > 3 else "")


HINT = "; set export.overwrite=true to replace them, or export to another folder"


def _link_refusal(uri: str, links: dict[str, str]) -> str | None:
    if not links:
        return None
    shown = _few({f"{name} -> {to}" for name, to in links.items()})
    return (
        f"export-model: {uri} holds {len(links)} symbolic link(s) ({shown}), which an export never writes"
        f"{HINT} (the links are removed, never what they point to)"
    )


def _refusal(uri: str, manifest: dict | None, present: set[str], local: dict[str, dict]) -> str | None:
    """Why exporting into `uri` without export.overwrite would destroy something, or None."""
    if manifest is None:
        if present:
            return (
                f"export-model: {uri} holds {len(present)} file(s) ({_few(present)}) and no {storage.MARKER} "
                f"marker of a sidreasoner export: not a folder this step wrote{HINT}"
            )
        return None
    if not _same_files(manifest, local):
        return f"export-model: {uri} already holds a different complete model (set export.overwrite=true to replace it)"
    foreign = present - set(local)  # (files of it that went missing are simply uploaded again)
    if foreign:
        return (
            f"export-model: {uri} holds this model plus {len(foreign)} file(s) not in its {storage.MARKER} "
            f"manifest ({_few(foreign)}){HINT}"
        )
    return None


def _replace(model_dir: Path, uri: str, present: set[str], local: dict[str, dict], links: set[str]) -> dict:
    """Make `uri` hold exactly `model_dir`: mark the export pending, drop the old marker, every file the new
    model does not have and every symbolic link (the link, not its target), upload, write `_SUCCESS`, clear
    the pending mark."""
    pending_uri = f"{uri.rstrip('/')}/{PENDING}"
    storage.put_bytes(pending_uri, (json.dumps({"format": PENDING_FORMAT, "files": sorted(local)}) + "\n").encode())
    stale = sorted((present - set(local)) | (links - {PENDING}))  # a link named PENDING was just replaced
    storage.delete_files(uri, [storage.MARKER] + stale)
    if stale:
        log.info("export-model: deleted %d file(s) of the previous contents of %s", len(stale), uri)
    manifest = storage.upload_dir(model_dir, uri)
    storage.delete_files(uri, [PENDING])
    return manifest


def export_model(
    cfg: Config,
    model_dir: ModelFolder | Path,
    sid_index: SidIndex | Path,
    dataset: Dataset | Path,
    export_dir: ModelExport | Path,
) -> dict[str, float]:
    """Upload `model_dir` with its serving catalogue (`sid_index`, `dataset`'s items) to `cfg.export.uri`;
    `export_dir` records where it went (`ModelExport`)."""
    start = time.time()
    uri = cfg.export.uri.strip()
    if not uri:
        raise ConfigError("export.uri is empty: set it (--set export.uri=s3://bucket/models/run-1) to export the model")
    model = ModelFolder.at(model_dir)
    _check_model_folder(model)
    _check_not_a_file(uri)
    with _staged(model, SidIndex.at(sid_index), Dataset.at(dataset)) as staged:
        record = _export(cfg, staged, uri)
    with ModelExport.writing(export_dir) as export:
        export.write_record(record)
    return {
        "files": float(len(record["files"])),
        "bytes": float(record["total_bytes"]),
        "uploaded": float(record["uploaded"]),
        "wall_seconds": time.time() - start,
    }


def _export(cfg: Config, model_dir: Path, uri: str) -> dict:
    """Make `uri` hold exactly the files of `model_dir` (unless refused); the export's record."""
    local = _local_manifest(model_dir)
    remote, present, pending = _target_state(uri)
    links = symlinks(uri)
    if remote is not None and _same_files(remote, local) and present == set(local) and not links:
        log.info("export-model: %s already holds this model; nothing uploaded", uri)
        if pending:  # the export that wrote it died before clearing its mark
            storage.delete_files(uri, [PENDING])
        manifest, uploaded = remote, False
    else:
        refusal = _link_refusal(uri, links) or (None if pending else _refusal(uri, remote, present, local))
        if refusal is not None and not cfg.export.overwrite:
            raise FileExistsError(refusal)
        manifest, uploaded = _replace(model_dir, uri, present, local, set(links)), True
    return {"uri": uri, "uploaded": uploaded, "files": manifest["files"], "total_bytes": manifest["total_bytes"]}
