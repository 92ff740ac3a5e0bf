"""The checkpoint folder's lock and the removal of old checkpoint folders, with real processes and files."""

import json
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sidreasoner import config
from sidreasoner.config import ConfigError
from sidreasoner.model import folder_lock
from sidreasoner.model.checkpoints import checkpoint_key, checkpoint_root, remove_old_checkpoint_folders
from sidreasoner.model.folder_lock import CheckpointLockTimeout, LockTimings, checkpoint_lock, lock_path
from sidreasoner.rl import stage3
from sidreasoner.train.sft import sft_stage1

FAST = LockTimings(heartbeat_s=0.05, stale_s=1.0, poll_s=0.02, log_every_s=0.1)
LOGGER = "sidreasoner.model"  # the lock (folder_lock) and the cleanup (checkpoints)

# Holds the locks of the folders argv[3:] until killed or for argv[1] seconds; touches argv[2] once it holds them.
HOLDER = """
import contextlib, sys, time
from pathlib import Path
from sidreasoner.model.folder_lock import LockTimings, checkpoint_lock
hold_s, ready, folders = float(sys.argv[1]), Path(sys.argv[2]), sys.argv[3:]
with contextlib.ExitStack() as held:
    for folder in folders:
        held.enter_context(checkpoint_lock(Path(folder), wait_s=0,
                                           timings=LockTimings(heartbeat_s=0.05, stale_s=1.0, poll_s=0.02)))
    ready.touch()
    time.sleep(hold_s)
Path(str(ready) + ".released").touch()
"""

# Waits for the file argv[2], then tries each folder argv[4:] once (no wait), keeping what it wins until
# every racer has written its done file into argv[3]; prints the folders it won.
RACER = """
import contextlib, json, sys, time
from pathlib import Path
from sidreasoner.model.folder_lock import CheckpointLockTimeout, LockTimings, checkpoint_lock
name, go, done, folders = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]
timings = LockTimings(heartbeat_s=0.05, stale_s=60, poll_s=0.01)
(done / (name + ".ready")).touch()
while not go.exists():
    time.sleep(0.001)
won = []
with contextlib.ExitStack() as held:
    for folder in folders:
        try:
            held.enter_context(checkpoint_lock(Path(folder), wait_s=0, timings=timings))
            won.append(folder)
        except CheckpointLockTimeout:
            pass
    (done / (name + ".done")).touch()
    while len(list(done.glob("*.done"))) < int(go.read_text()):
        time.sleep(0.01)
print(json.dumps(won))
"""


def _wait_for(path: Path, timeout: float = 15.0) -> None:
    end = time.monotonic() + timeout
    while not path.exists():
        assert time.monotonic() < end, f"{path} did not appear"
        time.sleep(0.01)


def _holder(tmp_path: Path, folders: list[Path], hold_s: float = 30.0, env: dict | None = None) -> subprocess.Popen:
    ready = tmp_path / f"ready-{len(list(tmp_path.glob('ready-*')))}"
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(hold_s), str(ready), *map(str, folders)], env={**os.environ, **(env or {})}
    )
    _wait_for(ready)
    proc.ready = ready
    return proc


def _killed_holder(tmp_path: Path, folders: list[Path]) -> int:
    proc = _holder(tmp_path, folders)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return proc.pid


def _age(path: Path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past))


def test_a_second_writer_waits_and_gets_the_lock_once_the_first_releases_it(tmp_path, caplog):
    folder = tmp_path / "ckpt" / "stage1-0123456789abcdef"
    # Held for twice the stale timeout: only the heartbeat keeps the waiter from taking it over.
    holder = _holder(tmp_path, [folder], hold_s=2.0)
    start = time.monotonic()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        with checkpoint_lock(folder, wait_s=20, timings=FAST) as lock:
            assert Path(str(holder.ready) + ".released").exists()
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert 1.0 < time.monotonic() - start < 15
    assert holder.wait(10) == 0
    assert f"waiting for {socket.gethostname()} pid {holder.pid}" in caplog.text
    assert "took over" not in caplog.text
    assert not lock_path(folder).exists()


def test_a_second_writer_with_a_short_wait_fails_naming_the_lock_file_and_its_holder(tmp_path):
    folder = tmp_path / "stage2-0123456789abcdef"
    holder = _holder(tmp_path, [folder], env={"KFP_POD_NAME": "sft-stage2-x7k2p", "KFP_RUN_ID": "run-42"})
    try:
        held_by = json.loads(lock_path(folder).read_text())
        with pytest.raises(CheckpointLockTimeout) as err:
            with checkpoint_lock(folder, wait_s=0.3, timings=FAST):
                pytest.fail("got a lock another process holds")
        message = str(err.value)
        assert message.startswith(f"{lock_path(folder)}: held by {socket.gethostname()} pid {holder.pid} (")
        assert "KFP_POD_NAME=sft-stage2-x7k2p" in message and "KFP_RUN_ID=run-42" in message
        assert f"since {held_by['since_utc']}" in message
        assert json.loads(lock_path(folder).read_text())["token"] == held_by["token"]  # the loser left it alone
    finally:
        holder.kill()
        holder.wait()


