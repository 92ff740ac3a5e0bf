"""One writer per folder on a volume that pods on several nodes share: a lock file beside the folder,
created with O_EXCL, naming its holder and kept fresh by a heartbeat, so that a lock whose holder died
(whatever the node) is taken over. The training steps hold one per checkpoint folder."""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

log = logging.getLogger(__name__)

LOCK_WAIT_S = 6 * 3600.0  # how long a second run with the same key waits for the first to finish
# Who holds a lock, as Kubernetes and Kubeflow Pipelines tell a pod (when set).
HOLDER_ENV = ("HOSTNAME", "KFP_POD_NAME", "KFP_POD_UID", "KFP_RUN_ID", "ARGO_WORKFLOW_NAME", "ARGO_NODE_ID")


@dataclass(frozen=True)
class LockTimings:
    heartbeat_s: float = 30.0  # the holder touches its lock file this often
    # A lock file untouched this long has a dead holder. Many heartbeats: a slow shared volume, or
    # clocks a little apart (the mtime is set by one host, its age read on another), must not make
    # a live holder's lock look stale.
    stale_s: float = 600.0
    poll_s: float = 5.0  # a waiter looks again this often
    log_every_s: float = 300.0  # and logs who holds the lock this often


class CheckpointLockTimeout(TimeoutError):
    """Another run held a checkpoint folder's lock for longer than the wait allowed."""


def lock_path(folder: Path) -> Path:
    """`.<folder name>.lock` beside the folder: hidden, as the project's other lock files, so that what
    lists `<stage>-*` finds only checkpoint folders."""
    folder = Path(folder)
    return folder.with_name(f".{folder.name}.lock")


@contextmanager
def checkpoint_lock(folder: Path, wait_s: float | None = None, timings: LockTimings = LockTimings()) -> Iterator[Path]:
    """Hold the lock file `.<folder name>.lock` while the block runs, so that one run at a time trains
    into, resumes from and rotates `folder`, also across pods and nodes sharing the volume. The lock
    file is created with O_EXCL, names its holder and is touched every heartbeat; a lock without
    heartbeat for `timings.stale_s`, or whose process on this host has ended, is taken over. Waits up
    to `wait_s` (None: LOCK_WAIT_S), then raises CheckpointLockTimeout naming the lock file and its
    holder. Yields the lock file."""
    lock = _FolderLock(Path(folder), timings)
    lock.acquire(LOCK_WAIT_S if wait_s is None else wait_s)
    try:
        yield lock.path
    finally:
        lock.release()


class _FolderLock:
    def __init__(self, folder: Path, timings: LockTimings):
        self.folder, self.path, self.timings = folder, lock_path(folder), timings
        self.token = uuid.uuid4().hex
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def acquire(self, wait_s: float) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        start, logged = time.monotonic(), -math.inf
        while not self._try_create():
            seen = _read_lock(self.path)
            if seen is None:
                continue  # released since: try again at once
            if self._take_over_if_stale(*seen):
                break
            waited = time.monotonic() - start
            if waited >= wait_s:
                raise CheckpointLockTimeout(self._timeout_message(seen[0], waited, wait_s))
            if time.monotonic() - logged >= self.timings.log_every_s:
                log.info(
                    "%s: waiting for %s, which holds it since %s (%.0f s of %g s)",
                    self.path,
                    _describe(seen[0]),
                    seen[0].get("since_utc", "an unknown time"),
                    waited,
                    wait_s,
                )
                logged = time.monotonic()
            time.sleep(min(self.timings.poll_s, wait_s - waited))
        self._thread = threading.Thread(target=self._beat, name=f"heartbeat {self.path.name}", daemon=True)
        self._thread.start()

    def _timeout_message(self, info: dict, waited: float, wait_s: float) -> str:
        return (
            f"{self.path}: held by {_describe(info)} since {info.get('since_utc', 'an unknown time')}; gave up "
            f"after waiting {waited:.0f} s (at most {wait_s:g} s). Another run with the same config and inputs "
            f"trains into {self.folder}; a dead holder's lock is taken over once its heartbeat is "
            f"{self.timings.stale_s:g} s old"
        )

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        seen = _read_lock(self.path)
        if seen is not None and seen[0].get("token") == self.token:
            self.path.unlink()
        else:
            log.warning(
                "%s: left in place: it is no longer this run's (now %s)",
                self.path,
                _describe(seen[0]) if seen else "absent",
            )

    def _try_create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(_identity(self.token), fh)
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _take_over_if_stale(self, info: dict, st: os.stat_result) -> bool:
        """Move a stale lock aside, then create ours. Of the takers that judge one lock file stale, only
        the one that creates the claim file named after it (its inode and mtime) moves it: a rename by
        every taker could move the lock that the first one has just created."""
        reason = _stale_reason(info, st, self.timings.stale_s)
        if reason is None:
            return False
        claim = self.path.with_name(f"{self.path.name}.takeover-{st.st_ino}-{st.st_mtime_ns}")
        if not _claim(claim, self.timings.stale_s):
            return False
        try:
            if not self._move_aside((info, st)) or not self._try_create():
                return False
        finally:
            claim.unlink(missing_ok=True)
        log.warning(
            "%s: took over the lock of %s, held since %s: %s",
            self.path,
            _describe(info),
            info.get("since_utc", "an unknown time"),
            reason,
        )
        return True

    def _move_aside(self, stale: tuple[dict, os.stat_result]) -> bool:
        """Remove the stale lock file if it is still the one judged stale (neither released nor refreshed)."""
        now = _read_lock(self.path)
        if now is None or not _same_lock(now, stale):
            return False
        aside = self.path.with_name(f"{self.path.name}.stale-{self.token}")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:  # its holder, alive after all, released it
            return False
        moved = _read_lock(aside)
        if moved is not None and not _same_lock(moved, stale):  # released and taken again in between
            self._put_back(aside, moved[0])
            return False
        aside.unlink(missing_ok=True)
        return True

    def _put_back(self, aside: Path, info: dict) -> None:
        try:
            os.link(aside, self.path)  # unlike a rename, fails when a lock is there again
        except FileExistsError:
            now = _read_lock(self.path)
            if now is None or now[0].get("token") != info.get("token"):
                log.error(
                    "%s: moved aside the live lock of %s and could not put it back: %s holds it now",
                    self.path,
                    _describe(info),
                    _describe(now[0]) if now else "nobody",
                )
        aside.unlink()

    def _beat(self) -> None:
        while not self._stop.wait(self.timings.heartbeat_s):
            try:
                if not self._touch():
                    return
            except OSError as e:
                log.warning("%s: heartbeat failed (%s); trying again", self.path, e)

    def _touch(self) -> bool:
        """Refresh the lock's mtime; False once another run holds it."""
        seen = _read_lock(self.path)
        if seen is None and self._try_create():  # moved aside by a taker that could not put it back
            return True
        seen = seen or _read_lock(self.path)
        if seen is not None and seen[0].get("token") == self.token:
            os.utime(self.path)
            return True
        log.error(
            "%s: lost while held, to %s: another run may write this checkpoint folder too",
            self.path,
            _describe(seen[0]) if seen else "nobody",
        )
        return False


