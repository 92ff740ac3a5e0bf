"""Atomic artifact writes: a file or folder appears at its final path only when complete.

A file or folder is built at a hidden temp path beside its final path (`.<name>.tmp-XXXX`), owned through
an exclusively locked file `.<name>.tmp-XXXX.lock`. A step killed mid-write leaves both behind; the next
atomic_file or atomic_dir for the same final path removes them once their lock is free (the owner is
dead), and never touches the temp path of a live writer.

atomic_dir replaces an existing folder by renaming it aside (`.<name>.old-XXXX`, owned the same way), renaming
the new folder in, and only then deleting the old copy. A kill at any moment leaves one whole copy: the final
folder, or (killed between the two renames) the aside, which the next atomic_dir for that path puts back.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

LOCK_SUFFIX = ".lock"
FILE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,99}")
FILE_NAME_RULE = "1-100 letters, digits, '_', '-' or '.', starting with a letter or digit"


def file_name_problem(name: Any) -> str | None:
    """Why `name` cannot be one part of a file name, or None when it can."""
    if not isinstance(name, str) or not FILE_NAME.fullmatch(name):
        return f"{name!r} cannot be part of a file name (allowed: {FILE_NAME_RULE})"
    return None


def try_lock(fd: int, wait: bool = False) -> bool | None:
    """flock(LOCK_EX) `fd`: True when held, False when another process holds it, None where the
    filesystem cannot lock (some FUSE and network mounts)."""
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        return True
    except OSError as err:
        if err.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return False
        return None


@contextlib.contextmanager
def locked(path: str | os.PathLike, on_wait: Callable[[], None] | None = None) -> Iterator[bool]:
    """Hold an exclusive lock on the file `path` (created if missing, never removed: removing a lock file
    races with its next user). Waits for another holder, calling `on_wait` first. Yields False where the
    filesystem cannot lock or the folder is read-only."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as err:
        if err.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
            raise
        yield False
        return
    try:
        state = try_lock(fd)
        if state is False:
            if on_wait is not None:
                on_wait()
            state = try_lock(fd, wait=True)
        yield bool(state)
    finally:
        os.close(fd)


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _claim_temp_name(parent: Path, prefix: str) -> tuple[Path, int | None]:
    """A fresh temp path `parent/prefixXXXX` whose lock file `…XXXX.lock` this process holds: (path, fd).
    fd is None where the filesystem cannot lock."""
    while True:
        fd, lock = tempfile.mkstemp(prefix=prefix, suffix=LOCK_SUFFIX, dir=parent)
        state = try_lock(fd, wait=True)
        tmp = Path(lock[: -len(LOCK_SUFFIX)])
        if state:
            # A cleaner may have taken the new lock file for a stale one, and removed it, before we locked it.
            if _same_file(fd, Path(lock)):
                return tmp, fd
        elif state is None:
            os.close(fd)
            return tmp, None
        os.close(fd)


def _release_temp_name(tmp: Path, fd: int | None) -> None:
    Path(f"{tmp}{LOCK_SUFFIX}").unlink(missing_ok=True)
    if fd is not None:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def remove_stale_temps(parent: str | os.PathLike, prefix: str) -> list[Path]:
    """Remove the temp entries `parent/prefix*` whose owner is dead (its lock file is free, or it has none:
    left by a writer that predates the lock files). Returns what was removed."""
    parent = Path(parent)
    try:
        names = [n for n in os.listdir(parent) if n.startswith(prefix)]
    except FileNotFoundError:
        return []
    removed = []
    for name in names:
        path = parent / name
        if name.endswith(LOCK_SUFFIX):
            if _remove_if_owner_dead(path):
                removed.append(path.with_name(name[: -len(LOCK_SUFFIX)]))
        elif f"{name}{LOCK_SUFFIX}" not in names and not Path(f"{path}{LOCK_SUFFIX}").exists():
            _remove(path)
            removed.append(path)
    return removed