def test_a_stale_lock_of_a_killed_holder_is_taken_over(tmp_path, caplog):
    folder = tmp_path / "stage3-0123456789abcdef"
    pid = _killed_holder(tmp_path, [folder])
    _age(lock_path(folder), 3600)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        with checkpoint_lock(folder, wait_s=0, timings=FAST) as lock:
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert f"took over the lock of {socket.gethostname()} pid {pid}" in caplog.text
    assert "its heartbeat stopped 36" in caplog.text
    assert sorted(p.name for p in tmp_path.iterdir() if "stage3" in p.name) == []  # nothing moved aside is left


def test_a_dead_holder_on_this_host_is_taken_over_without_waiting_for_its_heartbeat(tmp_path, caplog):
    folder = tmp_path / "stage1-0123456789abcdef"
    pid = _killed_holder(tmp_path, [folder])
    slow = LockTimings(heartbeat_s=0.05, stale_s=3600, poll_s=0.02)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        with checkpoint_lock(folder, wait_s=0, timings=slow):
            pass
    assert f"its process {pid} on this host has ended" in caplog.text


def test_a_holder_on_another_host_is_judged_by_its_heartbeat_alone(tmp_path, caplog):
    folder = tmp_path / "stage1-0123456789abcdef"
    pid = 4194303  # no such process here; on its own host it may well run
    assert not Path(f"/proc/{pid}").exists()
    lock_path(folder).write_text(
        json.dumps(
            {
                "token": "b" * 32,
                "hostname": "sft-stage1-pod-b",
                "pid": pid,
                "host_id": "sft-stage1-pod-b/boot/pid:[1]",
                "process_start": 77,
                "since_utc": "2026-01-02T03:04:05+00:00",
                "env": {"HOSTNAME": "sft-stage1-pod-b"},
            }
        )
    )
    with pytest.raises(CheckpointLockTimeout, match=r"held by sft-stage1-pod-b pid 4194303 since 2026-01-02T03:04:05"):
        with checkpoint_lock(folder, wait_s=0.2, timings=FAST):
            pass
    _age(lock_path(folder), 5)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        with checkpoint_lock(folder, wait_s=0, timings=FAST):
            pass
    assert "took over the lock of sft-stage1-pod-b pid 4194303, held since 2026-01-02T03:04:05+00:00" in caplog.text


def test_racing_takers_of_stale_locks_each_lock_has_exactly_one_winner(tmp_path):
    folders = [tmp_path / "ckpt" / f"stage1-{i:016x}" for i in range(100)]
    _killed_holder(tmp_path, folders)
    for folder in folders:
        _age(lock_path(folder), 3600)
    go, done = tmp_path / "go", tmp_path / "done"
    done.mkdir()
    racers = [
        subprocess.Popen(
            [sys.executable, "-c", RACER, f"r{i}", str(go), str(done), *map(str, folders)],
            stdout=subprocess.PIPE,
            text=True,
        )
        for i in range(8)
    ]
    for i in range(len(racers)):
        _wait_for(done / f"r{i}.ready")
    go.write_text(str(len(racers)))
    won = [json.loads(r.communicate(timeout=30)[0]) for r in racers]
    assert all(r.returncode == 0 for r in racers)
    assert sorted(f for w in won for f in w) == sorted(map(str, folders))  # each once, none twice
    assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == []  # released, nothing moved aside left


def test_the_lock_is_released_when_the_block_raises(tmp_path):
    folder = tmp_path / "stage2-0123456789abcdef"
    with pytest.raises(RuntimeError, match="training failed"):
        with checkpoint_lock(folder, timings=FAST):
            assert lock_path(folder).exists()
            raise RuntimeError("training failed")
    assert not lock_path(folder).exists()
    assert not [t for t in threading.enumerate() if t.name.startswith("heartbeat")]
    with checkpoint_lock(folder, wait_s=0, timings=FAST):
        pass


