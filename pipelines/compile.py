"""Compile the pipeline to KFP IR YAML."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from sidreasoner.config import Config
from sidreasoner.config.stage1_data import require_stage1_data
from sidreasoner.io import atomic_file
from sidreasoner.pipelines.pipeline import build


def compile_pipeline(
    cfg: Config, output: str | Path, until: str | None = None, no_cache: frozenset[str] = frozenset()
) -> Path:
    """Write the pipeline YAML of `cfg` (up to `until`) to `output`; a config whose Stage 1 task lacks data
    is refused first."""
    require_stage1_data(cfg, until)
    output = Path(output)
    with atomic_file(output) as tmp:
        yaml_tmp = tmp.with_suffix(".yaml")  # the compiler picks the format from the suffix
        pipeline = build(cfg, until, no_cache, run_time_conditions=True)
        compiler.Compiler().compile(pipeline_func=pipeline, package_path=str(yaml_tmp))
        yaml_tmp.replace(tmp)
    return output
