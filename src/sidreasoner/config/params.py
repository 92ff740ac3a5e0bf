"""A config as KFP run parameters: JSON-able sections, and the slice each step receives."""

from __future__ import annotations

from typing import Any

from sidreasoner.config.overrides import validate
from sidreasoner.config.schema import Config
from sidreasoner.errors import ConfigError
from sidreasoner.steps import STEPS


def step_config(cfg: Config, step: str) -> dict[str, Any]:
    """The JSON-able slice of `cfg` that `step` reads (what its KFP task receives)."""
    if step not in STEPS:
        raise ConfigError(f"unknown step '{step}'. Allowed: {', '.join(STEPS)}")
    dumped = to_params(cfg)
    return {section: dumped[section] for section in STEPS[step].sections}


COMPILE_TIME_SECTIONS = ("cluster",)


def to_params(cfg: Config) -> dict[str, Any]:
    """JSON-able sections for KFP run parameters (not the compile-time `cluster` section). Unset
    (None) values are left out: KFP parameters cannot hold null, and an absent key validates back
    to the same default."""
    return cfg.model_dump(mode="json", exclude_none=True, exclude=set(COMPILE_TIME_SECTIONS))


def from_step_config(slice_: dict[str, Any]) -> Config:
    """Rebuild a full Config from a step's slice (absent sections take defaults), validating it."""
    return validate(slice_)
