"""Whether every Stage 1 task with a weight can get data, as far as the config alone can tell: checked by
compile, run and submit before anything runs (sft-stage1 checks its input folders again when it starts)."""

from __future__ import annotations

from urllib.parse import urlparse

from sidreasoner.config.schema import Config, Stage1Config
from sidreasoner.errors import ConfigError
from sidreasoner.steps import steps_until

# What sidreasoner.storage reads (the sft-stage1 pod has the storage credentials).
INSTRUCTION_FILE_SCHEMES = ("", "file", "s3", "minio", "gs")
GENERAL_DATA_SOURCES = (
    "stage1.instruction_file=PATH or a bucket URI (JSON lines: e.g. on the model-cache volume or in a bucket: the "
    "research bundle's general/sampled_data.arrow, or any {messages} chat or {instruction, output} lines), or "
    "data.format=research with data.source a research bundle that holds general/ data"
)
# What feeds each task whose data a config can leave out, and the setting that gives it.
TASK_SOURCES = {
    "item_narratives": "the teacher's item narratives (synthesize-corpus, teacher.item_narratives=true)",
    "history_narratives": "the teacher's history narratives (synthesize-corpus, teacher.history_narratives=true)",
    "instructions": GENERAL_DATA_SOURCES,
}


def no_data_message(task: str, weight: float, why: str) -> str:
    """One line: the task has a weight but no data (`why`), what gives it data, and the explicit opt-out."""
    source = TASK_SOURCES.get(task, "the dataset's train split, titles and SIDs")
    return f"stage1.tasks.{task}={weight:g} but {why}. Give it {source}; or train without it: stage1.tasks.{task}=0"


def file_ignored_message(cfg: Stage1Config) -> str | None:
    """A message when stage1.instruction_file is given to a task that is off, else None."""
    if cfg.instruction_file and cfg.tasks.instructions <= 0:
        return (
            f"stage1.instruction_file={cfg.instruction_file} is set but stage1.tasks.instructions=0 leaves it out: "
            "set stage1.tasks.instructions=1 to train on it, or drop stage1.instruction_file"
        )
    return None


def stage1_data_problems(cfg: Config) -> list[str]:
    """A message for each Stage 1 task with a weight that no data can reach under `cfg`."""
    s, problems = cfg.stage1, []
    if s.tasks.instructions > 0 and not s.instruction_file and cfg.data.format != "research":
        why = f"no general-reasoning data reaches it (stage1.instruction_file is empty, data.format={cfg.data.format})"
        problems.append(no_data_message("instructions", s.tasks.instructions, why))
    scheme = urlparse(s.instruction_file).scheme.lower()
    if s.tasks.instructions > 0 and len(scheme) > 1 and scheme not in INSTRUCTION_FILE_SCHEMES:
        problems.append(
            f"stage1.instruction_file={s.instruction_file}: unsupported scheme {scheme}://; a path the sft-stage1 "
            "pod can read, file://, s3://, minio:// or gs://<bucket>/<key>"
        )
    for task in ("item_narratives", "history_narratives"):
        weight = getattr(s.tasks, task)
        if weight > 0 and not getattr(cfg.teacher, task):
            problems.append(no_data_message(task, weight, f"teacher.{task}=false writes none"))
    ignored = file_ignored_message(s)
    return problems + ([ignored] if ignored else [])


def require_stage1_data(cfg: Config, until: str | None = None) -> None:
    """A ConfigError listing stage1_data_problems when the run (up to `until`) trains Stage 1."""
    if "sft-stage1" not in (step.name for step in steps_until(until)):
        return
    problems = stage1_data_problems(cfg)
    if problems:
        raise ConfigError("Stage 1 lacks data:\n" + "\n".join(f"  {p}" for p in problems))