def test_a_lock_that_another_run_holds_by_now_is_left_in_place(tmp_path, caplog):
    folder = tmp_path / "stage2-0123456789abcdef"
    other = json.dumps({"token": "c" * 32, "hostname": "sft-stage2-pod-c", "pid": 12})
    with caplog.at_level(logging.INFO, logger=LOGGER):
        with checkpoint_lock(folder, timings=FAST) as lock:
            swap = tmp_path / "swap"
            swap.write_text(other)
            os.replace(swap, lock)  # as a taker that judged this lock stale would have
            end = time.monotonic() + 10
            while "lost while held" not in caplog.text and time.monotonic() < end:
                time.sleep(0.02)  # the next heartbeat notices
    assert lock_path(folder).read_text() == other
    assert "lost while held, to sft-stage2-pod-c pid 12" in caplog.text
    assert "left in place: it is no longer this run's (now sft-stage2-pod-c pid 12)" in caplog.text


# ---------------------------------------------------------------- old checkpoint folders


def _folder(base: Path, name: str, age_s: float, entries=("checkpoint-10/trainer_state.json",)) -> Path:
    folder = base / name
    for entry in entries:
        path = folder / entry
        if entry.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("{}")
    for path in sorted(folder.rglob("*"), reverse=True) + [folder]:
        _age(path, age_s)
    return folder


def _names(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir())


def test_cleanup_keeps_the_newest_folders_of_the_stage(tmp_path):
    base = tmp_path / "checkpoints"
    current = _folder(base, "stage1-000000000000000a", 0)
    _folder(base, "stage1-000000000000000b", 100)
    _folder(
        base,
        "stage1-000000000000000c",
        200,
        (
            "best/best.json",
            "initial.json",
            "warmup/final.safetensors",
            ".initial.json.tmp-x1y2",
            "checkpoint-4/trainer_state.json",
        ),
    )
    _folder(base, "stage1-000000000000000d", 300)
    _folder(
        base,
        "stage1-000000000000000e",
        400,
        (
            "checkpoint-2/",
            "README.md",  # TRL's model card
            ".checkpoint-4.damaged-1a2b3c4d/trainer_state.json",
        ),
    )
    _folder(base, "stage2-000000000000000f", 9000)  # another stage: not counted, not removed
    _folder(
        base,
        "stage3-0000000000000010",
        9000,
        (
            "inputs/catalogue.json",
            "verl/global_step_2/actor/x.pt",
            "verl/latest_checkpointed_iteration.txt",
            "verl_console.log",
            "outputs/2026-01-01/10-00-00/.hydra/config.yaml",
        ),
    )
    removed = remove_old_checkpoint_folders(current, keep=3, timings=FAST)
    assert sorted(p.name for p in removed) == ["stage1-000000000000000d", "stage1-000000000000000e"]
    assert _names(base) == [
        "stage1-000000000000000a",
        "stage1-000000000000000b",
        "stage1-000000000000000c",
        "stage2-000000000000000f",
        "stage3-0000000000000010",
    ]
    # The newest by its last checkpoint, though the folder itself is older: a verl-shaped folder counts too.
    newer = _folder(tmp_path / "verl", "stage3-0000000000000011", 50)
    _folder(tmp_path / "verl", "stage3-0000000000000012", 80, ("inputs/catalogue.json", "verl_console.log"))
    _age(newer, 500)
    old = _folder(tmp_path / "verl", "stage3-0000000000000013", 100, ("inputs/catalogue.json", "verl/"))
    assert remove_old_checkpoint_folders(old, keep=2, timings=FAST) == [tmp_path / "verl" / "stage3-0000000000000012"]
    assert remove_old_checkpoint_folders(newer, keep=1, timings=FAST) == [old]
    assert _names(tmp_path / "verl") == ["stage3-0000000000000011"]


def test_cleanup_skips_a_folder_a_live_run_holds_but_not_one_of_a_dead_run(tmp_path, caplog):
    base = tmp_path / "checkpoints"
    current = _folder(base, "stage2-000000000000000a", 0)
    held = _folder(base, "stage2-000000000000000b", 100)
    dead = _folder(base, "stage2-000000000000000c", 200)
    plain = _folder(base, "stage2-000000000000000d", 300)
    _killed_holder(tmp_path, [dead])
    holder = _holder(tmp_path, [held])
    try:
        with caplog.at_level(logging.INFO, logger=LOGGER):
            removed = remove_old_checkpoint_folders(current, keep=1, timings=FAST)
        assert sorted(removed) == [dead, plain]
        assert _names(base) == [".stage2-000000000000000b.lock", "stage2-000000000000000a", "stage2-000000000000000b"]
        assert (held / "checkpoint-10" / "trainer_state.json").exists()
        assert f"{held}: kept: a live run holds its lock" in caplog.text
    finally:
        holder.kill()
        holder.wait()


