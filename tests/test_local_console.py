"""What `sidreasoner run` prints: one line as each task starts and ends, a progress bar only on a terminal,
everything a task prints in its log file, and a failed task's last lines."""

import inspect
import io
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

from sidreasoner.pipelines import console as console_module
from sidreasoner.pipelines.console import Console, Progress, key_metric

SIDREASONER = Path(sys.executable).parent / "sidreasoner"
DATA = ["data.demo.num_items=120", "data.demo.num_users=400"]
TRAINER = [
    "    {'loss': 2.31, 'grad_norm': 1.5, 'learning_rate': 1e-05, 'epoch': 0.5}",
    "      0%|          | 0/40 [00:00<?, ?it/s]",
    "     45%|####5     | 18/40 [00:02<00:03,  6.10it/s]",
    "    100%|##########| 3/3 [00:00<00:00, 20.0it/s]",
    "    {'reward': 0.25, 'kl': 0.01, 'completion_length': 12.0}",
]


def _run_task(
    console: Console, name: str, root: Path, lines: list[str], state: str = "SUCCEEDED", metrics: dict | None = None
):
    with console.task(name, root / f"{name}.log") as task:
        for line in lines:
            print(line)
        task.end(state, metrics or {})
    return task


def _console(tmp_path: Path, live: bool = False) -> tuple[Console, io.StringIO]:
    out = io.StringIO()
    return Console(out, live=live), out


def test_a_task_gets_a_start_and_an_end_line_and_its_output_goes_to_its_log(tmp_path):
    console, out = _console(tmp_path)
    with console.capturing(lambda: tmp_path / "pipeline.log"):
        print("Running pipeline: \x1b[95m'sidreasoner'\x1b[0m")
        _run_task(console, "sft-stage1", tmp_path, ["Executing task", *TRAINER], metrics={"valid_loss": 5.4412})
    lines = out.getvalue().splitlines()
    assert [line.split()[1:3] for line in lines] == [["sft-stage1", "started"], ["sft-stage1", "SUCCEEDED"]]
    assert lines[0].endswith(f"log {tmp_path / 'sft-stage1.log'}")
    assert lines[1].endswith("valid_loss=5.441")
    assert (tmp_path / "sft-stage1.log").read_text().splitlines() == ["Executing task", *TRAINER]
    assert (tmp_path / "pipeline.log").read_text() == "Running pipeline: 'sidreasoner'\n"  # colours dropped


def test_a_task_that_prints_nothing_was_served_from_the_cache(tmp_path):
    console, out = _console(tmp_path)
    with console.capturing(lambda: None):
        _run_task(console, "preprocess", tmp_path, [], metrics={"samples_train": 3804.0})
    assert out.getvalue().split()[1:] == ["preprocess", "CACHED", "samples_train=3804"]
    assert not (tmp_path / "preprocess.log").exists()


def test_a_failed_task_shows_its_last_lines_and_its_log(tmp_path):
    console, out = _console(tmp_path)
    process = [f"    line {i}" for i in range(30)] + ["    ValueError: too few samples"]
    with console.capturing(lambda: None):
        task = _run_task(console, "preprocess", tmp_path, ["Executing task", *process, "", "-" * 80], "FAILED")
    text = out.getvalue()
    assert console.failed is task
    assert re.search(r"preprocess +FAILED", text)
    shown = [line[4:] for line in text.splitlines() if line.startswith("  | ")]
    assert shown == [f"line {i}" for i in range(11, 30)] + ["ValueError: too few samples"]
    assert text.splitlines()[-1] == f"  full log: {tmp_path / 'preprocess.log'}"


def test_a_containers_output_comes_in_chunks_with_its_bars_carriage_returns(tmp_path):
    console, out = _console(tmp_path)
    with console.capturing(lambda: None), console.task("embed-items", tmp_path / "embed-items.log") as task:
        print("14:00:01.123 - INFO - Executing task 'embed-items'")
        print("    embed:  10%|#         | 1/10\rembed:  50%|#####     | 5/10\r", end="")
        print("    Traceback (most recent call last):\nValueError: no items\n", end="")
        print("14:00:02.456 - ERROR - Task 'embed-items' finished with status FAILURE")
        task.end("FAILED", {})
    assert task.progress.count == "5"
    assert list(task.tail)[-2:] == ["Traceback (most recent call last):", "ValueError: no items"]
    assert "  | ValueError: no items" in out.getvalue()


def test_an_exception_inside_a_task_is_reported_as_its_failure(tmp_path):
    console, out = _console(tmp_path)
    with (
        pytest.raises(KeyboardInterrupt),
        console.capturing(lambda: None),
        console.task("sft-stage1", tmp_path / "log.txt"),
    ):
        print("    step 3 of 40")
        raise KeyboardInterrupt
    assert "sft-stage1" in out.getvalue() and "FAILED" in out.getvalue() and "  | step 3 of 40" in out.getvalue()


def test_the_bar_follows_the_first_running_bar_not_the_nested_ones():
    progress = Progress()
    for line in TRAINER[:3]:
        progress.read(line.strip())
    assert (progress.percent, progress.count, progress.loss) == (45, "18", "loss 2.31")
    progress.read("100%|##########| 3/3 [00:00<00:00, 20.0it/s]")  # an evaluation bar meanwhile
    assert (progress.percent, progress.count) == (45, "18")
    progress.read("100%|##########| 40/40 [00:09<00:00, 4.3it/s]")
    progress.read("test/think:  50%|#####     | 1/2 [00:01<00:01, 1.0batch/s]")  # the next bar, once it is done
    assert progress.text(10) == "test/think [#####.....]  50% 1/2  loss 2.31"


