"""The SIDReasoner DAG, built from the step registry (`sidreasoner.steps.STEPS`).

Every registered step becomes one task, in registry order: its component (`component_for`), the
config sections it reads as arguments, each input wired to the producing task's output, and its
pod settings from the registry (image, credentials, model cache, shared memory, retries, caching)
and from the `cluster` section (resources, node selectors, tolerations). Pipeline parameters are
the config sections, their defaults the preset's values; a task receives only the sections its
step reads, so its cache key covers exactly those. Steps not built are not registered.

Two more arguments reach every task's cache key (KFP's driver keys a container task on its resolved
input parameter values, its input artifacts' MLMD ids, its output specs, image, command and args:
kubeflow/pipelines backend/src/v2/driver/cache.go `getFingerPrint`, backend/src/v2/cacheutils/cache.go
`GenerateCacheKey`): `code_version`, a digest of the installed package's source
(`sidreasoner.provenance`), so a code change misses the cache; and `generation`, the run parameter
`generation_<step>` (the config's `generations.<step>`, 0 by default). Both are passed to every task
in every run: the driver fills no default for a component's optional parameter
(backend/src/v2/driver/resolve.go, "They are resolved internally within the component"), so a value
passed only sometimes would give the same task two keys.
"""

import inspect
import re
from collections.abc import Mapping
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Dataset, Markdown, Metrics, Model

from sidreasoner.components.factory import compile_time_arguments, component_for, condition_for
from sidreasoner.components.images import IMAGES
from sidreasoner.config import ClusterConfig, Config, StepResources, generation_param, generation_params, to_params
from sidreasoner.provenance import code_version
from sidreasoner.serve.deploy import IMAGE_UID, image_pull_policy
from sidreasoner.steps import STEPS, Image, Step, pipeline_steps

PIPELINE_NAME = "sidreasoner"


def pipeline_name(pipeline: str) -> str:
    """The name a pipeline (`--pipeline`) compiles and runs under: sidreasoner for training,
    sidreasoner-<pipeline> for the others (sidreasoner-evaluate)."""
    return PIPELINE_NAME if pipeline == "train" else f"{PIPELINE_NAME}-{pipeline}"


ARTIFACT_TYPES = {"Dataset": Dataset, "Model": Model, "Metrics": Metrics, "HTML": HTML, "Markdown": Markdown}

# Credentials: the chart's Secrets (fixed names, charts/README.md), all optional so a run that
# needs none starts without them. Values never reach the compiled YAML, only these references.
SECRET_ENV = {
    "teacher": ("sidreasoner-teacher", {"api-key": "SIDREASONER_TEACHER_API_KEY"}),
    "hf": ("sidreasoner-hf", {"token": "HF_TOKEN"}),
    "s3": (
        "sidreasoner-s3",
        {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"},
    ),
}
GCS_SECRET, GCS_MOUNT = "sidreasoner-gcs", "/var/secrets/gcs"
# Pod labels for cost attribution (with cluster.labels, e.g. the paper presets' name).
STEP_LABEL, CATEGORY_LABEL = "sidreasoner.io/step", "sidreasoner.io/category"


def step_image(step: Step, cluster: ClusterConfig) -> Image:
    """The image of a step's pod: a pod that requests accelerators runs in the training image (the
    CPU image has no CUDA), whatever the registry says."""
    return "train" if cluster.resources.get(step.name, StepResources()).gpus > 0 else step.image


def output_name(step: str, output: str) -> str:
    """Name of a step's artifact among the pipeline's outputs, e.g. preprocess_dataset."""
    return f"{step.replace('-', '_')}_{output}"


def _outputs_type(steps: list[Step]) -> type:
    fields = [
        (output_name(step.name, name), ARTIFACT_TYPES[kind])
        for step in steps
        for name, kind in step.artifacts().items()
    ]
    return NamedTuple("Outputs", fields)


def _credentials(task: dsl.PipelineTask, kinds: tuple[str, ...], s3_endpoint: str) -> None:
    for kind in kinds:
        if kind == "gcs":
            kubernetes.use_secret_as_volume(task, secret_name=GCS_SECRET, mount_path=GCS_MOUNT, optional=True)
            task.set_env_variable("SIDREASONER_GCS_KEY_FILE", f"{GCS_MOUNT}/key.json")
        else:
            name, keys = SECRET_ENV[kind]
            kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=keys, optional=True)
        if kind == "s3" and s3_endpoint:
            task.set_env_variable("SIDREASONER_S3_ENDPOINT", s3_endpoint)


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
    # Stated on the pod too, so that a namespace's restricted Pod Security admits it.
    kubernetes.set_security_context(task, run_as_user=IMAGE_UID, run_as_group=IMAGE_UID, run_as_non_root=True)