def _claim(path: Path, stale_s: float) -> bool:
    """Create `path` (O_EXCL); a claim older than `stale_s`, left by a taker that died, is removed for the next try."""
    try:
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
        return True
    except FileExistsError:
        pass
    try:
        if time.time() - path.stat().st_mtime > stale_s:
            path.unlink(missing_ok=True)
    except FileNotFoundError:
        pass
    return False


def _identity(token: str) -> dict:
    now = time.time()
    return {
        "token": token,
        "hostname": socket.gethostname(),
        "pid": os.getpid(),
        "host_id": _host_id(),
        "process_start": _process_start(os.getpid()),
        "since": now,
        "since_utc": datetime.fromtimestamp(now, UTC).isoformat(timespec="seconds"),
        "env": {name: os.environ[name] for name in HOLDER_ENV if os.environ.get(name)},
    }


@functools.cache
def _host_id() -> str:
    """Where pids are comparable: one host name, kernel boot and pid namespace (a host name alone is not
    enough: pods with hostNetwork share the node's); empty where /proc cannot tell."""
    try:
        boot = Path("/proc/sys/kernel/random/boot_id").read_text().strip()
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""
    return f"{socket.gethostname()}/{boot}/{namespace}"


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (a reused pid has another); None when it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return None if fields[0] == "Z" else int(fields[19])


def _read_lock(path: Path) -> tuple[dict, os.stat_result] | None:
    """(holder, stat) of a lock file; the holder is {} while the file is empty or unreadable; None when absent."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            st, text = os.fstat(fh.fileno()), fh.read()
    except FileNotFoundError:
        return None
    try:
        info = json.loads(text)
    except ValueError:
        info = {}
    return (info if isinstance(info, dict) else {}), st


def _same_lock(a: tuple[dict, os.stat_result], b: tuple[dict, os.stat_result]) -> bool:
    return (a[0].get("token"), a[1].st_ino, a[1].st_mtime_ns) == (b[0].get("token"), b[1].st_ino, b[1].st_mtime_ns)


def _stale_reason(info: dict, st: os.stat_result, stale_s: float) -> str | None:
    age = time.time() - st.st_mtime
    if age > stale_s:
        return f"its heartbeat stopped {age:.0f} s ago (stale after {stale_s:g} s)"
    pid = info.get("pid")
    if (
        _host_id()
        and info.get("host_id") == _host_id()
        and isinstance(pid, int)
        and _process_start(pid) != info.get("process_start")
    ):
        return f"its process {pid} on this host has ended"
    return None


def _describe(info: dict) -> str:
    if not info.get("hostname"):
        return "an unknown holder (the lock file is empty or unreadable)"
    env = {k: v for k, v in (info.get("env") or {}).items() if not (k == "HOSTNAME" and v == info["hostname"])}
    extra = ", ".join(f"{k}={v}" for k, v in env.items())
    return f"{info['hostname']} pid {info.get('pid')}" + (f" ({extra})" if extra else "")
