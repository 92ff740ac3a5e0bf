"""Hand-made raw folders for preprocess tests: record each raw file's size and sha256 in the raw data's manifest,
as download-data does (preprocess checks them before it reads a file)."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from sidreasoner.artifacts import RawData


def seal(folder: Path) -> Path:
    """Set the manifest's `files` to the current size and sha256 of its reviews and meta files."""
    manifest = RawData.at(folder).manifest()
    names = [manifest[key] for key in ("reviews", "meta") if isinstance(manifest.get(key), str)]
    manifest["files"] = {
        name: {
            "bytes": (folder / name).stat().st_size,
            "sha256": hashlib.sha256((folder / name).read_bytes()).hexdigest(),
        }
        for name in names
    }
    (folder / RawData.MANIFEST).write_text(json.dumps(manifest))
    return folder
