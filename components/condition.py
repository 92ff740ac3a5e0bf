"""The condition task in front of a step that a setting turns on (export-model: `export.uri`), so
that the setting decides at run time, also when it is given in the UI or through the API."""

from typing import Optional

from kfp import dsl

from sidreasoner.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def step_enabled(step: str, section: dict, compiled_section: Optional[dict] = None) -> bool:
    """Whether this run's value of the step's setting turns the step on."""
    from sidreasoner.config import enabled_at_run_time

    return enabled_at_run_time(step, section, compiled_section)
