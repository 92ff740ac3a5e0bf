"""The SIDReasoner DAG, built from the step registry (`sidreasoner.steps.STEPS`).

Every registered step becomes one task, in registry order: its component (`component_for`), the
config sections it reads as arguments, each input wired to the producing task's output, and its
pod settings from the registry (image, credentials, model cache, shared memory, retries, caching)
and from the `cluster` section (resources, node selectors, tolerations). Pipeline parameters are
the config sections, their defaults the preset's values; a task receives only the sections its
step reads, so its cache key covers exactly those. Steps not built are not registered.

Two more arguments reach the cache key (KFP's driver fingerprints a task's resolved inputs, command,
args and image, and only when the task's caching is on: kubeflow/pipelines
backend/src/v2/driver/driver.go `getFingerPrint`, backend/src/v2/cacheutils/cache.go
`GenerateCacheKey`): every task gets `code_version` (the project's version and the last commit that
changed the code, read at compile time), so a code change misses the cache; and the tasks in
`rerun` get the run parameter
`rerun_token`, so a re-run with a fresh token executes them and stores their results under new keys,
with caching still on.
"""

import functools
import hashlib
import inspect
import os
import re
import subprocess
from collections.abc import Mapping
from pathlib import Path
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Dataset, Markdown, Metrics, Model

from sidreasoner import __version__
from sidreasoner.components.factory import component_for, condition_for
from sidreasoner.config import ClusterConfig, Config, StepResources, to_params
from sidreasoner.steps import STEPS, Image, Step, pipeline_steps

PIPELINE_NAME = "sidreasoner"
ARTIFACT_TYPES = {"Dataset": Dataset, "Model": Model, "Metrics": Metrics, "HTML": HTML, "Markdown": Markdown}

# Credentials: the chart's Secrets (fixed names, charts/README.md), all optional so a run that
# needs none starts without them. Values never reach the compiled YAML, only these references.
SECRET_ENV = {
    "teacher": ("sidreasoner-teacher", {"api-key": "SIDREASONER_TEACHER_API_KEY"}),
    "hf": ("sidreasoner-hf", {"token": "HF_TOKEN"}),
    "s3": ("sidreasoner-s3", {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}),
}
GCS_SECRET, GCS_MOUNT = "sidreasoner-gcs", "/var/secrets/gcs"
# Pod labels for cost attribution (with cluster.labels, e.g. the paper presets' name).
STEP_LABEL, CATEGORY_LABEL = "sidreasoner.io/step", "sidreasoner.io/category"
ROOT = Path(__file__).resolve().parents[1]


def _git(*args: str) -> str:
    return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True,
                          timeout=30).stdout


# What the step pods run: a commit touching only docs, charts or tests keeps every cache entry.
CODE_PATHS = ("src", "components", "pipelines", "images", "pyproject.toml")


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """The project's version and, in a git checkout, the last commit that changed CODE_PATHS (plus
    a digest of uncommitted changes to them): `0.1.0+g1a2b3c4d5e6f[.dirty<digest>]`.
    SIDREASONER_CODE_VERSION overrides it (e.g. the commit an image was built from)."""
    override = os.environ.get("SIDREASONER_CODE_VERSION", "").strip()
    if override:
        return override
    if not (ROOT / ".git").exists() or not (ROOT / "pyproject.toml").exists():
        return __version__
    try:
        commit = _git("log", "-1", "--format=%h", "--abbrev=12", "--", *CODE_PATHS).strip()
        diff = _git("diff", "HEAD", "--", *CODE_PATHS)
    except (OSError, subprocess.SubprocessError):
        return __version__
    dirty = f".dirty{hashlib.sha256(diff.encode()).hexdigest()[:8]}" if diff else ""
    return f"{__version__}+g{commit}{dirty}"


def step_image(step: Step, cluster: ClusterConfig) -> Image:
    """The image of a step's pod: a pod that requests accelerators runs in the training image (the
    CPU image has no CUDA), whatever the registry says."""
    return "train" if cluster.resources.get(step.name, StepResources()).gpus > 0 else step.image


