"""Run the pipeline on this machine through kfp.local (SubprocessRunner in this environment)."""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

from sidreasoner.config import Config
from sidreasoner.io import write_json
from sidreasoner.pipelines.pipeline import PIPELINE_NAME, build, output_name
from sidreasoner.steps import pipeline_steps


def _artifact_path(artifact: Any) -> str:
    return getattr(artifact, "path", None) or artifact.uri


def _read_metrics(artifact: Any) -> dict[str, float]:
    path = Path(_artifact_path(artifact))
    if path.is_file():
        return json.loads(path.read_text())
    return dict(artifact.metadata or {})


def run_local(cfg: Config, pipeline_root: str | Path, until: str | None = None,
              summary_path: str | Path | None = None) -> dict[str, Any]:
    """Run the DAG (caching on), then describe every task: status, output paths, metrics.

    A task whose outputs lie outside this run's folder was served from the cache.
    """
    from kfp import local

    root = Path(pipeline_root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    before = set(os.listdir(root))
    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(root), enable_caching=True)
    started = time.time()
    with warnings.catch_warnings():
        # kfp.local warns when an image name lacks "python"; ours are Python images.
        warnings.filterwarnings("ignore", message=".*non-Python base image.*")
        result = build(cfg, until)()
    new_dirs = sorted(d for d in set(os.listdir(root)) - before if d.startswith(PIPELINE_NAME))
    run_dir = root / new_dirs[-1] if new_dirs else None
    outputs = result.outputs

    tasks = {}
    steps = pipeline_steps(cfg, until)
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
        "pipeline": PIPELINE_NAME,
        "pipeline_root": str(root),
        "run_dir": str(run_dir) if run_dir else None,
        "until": until or steps[-1].name,
        "wall_seconds": round(time.time() - started, 2),
        "config": cfg.model_dump(mode="json"),
        "tasks": tasks,
    }
    if summary_path:
        write_json(summary_path, summary)
    return summary
