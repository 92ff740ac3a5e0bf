"""atomic_dir replacing an existing folder, with a real writer process stopped (SIGSTOP) and then SIGKILLed at
the dangerous moments of the swap: one whole copy is always there under a known name, and the next writer
keeps it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sidreasoner.io import atomic_dir

OLD = {f"old-{n}.bin": f"old {n}".encode() * 100 for n in range(8)}
NEW = {f"new-{n}.bin": f"new {n}".encode() * 100 for n in range(8)}

# Replaces the folder argv[1] by NEW, stopping itself (SIGSTOP) at the moment argv[2] names: an audit hook
# sees each rename and removal the swap does, before it happens, without changing what the code does.
WRITER = """
import ast, os, signal, sys
from pathlib import Path
from sidreasoner.io import atomic_dir
final, moment, files = Path(sys.argv[1]), sys.argv[2], ast.literal_eval(sys.argv[3])
state = {"armed": False, "removed": 0}

def hook(event, args):
    if not state["armed"]:
        return
    if moment == "between-renames" and event == "os.rename" and Path(os.fsdecode(args[1])) == final:
        os.kill(os.getpid(), signal.SIGSTOP)
    if moment == "mid-delete" and event == "os.remove":
        state["removed"] += 1
        if state["removed"] == 3:
            os.kill(os.getpid(), signal.SIGSTOP)

sys.addaudithook(hook)
with atomic_dir(final) as tmp:
    for name, data in files.items():
        (tmp / name).write_bytes(data)
    state["armed"] = True
"""


def _fill(folder: Path, files: dict[str, bytes]) -> None:
    folder.mkdir()
    for name, data in files.items():
        (folder / name).write_bytes(data)


def _holds(folder: Path, files: dict[str, bytes]) -> bool:
    return (
        folder.is_dir()
        and sorted(p.name for p in folder.iterdir()) == sorted(files)
        and all((folder / name).read_bytes() == data for name, data in files.items())
    )


def _whole_copies(parent: Path) -> dict[str, str]:
    """Every folder beside `out` named `out` or `.out.old-*` that holds a whole copy: name -> old/new."""
    found = {}
    for path in parent.iterdir():
        if path.name == "out" or (path.name.startswith(".out.old-") and not path.name.endswith(".lock")):
            for label, files in (("old", OLD), ("new", NEW)):
                if _holds(path, files):
                    found[path.name if path.name == "out" else ".out.old-*"] = label
    return found


def _stopped_writer(final: Path, moment: str) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(final), moment, repr(NEW)])
    _, status = os.waitpid(proc.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the writer ended (status {status}) before the moment {moment}"
    return proc


@pytest.mark.parametrize(
    "moment, at_the_kill, after",
    [
        ("between-renames", {".out.old-*": "old"}, "old"),  # the old copy is put back; the killed write never finished
        ("mid-delete", {"out": "new"}, "new"),  # the new copy is in place; the old one was being deleted
    ],
    ids=["between-renames", "mid-delete"],
)
def test_a_writer_killed_while_replacing_a_folder_leaves_a_whole_copy_that_the_next_writer_keeps(
    tmp_path, moment, at_the_kill, after
):
    final = tmp_path / "out"
    _fill(final, OLD)
    proc = _stopped_writer(final, moment)
    try:
        assert _whole_copies(tmp_path) == at_the_kill
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    with pytest.raises(RuntimeError), atomic_dir(final):  # the next writer, failing before it replaces anything
        raise RuntimeError("no output this time")
    assert _holds(final, OLD if after == "old" else NEW)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temp, aside or lock file left

    with atomic_dir(final) as tmp:
        (tmp / "third.txt").write_text("3")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"] and _holds(final, {"third.txt": b"3"})


def test_a_symlink_in_place_of_the_folder_is_replaced_not_followed(tmp_path):
    _fill(tmp_path / "elsewhere", OLD)
    (tmp_path / "out").symlink_to(tmp_path / "elsewhere")
    with atomic_dir(tmp_path / "out") as tmp:
        (tmp / "a.txt").write_text("a")
    assert _holds(tmp_path / "out", {"a.txt": b"a"}) and not (tmp_path / "out").is_symlink()
    assert _holds(tmp_path / "elsewhere", OLD)