def output_name(step: str, output: str) -> str:
    """Name of a step's artifact among the pipeline's outputs, e.g. preprocess_dataset."""
    return f"{step.replace('-', '_')}_{output}"


def _outputs_type(steps: list[Step]) -> type:
    fields = [(output_name(step.name, name), ARTIFACT_TYPES[kind])
              for step in steps for name, kind in step.artifacts().items()]
    return NamedTuple("Outputs", fields)


def _credentials(task: dsl.PipelineTask, kinds: tuple[str, ...]) -> None:
    for kind in kinds:
        if kind == "gcs":
            kubernetes.use_secret_as_volume(task, secret_name=GCS_SECRET, mount_path=GCS_MOUNT, optional=True)
            task.set_env_variable("SIDREASONER_GCS_KEY_FILE", f"{GCS_MOUNT}/key.json")
        else:
            name, keys = SECRET_ENV[kind]
            kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=keys, optional=True)


def _resources(task: dsl.PipelineTask, res: StepResources) -> None:
    if res.cpu:
        task.set_cpu_request(res.cpu)
    if res.cpu_limit:
        task.set_cpu_limit(res.cpu_limit)
    if res.memory:
        task.set_memory_request(res.memory)
    if res.memory_limit:
        task.set_memory_limit(res.memory_limit)
    if res.gpus:
        task.set_accelerator_type(res.accelerator).set_accelerator_limit(res.gpus)
    for key, value in res.node_selector.items():
        kubernetes.add_node_selector(task, label_key=key, label_value=value)
    for t in res.tolerations:
        kubernetes.add_toleration(task, key=t.key, operator=t.operator, value=t.value or None, effect=t.effect or None)


def _model_cache(task: dsl.PipelineTask, cluster: ClusterConfig) -> None:
    kubernetes.mount_pvc(task, pvc_name=cluster.model_cache_pvc, mount_path=cluster.model_cache_mount)
    task.set_env_variable("HF_HOME", f"{cluster.model_cache_mount}/hf")


def label_value(text: str) -> str:
    """`text` as a Kubernetes label value: at most 63 of [A-Za-z0-9._-], alphanumeric at both ends."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63].strip("._-")


def _pod(task: dsl.PipelineTask, step_name: str, cluster: ClusterConfig, timeout_s: int, category: str) -> None:
    """What every pod of the run gets: a deadline, pull secrets and the cost-attribution labels."""
    # The pod's activeDeadlineSeconds (kfp has no task timeout of its own): a hung step fails
    # instead of holding its GPUs; each retry is a new pod with a new deadline.
    kubernetes.set_timeout(task, timeout_s)
    if cluster.image_pull_secrets:
        # On the pod itself: the run's ServiceAccount (the server's default unless the run names
        # one) may not list them.
        kubernetes.set_image_pull_secrets(task, list(cluster.image_pull_secrets))
    for key, value in {**cluster.labels, STEP_LABEL: step_name, CATEGORY_LABEL: label_value(category)}.items():
        kubernetes.add_pod_label(task, label_key=key, label_value=value)


def _configure(task: dsl.PipelineTask, step: Step, cluster: ClusterConfig, cache: bool, category: str) -> None:
    """A task's pod settings, all from the registry and the cluster section."""
    task.set_display_name(step.display_name)
    _credentials(task, step.credentials)
    res = cluster.resources.get(step.name, StepResources())
    _resources(task, res)
    _pod(task, step.name, cluster, res.timeout or step.timeout_s, category)
    if cluster.model_cache_pvc and step.model_cache:
        _model_cache(task, cluster)
    if step.training_pod:
        # PyTorch data loaders and NCCL need more shared memory than the 64 MiB default. The volume
        # is RAM and counts against the pod's memory limit, so it is bounded.
        kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory",
                                   size_limit=res.shm_size)
    if step.retry:
        task.set_retry(num_retries=step.retry.num_retries, backoff_duration=step.retry.backoff_duration,
                       **({"backoff_factor": step.retry.backoff_factor} if step.retry.backoff_factor else {}))
    # A step with side effects (an upload) would be skipped by a cache hit.
    task.set_caching_options(enable_caching=cache and not step.side_effects)


