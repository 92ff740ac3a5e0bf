"""Shared pieces: object info, streaming checksums, retries with backoff, secret redaction."""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import google_crc32c

from sidreasoner.storage.errors import ChecksumError, StorageError, TransientError

log = logging.getLogger("sidreasoner.storage")
CHUNK = 1 << 20  # 1 MiB: the unit of every streamed read/write
T = TypeVar("T")


@dataclass
class ObjectInfo:
    """What a backend reports about one object (checksums where it has them)."""

    key: str
    size: int
    md5: str | None = None  # hex, only when it really is the MD5 of the bytes
    crc32c: str | None = None  # base64 big-endian, as GCS reports it
    etag: str | None = None  # S3: plain MD5 for single-part, "<md5 of part md5s>-N" for multipart
    version: str | int | None = None  # GCS generation: pins the bytes across resumed reads
    extra: dict = field(default_factory=dict)


@dataclass
class LocalDigest:
    size: int
    md5: str
    crc32c: str
    part_md5s: list[bytes]  # MD5 of each `part_size` slice (S3 multipart ETag)
    part_size: int

    def multipart_etag(self) -> str:
        if len(self.part_md5s) <= 1:
            return self.md5
        return hashlib.md5(b"".join(self.part_md5s)).hexdigest() + f"-{len(self.part_md5s)}"


class Hasher:
    """MD5 + CRC32C over a stream of chunks, with a byte count."""

    def __init__(self) -> None:
        self.md5 = hashlib.md5()
        self.crc = google_crc32c.Checksum()
        self.size = 0

    def update(self, data: bytes) -> None:
        self.md5.update(data)
        self.crc.update(data)
        self.size += len(data)

    def crc32c_b64(self) -> str:
        return base64.b64encode(self.crc.digest()).decode()


class HashingWriter:
    """A write-only file wrapper that hashes what it writes (so resumed reads keep one digest)."""

    def __init__(self, fh, progress: Callable[[int], None] | None = None) -> None:
        self.fh, self.hasher, self.progress = fh, Hasher(), progress

    def write(self, data: bytes) -> int:
        self.fh.write(data)
        self.hasher.update(data)
        if self.progress is not None:
            self.progress(self.hasher.size)
        return len(data)

    @property
    def written(self) -> int:
        return self.hasher.size


def digest_file(path: Path, part_size: int = 0) -> LocalDigest:
    """Size, MD5, CRC32C and per-part MD5s of a file, read in 1 MiB chunks."""
    whole, parts, part, in_part = Hasher(), [], hashlib.md5(), 0
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            whole.update(chunk)
            while part_size and chunk:
                take = chunk[: part_size - in_part]
                part.update(take)
                in_part += len(take)
                chunk = chunk[len(take) :]
                if in_part == part_size:
                    parts.append(part.digest())
                    part, in_part = hashlib.md5(), 0
    if part_size and in_part:
        parts.append(part.digest())
    return LocalDigest(whole.size, whole.md5.hexdigest(), whole.crc32c_b64(), parts, part_size)


def verify(uri: str, info: ObjectInfo, hasher: Hasher, expected_md5: str | None = None) -> None:
    """Raise ChecksumError when size or any checksum known for `info` disagrees with the bytes read."""
    if hasher.size != info.size:
        raise ChecksumError(f"{uri}: got {hasher.size} bytes, the store reports {info.size}")
    md5 = hasher.md5.hexdigest()
    for name, want in (("MD5 (manifest)", expected_md5), ("MD5", info.md5)):
        if want and want != md5:
            raise ChecksumError(f"{uri}: {name} mismatch: store {want}, downloaded {md5}")
    if info.crc32c and info.crc32c != hasher.crc32c_b64():
        raise ChecksumError(f"{uri}: CRC32C mismatch: store {info.crc32c}, downloaded {hasher.crc32c_b64()}")


def env_float(name: str, default: float) -> float:
    raw = os.environ.get(name, "").strip()
    try:
        return float(raw) if raw else default
    except ValueError as err:
        raise StorageError(f"{name}={raw!r} is not a number") from err


def redact(text: str) -> str:
    """Remove secret values (from the environment) from a message."""
    for name in ("AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN"):
        secret = os.environ.get(name)
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
    return text


def with_retries(fn: Callable[[], T], uri: str, what: str, is_transient: Callable[[BaseException], bool]) -> T:
    """Call fn, retrying transient errors with exponential backoff and jitter.

    SIDREASONER_STORAGE_RETRIES (attempts, default 5) and SIDREASONER_STORAGE_RETRY_DELAY (first
    delay in seconds, default 1; doubles each time, capped at 30) tune it.
    """
    attempts = max(1, int(env_float("SIDREASONER_STORAGE_RETRIES", 5)))
    delay = env_float("SIDREASONER_STORAGE_RETRY_DELAY", 1.0)
    for attempt in range(1, attempts + 1):
        try:
            return fn()
        except Exception as err:
            if not is_transient(err):
                raise
            if attempt == attempts:
                raise TransientError(
                    redact(f"{uri}: {what} failed after {attempts} attempts: {type(err).__name__}: {err}")
                ) from err
            wait = min(30.0, delay * 2 ** (attempt - 1)) * (0.5 + random.random() / 2)
            log.warning(
                "%s: %s failed (%s: %s); retry %d/%d in %.1fs",
                uri,
                what,
                type(err).__name__,
                redact(str(err))[:300],
                attempt,
                attempts - 1,
                wait,
            )
            time.sleep(wait)
    raise AssertionError("unreachable")


def iter_chunks(fh, size: int = CHUNK) -> Iterator[bytes]:
    return iter(lambda: fh.read(size), b"")
