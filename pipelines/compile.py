"""Compile the pipeline to KFP IR YAML."""

from __future__ import annotations

from pathlib import Path

from kfp import compiler

from sidreasoner.config import Config
from sidreasoner.config.stage1_data import require_stage1_data
from sidreasoner.eval.trained_model import require_model_source
from sidreasoner.io import atomic_file
from sidreasoner.pipelines.pipeline import build, pipeline_name
from sidreasoner.steps import pipeline_registry, steps_until


def check_pipeline_config(cfg: Config, pipeline: str = "train", until: str | None = None) -> None:
    """A ConfigError, before anything runs, for a config the pipeline (`--pipeline`) cannot run up to `until`:
    an unknown pipeline or step, a Stage 1 task without data (train), no trained model to evaluate (evaluate)."""
    steps = [step.name for step in steps_until(until, pipeline_registry(pipeline))]
    if "sft-stage1" in steps:
        require_stage1_data(cfg, until)
    if "load-model" in steps:
        require_model_source(cfg)


def compile_pipeline(
    cfg: Config,
    output: str | Path,
    until: str | None = None,
    no_cache: frozenset[str] = frozenset(),
    pipeline: str = "train",
) -> Path:
    """Write the YAML of pipeline `pipeline` (train or evaluate) for `cfg` (up to `until`) to `output`; a config
    it cannot run is refused first."""
    check_pipeline_config(cfg, pipeline, until)
    output = Path(output)
    with atomic_file(output) as tmp:
        yaml_tmp = tmp.with_suffix(".yaml")  # the compiler picks the format from the suffix
        func = build(
            cfg, until, no_cache, pipeline_registry(pipeline), run_time_conditions=True, name=pipeline_name(pipeline)
        )
        compiler.Compiler().compile(pipeline_func=func, package_path=str(yaml_tmp))
        yaml_tmp.replace(tmp)
    return output