def test_the_bar_is_drawn_only_on_a_terminal_and_cleared_before_each_line(tmp_path, monkeypatch):
    monkeypatch.setattr(console_module, "REDRAW_SECONDS", 0.0)
    console, out = _console(tmp_path, live=True)
    with console.capturing(lambda: None):
        _run_task(console, "sft-stage1", tmp_path, ["Executing task", *TRAINER])
    assert "\r\x1b[K  sft-stage1 running" in out.getvalue() and "[#############" in out.getvalue()
    finished = out.getvalue().rsplit("\r\x1b[K", 1)[-1]
    assert finished.split()[1:3] == ["sft-stage1", "SUCCEEDED"]

    quiet, plain = _console(tmp_path)
    with quiet.capturing(lambda: None):
        _run_task(quiet, "sft-stage2", tmp_path, ["Executing task", *TRAINER])
    assert "\x1b" not in plain.getvalue() and "\r" not in plain.getvalue()


def test_key_metric_picks_the_headline_number():
    assert (
        key_metric(
            {
                "test_nonthink_hr@1": 0.1,
                "test_nonthink_hr@10": 0.4375,
                "test_nonthink_item_hr@10": 0.5,
                "test_think_hr@10": 0.3,
            }
        )
        == "test_nonthink_hr@10=0.4375"
    )
    assert key_metric({"reward_first": 0.0, "reward_last": 0.25, "kl_mean": 0.1}) == "reward_last=0.25"
    assert key_metric({"wall_seconds": 3.0}) == ""


def test_the_wrapped_kfp_function_still_takes_what_the_wrapper_reads():
    from kfp.local.orchestrator import task_executor

    from sidreasoner.pipelines.local import _tasks_on

    original = task_executor.execute_single_task
    assert {"task_name", "task_spec", "pipeline_resource_name", "pipeline_root"} <= set(
        inspect.signature(original).parameters
    )
    with _tasks_on(Console(io.StringIO())):
        assert task_executor.execute_single_task is not original
    assert task_executor.execute_single_task is original


def _run(root: Path, *overrides: str) -> subprocess.CompletedProcess:
    settings = [arg for item in [*DATA, *overrides] for arg in ("--set", item)]
    return subprocess.run(
        [
            str(SIDREASONER),
            "run",
            "--until",
            "preprocess",
            "--pipeline-root",
            str(root),
            "--summary",
            str(root / "summary.json"),
            *settings,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )


def _task_lines(stdout: str) -> list[list[str]]:
    return [line.split()[1:3] for line in stdout.splitlines() if re.match(r"\d\d:\d\d:\d\d ", line)]


@pytest.mark.slow
def test_a_real_run_prints_a_line_per_task_start_and_end_and_keeps_the_rest_in_log_files(tmp_path):
    root = tmp_path / "root"
    run = _run(root)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert _task_lines(run.stdout) == [
        ["download-data", "started"],
        ["download-data", "SUCCEEDED"],
        ["preprocess", "started"],
        ["preprocess", "SUCCEEDED"],
    ]
    assert "\x1b" not in run.stdout + run.stderr and "\r" not in run.stdout
    assert "KFP Executor" not in run.stdout and "executor_input" not in run.stdout
    summary = json.loads((root / "summary.json").read_text())
    logs = re.findall(r"started +log (\S+)", run.stdout)
    run_logs = root.resolve() / "logs" / Path(summary["run_dir"]).name
    assert logs == [str(run_logs / f"{name}.log") for name in ("download-data", "preprocess")]
    assert "Running pipeline: 'sidreasoner'" in (run_logs / "pipeline.log").read_text()
    assert sorted(p.name for p in Path(summary["run_dir"]).iterdir()) == ["download-data", "preprocess"]
    preprocess_log = Path(logs[1]).read_text()
    assert "reading Demo.json.gz" in preprocess_log and '"step": "preprocess"' in preprocess_log
    assert "Task 'preprocess' finished with status SUCCESS" in preprocess_log
    assert re.search(r"preprocess +SUCCEEDED +[\d.]+ s +samples_train=\d+", run.stdout)
    assert "Pipeline finished in" in run.stdout and "      dataset     " in run.stdout  # the summary as before

    again = _run(root)
    assert again.returncode == 0, again.stdout[-3000:]
    assert _task_lines(again.stdout) == [["download-data", "CACHED"], ["preprocess", "CACHED"]]


@pytest.mark.slow
def test_a_failing_task_prints_its_last_lines_and_its_log_path(tmp_path):
    run = _run(tmp_path / "root", "data.min_samples=1000000")
    assert run.returncode == 1
    assert _task_lines(run.stdout)[-2:] == [["preprocess", "started"], ["preprocess", "FAILED"]]
    tail = [line for line in run.stdout.splitlines() if line.startswith("  | ")]
    assert 1 < len(tail) <= 20 and "PreprocessError: only" in tail[-1] and "data.min_samples=1000000" in tail[-1]
    log = re.search(r"full log: (\S+)", run.stdout)[1]
    assert "Traceback" in Path(log).read_text()
    assert run.stderr.strip() == f"error: task preprocess failed: its last lines are above, its full log is {log}"
    assert "\x1b" not in run.stdout + run.stderr
