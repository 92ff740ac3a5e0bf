"""Content-addressed response cache: one small JSON file per key, written atomically as replies arrive.

Key = sha256 over (kind, messages, model, params), where model names the served model: its name,
`teacher.model_revision`, what the endpoint's /models says of it, and synthesize-corpus's generation.
A file appears only complete (temp file, fsync, rename), so a SIGKILL or a pre-empted pod loses at
most the replies still in flight, and a re-run pays only for what is missing. Files are sharded by
the key's first two hex digits. Each file is streamed to disk on its own; nothing rewrites the cache.

Replies that validation rejected are moved under `rejected/` (with the reason): kept for inspection,
never served, so a re-run asks for them again.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("~/.cache/sidreasoner/teacher")
REJECTED = "rejected"


def cache_key(kind: str, messages: list[dict[str, str]], model: dict[str, Any], params: dict[str, Any]) -> str:
    blob = json.dumps(
        {"kind": kind, "messages": messages, "model": model, "params": params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


def resolve_dir(cache_dir: str) -> Path:
    return Path(cache_dir).expanduser() if cache_dir else DEFAULT_DIR.expanduser()


class ResponseCache:
    def __init__(self, root: str | os.PathLike, fsync: bool = True):
        self.root = Path(root)
        self.fsync = fsync
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / key[:2] / f"{key}.json"

    def rejected_path(self, key: str) -> Path:
        return self.root / REJECTED / key[:2] / f"{key}.json"

    def get(self, key: str, max_bytes: int | None = None) -> dict[str, Any] | None:
        """The cached reply, or None when there is none, it is unreadable, or it is over `max_bytes`."""
        return _read(self.path(key), max_bytes)

    def put(self, key: str, value: dict[str, Any]) -> None:
        _write(self.path(key), value, self.fsync)

    def set_aside(self, key: str, reason: str, detail: str) -> None:
        """Move a reply that was rejected out of the cache, into rejected/ with why (kept for inspection)."""
        value = _read(self.path(key), None)
        if value is None:
            return
        _write(self.rejected_path(key), {**value, "reason": reason, "detail": detail}, self.fsync)
        self.path(key).unlink(missing_ok=True)

    def forget_rejection(self, key: str) -> None:
        """An accepted reply has replaced the rejected one: rejected/ holds only what is rejected now."""
        self.rejected_path(key).unlink(missing_ok=True)

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json"))


def _read(path: Path, max_bytes: int | None) -> dict[str, Any] | None:
    try:
        if max_bytes is not None and path.stat().st_size > max_bytes:
            return None
        data = json.loads(path.read_text("utf-8"))
    except (OSError, ValueError, RecursionError):
        return None
    return data if isinstance(data, dict) and isinstance(data.get("content"), str) else None


def _write(final: Path, value: dict[str, Any], fsync: bool) -> None:
    """Streams `value` as JSON into a temp file beside `final`, then renames it into place."""
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name[:8]}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(value, fh, ensure_ascii=False)
            fh.flush()
            if fsync:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
