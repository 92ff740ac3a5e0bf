"""Errors that the CLI reports as one line, without a traceback."""

from __future__ import annotations

import errno
import os
import re
from collections.abc import Iterable, Iterator
from pathlib import Path


class ConfigError(ValueError):
    """A config key or value is wrong; the message names the key and what is allowed."""


class NoSpaceLeft(OSError):
    """A write failed because a disk is full; the message names the folder on that disk."""


NO_SPACE_TEXT = re.compile(r"No space left on device|os error 28|\[Errno 28\]")
# Writers that fail on a full disk without an errno: numpy's short write ("2304 requested and 992 written")
# and torch's zip writer ("[enforce fail at inline_container.cc:672] . unexpected pos 64 vs 0",
# "PytorchStreamWriter failed writing file data/0: file write failed").
SHORT_WRITE_TEXT = re.compile(r"\d+ requested and \d+ written|unexpected pos \d+ vs \d+|file write failed")
NEARLY_FULL = 1 << 20  # bytes: a disk with less free space than this is full for any write of a step


def _chain(err: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _existing(path: Path) -> Path:
    path = Path(path).expanduser().absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: str | os.PathLike) -> int | None:
    """Free bytes (for an unprivileged user) on the disk that holds `path`, or would hold it."""
    try:
        info = os.statvfs(_existing(Path(path)))
    except OSError:
        return None
    return info.f_bavail * info.f_frsize


def _device(path: str | os.PathLike) -> int | None:
    try:
        return os.stat(_existing(Path(path))).st_dev
    except OSError:
        return None


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    shown, unit = n / 1024, "KiB"
    for bigger in ("MiB", "GiB"):
        if shown >= 1024:
            shown, unit = shown / 1024, bigger
    return f"{shown:.1f} {unit}"


def no_space_left(err: BaseException, locations: Iterable[str | os.PathLike]) -> NoSpaceLeft | None:
    """`err` as one line naming the full disk's folder among `locations` (where the failed code writes),
    when `err` is a write that failed for want of space: ENOSPC anywhere in its chain or in its text
    (safetensors' "No space left on device (os error 28)"), or a short write by a writer that reports no
    errno while a location's disk is full. None for any other error."""
    errors = list(_chain(err))
    certain = any(isinstance(e, OSError) and e.errno == errno.ENOSPC or NO_SPACE_TEXT.search(str(e)) for e in errors)
    if not certain and not any(SHORT_WRITE_TEXT.search(str(e)) for e in errors):
        return None
    filename = next(
        (e.filename for e in errors if isinstance(e, OSError) and e.errno == errno.ENOSPC and e.filename), None
    )
    free = {Path(loc): free_bytes(loc) for loc in locations}
    free = {loc: n for loc, n in free.items() if n is not None}
    if filename is not None:  # the location on the disk the failed write went to
        on_disk = [loc for loc in free if _device(loc) == _device(filename)]
        free = {loc: free[loc] for loc in on_disk} or {_existing(Path(filename)): free_bytes(filename) or 0}
    if not free:
        return None
    folder = min(free, key=free.get)
    if not certain and free[folder] >= NEARLY_FULL:
        return None
    full = NoSpaceLeft(
        f"no space left on {folder} ({_size(free[folder])} free now)" + (f" writing {filename}" if filename else "")
    )
    full.errno = errno.ENOSPC
    return full


def enospc_if_full(err: OSError, path: str | os.PathLike) -> OSError:
    """`err` from writing `path`, as ENOSPC naming `path` when it carries no errno (numpy's short write) and
    the disk is full now: call it before the partial file is removed, while it still fills the disk."""
    if err.errno is None and (free_bytes(path) or 0) < NEARLY_FULL:
        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return err
