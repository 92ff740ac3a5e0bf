"""Storage errors: every message names the URI and never carries a secret."""

from __future__ import annotations


class StorageError(RuntimeError):
    """A storage operation failed; the message names the URI and what to do."""


class UnsupportedSchemeError(StorageError, ValueError):
    """The URI's scheme is none of file://, s3://, minio://, gs:// (or a plain path)."""


class NotFoundError(StorageError, FileNotFoundError):
    """The bucket, object or folder does not exist."""


class CredentialsError(StorageError, PermissionError):
    """Credentials are missing, wrong or lack permission."""


class ChecksumError(StorageError):
    """Bytes on one side do not match the size/checksum the other side reports."""


class IncompleteUploadError(StorageError):
    """A folder has no completion marker: its upload never finished (or it was not written by us)."""


class TransientError(StorageError):
    """A network/server error that persisted through every retry."""
