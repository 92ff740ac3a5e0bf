"""Run one registered step on local folders: what `sidreasoner step NAME` and every KFP component do."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sidreasoner.artifacts import Artifact
from sidreasoner.config import Config, ScopedConfig, scope_config, validate
from sidreasoner.errors import no_space_left
from sidreasoner.steps import ALL_STEPS, Step


def run_step(
    name: str, cfg: Config | dict[str, Any], paths: dict[str, str | Path], registry: Mapping[str, Step] = ALL_STEPS
) -> dict[str, float]:
    """Run one step. `cfg` is a Config or a step's config slice; `paths` maps every input and
    output folder name of the step to a folder. The step sees only the config sections it declares:
    reading another raises UndeclaredSection."""
    step = registry[name]
    cfg = step_view(step, cfg)
    missing = [k for k in step.folders if k not in paths]
    if missing:
        raise ValueError(f"step {name} needs paths for: {', '.join(missing)}")
    for key in step.inputs:
        if not Path(paths[key]).is_dir():
            raise FileNotFoundError(f"step {name}: input '{key}' folder {paths[key]} does not exist")
    try:
        metrics = step.load()(cfg, *handles(step, paths, registry))
    except Exception as err:
        full = no_space_left(err, write_locations(step, cfg, paths))
        if full is None:
            raise
        raise full from err
    return {k: float(v) for k, v in metrics.items()}


def handles(step: Step, paths: Mapping[str, str | Path], registry: Mapping[str, Step] = ALL_STEPS) -> list[Artifact]:
    """The step's folders as handles of their artifact classes, in the order its function takes them."""
    inputs = [step.input_class(name, registry)(paths[name]) for name in step.inputs]
    return inputs + [cls(paths[name]) for name, cls in step.outputs.items()]


def step_view(step: Step, cfg: Config | dict[str, Any]) -> ScopedConfig:
    """The config `step` runs with: its declared sections of `cfg` (a Config, or a slice validated here)."""
    return scope_config(cfg if isinstance(cfg, Config) else validate(cfg), step.name, step.sections)


def write_locations(step: Step, cfg: Config, paths: Mapping[str, str | Path]) -> list[Path]:
    """Where a step writes: its output folders, the checkpoint and cache folders of the config sections
    it reads (empty: their defaults under ~/.cache/sidreasoner), and the temp folder."""
    found = [Path(paths[name]) for name in step.outputs]
    for name in step.sections:
        section = getattr(cfg, name, None)
        for setting, default in (("checkpoint_dir", "checkpoints"), ("cache_dir", "")):
            value = getattr(section, setting, None)
            if value is not None:
                found.append(Path(value).expanduser() if value else Path.home() / ".cache" / "sidreasoner" / default)
    found.append(Path(tempfile.gettempdir()))
    return list(dict.fromkeys(found))
