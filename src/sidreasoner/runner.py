"""Run one registered step on local folders: what `sidreasoner step NAME` and every KFP component do.

Also: a step's process started by `sidreasoner run` dies with it. kfp.local starts each step as
`sh -c "... python -m kfp.dsl.executor_main"` and a SIGKILL of the run reaches neither of them, so the
run names itself in the environment its step processes inherit (`children_die_with_this_process`)
and each step watches it (`die_with_runner`) and, once it is gone, kills the processes it started and
itself.
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sidreasoner.config import Config, ScopedConfig, scope_config, validate
from sidreasoner.errors import no_space_left
from sidreasoner.steps import STEPS, Step

log = logging.getLogger(__name__)
RUNNER_ENV = "SIDREASONER_RUNNER"  # "<pid>:<start time>" of the `sidreasoner run` that started this step
PR_SET_PDEATHSIG = 1
WATCH_SECONDS = 0.5


def run_step(
    name: str, cfg: Config | dict[str, Any], paths: dict[str, str | Path], registry: Mapping[str, Step] = STEPS
) -> dict[str, float]:
    """Run one step. `cfg` is a Config or a step's config slice; `paths` maps every input and
    output folder name of the step to a folder. The step sees only the config sections it declares:
    reading another raises UndeclaredSection."""
    step = registry[name]
    cfg = step_view(step, cfg)
    missing = [k for k in step.folders if k not in paths]
    if missing:
        raise ValueError(f"step {name} needs paths for: {', '.join(missing)}")
    for key in step.inputs:
        if not Path(paths[key]).is_dir():
            raise FileNotFoundError(f"step {name}: input '{key}' folder {paths[key]} does not exist")
    try:
        metrics = step.load()(cfg, *(Path(paths[k]) for k in step.folders))
    except Exception as err:
        full = no_space_left(err, write_locations(step, cfg, paths))
        if full is None:
            raise
        raise full from err
    return {k: float(v) for k, v in metrics.items()}


def step_view(step: Step, cfg: Config | dict[str, Any]) -> ScopedConfig:
    """The config `step` runs with: its declared sections of `cfg` (a Config, or a slice validated here)."""
    return scope_config(cfg if isinstance(cfg, Config) else validate(cfg), step.name, step.sections)


def write_locations(step: Step, cfg: Config, paths: Mapping[str, str | Path]) -> list[Path]:
    """Where a step writes: its output folders, the checkpoint and cache folders of the config sections
    it reads (empty: their defaults under ~/.cache/sidreasoner), and the temp folder."""
    found = [Path(paths[name]) for name in step.outputs]
    for name in step.sections:
        section = getattr(cfg, name, None)
        for setting, default in (("checkpoint_dir", "checkpoints"), ("cache_dir", "")):
            value = getattr(section, setting, None)
            if value is not None:
                found.append(Path(value).expanduser() if value else Path.home() / ".cache" / "sidreasoner" / default)
    found.append(Path(tempfile.gettempdir()))
    return list(dict.fromkeys(found))


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