def _pull_policy(task: dsl.PipelineTask, image: str) -> None:
    kubernetes.set_image_pull_policy(task, image_pull_policy(image))


def _configure(task: dsl.PipelineTask, step: Step, cluster: ClusterConfig, cache: bool, category: str) -> None:
    """A task's pod settings, all from the registry and the cluster section."""
    task.set_display_name(step.display_name)
    _credentials(task, step.credentials, cluster.s3_endpoint)
    res = cluster.resources.get(step.name, StepResources())
    _resources(task, res)
    _pod(task, step.name, cluster, res.timeout or step.timeout_s, category)
    if cluster.model_cache_pvc and step.model_cache:
        _model_cache(task, cluster)
    if step.training_pod:
        # PyTorch data loaders and NCCL need more shared memory than the 64 MiB default. The volume
        # is RAM and counts against the pod's memory limit, so it is bounded.
        kubernetes.empty_dir_mount(
            task, volume_name="dshm", mount_path="/dev/shm", medium="Memory", size_limit=res.shm_size
        )
    if step.retry:
        task.set_retry(
            num_retries=step.retry.num_retries,
            backoff_duration=step.retry.backoff_duration,
            backoff_max_duration=step.retry.backoff_max_duration,
            **({"backoff_factor": step.retry.backoff_factor} if step.retry.backoff_factor else {}),
        )
    # A step with side effects (an upload) would be skipped by a cache hit.
    task.set_caching_options(enable_caching=cache and not step.side_effects)


def _output(tasks: dict[str, dsl.PipelineTask], producer: str, output: str):
    return tasks[producer].outputs[output]


CONDITION_TIMEOUT_S = 600
# The condition task only reads a run parameter: a small pod, bounded so a quota admits it.
CONDITION_RESOURCES = StepResources(cpu="100m", cpu_limit="1", memory="256Mi", memory_limit="1Gi")


def _condition(step: Step, params: dict, defaults: dict, cfg: Config) -> dsl.PipelineTask:
    """`<step>-enabled`: reads the run's value of the section holding the step's setting."""
    section = step.enabled_by.split(".", 1)[0]
    task = condition_for(step)(step=step.name, section=params[section], compiled_section=defaults[section])
    task.set_display_name(f"{step.display_name}: enabled?")
    _resources(task, CONDITION_RESOURCES)
    _pod(task, f"{step.name}-enabled", cfg.cluster, CONDITION_TIMEOUT_S, cfg.data.category)
    _pull_policy(task, IMAGES["cpu"])
    return task


def enclosing_conditions(steps: list[Step], gated: set[str]) -> dict[str, tuple[str, ...]]:
    """Step name -> the gated steps whose condition groups must enclose its task, outermost first: every
    gated step it reads from, directly or not. KFP refuses a task that depends on a task inside a dsl.If
    unless it sits inside that same group (kfp 2.17 kfp/compiler/compiler_utils.py:808 `get_dependencies`,
    "Illegal task dependency across DSL context managers"), so deploy-model, which reads export-model's
    output, is built inside export-model's condition."""
    order = {step.name: i for i, step in enumerate(steps)}
    enclosing: dict[str, tuple[str, ...]] = {}
    for step in steps:
        needed: set[str] = set()
        for name in step.inputs:
            producer = step.source(name)[0]
            needed.update(enclosing.get(producer, ()))
            if producer in gated:
                needed.add(producer)
        enclosing[step.name] = tuple(sorted(needed, key=order.__getitem__))
    return enclosing


