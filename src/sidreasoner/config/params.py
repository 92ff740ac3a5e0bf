"""A config as KFP run parameters: JSON-able sections, and the slice each step receives."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

from sidreasoner.config.overrides import deep_merge, validate
from sidreasoner.config.schema import Config
from sidreasoner.config.scope import ScopedConfig, scope_config
from sidreasoner.errors import ConfigError
from sidreasoner.steps import ALL_STEPS, STEPS, Step, downstream, pipeline_steps, step_enabled


def step_config(cfg: Config, step: str) -> dict[str, Any]:
    """The JSON-able slice of `cfg` that `step` reads (what its KFP task receives)."""
    if step not in ALL_STEPS:
        raise ConfigError(f"unknown step '{step}'. Allowed: {', '.join(ALL_STEPS)}")
    dumped = to_params(cfg)
    return {section: dumped[section] for section in ALL_STEPS[step].sections}


COMPILE_TIME_SECTIONS = ("cluster",)
# Not one run parameter: each task receives its own step's generation as a parameter of its own
# (`generation_param`), so raising one step's generation changes no other task's cache key.
PER_STEP_FIELDS = ("generations",)


def generation_param(step: str) -> str:
    """The run parameter holding `step`'s generation, e.g. generation_rl_stage3."""
    return "generation_" + step.replace("-", "_")


def generation_params(cfg: Config, steps: list[str]) -> dict[str, int]:
    """The generation run parameters of `steps`, with `cfg`'s values (0 when not set)."""
    return {generation_param(step): cfg.generations.get(step, 0) for step in steps}


def to_params(cfg: Config) -> dict[str, Any]:
    """JSON-able sections for KFP run parameters (not the compile-time `cluster` section). Unset
    (None) values are left out: KFP parameters cannot hold null, and an absent key validates back
    to the same default. A URL with credentials in it is refused: parameters end up in the
    compiled YAML, the run's records and the UI."""
    params = cfg.model_dump(mode="json", exclude_none=True, exclude={*COMPILE_TIME_SECTIONS, *PER_STEP_FIELDS})
    refuse_url_credentials(params)
    return params


CREDENTIAL_SECRETS = (
    "sidreasoner-s3 (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY), sidreasoner-gcs (key.json), "
    "sidreasoner-teacher (api-key) or sidreasoner-hf (token)"
)


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
            f"the steps read: {CREDENTIAL_SECRETS}; see charts/README.md"
        )


def complete_sections(given: dict[str, Any], compiled: dict[str, Any] | None) -> dict[str, Any]:
    """A task's config sections as it received them, completed from the values the pipeline was
    compiled with: a section passed partly through the API (`{"max_steps": 400}`) keeps the
    compiled preset's other keys instead of falling back to the library's defaults."""
    compiled = compiled or {}
    return {
        name: deep_merge(compiled[name], value)
        if isinstance(value, dict) and isinstance(compiled.get(name), dict)
        else value
        for name, value in given.items()
    }


def enabled_at_run_time(step: str, section: dict[str, Any], compiled_section: dict[str, Any] | None = None) -> bool:
    """Whether the run's value of the section holding `step`'s `enabled_by` key turns the step on
    (what a compiled pipeline's condition task decides)."""
    name = ALL_STEPS[step].enabled_by.split(".", 1)[0]
    sections = complete_sections({name: section}, {name: compiled_section} if compiled_section else None)
    return step_enabled(ALL_STEPS[step], from_step_config(sections))


def from_step_config(slice_: dict[str, Any], step: str | None = None) -> Config:
    """Validate a step's slice into the config that `step` runs with, in which reading a section the step
    does not declare raises. Without `step`, a full Config (absent sections take the defaults)."""
    cfg = validate(slice_)
    return cfg if step is None else scoped(cfg, step)


def scoped(cfg: Config, step: str) -> ScopedConfig:
    """`cfg` as the registered step `step` sees it: its declared sections only."""
    if step not in ALL_STEPS:
        raise ConfigError(f"unknown step '{step}'. Allowed: {', '.join(ALL_STEPS)}")
    return scope_config(cfg, step, ALL_STEPS[step].sections)


def new_generation(current: int = 0) -> int:
    """A generation no earlier re-run used: the UTC time as YYYYMMDDHHMMSS (above `current`)."""
    import datetime as dt

    return max(int(f"{dt.datetime.now(dt.UTC):%Y%m%d%H%M%S}"), current + 1)


def raise_generation(cfg: Config, step: str) -> Config:
    """`cfg` with a new generation for `step`: it re-executes, with fresh training, and so does every
    step that reads its outputs (their inputs are new artifacts)."""
    if step not in ALL_STEPS:
        raise ConfigError(f"unknown step '{step}'. Allowed: {', '.join(ALL_STEPS)}")
    generations = {**cfg.generations, step: new_generation(cfg.generations.get(step, 0))}
    return cfg.model_copy(update={"generations": generations})


def keep_generations(cfg: Config) -> str:
    """The settings that give a later run this config's generations (and so its results)."""
    return " ".join(f"--set generations.{step}={value}" for step, value in cfg.generations.items() if value)


def with_rerun(
    cfg: Config, no_cache: bool = False, rerun_from: str | None = None, registry: Mapping[str, Step] = STEPS
) -> tuple[Config, list[str]]:
    """`cfg` with a new generation for the step a re-run starts from (`no_cache`: the first step), and
    the steps that then execute again: that step and every step that reads its outputs, directly or
    not. KFP keys a task on its inputs' artifact ids, so a task whose upstream executed misses the
    cache too; the steps' checkpoints are keyed on their input folders, so they train afresh."""
    if no_cache and rerun_from:
        raise ConfigError("--no-cache and --rerun-from exclude each other")
    start = next(iter(registry)) if no_cache else rerun_from
    if not start:
        return cfg, []
    in_dag = {s.name for s in pipeline_steps(cfg, registry=registry, conditional=True)}
    if start not in registry:
        raise ConfigError(f"--rerun-from: unknown step '{start}'. Allowed: {', '.join(registry)}")
    if start not in in_dag:
        raise ConfigError(f"--rerun-from {start}: the step is not in this pipeline's DAG")
    return raise_generation(cfg, start), [name for name in downstream(start, registry) if name in in_dag]
