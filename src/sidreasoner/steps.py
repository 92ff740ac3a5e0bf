"""The step registry: every pipeline step described once, in DAG order.

A `Step` says what the step does (the library function), what it reads (config sections, and
input folders wired to the outputs of earlier steps), what it writes (typed artifacts and report
pages), and how its pod runs on a cluster (image, credentials, caching, model cache, shared memory,
retries). The config's step names, the CLI's `sidreasoner step` commands, the KFP components, the
pipeline DAG and the tests all derive from `STEPS`; docs/architecture.md walks through it.

This module imports nothing else from the project but its errors and the artifact classes, so every layer
above those can read it.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from sidreasoner.artifacts import (
    Artifact,
    Corpus,
    Dataset,
    Deployment,
    Embeddings,
    Evaluation,
    ModelExport,
    ModelFolder,
    RawData,
    ReportPages,
    SidIndex,
    Stage3Checkpoint,
)
from sidreasoner.artifacts import KfpType as ArtifactKind
from sidreasoner.errors import ConfigError

HOUR = 3600
# Which image a step's pod runs in: the CPU image, or the CUDA training image.
Image = Literal["cpu", "train"]
# Credentials a step may use, each an optional Secret of the Helm chart.
Credential = Literal["s3", "gcs", "hf", "teacher"]


@dataclass(frozen=True)
class Report:
    """A page a step writes inside one of its output folders, also published as an artifact of
    its own so that the KFP UI shows it."""

    name: str
    folder: str
    filename: str
    kind: ArtifactKind = "HTML"


@dataclass(frozen=True)
class Retry:
    """KFP retries a failed pod whatever the cause: its Argo retryStrategy has a limit and a backoff, no
    exit-code rule (backend/src/v2/compiler/argocompiler/container.go `getTaskRetryStrategyFromInput`).
    So only steps whose failures are often transient retry, few times, with a bounded wait, and a bad
    config is refused before a run starts."""

    num_retries: int
    backoff_duration: str
    backoff_factor: float | None = None
    backoff_max_duration: str = "600s"


@dataclass(frozen=True)
class Step:
    name: str
    summary: str
    component: str  # the kind of work: the function in components/ that runs this step
    function: str  # "module:function" of the library, imported only when the step runs
    sections: tuple[str, ...]  # the config sections it may read (others raise); its cache key covers these
    inputs: Mapping[str, str] = field(default_factory=dict)  # folder name -> "producer-step.output"
    outputs: Mapping[str, type[Artifact]] = field(default_factory=dict)  # folder name -> its artifact class
    reports: tuple[Report, ...] = ()
    image: Image = "cpu"
    credentials: tuple[Credential, ...] = ()
    side_effects: bool = False  # writes outside the artifact store: never served from the cache
    model_cache: bool = False  # loads models or keeps caches/checkpoints on the model-cache volume
    training_pod: bool = False  # RAM-backed /dev/shm for data loaders and NCCL
    retry: Retry | None = None
    enabled_by: str = ""  # dotted config key: the step is in the DAG only when it is set
    display_name: str = ""  # the name the KFP UI shows; the step name when empty
    timeout_s: int = 6 * HOUR  # the pod's deadline on a cluster (cluster.resources.<step>.timeout overrides)

    def __post_init__(self):
        if not self.display_name:
            object.__setattr__(self, "display_name", self.name)

    def input_class(self, name: str, registry: Mapping[str, Step] | None = None) -> type[Artifact]:
        """The artifact class of input `name`: its producer's output class."""
        producer, output = self.source(name)
        return (STEPS if registry is None else registry)[producer].outputs[output]

    @property
    def folders(self) -> tuple[str, ...]:
        """The library function's folder arguments, in order: inputs, then outputs."""
        return (*self.inputs, *self.outputs)

    def artifacts(self) -> dict[str, ArtifactKind]:
        """Every artifact the step's task outputs, with its type: outputs, report pages, metrics."""
        outputs = {name: cls.kfp_type for name, cls in self.outputs.items()}
        return {**outputs, **{r.name: r.kind for r in self.reports}, "metrics": "Metrics"}

    def source(self, name: str) -> tuple[str, str]:
        """(producer step, output name) of input `name`."""
        producer, _, output = self.inputs[name].partition(".")
        return producer, output

    def load(self):
        module, attr = self.function.split(":")
        return getattr(importlib.import_module(module), attr)


DATASET = "preprocess.dataset"
SID_INDEX = "quantize-sids.sid_index"
CORPUS = "synthesize-corpus.corpus"
TRAINING_RETRY = Retry(2, "60s")  # resumes from the step's last checkpoint
TRAINING_TIMEOUT = 72 * HOUR  # per attempt: a retried pod resumes with a new deadline


