"""Checkpoint identity for resumable training (SFT and RL): a folder keyed by the config slice, the
code, the step's generation and its inputs (their content and where they lie), so a retried pod of
the same task finds and resumes the same checkpoints, while a re-execution (a new generation, new
code, or inputs from a re-executed upstream step, which are new artifacts at new paths) starts fresh.
One run at a time trains in a folder (`folder_lock.checkpoint_lock`), and after a successful training a stage's
old folders are removed (`remove_old_checkpoint_folders`). A Trainer checkpoint is sealed once saved
(`seal_checkpoint`); a run resumes only from one that checks whole against its seal (`resumable_checkpoint`)."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import logging
import os
import re
import shutil
import struct
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

from sidreasoner.config import Config
from sidreasoner.io import write_json
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
    """16 hex digits over what makes a training run the same one: the seed it uses (the stage's own, else the
    run's), the stage's settings, the code, the step's generation, and the inputs' content and resolved paths
    (the base model is an input folder)."""
    slice_ = {
        "seed": cfg.seed_for(stage),
        stage: section.model_dump(mode="json", exclude={"seed", "checkpoint_dir", "checkpoint_folders_kept"}),
        "code_version": code_version(),
        "generation": cfg.generations.get(STAGE_STEPS[stage], 0),
        "inputs": [str(Path(folder).resolve()) for folder in inputs],
    }
    return hashlib.sha256((json.dumps(slice_, sort_keys=True) + fingerprint(*inputs)).encode()).hexdigest()[:16]


def checkpoint_root(stage: str, cfg: Config, section, inputs: list[Path]) -> Path:
    """<checkpoint_dir or ~/.cache/sidreasoner/checkpoints>/<stage>-<checkpoint_key>."""
    base = (
        Path(section.checkpoint_dir).expanduser()
        if section.checkpoint_dir
        else Path.home() / ".cache" / "sidreasoner" / "checkpoints"
    )
    return base / f"{stage}-{checkpoint_key(stage, cfg, section, inputs)}"


# ---------------------------------------------------------------- the checkpoint folder's own files

# A checkpoint folder belongs to the training, not to a step's output: its file names live here, once.
SEAL = "sidreasoner-seal.json"  # in each checkpoint-N: its files' sizes and digests
TRAINER_STATE = "trainer_state.json"  # in each checkpoint-N: the Trainer's state (transformers names it)
INITIAL = "initial.json"  # SFT: the validation losses before training
BEST = "best"  # SFT: the best weights so far
BEST_RECORD = "best.json"  # in BEST: the evaluation they had (metric, loss, step, epoch)
BEST_WEIGHTS = "trainable.safetensors"  # in BEST: the trainable parameters
WARMUP = "warmup"  # SFT: the embedding warm-up's own checkpoints
WARMUP_FINAL = "final.safetensors"  # in WARMUP: the embeddings of the finished warm-up

# ---------------------------------------------------------------- sealed checkpoints

_WHOLE_HASH_BYTES = 256 << 20  # files up to this size are hashed whole; larger ones by sampled blocks
_BLOCK = 1 << 20
_BLOCKS = 16
_CHECKPOINT = re.compile(r"checkpoint-(\d+)")


def checkpoint_step(folder: Path) -> int | None:
    """N of a folder named checkpoint-N; None for any other name."""
    match = _CHECKPOINT.fullmatch(Path(folder).name)
    return int(match.group(1)) if match else None


def seal_checkpoint(folder: Path, **extra) -> None:
    """Write the seal of a checkpoint folder the Trainer has finished saving: each file's size and sha256
    (of the whole file up to 256 MiB, of 16 blocks of 1 MiB spread over a larger one), and `extra`. A
    checkpoint without a seal was cut short while saving and is never resumed from."""
    folder = Path(folder)
    files = {
        str(p.relative_to(folder)): _digest(p)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.name.startswith(".") and p.name != SEAL
    }
    write_json(folder / SEAL, {"files": files, **extra})


def read_seal(folder: Path) -> dict:
    """The seal of a checkpoint (`checkpoint_problem` has found it whole)."""
    return json.loads((Path(folder) / SEAL).read_text())


def checkpoint_problem(folder: Path) -> str | None:
    """Why the checkpoint `folder` cannot be resumed from, as "<file>: <why>"; None when every file its seal
    lists is there, as saved, and readable."""
    folder = Path(folder)
    try:
        files = read_seal(folder)["files"]
        if not isinstance(files, dict) or not all(isinstance(saved, dict) for saved in files.values()):
            return f"{SEAL}: not a list of files with their sizes and digests"
        if TRAINER_STATE not in files:
            return f"{SEAL}: lists no {TRAINER_STATE}"
    except FileNotFoundError:
        return f"{SEAL}: absent (its save was cut short)"
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"{SEAL}: unreadable ({e})"
    for name, saved in files.items():
        problem = _file_problem(folder / name, saved)
        if problem:
            return f"{name}: {problem}"
    return _step_problem(folder)


def resumable_checkpoint(root: Path, move_aside: bool = True) -> Path | None:
    """The newest checkpoint-N in `root` that `checkpoint_problem` finds whole, or None. Each newer one is
    logged with the file at fault and why, and (`move_aside`) renamed to .checkpoint-N.damaged-<hex>, so
    that the training saving checkpoint-N again writes into an empty folder."""
    root = Path(root)
    found = [p for p in root.glob("checkpoint-*") if p.is_dir() and checkpoint_step(p) is not None]
    for folder in sorted(found, key=checkpoint_step, reverse=True):
        problem = checkpoint_problem(folder)
        if problem is None:
            return folder
        log.warning("%s: not resumed from: %s%s", folder, problem, _move_aside(folder) if move_aside else "")
    if found:
        log.warning("%s: no whole checkpoint left: the training starts from step 0", root)
    return None


def _move_aside(folder: Path) -> str:
    aside = folder.with_name(f".{folder.name}.damaged-{uuid.uuid4().hex[:8]}")
    try:
        os.rename(folder, aside)
    except OSError as e:
        return f"; left in place ({e})"
    return f"; moved to {aside.name}"


def remove_checkpoints_from(root: Path, step: int) -> list[str]:
    """Remove the checkpoints checkpoint-N of `root` with N >= step; returns their names."""
    doomed = sorted(
        (p for p in Path(root).glob("checkpoint-*") if (checkpoint_step(p) or -1) >= step), key=checkpoint_step
    )
    for folder in doomed:
        shutil.rmtree(folder, ignore_errors=True)
    return [p.name for p in doomed]


def _digest(path: Path) -> dict:
    size = path.stat().st_size
    h = hashlib.sha256()
    with path.open("rb") as fh:
        if size <= _WHOLE_HASH_BYTES:
            for chunk in iter(lambda: fh.read(_BLOCK), b""):
                h.update(chunk)
        else:
            for i in range(_BLOCKS):
                fh.seek((size - _BLOCK) * i // (_BLOCKS - 1))
                h.update(fh.read(_BLOCK))
    return {"size": size, "sha256": h.hexdigest()}


def _file_problem(path: Path, saved: dict) -> str | None:
    try:
        now = _digest(path)
    except FileNotFoundError:
        return "missing"
    except OSError as e:
        return f"unreadable ({e})"
    if now["size"] != saved.get("size"):
        return f"{now['size']:,} bytes, {saved.get('size', 0):,} when saved (truncated or overwritten)"
    if now["sha256"] != saved.get("sha256"):
        return "its content changed since it was saved (sha256 differs)"
    return _format_problem(path)


def _format_problem(path: Path) -> str | None:
    """A cheap look at the file's format: JSON parses, a safetensors header matches the file's size, a
    torch .pt/.pth/.bin zip archive has its directory."""
    try:
        if path.suffix == ".json":
            json.loads(path.read_text())
        elif path.suffix == ".safetensors":
            return _safetensors_problem(path)
        elif path.suffix in (".pt", ".pth", ".bin"):  # torch.save writes zip archives
            zipfile.ZipFile(path).close()
    except (OSError, ValueError, KeyError, TypeError, IndexError, struct.error, zipfile.BadZipFile) as e:
        return f"unreadable ({type(e).__name__}: {e})"
    return None


def _safetensors_problem(path: Path) -> str | None:
    size = path.stat().st_size
    with path.open("rb") as fh:
        head = fh.read(8)
        if len(head) < 8:
            return "no safetensors header"
        (n,) = struct.unpack("<Q", head)
        if 8 + n > size:
            return f"its header claims {n:,} bytes of a {size:,}-byte file"
        header = json.loads(fh.read(n))
    ends = [t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"]
    if 8 + n + max(ends, default=0) != size:
        return f"its tensors end at byte {8 + n + max(ends, default=0):,} of {size:,}"
    return None


def _step_problem(folder: Path) -> str | None:
    state = json.loads((folder / TRAINER_STATE).read_text())
    step = state.get("global_step") if isinstance(state, dict) else None
    if step != checkpoint_step(folder):
        return f"{TRAINER_STATE}: global_step {step} in {folder.name}"
    return None


# ---------------------------------------------------------------- old checkpoint folders

# What the training steps put at the top of a checkpoint folder: the HF and TRL Trainers' checkpoint-N,
# and TRL's model card README.md; SFT's warm-up, best weights and losses before training; verl's inputs/, verl/
# and console log, and Hydra's outputs/ (verl runs in the folder); atomic_file's temp names (.<name>.tmp-*);
# damaged checkpoints moved aside (.checkpoint-N.damaged-*).
OWN_ENTRIES = (
    "checkpoint-*",
    "README.md",
    WARMUP,
    BEST,
    INITIAL,
    "inputs",
    "verl",
    "verl_console.log",
    "outputs",
    ".*.tmp-*",
    ".checkpoint-*.damaged-*",
)


def remove_old_checkpoint_folders(current: Path, keep: int, timings: LockTimings = LockTimings()) -> list[Path]:
    """Remove the `<stage>-<key>` folders beside `current` (the same stage) beyond the newest `keep`,
    `current` counting as one, newest by their last change; never `current`, one whose lock a live run
    holds, or one holding anything the training steps do not write. Returns the folders removed."""
    current = Path(current)
    stage = current.name.rsplit("-", 1)[0]
    _remove_leftover_trash(current.parent, stage)
    others = sorted(
        (p for p in _own_folders(current.parent, stage) if p.name != current.name), key=_last_change, reverse=True
    )
    removed = [folder for folder in others[max(keep - 1, 0) :] if _remove_unless_locked(folder, timings)]
    if removed:
        log.info(
            "%s: removed %d older %s checkpoint folder(s), keeping the newest %d: %s",
            current.parent,
            len(removed),
            stage,
            keep,
            ", ".join(p.name for p in removed),
        )
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
