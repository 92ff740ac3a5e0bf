"""What `sidreasoner run` shows while the pipeline runs: a line when a task starts (with the path of its log
file) and one when it ends (state, time, its key metric), and on a terminal one progress bar for the running
task. Everything a task prints goes to its log file; a failed task's last lines are shown too.

Nothing here knows kfp: `pipelines/local.py` routes each task's output here (`Console.task`) and everything
else printed during the run to the run's log (`Console.capturing`), and chooses where the logs go.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager, redirect_stdout
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO

TAIL_LINES = 20
ESCAPES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
# A tqdm bar as a step prints it: "desc:  45%|####      | 18/40 [00:02<00:03, 6.1it/s]" (desc optional).
BAR = re.compile(r"^\s*(?:(?P<desc>[^|]*?):\s*)?(?P<percent>\d{1,3})%\|[^|]*\|\s*(?P<count>\S+)/(?P<total>\S+)")
LOSS = re.compile(r"['\"](?P<key>loss|reward)['\"]:\s*(?P<value>[-+\d.eE]+|nan)")
# The metric a task's end line shows: the first name one of these finds, in this order (the largest K of an @K).
KEY_METRICS = tuple(
    re.compile(p)
    for p in (
        r"^stage3_think_hr@",
        r"(?<!item)_hr@\d+$",
        r"^reward_last$",
        r"^valid_loss$",
        r"^collision_rate_after$",
        r"^samples_train$",
        r"^bytes_total$",
        r"^items_narrated$",
        r"^n_items$",
        r"^parameters$",
    )
)
# kfp.local's own lines about a task (its logger's and a rule); what the task's process prints comes indented
# by 4 spaces.
KFP_LINE = re.compile(r"^(\d\d:\d\d:\d\d\.\d{3} - [A-Z]+ - |-+$)")
PROCESS_INDENT = "    "
NEWLINES = re.compile(r"\r\n|\r|\n")  # a container's output keeps the \r of its progress bars
TICK_SECONDS = 1.0
REDRAW_SECONDS = 0.1  # at most this often for the lines a task prints


class TaskFailed(RuntimeError):
    """A task of the run failed; its last lines have been shown, the message names its log file."""


def key_metric(metrics: Mapping[str, float]) -> str:
    for pattern in KEY_METRICS:
        found = [name for name in metrics if pattern.search(name)]
        if found:
            name = max(sorted(found), key=lambda n: int(n.rsplit("@", 1)[-1]) if "@" in n else 0)
            value = metrics[name]
            return f"{name}={int(value) if float(value).is_integer() else f'{value:.4g}'}"
    return ""


def seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 60 else f"{int(value // 60)} min {int(value % 60):02d} s"


@dataclass
class Progress:
    """The task's progress, read from the tqdm bars and trainer log dicts it prints: the first bar still
    running is the one shown (a trainer's bar, not the evaluation bars it starts on the way)."""

    bar: tuple[str, str] | None = None  # (description, total)
    percent: int = 0
    count: str = ""
    loss: str = ""

    def read(self, line: str) -> None:
        found = BAR.search(line)
        if found:
            key = ((found["desc"] or "").strip(), found["total"])
            if self.bar is None or self.percent >= 100 or key == self.bar:
                self.bar, self.percent, self.count = key, min(int(found["percent"]), 100), found["count"]
            return
        for match in LOSS.finditer(line):
            self.loss = f"{match['key']} {match['value']}"

    def text(self, width: int) -> str:
        if self.bar is None:
            return self.loss
        filled = width * self.percent // 100
        label = f"{self.bar[0]} " if self.bar[0] else ""
        return f"{label}[{'#' * filled}{'.' * (width - filled)}] {self.percent:>3}% {self.count}/{self.bar[1]}" + (
            f"  {self.loss}" if self.loss else ""
        )


@dataclass
class Task:
    """One running task: its log file (opened when the task prints its first line), its progress, the last
    lines its process printed."""

    name: str
    log_path: Path
    started: float = field(default_factory=time.monotonic)
    log: TextIO | None = None
    progress: Progress = field(default_factory=Progress)
    tail: deque = field(default_factory=lambda: deque(maxlen=TAIL_LINES))
    ended: tuple[str, str] | None = None  # (state, key metric)

    @property
    def executed(self) -> bool:
        """kfp.local prints nothing for a task it serves from its cache."""
        return self.log is not None

    def end(self, state: str, metrics: Mapping[str, float]) -> None:
        self.ended = (state, key_metric(metrics))


class _Lines(io.TextIOBase):
    """A text stream that hands `line` every complete line written to it (a bar's update ends with \r)."""

    def __init__(self, line: Callable[[str], None]) -> None:
        self._line, self._pending = line, ""

    def writable(self) -> bool:
        return True

    def write(self, text: str) -> int:
        *lines, self._pending = NEWLINES.split(self._pending + text)
        for line in lines:
            self._line(line)
        return len(text)


class Console:
    """Writes the run's task lines and progress bar to `out`; a bar is drawn only when `out` is a terminal."""

    def __init__(self, out: TextIO | None = None, live: bool | None = None) -> None:
        self.out = out or sys.stdout
        self.live = self.out.isatty() if live is None else live
        self.failed: Task | None = None
        self._running: dict[int, Task] = {}  # by the thread that runs the task
        self._lock = threading.RLock()
        self._bar_shown, self._drawn_at = False, 0.0
        self._other: Callable[[str], None] = lambda line: None

    @contextmanager
    def capturing(self, other_log: Callable[[], Path | None]) -> Iterator[None]:
        """Route what is printed (sys.stdout) to the log of the task the printing thread runs, and anything
        else printed to the file `other_log()` names (when it names one)."""
        with open_lazily(other_log) as other:
            self._other = other
            stop = threading.Event()
            if self.live:
                threading.Thread(target=self._tick, args=(stop,), name="console-bar", daemon=True).start()
            try:
                with redirect_stdout(_Lines(self._line)):
                    yield
            finally:
                stop.set()
                self._other = lambda line: None
                with self._lock:
                    self._clear_bar()

    @contextmanager
    def task(self, name: str, log_path: Path) -> Iterator[Task]:
        """While the block runs in this thread, what it prints goes to `log_path`; call `Task.end` in it."""
        task = Task(name, log_path)
        with self._lock:
            self._running[threading.get_ident()] = task
        try:
            yield task
        except BaseException:
            task.ended = task.ended or ("FAILED", "")
            raise
        finally:
            with self._lock:
                self._running.pop(threading.get_ident(), None)
            if task.log:
                task.log.close()
            self._report(task)

    def _line(self, line: str) -> None:
        task = self._running.get(threading.get_ident())
        line = ESCAPES.sub("", line)
        if task is None:
            self._other(line)
            return
        with self._lock:
            if task.log is None:
                task.log = self._open(task)
            task.log.write(line + "\n")
            if line.strip() and not KFP_LINE.match(line):
                process_line = line.removeprefix(PROCESS_INDENT)
                task.tail.append(process_line)
                task.progress.read(process_line)
                if time.monotonic() - self._drawn_at >= REDRAW_SECONDS:
                    self._draw_bar()

    def _open(self, task: Task) -> TextIO:
        log, error = open_log(task.log_path)
        self._print(f"{task.name:<22} started    " + (f"no log: {error}" if error else f"log {task.log_path}"))
        return log

    def _report(self, task: Task) -> None:
        state, metric = task.ended or ("FAILED", "")
        with self._lock:
            if not task.executed and state == "SUCCEEDED":
                self._print(f"{task.name:<22} CACHED     {metric}".rstrip())
                return
            took = seconds(time.monotonic() - task.started)
            self._print(f"{task.name:<22} {state:<10} {took:<8} {metric}".rstrip())
            if state != "SUCCEEDED":
                self.failed = task
                self._print(f"  last lines of {task.name}'s log:", stamp=False)
                for line in task.tail:
                    self._print(f"  | {line}", stamp=False)
                self._print(f"  full log: {task.log_path}", stamp=False)

    def _print(self, text: str, stamp: bool = True) -> None:
        self._clear_bar()
        self.out.write(f"{time.strftime('%H:%M:%S')} {text}\n" if stamp else f"{text}\n")
        self.out.flush()
        self._draw_bar()

    def _draw_bar(self) -> None:
        if not self.live:
            return
        with self._lock:
            tasks = [t for t in self._running.values() if t.executed]
            if not tasks:
                return
            task = tasks[-1]
            columns = shutil.get_terminal_size((100, 24)).columns
            head = f"  {task.name} running {seconds(time.monotonic() - task.started)}  "
            text = (head + task.progress.text(max(10, min(30, columns - len(head) - 40))))[: columns - 1]
            self.out.write(f"\r\x1b[K{text}")
            self.out.flush()
            self._bar_shown, self._drawn_at = True, time.monotonic()

    def _clear_bar(self) -> None:
        if self._bar_shown:
            self.out.write("\r\x1b[K")
            self._bar_shown = False

    def _tick(self, stop: threading.Event) -> None:
        while not stop.wait(TICK_SECONDS):
            self._draw_bar()


def open_log(path: Path) -> tuple[TextIO, OSError | None]:
    """The log file at `path`, line-buffered; when it cannot be written, nothing (the run goes on) and why."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return open(path, "a", encoding="utf-8", buffering=1), None
    except OSError as err:
        return open(os.devnull, "w", encoding="utf-8"), err


@contextmanager
def open_lazily(path: Callable[[], Path | None]) -> Iterator[Callable[[str], None]]:
    """A function that appends a line to the file `path()` names, opened on the first line that has a path."""
    opened: list[TextIO] = []

    def write(line: str) -> None:
        if not opened:
            where = path()
            if where is None:
                return
            opened.append(open_log(where)[0])
        opened[0].write(line + "\n")

    try:
        yield write
    finally:
        for stream in opened:
            stream.close()
