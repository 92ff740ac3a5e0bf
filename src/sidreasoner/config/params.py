"""A config as KFP run parameters: JSON-able sections, and the slice each step receives."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from sidreasoner.config.overrides import deep_merge, validate
from sidreasoner.config.schema import Config
from sidreasoner.errors import ConfigError
from sidreasoner.steps import STEPS, step_enabled


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
    to the same default. A URL with credentials in it is refused: parameters end up in the
    compiled YAML, the run's records and the UI."""
    params = cfg.model_dump(mode="json", exclude_none=True, exclude=set(COMPILE_TIME_SECTIONS))
    refuse_url_credentials(params)
    return params


CREDENTIAL_SECRETS = ("sidreasoner-s3 (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), sidreasoner-gcs (key.json), "
                      "sidreasoner-teacher (api-key) or sidreasoner-hf (token)")


def refuse_url_credentials(value: Any, key: str = "") -> None:
    """Raise ConfigError naming the first key whose value is a URL with a user or password in it
    (`https://user:pass@host`, `s3://KEY:SECRET@bucket`); the message does not repeat them."""
    if isinstance(value, dict):
        for name, item in value.items():
            refuse_url_credentials(item, f"{key}.{name}" if key else name)
    elif isinstance(value, list):
        for index, item in enumerate(value):
            refuse_url_credentials(item, f"{key}[{index}]")
    elif isinstance(value, str) and "://" in value and "@" in value.split("://", 1)[1].split("/", 1)[0]:
        parts = urlsplit(value)
        host = parts.netloc.rsplit("@", 1)[1]
        raise ConfigError(
            f"{key} has credentials inside its URL ({parts.scheme}://***@{host}/…): they would be written into the "
            f"compiled pipeline and the run's records. Give the URL without them and put them in the Secrets "
            f"the steps read: {CREDENTIAL_SECRETS}; see charts/README.md")


def complete_sections(given: dict[str, Any], compiled: dict[str, Any] | None) -> dict[str, Any]:
    """A task's config sections as it received them, completed from the values the pipeline was
    compiled with: a section passed partly through the API (`{"max_steps": 400}`) keeps the
    compiled preset's other keys instead of falling back to the library's defaults."""
    compiled = compiled or {}
    return {name: deep_merge(compiled[name], value)
            if isinstance(value, dict) and isinstance(compiled.get(name), dict) else value
            for name, value in given.items()}


def enabled_at_run_time(step: str, section: dict[str, Any], compiled_section: dict[str, Any] | None = None) -> bool:
    """Whether the run's value of the section holding `step`'s `enabled_by` key turns the step on
    (what a compiled pipeline's condition task decides)."""
    name = STEPS[step].enabled_by.split(".", 1)[0]
    sections = complete_sections({name: section}, {name: compiled_section} if compiled_section else None)
    return step_enabled(STEPS[step], from_step_config(sections))


def from_step_config(slice_: dict[str, Any]) -> Config:
    """Rebuild a full Config from a step's slice (absent sections take defaults), validating it."""
    return validate(slice_)
