"""`gs://` through `google-cloud-storage`.

Credentials: Application Default Credentials (GOOGLE_APPLICATION_CREDENTIALS, workload identity, gcloud);
project from GOOGLE_CLOUD_PROJECT when set. With STORAGE_EMULATOR_HOST set (a local emulator) the client
talks to it with AnonymousCredentials. Upload chunk size: SIDREASONER_GCS_CHUNK_SIZE (bytes, default
16 MiB, rounded to 256 KiB): files above it go up as resumable uploads in chunks of that size.
"""

from __future__ import annotations

import base64
import io
import math
import os
from collections.abc import Iterator
from pathlib import Path

import requests
import urllib3
from google.api_core import exceptions as gexc
from google.auth import exceptions as auth_exc
from google.cloud import storage

from sidreasoner.storage._common import LocalDigest, ObjectInfo, env_float, log, redact
from sidreasoner.storage.errors import ChecksumError, CredentialsError, NotFoundError, StorageError
from sidreasoner.storage.uri import Location

try:  # google-cloud-storage 3.x vendors resumable media; 2.x uses google-resumable-media
    from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
except ImportError:  # pragma: no cover
    from google.resumable_media.common import DataCorruption, InvalidResponse

QUANTUM = 256 * 1024
TRANSIENT_STATUS = {408, 429, 500, 502, 503, 504}


def _hex(b64: str | None) -> str | None:
    return base64.b64decode(b64).hex() if b64 else None


KEY_FILE_ENV = "SIDREASONER_GCS_KEY_FILE"


def make_client() -> storage.Client:
    project = os.environ.get("GOOGLE_CLOUD_PROJECT") or os.environ.get("GCLOUD_PROJECT") or None
    if os.environ.get("STORAGE_EMULATOR_HOST"):
        from google.auth.credentials import AnonymousCredentials

        return storage.Client(project=project or "sidreasoner-emulator", credentials=AnonymousCredentials())
    # The pipeline mounts the chart's optional `sidreasoner-gcs` Secret and names the key file here;
    # when the Secret is absent the file is too, and Application Default Credentials (e.g. workload
    # identity) apply. (Pointing GOOGLE_APPLICATION_CREDENTIALS at a missing file would break ADC.)
    key_file = os.environ.get(KEY_FILE_ENV)
    if key_file and os.path.isfile(key_file) and not os.environ.get("GOOGLE_APPLICATION_CREDENTIALS"):
        return storage.Client.from_service_account_json(key_file, project=project)
    try:
        return storage.Client(project=project)
    except auth_exc.DefaultCredentialsError as err:
        raise CredentialsError(
            "gs://: no Google credentials found (Application Default Credentials): set "
            "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file, use workload identity, "
            f"or set STORAGE_EMULATOR_HOST for an emulator ({redact(str(err))[:300]})"
        ) from None


