"""Content-addressed response cache: one small JSON file per key, written atomically as replies arrive.

Key = sha256 over (kind, messages, model, params), where model names the served model: its name,
`teacher.model_revision`, what the endpoint's /models says of it, and synthesize-corpus's generation. A file appears only complete (temp file, fsync,
rename), so a SIGKILL or a pre-empted pod loses at most the replies still in flight, and a re-run
pays only for what is missing. Files are sharded by the key's first two hex digits.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

DEFAULT_DIR = Path("~/.cache/sidreasoner/teacher")


def cache_key(kind: str, messages: list[dict[str, str]], model: dict[str, Any], params: dict[str, Any]) -> str:
    blob = json.dumps({"kind": kind, "messages": messages, "model": model, "params": params},
                      sort_keys=True, ensure_ascii=False, separators=(",", ":"))
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

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            data = json.loads(self.path(key).read_text("utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) and isinstance(data.get("content"), str) else None

    def put(self, key: str, value: dict[str, Any]) -> None:
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key[:8]}.", suffix=".tmp", dir=final.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(value, fh, ensure_ascii=False)
                fh.flush()
                if self.fsync:
                    os.fsync(fh.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def __len__(self) -> int:
        return sum(1 for _ in self.root.glob("??/*.json"))
