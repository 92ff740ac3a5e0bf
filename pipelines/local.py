"""Run the pipeline on this machine through kfp.local: every step in this environment (SubprocessRunner),
or every step in its image through a Docker API (DockerRunner; Docker, or podman's service)."""

from __future__ import annotations

import inspect
import json
import time
import warnings
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import Any

from sidreasoner.config import Config
from sidreasoner.io import write_json
from sidreasoner.pipelines.compile import check_pipeline_config
from sidreasoner.pipelines.console import Console, TaskFailed
from sidreasoner.pipelines.pipeline import build, output_name, pipeline_name
from sidreasoner.steps import pipeline_registry, pipeline_steps
from sidreasoner.watchdog import children_die_with_this_process


def _artifact_path(artifact: Any) -> str:
    return getattr(artifact, "path", None) or artifact.uri


def _read_metrics(artifact: Any) -> dict[str, float]:
    path = Path(_artifact_path(artifact))
    if path.is_file():
        return json.loads(path.read_text())
    return dict(artifact.metadata or {})


RUNNERS = ("subprocess", "docker")
# Under the pipeline root, never in a folder kfp.local or a step's container writes: a container runs as its
# image's user and could not write into a run folder this process had made first.
LOGS = "logs"


def _docker_pipeline_root(root: Path, prepare_root: bool) -> None:
    """The steps' containers run as their images' user and write into the pipeline root: make sure they can.

    With `prepare_root`, a folder they cannot write is handed to that user the way the chart's prepare Job
    does it on a cluster; without it, such a folder is an error naming that fix.
    """
    from sidreasoner.components.images import CPU_IMAGE
    from sidreasoner.pipelines.containers import (
        image_user,
        prepare_pipeline_root,
        writable_by,
    )

    user = image_user(CPU_IMAGE)
    if not user.isdigit() or user == "0" or writable_by(root, int(user)):
        return
    if prepare_root:
        prepare_pipeline_root(root, CPU_IMAGE, int(user))
    if not writable_by(root, int(user)):
        info = root.stat()
        raise PermissionError(
            f"pipeline root {root} (owner uid {info.st_uid}, mode {oct(info.st_mode & 0o777)}) is not writable by uid "
            f"{user}, the user {CPU_IMAGE} runs as: run `chown {user}:{user} {root}` (what the chart's model-cache "
            "prepare Job does on a cluster), or pass --prepare-root to have a root container do it"
        )


@contextmanager
def _recording_run_names(names: list[str]) -> Iterator[None]:
    """Record the name kfp.local gives this run's folder (`<pipeline>-<timestamp>`, chosen when the run
    starts and kept to itself): another run on the same root may create its folder meanwhile, so the
    newest folder need not be this run's."""
    from kfp.local import executor_input_utils

    original = executor_input_utils.get_local_pipeline_resource_name

    def recording(pipeline_name: str) -> str:
        names.append(original(pipeline_name))
        return names[-1]

    executor_input_utils.get_local_pipeline_resource_name = recording
    try:
        yield
    finally:
        executor_input_utils.get_local_pipeline_resource_name = original


def _task_metrics(outputs: dict[str, Any]) -> dict[str, float]:
    metrics = outputs.get("metrics")
    try:
        return _read_metrics(metrics) if metrics is not None else {}
    except (OSError, ValueError):
        return {}


@contextmanager
def _tasks_on(console: Console) -> Iterator[None]:
    """Run every task inside `console.task`, which sends what kfp.local prints about it (its state lines and
    its process's output) to the task's log file. kfp.local has no hook for a task's output, so the one
    function that runs a task is wrapped (kfp is pinned to 2.17.0; tests/test_local_console.py covers it)."""
    from kfp.local import executor_input_utils as names
    from kfp.local.orchestrator import task_executor

    original = task_executor.execute_single_task

    def execute(*args: Any, **kwargs: Any) -> Any:
        given = inspect.signature(original).bind(*args, **kwargs).arguments
        root = Path(given["pipeline_root"])
        folder = Path(
            names.construct_local_task_root(
                pipeline_root=str(root),
                pipeline_resource_name=given["pipeline_resource_name"],
                task_resource_name=names.get_local_task_resource_name(given["task_spec"].component_ref.name),
            )
        )
        where = folder.relative_to(root)  # <run>/<task>
        with console.task(given["task_name"], root / LOGS / where.parent / f"{where.name}.log") as task:
            outputs, state = original(*args, **kwargs)
            task.end("SUCCEEDED" if state.name == "SUCCESS" else "FAILED", _task_metrics(outputs))
        return outputs, state

    task_executor.execute_single_task = execute
    try:
        yield
    finally:
        task_executor.execute_single_task = original