class GCSBackend:
    scheme = "gs"

    def __init__(self) -> None:
        self.client = make_client()

    # ---------------------------------------------------------------- errors
    def is_transient(self, err: BaseException) -> bool:
        if isinstance(err, gexc.GoogleAPICallError):
            return getattr(err, "code", None) in TRANSIENT_STATUS
        if isinstance(err, InvalidResponse):
            return getattr(err.response, "status_code", None) in TRANSIENT_STATUS
        return isinstance(
            err,
            (
                requests.ConnectionError,
                requests.Timeout,
                requests.exceptions.ChunkedEncodingError,
                urllib3.exceptions.HTTPError,
                auth_exc.TransportError,
                ConnectionError,
                TimeoutError,
            ),
        )

    def translate(self, err: BaseException, loc: Location) -> StorageError | None:
        if isinstance(err, gexc.NotFound):
            if not self._bucket_exists_quiet(loc):
                return NotFoundError(f"{loc}: bucket {loc.bucket!r} does not exist")
            return NotFoundError(f"{loc}: no such object")
        if isinstance(
            err, (gexc.Forbidden, gexc.Unauthorized, auth_exc.RefreshError, auth_exc.DefaultCredentialsError)
        ):
            return CredentialsError(
                redact(
                    f"{loc}: Google Cloud Storage refused the credentials ({type(err).__name__}: {str(err)[:300]}). "
                    "Check GOOGLE_APPLICATION_CREDENTIALS / workload identity and the bucket's IAM roles"
                )
            )
        if isinstance(err, DataCorruption):
            return ChecksumError(f"{loc}: {err}")
        if isinstance(err, gexc.GoogleAPICallError):
            return StorageError(redact(f"{loc}: {type(err).__name__}: {str(err)[:500]}"))
        return None

    def _bucket_exists_quiet(self, loc: Location) -> bool:
        try:
            return self.client.bucket(loc.bucket).exists(retry=None)
        except Exception:  # only used to sharpen a not-found message
            return True

    # ---------------------------------------------------------------- objects
    def bucket_exists(self, loc: Location) -> bool:
        return self.client.bucket(loc.bucket).exists(retry=None)

    def part_size(self, size: int) -> int:
        return 0

    def _info(self, blob, key: str) -> ObjectInfo:
        return ObjectInfo(
            key,
            int(blob.size or 0),
            md5=_hex(blob.md5_hash),
            crc32c=blob.crc32c,
            etag=blob.etag,
            version=blob.generation,
        )

    def stat(self, loc: Location) -> ObjectInfo | None:
        if not loc.key:
            return None
        blob = self.client.bucket(loc.bucket).get_blob(loc.key, retry=None)
        if blob is None:
            if not self.bucket_exists(loc):
                raise gexc.NotFound(f"bucket {loc.bucket}")
            return None
        return self._info(blob, loc.key)

    def list(self, loc: Location) -> Iterator[ObjectInfo]:
        prefix = f"{loc.key}/" if loc.key else ""
        for blob in self.client.list_blobs(loc.bucket, prefix=prefix, retry=None):
            if blob.name.endswith("/"):
                continue
            yield self._info(blob, blob.name[len(prefix) :])

    def read_into(self, loc: Location, info: ObjectInfo, writer, offset: int) -> None:
        blob = self.client.bucket(loc.bucket).blob(loc.key, generation=info.version)  # same bytes when resuming
        # raw_download: the stored bytes (no gzip transcoding), so they match size/MD5/CRC32C
        blob.download_to_file(writer, start=offset or None, raw_download=True, checksum=None, retry=None)

    def upload(self, path: Path, loc: Location, digest: LocalDigest) -> None:
        chunk = int(env_float("SIDREASONER_GCS_CHUNK_SIZE", 16 << 20))
        chunk = max(QUANTUM, math.ceil(chunk / QUANTUM) * QUANTUM)
        blob = self.client.bucket(loc.bucket).blob(loc.key, chunk_size=chunk)
        with open(path, "rb") as fh:
            blob.upload_from_file(fh, size=digest.size, checksum=None, retry=None, rewind=False)
        if blob.md5_hash and _hex(blob.md5_hash) != digest.md5:
            raise ChecksumError(f"{loc}: the store has MD5 {_hex(blob.md5_hash)}, the file {digest.md5}")
        if blob.crc32c and blob.crc32c != digest.crc32c:
            raise ChecksumError(f"{loc}: the store has CRC32C {blob.crc32c}, the file {digest.crc32c}")
        if blob.size is not None and int(blob.size) != digest.size:
            raise ChecksumError(f"{loc}: the store has {blob.size} bytes, the file {digest.size}")
        log.info("uploaded %s (%d bytes, crc32c %s)", loc, digest.size, blob.crc32c)

    def verify_multipart(self, loc: Location, info: ObjectInfo, path: Path) -> None:
        return None  # GCS reports MD5/CRC32C for every object

    def put_bytes(self, loc: Location, data: bytes) -> None:
        blob = self.client.bucket(loc.bucket).blob(loc.key)
        blob.upload_from_file(io.BytesIO(data), size=len(data), content_type="application/json", retry=None)

    def get_bytes(self, loc: Location) -> bytes:
        return self.client.bucket(loc.bucket).blob(loc.key).download_as_bytes(raw_download=True, retry=None)

    def delete(self, loc: Location) -> None:
        try:
            self.client.bucket(loc.bucket).blob(loc.key).delete(retry=None)
        except gexc.NotFound:
            pass
