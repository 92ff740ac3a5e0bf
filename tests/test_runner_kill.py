"""A `sidreasoner run` killed by SIGKILL takes its running step's processes with it: a real run, a
real step process busy on a download from a 127.0.0.1 server that stalls, a real SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

SIDREASONER = Path(sys.executable).parent / "sidreasoner"


class _Stall(BaseHTTPRequestHandler):
    """Starts a gzip download, then sends nothing more until the test ends."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(10 << 20))
        self.end_headers()
        self.wfile.write(b"\x1f\x8b")
        self.wfile.flush()
        self.server.asked.set()
        self.server.release.wait(120)

    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(10 << 20))
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def _children() -> dict[int, list[int]]:
    out: dict[int, list[int]] = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        out.setdefault(ppid, []).append(int(entry))
    return out


def _tree(root: int) -> list[int]:
    children, found, todo = _children(), [], [root]
    while todo:
        kids = children.get(todo.pop(), [])
        found += kids
        todo += kids
    return found


def _alive(pid: int) -> bool:
    """Running, stopped or sleeping; a zombie (dead, not yet reaped by its new parent) is not alive."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _command(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_sigkill_of_run_kills_the_running_step(tmp_path):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Stall)
    server.asked, server.release = threading.Event(), threading.Event()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with open(tmp_path / "run.log", "wb") as log:
        run = subprocess.Popen(
            [
                str(SIDREASONER),
                "run",
                "--preset",
                "demo",
                "--until",
                "download-data",
                "--pipeline-root",
                str(tmp_path / "root"),
                "--set",
                "data.source=amazon2018",
                "--set",
                "data.category=Office_Products",
                "--set",
                f"data.base_url=http://127.0.0.1:{server.server_port}",
                "--set",
                f"data.cache_dir={tmp_path / 'c'}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    step_processes: list[int] = []
    try:
        assert server.asked.wait(90), (tmp_path / "run.log").read_text()[-3000:]
        time.sleep(1)  # let the step print its progress bar: a write into the dead run's pipe would end it anyway
        step_processes = _tree(run.pid)
        assert any("kfp.dsl.executor_main" in _command(pid) for pid in step_processes), step_processes
        os.kill(run.pid, signal.SIGKILL)
        run.wait(10)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and any(_alive(pid) for pid in step_processes):
            time.sleep(0.1)
        left = {pid: _command(pid) for pid in step_processes if _alive(pid)}
        assert not left, f"still running 5 s after the run was killed: {left}"
    finally:
        for pid in [run.pid, *step_processes]:
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        run.wait(10)
        server.release.set()
        server.shutdown()
        server.server_close()


def _orphan_after_parent_sigkill(tmp_path: Path, env: dict[str, str]) -> int:
    """A parent process starts a child that calls die_with_runner, then the parent gets SIGKILL: the child's pid."""
    child = (
        "import os, time; from sidreasoner.watchdog import die_with_runner; die_with_runner(); "
        f"open({str(tmp_path / 'child.pid')!r}, 'w').write(str(os.getpid())); time.sleep(60)"
    )
    parent = subprocess.Popen(
        [sys.executable, "-c", f"import subprocess, sys; subprocess.run([sys.executable, '-c', {child!r}])"],
        env=env,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not (tmp_path / "child.pid").exists() or not (tmp_path / "child.pid").read_text():
        assert time.monotonic() < deadline and parent.poll() is None
        time.sleep(0.05)
    parent.kill()
    parent.wait()
    return int((tmp_path / "child.pid").read_text())


def _gone_within(pid: int, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not _alive(pid)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")
def test_a_step_dies_with_its_parent_only_under_sidreasoner_run(tmp_path):
    from sidreasoner.watchdog import RUNNER_ENV, children_die_with_this_process

    env = {k: v for k, v in os.environ.items() if k != RUNNER_ENV}
    children_die_with_this_process()  # this (live) test process plays the run; the parent dies
    under_run = {**env, RUNNER_ENV: os.environ.pop(RUNNER_ENV)}
    (tmp_path / "a").mkdir()
    child = _orphan_after_parent_sigkill(tmp_path / "a", under_run)
    try:
        assert _gone_within(child, 3), "the step outlived its parent"
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)

    (tmp_path / "b").mkdir()
    child = _orphan_after_parent_sigkill(tmp_path / "b", env)  # not started by `sidreasoner run`: left alone
    try:
        assert not _gone_within(child, 1)
    finally:
        os.kill(child, signal.SIGKILL)


def _run_command(root: Path, summary: Path, *overrides: str) -> list[str]:
    return [
        str(SIDREASONER),
        "run",
        "--until",
        "download-data",
        "--pipeline-root",
        str(root),
        "--summary",
        str(summary),
        *(arg for item in overrides for arg in ("--set", item)),
    ]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="stops a process group")
def test_two_runs_on_one_root_each_describe_their_own_folder(tmp_path):
    """The first run is held (SIGSTOP) once its run folder exists, while a second run on the same root starts
    and finishes: each summary names its own folder and calls its own executed task SUCCEEDED."""
    root = tmp_path / "root"
    first = subprocess.Popen(
        _run_command(root, tmp_path / "first.json"),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not (root.is_dir() and any(p.name.startswith("sidreasoner-") for p in root.iterdir())):
            assert time.monotonic() < deadline and first.poll() is None, "the first run made no run folder"
            time.sleep(0.01)
        os.killpg(first.pid, signal.SIGSTOP)
        (first_dir,) = [p.resolve() for p in root.iterdir() if p.name.startswith("sidreasoner-")]
        second = subprocess.run(
            _run_command(root, tmp_path / "second.json", "data.demo.num_items=21"),
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert second.returncode == 0, second.stderr[-3000:]
    finally:
        os.killpg(first.pid, signal.SIGCONT)
    assert first.wait(120) == 0
    for name, folder in (("first", first_dir), ("second", None)):
        summary = json.loads((tmp_path / f"{name}.json").read_text())
        task = summary["tasks"]["download-data"]
        assert task["status"] == "SUCCEEDED", (name, summary["run_dir"])
        assert Path(task["outputs"]["raw"]).parent.parent == Path(summary["run_dir"])
        if folder:
            assert summary["run_dir"] == str(folder)
