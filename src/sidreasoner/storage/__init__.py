"""sidreasoner.storage: one small API over `file://`/paths, `s3://`/`minio://` (minio client) and `gs://`.

    download_file(uri, dest)   upload_file(src, uri)   list_files(uri)
    download_dir(uri, dest, require_marker=True)   upload_dir(src, uri)   exists(uri)   local_files(src)
    read_marker(uri)   put_bytes(uri, data)   delete_files(uri, rels)

Everything is streamed in 1 MiB chunks, retried with backoff on transient errors (downloads resume
at the byte reached), checked against the store's size and checksums, and completed atomically:
downloads land in a temp path that is renamed into place; `upload_dir` writes a `_SUCCESS` marker
with the manifest (path → size, MD5) LAST, and `download_dir` refuses a folder without it unless
`require_marker=False`. Errors are `StorageError` subclasses whose messages name the URI, never a secret.

Environment: SIDREASONER_S3_ENDPOINT, SIDREASONER_S3_SECURE, SIDREASONER_S3_PART_SIZE, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION / AWS_DEFAULT_REGION (s3://, minio://);
GOOGLE_APPLICATION_CREDENTIALS (or other ADC), GOOGLE_CLOUD_PROJECT, STORAGE_EMULATOR_HOST,
SIDREASONER_GCS_CHUNK_SIZE (gs://); SIDREASONER_STORAGE_RETRIES, SIDREASONER_STORAGE_RETRY_DELAY,
SIDREASONER_STORAGE_TIMEOUT (all).
"""

from sidreasoner.storage.api import (
    MARKER,
    delete_files,
    download_dir,
    download_file,
    exists,
    list_files,
    local_files,
    put_bytes,
    read_marker,
    upload_dir,
    upload_file,
)
from sidreasoner.storage.errors import (
    ChecksumError,
    CredentialsError,
    IncompleteUploadError,
    NotFoundError,
    StorageError,
    TransientError,
    UnsupportedSchemeError,
)
from sidreasoner.storage.uri import REMOTE_SCHEMES, Location, is_remote, parse_uri

__all__ = [
    "MARKER",
    "REMOTE_SCHEMES",
    "ChecksumError",
    "CredentialsError",
    "IncompleteUploadError",
    "Location",
    "NotFoundError",
    "StorageError",
    "TransientError",
    "UnsupportedSchemeError",
    "delete_files",
    "download_dir",
    "download_file",
    "exists",
    "is_remote",
    "list_files",
    "local_files",
    "parse_uri",
    "put_bytes",
    "read_marker",
    "upload_dir",
    "upload_file",
]