def test_cleanup_leaves_folders_that_are_not_ours_alone(tmp_path):
    base = tmp_path / "checkpoints"
    current = _folder(base, "stage1-000000000000000a", 0)
    _folder(base, "stage1-000000000000000b", 100, ("checkpoint-10/trainer_state.json", "notes.txt"))
    _folder(base, "stage1-000000000000000c", 100, ("model.safetensors",))
    _folder(base, "stage1-mine", 100)
    _folder(base, "stage1-000000000000000D", 100)
    _folder(base, "stage1-000000000000000e0", 100)
    (base / "stage1-000000000000000f").symlink_to(_folder(tmp_path / "elsewhere", "stage1-0000000000000010", 100))
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    assert remove_old_checkpoint_folders(current, keep=1, timings=FAST) == []
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == before


def test_checkpoint_folders_kept_is_at_least_one_and_not_part_of_the_key(tmp_path):
    too_few = r"stage1\.checkpoint_folders_kept: Input should be greater than or equal to 1"
    with pytest.raises(ConfigError, match=too_few):
        config.load("demo", ["stage1.checkpoint_folders_kept=0"])
    assert [getattr(config.load(), s).checkpoint_folders_kept for s in ("stage1", "stage2", "stage3")] == [3, 3, 3]
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "data.txt").write_text("x")
    keys = {
        kept: checkpoint_key("stage3", cfg, cfg.stage3, [inputs])
        for kept in (1, 3, 7)
        for cfg in [config.load("demo", [f"stage3.checkpoint_folders_kept={kept}"])]
    }
    assert keys[1] == keys[3] == keys[7]
    other = config.load("demo", ["stage3.save_steps=7"])
    assert checkpoint_key("stage3", other, other.stage3, [inputs]) != keys[3]


# ---------------------------------------------------------------- the training steps

SFT_RUN = [
    "stage1.per_device_batch_size=8",
    "stage1.global_batch_size=8",
    "stage1.epochs=1",
    "stage1.valid_samples=3",
    "stage1.hr_samples=2",
    "stage1.save_steps=1000",
    "stage1.checkpoint_folders_kept=2",
]
TRL_RUN = [
    "stage3.backend=trl",
    "stage3.num_generations=2",
    "stage3.train_batch_size=2",
    "stage3.micro_batch_size=4",
    "stage3.max_steps=1",
    "stage3.max_response_length=8",
    "stage3.save_steps=1",
]


@pytest.mark.slow  # trains a model (seconds)
def test_sft_waits_for_its_folders_lock_then_removes_older_folders(tiny_base_model, tmp_path, monkeypatch):
    base = tiny_base_model
    cfg = config.load("demo", base["overrides"] + SFT_RUN + [f"stage1.checkpoint_dir={tmp_path / 'ckpt'}"])
    inputs = [base["model_dir"], base["dataset"], base["sid_index"], base["corpus"]]
    ckpt = checkpoint_root("stage1", cfg, cfg.stage1, inputs)
    newer = _folder(tmp_path / "ckpt", "stage1-0000000000000001", 100)
    _folder(tmp_path / "ckpt", "stage1-0000000000000002", 200)
    holder = _holder(tmp_path, [ckpt])
    monkeypatch.setattr(folder_lock, "LOCK_WAIT_S", 0.3)
    held_by = f"{lock_path(ckpt)}: held by {socket.gethostname()} pid {holder.pid} "
    with pytest.raises(CheckpointLockTimeout, match=re.escape(held_by)):
        sft_stage1(cfg, *inputs, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not ckpt.exists()
    holder.kill()
    holder.wait()
    metrics = sft_stage1(cfg, *inputs, tmp_path / "out")  # the killed holder's lock is taken over
    # What was on the volume is no result of the step: logged, not a metric (runs would differ by it).
    assert "checkpoint_folders_removed" not in metrics and metrics["steps"] > 0
    assert _names(tmp_path / "ckpt") == sorted([ckpt.name, newer.name])


@pytest.mark.slow  # GRPO training
def test_rl_stage3_removes_older_folders_of_its_stage(tiny_artifacts, tiny_sid_model, tmp_path):
    cfg = config.load("demo", TRL_RUN + [f"stage3.checkpoint_dir={tmp_path / 'ckpt'}"])
    olds = [_folder(tmp_path / "ckpt", f"stage3-{i:016x}", 100 * i) for i in (1, 2, 3)]
    stage1 = _folder(tmp_path / "ckpt", "stage1-0000000000000004", 900)
    a = tiny_artifacts
    stage3.rl_stage3(cfg, tiny_sid_model["dir"], a["dataset"], a["sid_index"], a["corpus"], tmp_path / "out")
    kept = _names(tmp_path / "ckpt")
    assert len(kept) == 4 and olds[2].name not in kept and {olds[0].name, olds[1].name, stage1.name} < set(kept)
    assert (tmp_path / "out" / "checkpoint.json").exists()