def _sft(stage: int, summary: str, base_model: str, credentials: tuple[Credential, ...] = ()) -> Step:
    """An SFT stage: one `sft` component, a task per stage, each reading its own config section."""
    return Step(
        f"sft-stage{stage}",
        summary,
        "sft",
        f"sidreasoner.train.sft:sft_stage{stage}",
        ("seed", f"stage{stage}"),
        inputs={"base_model": base_model, "dataset": DATASET, "sid_index": SID_INDEX, "corpus": CORPUS},
        outputs={"model": ModelFolder},
        reports=(Report("loss_curve", "model", ModelFolder.LOSS_CURVE),),
        image="train",
        credentials=credentials,
        model_cache=True,
        training_pod=True,
        retry=TRAINING_RETRY,
        timeout_s=TRAINING_TIMEOUT,
    )


def _evaluation(name: str, model: str, which: str) -> Step:
    """The evaluation of one model (`which`, in words): one `evaluate` component, a task per model."""
    return Step(
        name,
        f"constrained SID beam search with {which}, with and without thinking (eval.modes): HR/NDCG@K",
        "evaluate",
        "sidreasoner.eval.evaluate:evaluate",
        ("seed", "eval"),
        inputs={"model": model, "dataset": DATASET, "sid_index": SID_INDEX},
        outputs={"evaluation": Evaluation},
        image="train",
        model_cache=True,
        timeout_s=12 * HOUR,
    )


def _report(name: str, summary: str, component: str, function: str, evaluations: dict[str, str]) -> Step:
    """A report page of the baselines and `evaluations` (input name -> producing step's output), in HTML and
    Markdown."""
    return Step(
        name,
        summary,
        component,
        f"sidreasoner.eval.report:{function}",
        ("seed", "eval"),
        inputs={"baselines": "evaluate-baselines.baselines", **evaluations, "dataset": DATASET, "sid_index": SID_INDEX},
        outputs={"report": ReportPages},
        reports=(
            Report("report_html", "report", ReportPages.HTML),
            Report("report_md", "report", ReportPages.MARKDOWN, kind="Markdown"),
        ),
    )


def _registry(*steps: Step) -> dict[str, Step]:
    registry = {s.name: s for s in steps}
    check_registry(registry)
    return registry


def check_registry(registry: Mapping[str, Step]) -> None:
    """Fail unless every input names an output of an earlier step, every report lies in an output, and no
    name is both an input and an output, or both a config section and a folder."""
    seen: dict[str, Step] = {}
    for step in registry.values():
        for name in step.inputs:
            producer, output = step.source(name)
            if output not in getattr(seen.get(producer), "outputs", {}):
                raise ValueError(
                    f"step {step.name}: input '{name}' reads {step.inputs[name]!r}, which no earlier step outputs"
                )
        for report in step.reports:
            if report.folder not in step.outputs:
                raise ValueError(f"step {step.name}: report '{report.name}' lies in '{report.folder}', not an output")
        clash = set(step.inputs) & set(step.artifacts())
        if clash:
            raise ValueError(f"step {step.name}: {', '.join(sorted(clash))} is both an input and an output")
        # A component takes its config sections and its folders as parameters of one function.
        clash = set(step.sections) & {*step.inputs, *step.artifacts()}
        if clash:
            raise ValueError(f"step {step.name}: {', '.join(sorted(clash))} is both a config section and a folder")
        seen[step.name] = step


