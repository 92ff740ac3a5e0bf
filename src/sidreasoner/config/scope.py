"""A step's view of the config: only the sections its registry entry declares.

A KFP task receives only its step's sections (its cache key covers exactly these), so a step that
read any other section would silently see the library's defaults there. `ScopedConfig` makes such a
read fail, on every runner (`sidreasoner step`, `sidreasoner run`, a cluster pod), naming the step
and the section.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pydantic import PrivateAttr

from sidreasoner.config.schema import Config
from sidreasoner.errors import ConfigError

# Not a section: each task receives its own step's generation (a parameter of its own).
PER_STEP = "generations"


class UndeclaredSection(Exception):
    """A step read a config section its registry entry does not declare: a bug in the step or the registry."""


class ScopedConfig(Config):
    """A Config holding only `sections` (and the step's own generation): reading any other field raises
    UndeclaredSection. `model_dump`, equality, copies and pickling cover the declared fields."""

    _step: str = PrivateAttr("")
    _sections: tuple[str, ...] = PrivateAttr(())

    @property
    def step_name(self) -> str:
        return self._step

    @property
    def sections(self) -> tuple[str, ...]:
        return self._sections

    def __getattr__(self, name: str) -> Any:
        # Reached only for names not in the instance: undeclared fields were never stored there.
        if name in type(self).model_fields:
            raise UndeclaredSection(
                f"step '{self._step}' reads config section '{name}', which its registry entry does not declare "
                f"(it declares {', '.join(self._sections)}): add '{name}' to the step's sections in "
                "sidreasoner/steps.py, or stop reading it"
            )
        return super().__getattr__(name)


def scope_config(cfg: Config, step: str, sections: Iterable[str]) -> ScopedConfig:
    """`cfg` as the step `step`, which declares `sections`, sees it."""
    sections = tuple(sections)
    unknown = [s for s in sections if s not in Config.model_fields or s == PER_STEP]
    if unknown:
        raise ConfigError(
            f"step '{step}' declares config section(s) {', '.join(unknown)}, which the config does "
            f"not have. Sections: {', '.join(f for f in Config.model_fields if f != PER_STEP)}"
        )
    values = {name: getattr(cfg, name) for name in sections}
    values[PER_STEP] = {name: value for name, value in cfg.generations.items() if name == step}
    scoped = ScopedConfig.model_construct(_fields_set=set(values), **values)
    for name in set(Config.model_fields) - set(values):  # model_construct filled in their defaults
        del scoped.__dict__[name]
    scoped._step, scoped._sections = step, sections
    return scoped
