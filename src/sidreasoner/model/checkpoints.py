"""Checkpoint identity for resumable training (SFT and RL): a folder keyed by the config slice and
the inputs' content, so a retried pod with the same config and inputs finds and resumes the same
checkpoints."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from sidreasoner.config import Config


def fingerprint(*folders: Path) -> str:
    """Content fingerprint of input folders: full hash for files < 64 MiB, size + head/tail otherwise."""
    h = hashlib.sha256()
    for folder in folders:
        for path in sorted(p for p in Path(folder).rglob("*") if p.is_file()):
            h.update(str(path.relative_to(folder)).encode())
            size = path.stat().st_size
            h.update(str(size).encode())
            with path.open("rb") as fh:
                if size < 64 << 20:
                    h.update(fh.read())
                else:
                    h.update(fh.read(1 << 20))
                    fh.seek(-(1 << 20), os.SEEK_END)
                    h.update(fh.read())
    return h.hexdigest()


def checkpoint_root(stage: str, cfg: Config, section, inputs: list[Path]) -> Path:
    """<checkpoint_dir or ~/.cache/sidreasoner/checkpoints>/<stage>-<hash of config slice + inputs>:
    a retried pod with the same config and inputs finds and resumes the same checkpoints."""
    slice_ = {"seed": cfg.seed, "model": cfg.model.model_dump(mode="json"),
              stage: section.model_dump(mode="json", exclude={"checkpoint_dir"})}
    key = hashlib.sha256((json.dumps(slice_, sort_keys=True) + fingerprint(*inputs)).encode()).hexdigest()[:16]
    base = Path(section.checkpoint_dir).expanduser() if section.checkpoint_dir else Path.home() / ".cache" / "sidreasoner" / "checkpoints"
    return base / f"{stage}-{key}"


def last_checkpoint(folder: Path) -> Path | None:
    ckpts = [p for p in Path(folder).glob("checkpoint-*") if p.is_dir() and (p / "trainer_state.json").exists()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1])) if ckpts else None
