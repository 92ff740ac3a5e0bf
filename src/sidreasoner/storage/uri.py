"""URI parsing: `file://`/paths, `s3://`, `minio://`, `gs://`."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

from sidreasoner.storage.errors import UnsupportedSchemeError

REMOTE_SCHEMES = ("s3", "minio", "gs")
SCHEMES = ("file",) + REMOTE_SCHEMES


@dataclass(frozen=True)
class Location:
    scheme: str  # file | s3 | minio | gs
    bucket: str  # "" for file
    key: str  # object key without leading/trailing "/" (file: absolute path)

    def child(self, rel: str) -> Location:
        rel = rel.strip("/")
        if self.scheme == "file":
            return Location("file", "", os.path.join(self.key, rel))
        return Location(self.scheme, self.bucket, f"{self.key}/{rel}" if self.key else rel)

    def __str__(self) -> str:
        if self.scheme == "file":
            return self.key
        return f"{self.scheme}://{self.bucket}/{self.key}"


def is_remote(uri: str | os.PathLike) -> bool:
    return urlparse(os.fspath(uri)).scheme in REMOTE_SCHEMES


def parse_uri(uri: str | os.PathLike) -> Location:
    """Split a URI into scheme, bucket and key; plain paths and file:// become absolute paths."""
    text = os.fspath(uri)
    parsed = urlparse(text)
    scheme = parsed.scheme.lower()
    if scheme in ("", "file") or (len(scheme) == 1 and text[1:2] == ":"):  # len 1: a Windows drive letter
        path = unquote(parsed.path) if scheme == "file" else text
        if scheme == "file" and parsed.netloc not in ("", "localhost"):
            raise UnsupportedSchemeError(
                f"{text}: file:// URIs name a local path (file:///abs/path), not a host ({parsed.netloc!r})"
            )
        return Location("file", "", str(Path(path).expanduser().absolute()))
    if scheme not in REMOTE_SCHEMES:
        raise UnsupportedSchemeError(
            f"{text}: unsupported scheme {scheme}://; use one of "
            "file://<path> (or a plain path), s3://, minio://, gs://<bucket>/<key>"
        )
    if not parsed.netloc:
        raise UnsupportedSchemeError(f"{text}: no bucket name; expected {scheme}://<bucket>/<key>")
    return Location(scheme, parsed.netloc, unquote(parsed.path).strip("/"))