def _remove_if_owner_dead(lock: Path) -> bool:
    with _owner_dead(lock) as dead:
        if dead:
            _remove(lock.with_name(lock.name[: -len(LOCK_SUFFIX)]))
        return dead


@contextlib.contextmanager
def _owner_dead(lock: Path) -> Iterator[bool]:
    """Yield True, holding `lock`, when the writer that owned it is dead (the lock file is free); the lock file
    is removed after the block. False for a live owner, a filesystem without locks, or when another cleaner
    got there first."""
    try:
        fd = os.open(lock, os.O_RDWR)
    except OSError:
        yield False
        return
    try:
        dead = bool(try_lock(fd)) and _same_file(fd, lock)
        yield dead
        if dead:
            lock.unlink(missing_ok=True)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _temp_beside(final: Path) -> Iterator[Path]:
    """A temp path beside `final` that this process owns while the block runs, removed when the block
    fails; temp paths of earlier writers of `final` that died (SIGKILL, power loss) are removed first."""
    final.parent.mkdir(parents=True, exist_ok=True)
    prefix = f".{final.name}.tmp-"
    remove_stale_temps(final.parent, prefix)
    tmp, fd = _claim_temp_name(final.parent, prefix)
    try:
        yield tmp
    except BaseException:
        _remove(tmp)
        raise
    finally:
        _release_temp_name(tmp, fd)


def _aside_prefix(final: Path) -> str:
    return f".{final.name}.old-"


def _restore_asides(final: Path) -> None:
    """Asides of dead writers of `final`: one is put back where `final` is missing (its writer was killed
    between the two renames), the others are old copies already replaced, and removed."""
    prefix = _aside_prefix(final)
    try:
        names = sorted(n for n in os.listdir(final.parent) if n.startswith(prefix) and n.endswith(LOCK_SUFFIX))
    except FileNotFoundError:
        return
    for name in names:
        lock = final.parent / name
        with _owner_dead(lock) as dead:
            aside = lock.with_name(name[: -len(LOCK_SUFFIX)])
            if not dead or not os.path.lexists(aside):
                continue
            if not os.path.lexists(final):
                _put_back(aside, final)
            else:
                _remove(aside)


def _put_back(aside: Path, final: Path) -> None:
    try:
        os.rename(aside, final)
    except OSError as err:
        if err.errno not in (errno.ENOTEMPTY, errno.EEXIST) or not os.path.lexists(final):
            raise
        _remove(aside)  # another writer has just put its whole copy there


def _swap_in(tmp: Path, final: Path) -> None:
    """Move the finished folder `tmp` to `final`. An existing `final` is renamed aside first and deleted only
    once the new copy is in place."""
    if not os.path.lexists(final):
        os.replace(tmp, final)
        return
    aside, fd = _claim_temp_name(final.parent, _aside_prefix(final))
    try:
        os.rename(final, aside)
        try:
            os.rename(tmp, final)
        except BaseException:
            _put_back(aside, final)
            raise
        # Deleted under the temp name, whose lock this writer holds: a kill mid-delete leaves a dead temp.
        os.rename(aside, tmp)
        _remove(tmp)
    finally:
        _release_temp_name(aside, fd)


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp folder beside `final`; on success it replaces `final`, on error it is removed."""
    final = Path(final)
    _restore_asides(final)
    with _temp_beside(final) as tmp:
        tmp.mkdir(mode=0o700)  # as tempfile.mkdtemp made it
        yield tmp
        _swap_in(tmp, final)


@contextlib.contextmanager
def atomic_file(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temp file path beside `final` (the file exists, empty); on success it is renamed onto
    `final`, on error it is removed."""
    final = Path(final)
    with _temp_beside(final) as tmp:
        tmp.touch(mode=0o600)  # as tempfile.mkstemp made it
        yield tmp
        os.replace(tmp, final)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    with atomic_file(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())