def run_local(
    cfg: Config,
    pipeline_root: str | Path,
    until: str | None = None,
    summary_path: str | Path | None = None,
    runner: str = "subprocess",
    prepare_root: bool = False,
    pipeline: str = "train",
) -> dict[str, Any]:
    """Run the DAG of `pipeline` (train or evaluate; caching on), then describe every task: status, output
    paths, metrics.

    A task whose outputs lie outside this run's folder was served from the cache. runner="docker" runs each
    step in its image (components/images.py) through the Docker API that DOCKER_HOST names, mounting only
    the pipeline root; the summary then lists every container run. The console gets one line as each task
    starts and ends (pipelines/console.py); what a task prints goes to `<root>/logs/<run>/<task>.log`, what
    kfp.local prints about the run to `<root>/logs/<run>/pipeline.log`. A failed task raises TaskFailed.
    """
    from kfp import local

    if runner not in RUNNERS:
        raise ValueError(f"runner must be one of {', '.join(RUNNERS)}, got {runner!r}")
    check_pipeline_config(cfg, pipeline, until)
    registry = pipeline_registry(pipeline)
    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    if runner == "docker":
        _docker_pipeline_root(root, prepare_root)  # refuses an unusable root before anything is written there
    with suppress(OSError):  # a root handed to the images' user may refuse this process: then no logs
        (root / LOGS).mkdir(exist_ok=True)
    run_names: list[str] = []
    console = Console()
    containers: list[dict] | None = None
    started = time.time()
    with ExitStack() as stack:
        if runner == "docker":
            from sidreasoner.pipelines.containers import kept_containers

            containers = stack.enter_context(kept_containers())
            local.init(runner=local.DockerRunner(), pipeline_root=str(root), enable_caching=True)
        else:
            children_die_with_this_process()
            local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), enable_caching=True)
        # kfp.local warns when an image name lacks "python"; ours are Python images.
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        stack.enter_context(_recording_run_names(run_names))
        stack.enter_context(
            console.capturing(lambda: root / LOGS / run_names[-1] / "pipeline.log" if run_names else None)
        )
        stack.enter_context(_tasks_on(console))
        try:
            result = build(cfg, until, registry=registry, name=pipeline_name(pipeline))()
        except RuntimeError as err:
            if console.failed is None:
                raise
            failed = console.failed
            raise TaskFailed(
                f"task {failed.name} failed: its last lines are above, its full log is {failed.log_path}"
            ) from err
    run_dir = root / run_names[-1] if run_names else None
    outputs = result.outputs

    tasks = {}
    steps = pipeline_steps(cfg, until, registry)
    for step in steps:
        paths = {out: _artifact_path(outputs[output_name(step.name, out)]) for out in step.outputs}
        metrics_artifact = outputs[output_name(step.name, "metrics")]
        executed = run_dir is not None and all(Path(p).resolve().is_relative_to(run_dir) for p in paths.values())
        reports = {r.name: _artifact_path(outputs[output_name(step.name, r.name)]) for r in step.reports}
        tasks[step.name] = {
            "status": "SUCCEEDED" if executed else "CACHED",
            "outputs": {**paths, **reports},
            "metrics_path": _artifact_path(metrics_artifact),
            "metrics": _read_metrics(metrics_artifact),
        }
    summary = {
        "pipeline": pipeline_name(pipeline),
        "pipeline_root": str(root),
        "run_dir": str(run_dir) if run_dir else None,
        "until": until or steps[-1].name,
        "wall_seconds": round(time.time() - started, 2),
        "config": cfg.model_dump(mode="json"),
        "tasks": tasks,
    }
    if containers is not None:
        summary["containers"] = containers
    if summary_path:
        write_json(summary_path, summary)
    return summary