def _output(tasks: dict[str, dsl.PipelineTask], producer: str, output: str):
    return tasks[producer].outputs[output]


CONDITION_TIMEOUT_S = 600


def _condition(step: Step, params: dict, defaults: dict, cfg: Config) -> dsl.PipelineTask:
    """`<step>-enabled`: reads the run's value of the section holding the step's setting."""
    section = step.enabled_by.split(".", 1)[0]
    task = condition_for(step)(step=step.name, section=params[section], compiled_section=defaults[section])
    task.set_display_name(f"{step.display_name}: enabled?")
    _pod(task, f"{step.name}-enabled", cfg.cluster, CONDITION_TIMEOUT_S, cfg.data.category)
    return task


def build(cfg: Config, until: str | None = None, no_cache: frozenset[str] = frozenset(),
          registry: Mapping[str, Step] = STEPS, rerun: frozenset[str] = frozenset(),
          run_time_conditions: bool = False):
    """The pipeline function for `cfg`, holding the steps up to and including `until`; the steps
    in `no_cache` always execute (caching off), the others may be served from the cache. With
    `rerun`, the pipeline takes a `rerun_token` parameter (empty by default) that exactly those
    steps' tasks receive: a run with a new token executes them and caches what they write.

    A step with `enabled_by` (export-model) is in the DAG when `cfg` sets that key; with
    `run_time_conditions` (a compiled pipeline, whose parameters a user may change in the UI) it
    always is, behind a condition task that reads the run's value, and its outputs are not
    pipeline outputs (KFP takes a pipeline output from a condition branch only through dsl.OneOf).

    Every task receives its sections' compiled values as `compiled_sections`: a section passed
    partly through the API is completed from them (a run parameter replaces the whole default)."""
    steps = pipeline_steps(cfg, until, registry, conditional=run_time_conditions)
    gated = {step.name for step in steps if step.enabled_by and run_time_conditions}
    defaults = to_params(cfg)
    if rerun:
        defaults["rerun_token"] = ""
    Outputs = _outputs_type([step for step in steps if step.name not in gated])
    version = code_version()

    def sidreasoner(*values):
        params = dict(zip(defaults, values))
        tasks: dict[str, dsl.PipelineTask] = {}
        for step in steps:
            sections = {name: params[name] for name in step.sections}
            inputs = {name: _output(tasks, *step.source(name)) for name in step.inputs}
            keys = {"code_version": version, "compiled_sections": {name: defaults[name] for name in step.sections},
                    **({"rerun_token": params["rerun_token"]} if step.name in rerun else {})}
            component = component_for(step, step_image(step, cfg.cluster))
            if step.name in gated:
                with dsl.If(_condition(step, params, defaults, cfg).output == True, name=f"{step.name}-enabled"):  # noqa: E712
                    task = component(step=step.name, **sections, **inputs, **keys)
            else:
                task = component(step=step.name, **sections, **inputs, **keys)
            _configure(task, step, cfg.cluster, cache=step.name not in no_cache, category=cfg.data.category)
            tasks[step.name] = task
        return Outputs(**{output_name(step.name, name): tasks[step.name].outputs[name]
                          for step in steps if step.name not in gated for name in step.artifacts()})

    # KFP reads the pipeline's parameters (the config sections, defaulting to the preset's values)
    # and outputs (which depend on `until`) from the signature.
    sidreasoner.__signature__ = inspect.Signature(
        [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=value, annotation=type(value))
         for name, value in defaults.items()],
        return_annotation=Outputs)
    return dsl.pipeline(
        name=PIPELINE_NAME,
        description="SIDReasoner: LLM reasoning over Semantic IDs for generative recommendation",
    )(sidreasoner)
