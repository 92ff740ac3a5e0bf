"""Reading a `sid_index` folder (the `quantize-sids` step's output): the item -> SID map and the
catalogue of valid SIDs."""

from __future__ import annotations

import json
from pathlib import Path


def load_sid_map(sid_index_dir: Path) -> dict[int, str]:
    index = json.loads((Path(sid_index_dir) / "index.json").read_text())
    return {int(k): "".join(v) for k, v in index.items()}


def load_catalogue(sid_index_dir: Path) -> list[str]:
    cat = Path(sid_index_dir) / "catalogue.json"
    if cat.exists():
        return list(json.loads(cat.read_text()))
    return sorted(set(load_sid_map(sid_index_dir).values()))
