"""Local files (`file://` and plain paths) behind the same interface as the bucket backends."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

from sidreasoner.io import atomic_file
from sidreasoner.storage._common import CHUNK, LocalDigest, ObjectInfo, iter_chunks
from sidreasoner.storage.errors import ChecksumError, NotFoundError, StorageError
from sidreasoner.storage.uri import Location


def _entry(root: Path, path: Path) -> ObjectInfo:
    rel = path.relative_to(root).as_posix()
    if path.is_symlink():
        return ObjectInfo(rel, path.lstat().st_size, extra={"link": os.readlink(path)})
    return ObjectInfo(rel, path.stat().st_size)


class LocalBackend:
    scheme = "file"

    def is_transient(self, err: BaseException) -> bool:
        return False

    def translate(self, err: BaseException, loc: Location) -> StorageError | None:
        if isinstance(err, FileNotFoundError):
            return NotFoundError(f"{loc}: no such file or folder")
        if isinstance(err, PermissionError):
            return StorageError(f"{loc}: permission denied ({err.strerror})")
        return None

    def part_size(self, size: int) -> int:
        return 0

    def stat(self, loc: Location) -> ObjectInfo | None:
        path = Path(loc.key)
        return ObjectInfo(loc.key, path.stat().st_size) if path.is_file() else None

    def list(self, loc: Location) -> Iterator[ObjectInfo]:
        """Files and symbolic links under the folder. A link is listed as itself (extra["link"]: where it
        points) and never followed, so nothing outside the folder is ever listed, read or deleted through it."""
        root = Path(loc.key)
        if not root.is_dir():
            return
        for dirpath, dirnames, filenames in os.walk(root):
            links = [d for d in dirnames if os.path.islink(os.path.join(dirpath, d))]
            dirnames[:] = sorted(d for d in dirnames if d not in links)
            for name in sorted(filenames + links):
                if name.startswith(".") and ".tmp-" in name:  # our own in-flight temp files
                    continue
                yield _entry(root, Path(dirpath) / name)

    def read_into(self, loc: Location, info: ObjectInfo, writer, offset: int) -> None:
        with open(loc.key, "rb") as fh:
            fh.seek(offset)
            for chunk in iter_chunks(fh):
                writer.write(chunk)

    def upload(self, path: Path, loc: Location, digest: LocalDigest) -> None:
        if Path(loc.key).is_dir():
            raise StorageError(f"{loc}: is a folder; upload_file needs a file path")
        with atomic_file(loc.key) as tmp:
            with open(path, "rb") as src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, CHUNK)
            if tmp.stat().st_size != digest.size:
                raise ChecksumError(f"{loc}: wrote {tmp.stat().st_size} bytes, source has {digest.size}")

    def put_bytes(self, loc: Location, data: bytes) -> None:
        with atomic_file(loc.key) as tmp:
            tmp.write_bytes(data)

    def get_bytes(self, loc: Location) -> bytes:
        return Path(loc.key).read_bytes()

    def delete(self, loc: Location) -> None:
        Path(loc.key).unlink(missing_ok=True)

    def bucket_exists(self, loc: Location) -> bool:
        return True
