"""`s3://` and `minio://` through the `minio` client.

Endpoint: SIDREASONER_S3_ENDPOINT (`http://127.0.0.1:9000`, `https://s3.example.com`, or a bare
`host:port`); default `s3.amazonaws.com` (TLS) for s3:// and the KFP MinIO `minio-service.kubeflow:9000`
(plain HTTP) for minio://. SIDREASONER_S3_SECURE=true|false overrides TLS for a bare host.
Credentials: AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN); without them, IRSA /
container credentials when their env is set, else anonymous. Region: AWS_REGION or AWS_DEFAULT_REGION.
Part size for multipart uploads: SIDREASONER_S3_PART_SIZE (bytes, default 16 MiB, at least 5 MiB).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import re
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlparse

import certifi
import urllib3
from minio import Minio
from minio.credentials import IamAwsProvider
from minio.error import InvalidResponseError, S3Error, ServerError

from sidreasoner.storage._common import CHUNK, LocalDigest, ObjectInfo, env_float, log, redact
from sidreasoner.storage.errors import ChecksumError, CredentialsError, NotFoundError, StorageError
from sidreasoner.storage.uri import Location

AWS_ENDPOINT = "s3.amazonaws.com"
KFP_MINIO_ENDPOINT = "minio-service.kubeflow:9000"
MIN_PART = 5 << 20
MAX_PARTS = 10_000
MIB = 1 << 20
AUTH_CODES = {
    "AccessDenied",
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "ExpiredToken",
    "InvalidToken",
    "TokenRefreshRequired",
    "AllAccessDisabled",
    "AuthorizationHeaderMalformed",
    "InvalidSecurity",
}
TRANSIENT_CODES = {
    "InternalError",
    "SlowDown",
    "ServiceUnavailable",
    "RequestTimeout",
    "RequestTimeTooSkewed",
    "OperationAborted",
    "XMinioServerNotInitialized",
}
HEX_MD5 = re.compile(r"^[0-9a-f]{32}$")
MULTIPART_ETAG = re.compile(r"^[0-9a-f]{32}-(\d+)$")


def endpoint_settings(scheme: str) -> tuple[str, bool]:
    """(host[:port], secure) for a scheme from SIDREASONER_S3_ENDPOINT / SIDREASONER_S3_SECURE."""
    raw = os.environ.get("SIDREASONER_S3_ENDPOINT", "").strip()
    default_secure = scheme != "minio"
    if not raw:
        host, secure = (KFP_MINIO_ENDPOINT, False) if scheme == "minio" else (AWS_ENDPOINT, True)
    elif "://" in raw:
        parsed = urlparse(raw)
        if parsed.scheme not in ("http", "https") or not parsed.netloc or parsed.path.strip("/"):
            raise StorageError(f"SIDREASONER_S3_ENDPOINT={raw!r}: expected http(s)://host[:port] with no path")
        host, secure = parsed.netloc, parsed.scheme == "https"
    else:
        host, secure = raw.rstrip("/"), default_secure
    flag = os.environ.get("SIDREASONER_S3_SECURE", "").strip().lower()
    if flag:
        if flag not in ("1", "true", "yes", "0", "false", "no"):
            raise StorageError(f"SIDREASONER_S3_SECURE={flag!r}: use true or false")
        secure = flag in ("1", "true", "yes")
    return host, secure


def make_client(scheme: str) -> Minio:
    host, secure = endpoint_settings(scheme)
    access, secret = os.environ.get("AWS_ACCESS_KEY_ID") or None, os.environ.get("AWS_SECRET_ACCESS_KEY") or None
    if bool(access) != bool(secret):
        missing = "AWS_SECRET_ACCESS_KEY" if access else "AWS_ACCESS_KEY_ID"
        raise CredentialsError(f"{scheme}://: {missing} is not set while its partner is; set both or neither")
    provider = None
    if not access and (
        os.environ.get("AWS_WEB_IDENTITY_TOKEN_FILE")
        or os.environ.get("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
        or os.environ.get("AWS_CONTAINER_CREDENTIALS_FULL_URI")
    ):
        provider = IamAwsProvider()  # IRSA on EKS / ECS task roles
    timeout = env_float("SIDREASONER_STORAGE_TIMEOUT", 60.0)
    http = urllib3.PoolManager(
        timeout=urllib3.Timeout(connect=min(timeout, 30.0), read=timeout),
        maxsize=10,
        cert_reqs="CERT_REQUIRED",
        ca_certs=os.environ.get("SSL_CERT_FILE") or certifi.where(),
        # one quick connect retry here; backoff and resumption live in sidreasoner.storage
        retries=urllib3.Retry(total=2, connect=1, read=0, status=0, other=0, redirect=2, backoff_factor=0.1),
    )
    return Minio(
        host,
        access_key=access,
        secret_key=secret,
        session_token=os.environ.get("AWS_SESSION_TOKEN") or None,
        secure=secure,
        region=os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or None,
        http_client=http,
        credentials=provider,
    )


class _Reader(io.RawIOBase):
    """Read-only file wrapper (minio reads parts from it); counts bytes for error messages."""

    def __init__(self, fh) -> None:
        self.fh, self.count = fh, 0

    def read(self, size: int = -1) -> bytes:
        data = self.fh.read(size)
        self.count += len(data)
        return data


class S3Backend:
    def __init__(self, scheme: str) -> None:
        self.scheme = scheme
        self.client = make_client(scheme)
        host, secure = endpoint_settings(scheme)
        self.endpoint = f"{'https' if secure else 'http'}://{host}"

    # ---------------------------------------------------------------- errors
    def is_transient(self, err: BaseException) -> bool:
        if isinstance(err, S3Error):
            return err.code in TRANSIENT_CODES
        return isinstance(
            err, (ServerError, InvalidResponseError, urllib3.exceptions.HTTPError, ConnectionError, TimeoutError)
        )

    def translate(self, err: BaseException, loc: Location) -> StorageError | None:
        if not isinstance(err, S3Error):
            return None
        code = err.code
        if code == "NoSuchBucket":
            return NotFoundError(f"{loc}: bucket {loc.bucket!r} does not exist at {self.endpoint}")
        if code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound"):
            if not self._bucket_exists_quiet(loc):
                return NotFoundError(f"{loc}: bucket {loc.bucket!r} does not exist at {self.endpoint}")
            return NotFoundError(f"{loc}: no such object")
        if code in AUTH_CODES:
            who = os.environ.get("AWS_ACCESS_KEY_ID")
            hint = f"access key id {who!r} with its secret" if who else "anonymous access (AWS_ACCESS_KEY_ID unset)"
            return CredentialsError(
                redact(
                    f"{loc}: {self.endpoint} refused {hint}: {code} ({err.message}). Check AWS_ACCESS_KEY_ID / "
                    "AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN) and the bucket policy"
                )
            )
        return StorageError(redact(f"{loc}: {code}: {err.message}"))

    def _bucket_exists_quiet(self, loc: Location) -> bool:
        try:
            return self.client.bucket_exists(loc.bucket)
        except Exception:  # only used to sharpen a not-found message
            return True

    # ---------------------------------------------------------------- objects
    def bucket_exists(self, loc: Location) -> bool:
        return self.client.bucket_exists(loc.bucket)

    def part_size(self, size: int) -> int:
        want = int(env_float("SIDREASONER_S3_PART_SIZE", 16 * MIB))
        want = max(MIN_PART, math.ceil(want / MIB) * MIB)  # whole MiB: digest_file slices on 1 MiB chunks
        need = math.ceil(math.ceil(size / MAX_PARTS) / MIB) * MIB
        return max(want, need)

    def _info(self, obj, key: str) -> ObjectInfo:
        etag = (obj.etag or "").strip('"').lower() or None
        meta = {k.lower(): v for k, v in (obj.metadata or {}).items()}
        md5 = meta.get("x-amz-meta-md5")
        encrypted = (
            meta.get("x-amz-server-side-encryption") in ("aws:kms", "aws:kms:dsse")
            or "x-amz-server-side-encryption-customer-algorithm" in meta
        )
        if not md5 and etag and HEX_MD5.match(etag) and not encrypted:
            md5 = etag  # a single-part upload without SSE-KMS/SSE-C: the ETag is the MD5
        return ObjectInfo(
            key,
            int(obj.size or 0),
            md5=md5,
            etag=etag,
            extra={"encrypted": encrypted, "version_id": getattr(obj, "version_id", None)},
        )

    def stat(self, loc: Location) -> ObjectInfo | None:
        if not loc.key:
            return None
        try:
            obj = self.client.stat_object(loc.bucket, loc.key)
        except S3Error as err:
            if err.code in ("NoSuchKey", "NoSuchObject", "ResourceNotFound") and self.client.bucket_exists(loc.bucket):
                return None
            raise
        return self._info(obj, loc.key)

    def list(self, loc: Location) -> Iterator[ObjectInfo]:
        prefix = f"{loc.key}/" if loc.key else ""
        for obj in self.client.list_objects(loc.bucket, prefix=prefix, recursive=True):
            if obj.is_dir or obj.object_name.endswith("/"):
                continue
            info = ObjectInfo(
                obj.object_name[len(prefix) :], int(obj.size or 0), etag=(obj.etag or "").strip('"').lower() or None
            )
            yield info

    def read_into(self, loc: Location, info: ObjectInfo, writer, offset: int) -> None:
        headers = {"If-Match": f'"{info.etag}"'} if info.etag and offset else None  # same bytes when resuming
        resp = self.client.get_object(loc.bucket, loc.key, offset=offset, request_headers=headers)
        try:
            for chunk in resp.stream(CHUNK, decode_content=False):
                writer.write(chunk)
        finally:
            resp.close()
            resp.release_conn()

    def upload(self, path: Path, loc: Location, digest: LocalDigest) -> None:
        with open(path, "rb") as fh:
            reader = _Reader(fh)
            result = self.client.put_object(
                loc.bucket, loc.key, reader, digest.size, part_size=digest.part_size, metadata={"md5": digest.md5}
            )
        got = (result.etag or "").strip('"').lower()
        want = digest.multipart_etag() if digest.size > digest.part_size else digest.md5
        if got and (HEX_MD5.match(got) or MULTIPART_ETAG.match(got)) and got != want:
            raise ChecksumError(
                f"{loc}: the store computed ETag {got} for the upload, expected {want} "
                f"({digest.size} bytes in parts of {digest.part_size})"
            )
        log.info("uploaded %s (%d bytes, etag %s)", loc, digest.size, got)

    def verify_multipart(self, loc: Location, info: ObjectInfo, path: Path) -> None:
        """Check a downloaded file against a multipart ETag (part size read from part 1 of the object)."""
        m = MULTIPART_ETAG.match(info.etag or "")
        if not m or info.md5 or info.extra.get("encrypted"):
            return
        parts = int(m.group(1))
        try:
            first = self.client.stat_object(loc.bucket, loc.key, extra_query_params={"partNumber": "1"})
            part = int(first.size or 0)
        except Exception as err:  # servers without partNumber on HEAD: size was checked already
            log.info("%s: cannot read part size (%s); size verified, multipart ETag not", loc, type(err).__name__)
            return
        if part <= 0 or math.ceil(info.size / part) != parts:
            log.info("%s: parts are not uniform; size verified, multipart ETag not", loc)
            return
        md5s = []
        with open(path, "rb") as fh:
            for _ in range(parts):
                h = hashlib.md5()
                left = part
                while left:
                    chunk = fh.read(min(CHUNK, left))
                    if not chunk:
                        break
                    h.update(chunk)
                    left -= len(chunk)
                md5s.append(h.digest())
        got = hashlib.md5(b"".join(md5s)).hexdigest() + f"-{parts}"
        if got != info.etag:
            raise ChecksumError(f"{loc}: multipart ETag mismatch: store {info.etag}, downloaded {got}")

    def put_bytes(self, loc: Location, data: bytes) -> None:
        self.client.put_object(
            loc.bucket,
            loc.key,
            io.BytesIO(data),
            len(data),
            content_type="application/json",
            metadata={"md5": hashlib.md5(data).hexdigest()},
        )

    def get_bytes(self, loc: Location) -> bytes:
        resp = self.client.get_object(loc.bucket, loc.key)
        try:
            return resp.read()
        finally:
            resp.close()
            resp.release_conn()

    def delete(self, loc: Location) -> None:
        self.client.remove_object(loc.bucket, loc.key)
