"""Checkpoint identity for resumable training (SFT and RL): a folder keyed by the config slice, the
code, the step's generation and its inputs (their content and where they lie), so a retried pod of
the same task finds and resumes the same checkpoints, while a re-execution (a new generation, new
code, or inputs from a re-executed upstream step, which are new artifacts at new paths) starts fresh.
One run at a time trains in a folder (`folder_lock.checkpoint_lock`), and after a successful training a stage's
old folders are removed (`remove_old_checkpoint_folders`)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

from sidreasoner.config import Config
from sidreasoner.model.folder_lock import CheckpointLockTimeout, LockTimings, checkpoint_lock
from sidreasoner.provenance import code_version

log = logging.getLogger(__name__)

# The step each checkpointed stage section trains in.
STAGE_STEPS = {"stage1": "sft-stage1", "stage2": "sft-stage2", "stage3": "rl-stage3"}


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


def checkpoint_key(stage: str, cfg: Config, section, inputs: list[Path]) -> str:
    """16 hex digits over what makes a training run the same one: seed, model and stage settings, the
    code, the step's generation, and the inputs' content and resolved paths."""
    slice_ = {"seed": cfg.seed, "model": cfg.model.model_dump(mode="json"),
              stage: section.model_dump(mode="json", exclude={"checkpoint_dir", "checkpoint_folders_kept"}),
              "code_version": code_version(), "generation": cfg.generations.get(STAGE_STEPS[stage], 0),
              "inputs": [str(Path(folder).resolve()) for folder in inputs]}
    return hashlib.sha256((json.dumps(slice_, sort_keys=True) + fingerprint(*inputs)).encode()).hexdigest()[:16]


def checkpoint_root(stage: str, cfg: Config, section, inputs: list[Path]) -> Path:
    """<checkpoint_dir or ~/.cache/sidreasoner/checkpoints>/<stage>-<checkpoint_key>."""
    base = Path(section.checkpoint_dir).expanduser() if section.checkpoint_dir else Path.home() / ".cache" / "sidreasoner" / "checkpoints"
    return base / f"{stage}-{checkpoint_key(stage, cfg, section, inputs)}"


def last_checkpoint(folder: Path) -> Path | None:
    ckpts = [p for p in Path(folder).glob("checkpoint-*") if p.is_dir() and (p / "trainer_state.json").exists()]
    return max(ckpts, key=lambda p: int(p.name.split("-")[-1])) if ckpts else None


# ---------------------------------------------------------------- old checkpoint folders

# What the training steps put at the top of a checkpoint folder: the HF and TRL Trainers' checkpoint-N,
# and TRL's model card README.md; SFT's warmup/, best/ and initial.json; verl's inputs/, verl/ and console
# log, and Hydra's outputs/ (verl runs in the folder); atomic_file's temp names (.<name>.tmp-*).
OWN_ENTRIES = ("checkpoint-*", "README.md", "warmup", "best", "initial.json", "inputs", "verl", "verl_console.log",
               "outputs", ".*.tmp-*")


def remove_old_checkpoint_folders(current: Path, keep: int, timings: LockTimings = LockTimings()) -> list[Path]:
    """Remove the `<stage>-<key>` folders beside `current` (the same stage) beyond the newest `keep`,
    `current` counting as one, newest by their last change; never `current`, one whose lock a live run
    holds, or one holding anything the training steps do not write. Returns the folders removed."""
    current = Path(current)
    stage = current.name.rsplit("-", 1)[0]
    _remove_leftover_trash(current.parent, stage)
    others = sorted((p for p in _own_folders(current.parent, stage) if p.name != current.name),
                    key=_last_change, reverse=True)
    removed = [folder for folder in others[max(keep - 1, 0):] if _remove_unless_locked(folder, timings)]
    if removed:
        log.info("%s: removed %d older %s checkpoint folder(s), keeping the newest %d: %s", current.parent,
                 len(removed), stage, keep, ", ".join(p.name for p in removed))
    return removed


def _own_folders(base: Path, stage: str) -> Iterator[Path]:
    name = re.compile(rf"{re.escape(stage)}-[0-9a-f]{{16}}")
    for folder in base.iterdir():
        if not name.fullmatch(folder.name) or folder.is_symlink() or not folder.is_dir():
            continue
        foreign = _foreign_entries(folder)
        if foreign:
            log.info("%s: left alone: it holds %s, which no training step writes", folder, ", ".join(foreign[:5]))
        else:
            yield folder


def _foreign_entries(folder: Path) -> list[str]:
    try:
        names = sorted(entry.name for entry in folder.iterdir())
    except OSError as e:
        return [f"an unreadable listing ({e})"]
    return [n for n in names if not any(fnmatch.fnmatchcase(n, pattern) for pattern in OWN_ENTRIES)]


def _last_change(folder: Path) -> float:
    """The latest mtime of the folder and its entries: a new checkpoint-N (or verl's global_step_N, inside
    verl/) changes it."""
    try:
        return max([folder.lstat().st_mtime] + [entry.lstat().st_mtime for entry in folder.iterdir()])
    except OSError:
        return 0.0  # removed meanwhile


def _remove_unless_locked(folder: Path, timings: LockTimings) -> bool:
    """Under the folder's lock, so that no run starts on it meanwhile; renamed out of the key's name first,
    so that a removal cut short leaves no half checkpoint for a run to resume from."""
    try:
        with checkpoint_lock(folder, wait_s=0, timings=timings):
            trash = folder.with_name(f".{folder.name}.removing-{uuid.uuid4().hex[:8]}")
            os.rename(folder, trash)
            shutil.rmtree(trash)
    except CheckpointLockTimeout:
        log.info("%s: kept: a live run holds its lock", folder)
        return False
    except OSError as e:
        log.warning("%s: not removed: %s", folder, e)
        return False
    return True


def _remove_leftover_trash(base: Path, stage: str) -> None:
    for trash in base.glob(f".{stage}-*.removing-*"):
        shutil.rmtree(trash, ignore_errors=True)
