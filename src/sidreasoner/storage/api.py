"""The storage API: download/upload files and folders, list, exists — over any supported URI."""

from __future__ import annotations

import datetime as dt
import json
import os
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

from sidreasoner.io import atomic_dir, atomic_file
from sidreasoner.storage._common import HashingWriter, ObjectInfo, digest_file, log, redact, verify, with_retries
from sidreasoner.storage.errors import ChecksumError, IncompleteUploadError, NotFoundError, StorageError
from sidreasoner.storage.uri import Location, parse_uri

MARKER = "_SUCCESS"
MARKER_FORMAT = "sidreasoner.storage/folder-v1"


def _backend(loc: Location):
    if loc.scheme == "file":
        from sidreasoner.storage.local import LocalBackend

        return LocalBackend()
    if loc.scheme in ("s3", "minio"):
        from sidreasoner.storage.s3 import S3Backend

        return S3Backend(loc.scheme)
    from sidreasoner.storage.gcs import GCSBackend

    return GCSBackend()


def _call(be, loc: Location, what: str, fn):
    """Run fn with retries on transient errors; turn backend errors into StorageErrors naming the URI."""
    try:
        return with_retries(fn, str(loc), what, be.is_transient)
    except StorageError:
        raise
    except Exception as err:
        mapped = be.translate(err, loc)
        if mapped is not None:
            raise mapped from err
        raise StorageError(redact(f"{loc}: {what} failed: {type(err).__name__}: {err}")) from err


def _stat(be, loc: Location) -> ObjectInfo | None:
    return _call(be, loc, "stat", lambda: be.stat(loc))


def _list(be, loc: Location) -> list[ObjectInfo]:
    return _call(be, loc, "list", lambda: list(be.list(loc)))


