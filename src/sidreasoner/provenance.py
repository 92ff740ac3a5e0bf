"""Which code a step runs: `code_version()`, a digest of the installed package's source.

The digest covers every `.py` file of the `sidreasoner` packages (by its name inside the package, so
an editable checkout, a shallow clone, a wheel and the images give the same value for the same
tree) and the distribution's version and declared dependencies (the pins the images install). It
names the code in the pipeline's cache keys, the training checkpoints' keys and the image tags.
"""

from __future__ import annotations

import functools
import hashlib
import importlib
import importlib.metadata
import os
import pkgutil
from pathlib import Path

from sidreasoner import __version__

DISTRIBUTION = "sidreasoner-pipelines"
# Packages installed from folders outside src/sidreasoner (pyproject's package-dir), so not found by
# walking sidreasoner's own path.
MAPPED_PACKAGES = ("sidreasoner.components", "sidreasoner.pipelines")


def _package_dirs() -> dict[str, Path]:
    """Every sidreasoner package and the folder holding its modules."""
    root = importlib.import_module("sidreasoner")
    found = {"sidreasoner": Path(next(iter(root.__path__)))}
    for info in pkgutil.walk_packages(root.__path__, prefix="sidreasoner."):
        if info.ispkg:
            found[info.name] = Path(info.module_finder.path) / info.name.rsplit(".", 1)[1]
    for name in MAPPED_PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.submodule_search_locations:
            found[name] = Path(next(iter(spec.submodule_search_locations)))
    return found


def _requirements() -> list[str]:
    try:
        return sorted(importlib.metadata.requires(DISTRIBUTION) or [])
    except importlib.metadata.PackageNotFoundError:
        return []


def source_digest() -> str:
    """SHA-256 over the package's Python sources (name and bytes), its version and its requirements."""
    h = hashlib.sha256()
    h.update(f"{__version__}\0{chr(10).join(_requirements())}\0".encode())
    for package, folder in sorted(_package_dirs().items()):
        prefix = package.replace(".", "/")
        for path in sorted(folder.glob("*.py")):
            h.update(f"{prefix}/{path.name}\0".encode())
            h.update(path.read_bytes())
            h.update(b"\0")
    return h.hexdigest()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """`<version>+src<first 12 hex digits of source_digest()>`, e.g. `0.1.0+src1a2b3c4d5e6f`.
    SIDREASONER_CODE_VERSION overrides it (what a build records when it has the value already)."""
    override = os.environ.get("SIDREASONER_CODE_VERSION", "").strip()
    return override or f"{__version__}+src{source_digest()[:12]}"


def image_tag() -> str:
    """The images' tag for this code: the code version in the characters a tag allows."""
    return code_version().replace("+", "-")