class _ConditionGroups:
    """The dsl.If groups open while the DAG is built, innermost last. A group stays open after its step so
    that the steps reading that step's outputs are built inside it (nested in it when gated too)."""

    def __init__(self):
        self._open: list[tuple[str, dsl.If]] = []

    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self._open)

    def enter(self, step: str, enclosing: tuple[str, ...]) -> None:
        """Close the groups `step` is not inside, so that the open ones are exactly `enclosing`."""
        while self._open and self.names() != enclosing[: len(self._open)]:
            self._open.pop()[1].__exit__(None, None, None)
        if self.names() != enclosing:
            raise ValueError(
                f"step {step} reads outputs of the gated steps {', '.join(enclosing)}, whose conditions are not "
                "nested one in another: KFP cannot build it inside all of them"
            )

    def open(self, step: str, group: dsl.If) -> None:
        group.__enter__()
        self._open.append((step, group))

    def close(self) -> None:
        while self._open:
            self._open.pop()[1].__exit__(None, None, None)


def build(
    cfg: Config,
    until: str | None = None,
    no_cache: frozenset[str] = frozenset(),
    registry: Mapping[str, Step] = STEPS,
    run_time_conditions: bool = False,
    name: str = PIPELINE_NAME,
):
    """The pipeline function for `cfg`, holding the steps up to and including `until`; the steps
    in `no_cache` always execute (caching off), the others may be served from the cache. Each
    step's task receives its generation, the run parameter `generation_<step>` (default: the
    config's `generations.<step>`, else 0): a run with a new value executes that task, and the
    tasks that read its outputs, and caches what they write under the new key.

    A step with `enabled_by` (export-model) is in the DAG when `cfg` sets that key; with
    `run_time_conditions` (a compiled pipeline, whose parameters a user may change in the UI) it
    always is, behind a condition task that reads the run's value, and its outputs are not
    pipeline outputs (KFP takes a pipeline output from a condition branch only through dsl.OneOf).

    Every task receives its sections' compiled values as `compiled_sections`: a section passed
    partly through the API is completed from them (a run parameter replaces the whole default).

    `registry` and `name` say which pipeline: `steps.PIPELINES[p]` and `pipeline_name(p)` for `--pipeline p`."""
    steps = pipeline_steps(cfg, until, registry, conditional=run_time_conditions)
    gated = {step.name for step in steps if step.enabled_by and run_time_conditions}
    enclosing = enclosing_conditions(steps, gated)
    conditional = gated | {name for name, groups in enclosing.items() if groups}
    defaults = {**to_params(cfg), **generation_params(cfg, [step.name for step in steps])}
    Outputs = _outputs_type([step for step in steps if step.name not in conditional])
    version = code_version()

    def sidreasoner(*values):
        params = dict(zip(defaults, values, strict=True))
        tasks: dict[str, dsl.PipelineTask] = {}
        groups = _ConditionGroups()
        for step in steps:
            sections = {name: params[name] for name in step.sections}
            inputs = {name: _output(tasks, *step.source(name)) for name in step.inputs}
            keys = {
                "code_version": version,
                "generation": params[generation_param(step.name)],
                "compiled_sections": {name: defaults[name] for name in step.sections},
            }
            image = step_image(step, cfg.cluster)
            component = component_for(step, image)
            fixed = compile_time_arguments(step, cfg.cluster)
            groups.enter(step.name, enclosing[step.name])
            if step.name in gated:
                condition = _condition(step, params, defaults, cfg)
                groups.open(step.name, dsl.If(condition.output == True, name=f"{step.name}-enabled"))  # noqa: E712
            task = component(step=step.name, **sections, **fixed, **inputs, **keys)
            _configure(task, step, cfg.cluster, cache=step.name not in no_cache, category=cfg.data.category)
            _pull_policy(task, IMAGES[image])
            tasks[step.name] = task
        groups.close()
        return Outputs(
            **{
                output_name(step.name, name): tasks[step.name].outputs[name]
                for step in steps
                if step.name not in conditional
                for name in step.artifacts()
            }
        )

    # KFP reads the pipeline's parameters (the config sections, defaulting to the preset's values)
    # and outputs (which depend on `until`) from the signature.
    sidreasoner.__signature__ = inspect.Signature(
        [
            inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=value, annotation=type(value))
            for name, value in defaults.items()
        ],
        return_annotation=Outputs,
    )
    return dsl.pipeline(
        name=name,
        description="SIDReasoner: LLM reasoning over Semantic IDs for generative recommendation",
    )(sidreasoner)
