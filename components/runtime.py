"""What every component body does: run the registered step with the task's arguments, then
publish its report pages and metrics.

No kfp import: artifacts are used only through `.path` and `log_metric`. Every component also takes
`code_version`, there for the task's cache key only, `generation`, the step's generation (in the
cache key, and in the step's checkpoint and teacher cache keys), and `compiled_sections`, the
values its sections had when the pipeline was compiled.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from sidreasoner.config import complete_sections
from sidreasoner.io import write_json
from sidreasoner.runner import run_step
from sidreasoner.steps import ALL_STEPS
from sidreasoner.watchdog import die_with_runner


def task_config(step_name: str, arguments: dict[str, Any]) -> dict[str, Any]:
    """The config slice a task's step runs with: its sections (a section given partly through the API
    keeps the compiled preset's other keys) and its generation."""
    step = ALL_STEPS[step_name]
    config = complete_sections(
        {section: arguments[section] for section in step.sections}, arguments.get("compiled_sections")
    )
    config["generations"] = {step_name: arguments.get("generation") or 0}
    return config


def run_component(step_name: str, arguments: dict[str, Any]) -> None:
    """Run `step_name` with a component's arguments (its config sections and artifacts, by name)."""
    die_with_runner()  # a `sidreasoner run` killed by SIGKILL takes this step with it
    step = ALL_STEPS[step_name]
    config = task_config(step_name, arguments)
    paths = {name: arguments[name].path for name in step.folders}
    values = run_step(step_name, config, paths)
    for report in step.reports:
        target = arguments[report.name].path
        os.makedirs(os.path.dirname(target), exist_ok=True)
        shutil.copyfile(os.path.join(paths[report.folder], report.filename), target)
    metrics = arguments["metrics"]
    for name, value in sorted(values.items()):
        metrics.log_metric(name, value)
    # kfp.local only re-uses a cached task whose Metrics artifact has a file at its path; on a
    # cluster the same file is what the UI's artifact preview shows.
    os.makedirs(os.path.dirname(metrics.path), exist_ok=True)
    write_json(metrics.path, values)
    print(json.dumps({"step": step_name, "metrics": values}, sort_keys=True))
