"""Typed, validated run configuration: the schema (one section per part of the pipeline), the
presets, `--set section.key=value` overrides, and the KFP run parameters a config becomes."""

from sidreasoner.config.overrides import MAX_DEPTH, load, load_from, parse_overrides, too_deep, validate
from sidreasoner.config.params import (
    COMPILE_TIME_SECTIONS, complete_sections, enabled_at_run_time, from_step_config, generation_param,
    generation_params, keep_generations, new_generation, raise_generation, refuse_url_credentials, scoped, step_config,
    to_params, with_rerun)
from sidreasoner.config.presets import PRESETS
from sidreasoner.config.scope import ScopedConfig, UndeclaredSection, scope_config
from sidreasoner.config.schema import (
    AMAZON2018_BASE_URL, AMAZON2023_REPO, ClusterConfig, Config, DataConfig, DemoDataConfig, EmbedConfig, EvalConfig,
    ExportConfig, ModelConfig, RQVAEConfig, SIDConfig, Stage1Config, Stage1Tasks, Stage2Config, Stage3Config,
    StepResources, TeacherConfig, TimeWindow, TinyModelConfig, Toleration, TrainerConfig, VerlConfig)
from sidreasoner.errors import ConfigError

__all__ = [
    "AMAZON2018_BASE_URL", "AMAZON2023_REPO", "COMPILE_TIME_SECTIONS", "PRESETS", "ClusterConfig", "Config",
    "ConfigError", "DataConfig", "DemoDataConfig", "EmbedConfig", "EvalConfig", "ExportConfig", "ModelConfig",
    "RQVAEConfig", "SIDConfig", "ScopedConfig", "Stage1Config", "Stage1Tasks", "Stage2Config", "Stage3Config",
    "StepResources", "UndeclaredSection", "scope_config", "scoped",
    "TeacherConfig", "TimeWindow", "TinyModelConfig", "Toleration", "TrainerConfig", "VerlConfig", "complete_sections",
    "enabled_at_run_time", "from_step_config", "generation_param", "generation_params", "keep_generations",
    "new_generation", "raise_generation", "with_rerun",
    "MAX_DEPTH", "load", "load_from", "parse_overrides", "too_deep", "refuse_url_credentials", "step_config",
    "to_params", "validate",
]