STEPS: dict[str, Step] = _registry(
    Step(
        "download-data",
        "fetch raw reviews and item metadata (demo generator, Amazon 2018/2023, or a folder)",
        "download_data",
        "sidreasoner.data.download:download_data",
        ("seed", "data"),
        outputs={"raw": RawData},
        credentials=("s3", "gcs", "hf"),
        model_cache=True,
        # Network downloads fail transiently; the step resumes partial files on retry.
        retry=Retry(3, "30s", 2.0),
    ),
    Step(
        "preprocess",
        "title filter, time window, iterative k-core, sliding windows, chronological split",
        "preprocess",
        "sidreasoner.data.preprocess:preprocess",
        ("seed", "data"),
        inputs={"raw": "download-data.raw"},
        outputs={"dataset": Dataset},
    ),
    Step(
        "embed-items",
        "item text to dense vectors with a sentence-transformers encoder",
        "embed_items",
        "sidreasoner.sid.embed:embed_items",
        ("seed", "embed"),
        inputs={"dataset": DATASET},
        outputs={"embeddings": Embeddings},
        credentials=("hf",),
        model_cache=True,
    ),
    Step(
        "quantize-sids",
        "RQ-VAE or residual k-means to Semantic IDs, collision handling",
        "quantize_sids",
        "sidreasoner.sid.quantize:quantize_sids",
        ("seed", "sid"),
        inputs={"dataset": DATASET, "embeddings": "embed-items.embeddings"},
        outputs={"sid_index": SidIndex},
    ),
    Step(
        "synthesize-corpus",
        "teacher LLM writes item narratives, history narratives and reasoning paths "
        "(API key from $SIDREASONER_TEACHER_API_KEY or $OPENAI_API_KEY, never from config)",
        "synthesize_corpus",
        "sidreasoner.teacher.corpus:synthesize_corpus",
        ("seed", "teacher"),
        inputs={"dataset": DATASET, "sid_index": SID_INDEX},
        outputs={"corpus": Corpus},
        credentials=("teacher",),
        model_cache=True,
        timeout_s=48 * HOUR,
        # An endpoint down for a while: a retry resumes from the response cache, paying only for what is missing.
        retry=Retry(2, "120s", 2.0),
    ),
    Step(
        "evaluate-baselines",
        "popularity and random rankings through the evaluation's metrics",
        "evaluate_baselines",
        "sidreasoner.eval.baselines:evaluate_baselines",
        ("seed", "eval"),
        inputs={"dataset": DATASET, "sid_index": SID_INDEX},
        outputs={"baselines": Evaluation},
    ),
    Step(
        "prepare-base-model",
        "resolve the base model: the built-in tiny Qwen3, a hub id, or a saved folder",
        "prepare_base_model",
        "sidreasoner.train.base:prepare_base_model",
        ("seed", "model"),
        inputs={"dataset": DATASET, "corpus": CORPUS},
        outputs={"base_model": ModelFolder},
        image="train",
        credentials=("s3", "gcs", "hf"),
        model_cache=True,
    ),
    _sft(
        1,
        "add SID tokens; multi-task SID-language alignment SFT",
        base_model="prepare-base-model.base_model",
        credentials=("s3", "gcs"),  # stage1.instruction_file may be a bucket URI
    ),
    _evaluation("evaluate-stage1", "sft-stage1.model", "the Stage 1 model"),
    _sft(2, "reasoning-activation SFT on the teacher's reasoning paths", base_model="sft-stage1.model"),
    _evaluation("evaluate-stage2", "sft-stage2.model", "the Stage 2 model"),
    Step(
        "rl-stage3",
        "GRPO on the SID reward from the Stage 2 model (stage3.backend: trl, or verl on GPUs); writes a raw checkpoint",
        "rl_stage3",
        "sidreasoner.rl.stage3:rl_stage3",
        ("seed", "stage3"),
        inputs={"stage2_model": "sft-stage2.model", "dataset": DATASET, "sid_index": SID_INDEX, "corpus": CORPUS},
        outputs={"stage3_checkpoint": Stage3Checkpoint},
        reports=(Report("reward_curve", "stage3_checkpoint", Stage3Checkpoint.REWARD_CURVE),),
        image="train",
        model_cache=True,
        training_pod=True,
        retry=TRAINING_RETRY,
        timeout_s=TRAINING_TIMEOUT,
    ),
    Step(
        "merge-checkpoint",
        "the raw Stage 3 checkpoint (verl FSDP shards, a LoRA adapter, or a saved model) "
        "to a plain Hugging Face model, checked by reloading it",
        "merge_checkpoint",
        "sidreasoner.rl.merge:merge_checkpoint",
        ("seed", "stage3"),
        inputs={"stage3_checkpoint": "rl-stage3.stage3_checkpoint", "stage2_model": "sft-stage2.model"},
        outputs={"stage3_model": ModelFolder},
        image="train",
        model_cache=True,
    ),
    _evaluation("evaluate-stage3", "merge-checkpoint.stage3_model", "the Stage 3 model"),
    _report(
        "report",
        "one page comparing the baselines and every stage, with sample reasoning traces",
        "report",
        "report_stages",
        {f"stage{n}_eval": f"evaluate-stage{n}.evaluation" for n in (1, 2, 3)},
    ),
    Step(
        "export-model",
        "push the Stage 3 model with its serving catalogue (SID index, item table) to export.uri "
        "(s3://, minio://, gs://, a folder); in the DAG only when export.uri is set",
        "export_model",
        "sidreasoner.export:export_model",
        ("seed", "export"),
        inputs={"stage3_model": "merge-checkpoint.stage3_model", "sid_index": SID_INDEX, "dataset": DATASET},
        outputs={"model_export": ModelExport},
        credentials=("s3", "gcs"),
        side_effects=True,
        enabled_by="export.uri",
    ),
    Step(
        "deploy-model",
        "create or update a KServe InferenceService serving the exported model (`sidreasoner serve`) and wait "
        "until it is Ready; in the DAG only when serve.enabled is set",
        "deploy_model",
        "sidreasoner.serve.deploy:deploy_model",
        ("seed", "serve", "eval"),
        inputs={"model_export": "export-model.model_export"},
        outputs={"deployment": Deployment},
        side_effects=True,
        enabled_by="serve.enabled",
        timeout_s=2 * HOUR,
    ),
)