def _fetch(
    be,
    loc: Location,
    info: ObjectInfo,
    dest: Path,
    expected_md5: str | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Stream one object into dest (temp file, then rename); transient breaks resume where they stopped."""
    with atomic_file(dest) as tmp:
        with open(tmp, "wb") as fh:
            writer = HashingWriter(fh, progress)

            def step() -> None:
                if writer.written and writer.written >= info.size:
                    return  # everything arrived before the error
                be.read_into(loc, info, writer, writer.written)

            _call(be, loc, "download", step)
        verify(str(loc), info, writer.hasher, expected_md5)
        be_verify = getattr(be, "verify_multipart", None)
        if be_verify is not None:
            be_verify(loc, info, tmp)
    log.info("downloaded %s -> %s (%d bytes)", loc, dest, info.size)


def _check_local_links(loc: Location, rels) -> None:
    """Files of a local folder reached through a symbolic link must be files inside the folder."""
    root = Path(loc.key).resolve()
    for rel in rels:
        real = (root / rel).resolve()
        if real == root / rel:
            continue  # no link on the way
        if not real.is_relative_to(root) or not real.is_file():
            where = "outside the folder" if not real.is_relative_to(root) else "not a file"
            raise StorageError(f"{loc.child(rel)}: refusing a symbolic link to {real} ({where})")


def _safe_rel(rel: str, loc: Location) -> str:
    parts = PurePosixPath(rel).parts
    if not rel or rel.startswith("/") or ".." in parts or "\\" in rel:
        raise StorageError(f"{loc}: refusing unsafe file name {rel!r} in the folder")
    return rel


# ---------------------------------------------------------------- public API


def download_file(
    uri: str | os.PathLike, dest: str | os.PathLike, *, progress: Callable[[int], None] | None = None
) -> Path:
    """Download one object (or copy one local file) to `dest`, atomically; return dest.

    Streams in 1 MiB chunks, retries transient errors (resuming at the byte reached), verifies the
    size and the checksum the store reports (MD5, CRC32C, S3 ETag incl. multipart). `progress`, if
    given, is called with the byte count so far after every chunk.
    """
    loc = parse_uri(uri)
    be = _backend(loc)
    info = _stat(be, loc)
    if info is None:
        hint = " (it is a folder: use download_dir)" if _list(be, loc) else ""
        raise NotFoundError(f"{loc}: no such object{hint}")
    dest = Path(dest)
    _fetch(be, loc, info, dest, progress=progress)
    return dest


def upload_file(src: str | os.PathLike, uri: str | os.PathLike) -> dict[str, Any]:
    """Upload (or copy) one file to `uri`; return {"size", "md5"}. The store's checksum is verified."""
    src = Path(src)
    if not src.is_file():
        raise NotFoundError(f"{src}: no such file to upload")
    loc = parse_uri(uri)
    be = _backend(loc)
    digest = digest_file(src, be.part_size(src.stat().st_size))
    _call(be, loc, "upload", lambda: be.upload(src, loc, digest))
    return {"size": digest.size, "md5": digest.md5}


def local_files(src: str | os.PathLike) -> list[str]:
    """Relative paths of the files under the local folder `src`, as `upload_dir` uploads them (sorted,
    marker excluded)."""
    src = Path(src)
    rels = []
    for dirpath, dirnames, filenames in os.walk(src, followlinks=True):
        dirnames.sort()
        for name in sorted(filenames):
            rel = (Path(dirpath) / name).relative_to(src).as_posix()
            if rel != MARKER:
                rels.append(rel)
    return rels


def upload_dir(src: str | os.PathLike, uri: str | os.PathLike) -> dict[str, Any]:
    """Upload every file under `src` to the folder `uri`, then write the `_SUCCESS` marker LAST.

    The marker holds the manifest (relative path → size, MD5). Any old marker is removed first, so a
    reader never takes a half-replaced folder for a complete one. Returns the manifest.
    """
    src = Path(src)
    if not src.is_dir():
        raise NotFoundError(f"{src}: no such folder to upload")
    loc = parse_uri(uri)
    be = _backend(loc)
    rels = local_files(src)
    marker = loc.child(MARKER)
    _call(be, marker, "remove the old marker", lambda: be.delete(marker) if _stat(be, marker) else None)
    files = {}
    for rel in rels:
        files[rel] = upload_file(src / rel, str(loc.child(rel)))
    manifest = {
        "format": MARKER_FORMAT,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "files": files,
        "total_bytes": sum(f["size"] for f in files.values()),
    }
    data = (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()
    _call(be, marker, "write the completion marker", lambda: be.put_bytes(marker, data))
    log.info("uploaded folder %s (%d files, %d bytes)", loc, len(files), manifest["total_bytes"])
    return manifest


def put_bytes(uri: str | os.PathLike, data: bytes) -> None:
    """Write a small object (or local file, atomically) holding `data`."""
    loc = parse_uri(uri)
    be = _backend(loc)
    _call(be, loc, "write", lambda: be.put_bytes(loc, data))


def delete_files(uri: str | os.PathLike, rels: list[str]) -> None:
    """Delete the files `rels` (relative paths, as list_files gives them) under the folder `uri`; a file
    already gone is no error. In a local folder, subfolders left empty are removed too."""
    loc = parse_uri(uri)
    be = _backend(loc)
    for rel in rels:
        target = loc.child(_safe_rel(rel, loc))
        _call(be, target, "delete", lambda target=target: be.delete(target))
    if loc.scheme == "file" and Path(loc.key).is_dir():
        for dirpath, _, _ in sorted(os.walk(loc.key), key=lambda walked: -len(walked[0])):
            if dirpath != loc.key and not os.listdir(dirpath):
                os.rmdir(dirpath)


def read_marker(uri: str | os.PathLike) -> dict[str, Any] | None:
    """The folder's completion manifest, or None when the folder has no `_SUCCESS` marker."""
    loc = parse_uri(uri)
    be = _backend(loc)
    return _read_marker(be, loc)


def _read_marker(be, loc: Location) -> dict[str, Any] | None:
    marker = loc.child(MARKER)
    if _stat(be, marker) is None:
        return None
    raw = _call(be, marker, "read the completion marker", lambda: be.get_bytes(marker))
    try:
        manifest = json.loads(raw)
        files = manifest["files"]
        assert manifest.get("format") == MARKER_FORMAT and isinstance(files, dict)
    except (ValueError, KeyError, TypeError, AssertionError) as err:
        raise IncompleteUploadError(f"{marker}: not a {MARKER_FORMAT} completion marker ({err})") from None
    return manifest


def download_dir(uri: str | os.PathLike, dest: str | os.PathLike, *, require_marker: bool = True) -> list[str]:
    """Download the folder `uri` into `dest` (atomically: dest appears only when complete).

    With require_marker (the default) the folder must carry the `_SUCCESS` marker that upload_dir
    writes last; exactly the files it lists are fetched and checked against its sizes and MD5s.
    require_marker=False takes every object under the folder as it is (user-provided raw folders).
    Returns the relative paths downloaded.
    """
    loc = parse_uri(uri)
    be = _backend(loc)
    manifest = _read_marker(be, loc)
    if manifest is not None:
        wanted = {_safe_rel(rel, loc): meta for rel, meta in manifest["files"].items()}
    else:
        listing = [info for info in _list(be, loc) if info.key != MARKER]
        if not listing:
            raise NotFoundError(f"{loc}: no such folder (nothing under it)")
        if require_marker:
            raise IncompleteUploadError(
                f"{loc}: incomplete upload: the folder has {len(listing)} file(s) but no {MARKER} marker, so its "
                "upload never finished (or it was not written by sidreasoner.storage.upload_dir). Re-upload it; "
                "for a hand-made raw data folder use require_marker=False"
            )
        wanted = {_safe_rel(info.key, loc): {"size": info.size} for info in listing if "link" not in info.extra}
        wanted.update({_safe_rel(info.key, loc): {} for info in listing if "link" in info.extra})
    if loc.scheme == "file":
        _check_local_links(loc, wanted)
    with atomic_dir(dest) as tmp:
        for rel, meta in wanted.items():
            floc = loc.child(rel)
            info = _stat(be, floc)
            if info is None:
                raise IncompleteUploadError(f"{floc}: listed in the folder's {MARKER} but missing")
            if "size" in meta and int(meta["size"]) != info.size:
                raise ChecksumError(
                    f"{floc}: {info.size} bytes in the store, the folder's manifest says "
                    f"{meta['size']} (changed after upload?)"
                )
            target = tmp / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            _fetch(be, floc, info, target, expected_md5=meta.get("md5"))
    return sorted(wanted)


def list_files(uri: str | os.PathLike) -> list[str]:
    """Relative paths of every file under the folder `uri` (recursive, sorted, marker excluded)."""
    loc = parse_uri(uri)
    be = _backend(loc)
    if loc.scheme == "file" and not Path(loc.key).exists():
        raise NotFoundError(f"{loc}: no such folder")
    return sorted(info.key for info in _list(be, loc) if info.key != MARKER)


def symlinks(uri: str | os.PathLike) -> dict[str, str]:
    """The symbolic links that list_files lists in the local folder `uri`: relative path -> where each points
    ({} for a bucket folder, which has none)."""
    loc = parse_uri(uri)
    if loc.scheme != "file":
        return {}
    return {info.key: info.extra["link"] for info in _list(_backend(loc), loc) if "link" in info.extra}


def exists(uri: str | os.PathLike) -> bool:
    """True when `uri` names an object/file, or a folder with at least one file (or an existing bucket)."""
    loc = parse_uri(uri)
    if loc.scheme == "file":
        return Path(loc.key).exists()
    be = _backend(loc)
    try:
        if not loc.key:
            return bool(_call(be, loc, "bucket lookup", lambda: be.bucket_exists(loc)))
        if _stat(be, loc) is not None:
            return True
        return bool(_call(be, loc, "list", lambda: next(iter(be.list(loc)), None) is not None))
    except NotFoundError:
        return False
