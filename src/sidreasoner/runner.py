"""Run one registered step on local folders: what `sidreasoner step NAME` and every KFP component do."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sidreasoner.config import Config, from_step_config
from sidreasoner.steps import STEPS, Step


def run_step(name: str, cfg: Config | dict[str, Any], paths: dict[str, str | Path],
             registry: Mapping[str, Step] = STEPS) -> dict[str, float]:
    """Run one step. `cfg` is a Config or a step's config slice; `paths` maps every input and
    output folder name of the step to a folder."""
    step = registry[name]
    if not isinstance(cfg, Config):
        cfg = from_step_config(cfg)
    missing = [k for k in step.folders if k not in paths]
    if missing:
        raise ValueError(f"step {name} needs paths for: {', '.join(missing)}")
    for key in step.inputs:
        if not Path(paths[key]).is_dir():
            raise FileNotFoundError(f"step {name}: input '{key}' folder {paths[key]} does not exist")
    metrics = step.load()(cfg, *(Path(paths[k]) for k in step.folders))
    return {k: float(v) for k, v in metrics.items()}