# The evaluate-only pipeline: the data and SID steps and the baselines as in training, then a model trained
# elsewhere (model.base) instead of the training steps, its evaluation and their report.
EVALUATE_STEPS: dict[str, Step] = _registry(
    *(STEPS[name] for name in ("download-data", "preprocess", "embed-items", "quantize-sids", "evaluate-baselines")),
    Step(
        "load-model",
        "resolve model.base (a saved folder, a hub id or a bucket URI) and check that its tokenizer has every SID "
        "token of the SID index as one token",
        "load_model",
        "sidreasoner.eval.trained_model:load_model",
        ("seed", "model"),
        inputs={"sid_index": SID_INDEX},
        outputs={"trained_model": ModelFolder},
        image="train",
        credentials=("s3", "gcs", "hf"),
        model_cache=True,
    ),
    _evaluation("evaluate-model", "load-model.trained_model", "the model model.base names"),
    _report(
        "report-model",
        "one page comparing the baselines and the model, with sample reasoning traces",
        "report_model",
        "report_model",
        {"model_eval": "evaluate-model.evaluation"},
    ),
)
# `--pipeline NAME`: each pipeline's registry, in DAG order.
PIPELINES: dict[str, dict[str, Step]] = {"train": STEPS, "evaluate": EVALUATE_STEPS}


def _every_step(pipelines: Mapping[str, Mapping[str, Step]]) -> dict[str, Step]:
    """Every step of every pipeline by name; a name means one Step in all of them (its CLI command, config
    scope, resources, generation and cache key)."""
    every: dict[str, Step] = {}
    for pipeline, registry in pipelines.items():
        for name, step in registry.items():
            if every.setdefault(name, step) is not step:
                raise ValueError(f"pipeline {pipeline}: step '{name}' differs from another pipeline's '{name}'")
    return every


ALL_STEPS = _every_step(PIPELINES)
STEP_NAMES = tuple(ALL_STEPS)


def pipeline_registry(pipeline: str) -> dict[str, Step]:
    """The registry of `--pipeline NAME`."""
    if pipeline not in PIPELINES:
        raise ConfigError(f"unknown pipeline '{pipeline}'. Allowed: {', '.join(PIPELINES)}")
    return PIPELINES[pipeline]


def steps_until(until: str | None, registry: Mapping[str, Step] = STEPS) -> list[Step]:
    names = list(registry)
    if until is None:
        return list(registry.values())
    if until not in registry:
        raise ConfigError(f"unknown step '{until}'. Allowed: {', '.join(names)}")
    return [registry[n] for n in names[: names.index(until) + 1]]


def step_enabled(step: Step, cfg: Any) -> bool:
    """Whether `cfg` sets the key that turns `step` on (always True for a step without one)."""
    if not step.enabled_by:
        return True
    value = cfg
    for part in step.enabled_by.split("."):
        value = getattr(value, part)
    return bool(value.strip() if isinstance(value, str) else value)


def pipeline_steps(
    cfg: Any, until: str | None = None, registry: Mapping[str, Step] = STEPS, conditional: bool = False
) -> list[Step]:
    """The steps of `cfg`'s DAG up to `until`: a step with `enabled_by` only when that key is set,
    or, with `conditional` (a compiled pipeline decides at run time), always."""
    steps = steps_until(until, registry)
    if conditional:
        return steps
    if until and not step_enabled(registry[until], cfg):
        raise ConfigError(f"step '{until}' is in the DAG only when {registry[until].enabled_by} is set")
    return [s for s in steps if step_enabled(s, cfg)]


def downstream(name: str, registry: Mapping[str, Step] = STEPS) -> list[str]:
    """`name` and every step that consumes its outputs, directly or not, in DAG order."""
    if name not in registry:
        raise ConfigError(f"unknown step '{name}'. Allowed: {', '.join(registry)}")
    result = [name]
    for step in registry.values():
        if step.name != name and any(step.source(i)[0] in result for i in step.inputs):
            result.append(step.name)
    return result
