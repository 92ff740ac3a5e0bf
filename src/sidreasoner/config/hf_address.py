"""The address of a Hugging Face dataset source, `data.source=hf://...`: checked with the config, before anything
runs; `sidreasoner.data.hf_source` reads what it names."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

SCHEME = "hf://"
HUB_PREFIX = "datasets/"  # hf://datasets/owner/name names the same repo as hf://owner/name
REPO_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,95}(/[A-Za-z0-9][A-Za-z0-9_.-]{0,95})?")
FORMS = "hf://owner/name for a hub dataset repo, hf:///abs/path for a folder written by datasets"


class HfAddressError(ValueError):
    """`data.source` starts with hf:// but names no dataset repo or folder."""


@dataclass(frozen=True)
class HfSource:
    """Where `hf://...` points: a hub repo id or a local folder (exactly one is set)."""

    repo_id: str | None = None
    folder: Path | None = None


def is_hf_source(source: str) -> bool:
    return source.startswith(SCHEME)


def parse_hf_source(source: str) -> HfSource:
    """`hf://owner/name` -> hub repo `owner/name`; `hf:///abs/path` -> the local folder `/abs/path`."""
    if not is_hf_source(source):
        raise HfAddressError(f"data.source {source!r} is not an hf:// source ({FORMS})")
    rest = source[len(SCHEME) :]
    if rest.startswith("/"):
        return HfSource(folder=Path(rest))
    repo = rest.removeprefix(HUB_PREFIX).rstrip("/")
    if "@" in repo:
        raise HfAddressError(
            f"data.source {source!r}: put the revision in data.revision, not after '@' (hf://owner/name)"
        )
    if not REPO_ID.fullmatch(repo) or ".." in repo:
        raise HfAddressError(f"data.source {source!r} names no dataset repo or folder ({FORMS})")
    return HfSource(repo_id=repo)
