"""A step's process started by `sidreasoner run` dies with it.

kfp.local starts each step as `sh -c "... python -m kfp.dsl.executor_main"` and a SIGKILL of the run reaches
neither of them, so the run names itself in the environment its step processes inherit
(`children_die_with_this_process`) and each step watches it (`die_with_runner`) and, once it is gone, kills the
processes it started and itself.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger(__name__)
RUNNER_ENV = "SIDREASONER_RUNNER"  # "<pid>:<start time>" of the `sidreasoner run` that started this step
PR_SET_PDEATHSIG = 1
WATCH_SECONDS = 0.5


def _start_time(pid: int) -> str | None:
    """The process's start time (clock ticks after boot): with the pid, it names one process for good."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22; the command name before ")" may hold spaces


def children_die_with_this_process() -> None:
    """Called by the local runner before it starts step processes: they inherit who to die with."""
    started = _start_time(os.getpid()) if sys.platform.startswith("linux") else None
    if started is not None:  # None: no /proc to watch a process by
        os.environ[RUNNER_ENV] = f"{os.getpid()}:{started}"


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue  # exited meanwhile
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _kill_tree_and_self() -> None:
    for _ in range(2):  # a second pass for children started while the first was sent
        for pid in _descendants(os.getpid()):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    os.kill(os.getpid(), signal.SIGKILL)


def _watch(pid: int, started: str) -> None:
    while _start_time(pid) == started:
        time.sleep(WATCH_SECONDS)
    log.error("the `sidreasoner run` process %d is gone: stopping this step and the processes it started", pid)
    _kill_tree_and_self()


def die_with_runner() -> None:
    """In a step's process started by `sidreasoner run`: die (with every process this step started) when
    that run dies, even by SIGKILL. Elsewhere (a cluster pod, `sidreasoner step`) it does nothing."""
    runner = os.environ.get(RUNNER_ENV, "")
    pid, _, started = runner.partition(":")
    if not (sys.platform.startswith("linux") and pid.isdigit() and started) or int(pid) == os.getpid():
        return
    if _start_time(os.getpid()) is None:  # no /proc here: nothing to watch the run by
        return
    parent = os.getppid()
    # The parent here is kfp.local's single-threaded `sh`: SIGKILL this process when it goes.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if os.getppid() != parent or _start_time(int(pid)) != started:  # gone before the watch began
        _kill_tree_and_self()
    threading.Thread(target=_watch, args=(int(pid), started), name="die-with-runner", daemon=True).start()
