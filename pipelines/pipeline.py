"""The SIDReasoner DAG (DESIGN §1): read it top to bottom like the step table.

Pipeline parameters are the config sections (`seed`, `data`, `embed`, `sid`), their defaults the
preset's values. Each task receives only the sections it reads, so its cache key covers exactly
those. Steps not built yet are absent, not placeholders.
"""


import inspect
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import HTML, Dataset, Markdown, Metrics, Model

from sidreasoner.components.data import download_data, preprocess
from sidreasoner.components.evaluate import (evaluate_baselines, evaluate_stage1, evaluate_stage2, evaluate_stage3,
                                             report)
from sidreasoner.components.sid import embed_items, quantize_sids
from sidreasoner.components.teacher import synthesize_corpus
from sidreasoner.components.train import (export_model, merge_checkpoint, prepare_base_model, rl_stage3, sft_stage1,
                                          sft_stage2)
from sidreasoner.config import ClusterConfig, Config, StepResources, to_params
from sidreasoner.steps import STEPS, pipeline_steps

PIPELINE_NAME = "sidreasoner"

# Credentials: the chart's Secrets (fixed names, charts/README.md), all optional so a run that
# needs none starts without them. Values never reach the compiled YAML, only these references.
SECRET_ENV = {
    "teacher": ("sidreasoner-teacher", {"api-key": "SIDREASONER_TEACHER_API_KEY"}),
    "hf": ("sidreasoner-hf", {"token": "HF_TOKEN"}),
    "s3": ("sidreasoner-s3", {"AWS_ACCESS_KEY_ID": "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY": "AWS_SECRET_ACCESS_KEY"}),
}
GCS_SECRET, GCS_MOUNT = "sidreasoner-gcs", "/var/secrets/gcs"
# Which credentials each step may need: buckets for data and models, the hub for models.
STEP_CREDENTIALS = {
    "download-data": ("s3", "gcs", "hf"),
    "embed-items": ("hf",),
    "synthesize-corpus": ("teacher",),
    "prepare-base-model": ("s3", "gcs", "hf"),
    "export-model": ("s3", "gcs"),
}


def _credentials(task: dsl.PipelineTask, kinds: tuple[str, ...]) -> None:
    for kind in kinds:
        if kind == "gcs":
            kubernetes.use_secret_as_volume(task, secret_name=GCS_SECRET, mount_path=GCS_MOUNT, optional=True)
            task.set_env_variable("SIDREASONER_GCS_KEY_FILE", f"{GCS_MOUNT}/key.json")
        else:
            name, keys = SECRET_ENV[kind]
            kubernetes.use_secret_as_env(task, secret_name=name, secret_key_to_env=keys, optional=True)


def output_name(step: str, output: str) -> str:
    """Name of a step's artifact among the pipeline's outputs, e.g. preprocess_dataset."""
    return f"{step.replace('-', '_')}_{output}"


def artifact_names(step: str) -> dict[str, type]:
    """Every artifact a step's task outputs, with its KFP type."""
    spec = STEPS[step]
    names = {out: Model if out.endswith(("model", "checkpoint")) else Dataset for out in spec.outputs}
    names.update({name: Markdown if filename.endswith(".md") else HTML for name, _, filename in spec.reports})
    names["metrics"] = Metrics
    return names


def _outputs_type(included: list[str]) -> type:
    fields = [(output_name(name, out), kind) for name in included for out, kind in artifact_names(name).items()]
    return NamedTuple("Outputs", fields)


# Steps that write outside the artifact store: never served from the cache (DESIGN §3).
SIDE_EFFECT_STEPS = ("export-model",)

# Steps that load models or keep caches/checkpoints meant to outlive a pod: the model-cache PVC.
MODEL_CACHE_STEPS = ("download-data", "embed-items", "synthesize-corpus", "prepare-base-model", "sft-stage1",
                     "evaluate-stage1", "sft-stage2", "evaluate-stage2", "rl-stage3", "merge-checkpoint",
                     "evaluate-stage3")


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


def _training_pod(task: dsl.PipelineTask) -> None:
    """Training pods: a RAM-backed /dev/shm (PyTorch data loaders and NCCL need more than the
    64 MiB default), and retries, which resume from the step's last checkpoint."""
    kubernetes.empty_dir_mount(task, volume_name="dshm", mount_path="/dev/shm", medium="Memory")
    task.set_retry(num_retries=2, backoff_duration="60s")


def build(cfg: Config, until: str | None = None, no_cache: frozenset[str] = frozenset()):
    """The pipeline function for `cfg`, holding the steps up to and including `until`; the steps
    in `no_cache` always execute (caching off), the others may be served from the cache."""
    included = [s.name for s in pipeline_steps(cfg, until)]
    defaults = to_params(cfg)
    Outputs = _outputs_type(included)

    def sidreasoner(
        seed: int = defaults["seed"],
        data: dict = defaults["data"],
        embed: dict = defaults["embed"],
        sid: dict = defaults["sid"],
        teacher: dict = defaults["teacher"],
        model: dict = defaults["model"],
        stage1: dict = defaults["stage1"],
        stage2: dict = defaults["stage2"],
        stage3: dict = defaults["stage3"],
        eval: dict = defaults["eval"],
        export: dict = defaults["export"],
    ):
        tasks: dict[str, dsl.PipelineTask] = {}

        def out(step: str, name: str):
            return tasks[step].outputs[name]

        tasks["download-data"] = download_data(seed=seed, data=data)
        # Network downloads fail transiently; the step resumes partial files on retry.
        tasks["download-data"].set_retry(num_retries=3, backoff_duration="30s", backoff_factor=2.0)

        if "preprocess" in included:
            tasks["preprocess"] = preprocess(seed=seed, data=data, raw=tasks["download-data"].outputs["raw"])

        if "embed-items" in included:
            tasks["embed-items"] = embed_items(seed=seed, embed=embed, dataset=tasks["preprocess"].outputs["dataset"])

        if "quantize-sids" in included:
            tasks["quantize-sids"] = quantize_sids(
                seed=seed, sid=sid,
                dataset=tasks["preprocess"].outputs["dataset"],
                embeddings=tasks["embed-items"].outputs["embeddings"],
            )

        if "synthesize-corpus" in included:
            tasks["synthesize-corpus"] = synthesize_corpus(
                seed=seed, teacher=teacher,
                dataset=tasks["preprocess"].outputs["dataset"],
                sid_index=tasks["quantize-sids"].outputs["sid_index"],
            )

        if "evaluate-baselines" in included:
            tasks["evaluate-baselines"] = evaluate_baselines(
                seed=seed, eval=eval, dataset=out("preprocess", "dataset"), sid_index=out("quantize-sids", "sid_index"))

        if "prepare-base-model" in included:
            tasks["prepare-base-model"] = prepare_base_model(
                seed=seed, model=model, dataset=out("preprocess", "dataset"), corpus=out("synthesize-corpus", "corpus"))

        if "sft-stage1" in included:
            tasks["sft-stage1"] = sft_stage1(
                seed=seed, stage1=stage1, base_model=out("prepare-base-model", "base_model"),
                dataset=out("preprocess", "dataset"), sid_index=out("quantize-sids", "sid_index"),
                corpus=out("synthesize-corpus", "corpus"))

        if "evaluate-stage1" in included:
            tasks["evaluate-stage1"] = evaluate_stage1(
                seed=seed, eval=eval, stage1_model=out("sft-stage1", "stage1_model"),
                dataset=out("preprocess", "dataset"), sid_index=out("quantize-sids", "sid_index"))

        if "sft-stage2" in included:
            tasks["sft-stage2"] = sft_stage2(
                seed=seed, stage2=stage2, stage1_model=out("sft-stage1", "stage1_model"),
                dataset=out("preprocess", "dataset"), sid_index=out("quantize-sids", "sid_index"),
                corpus=out("synthesize-corpus", "corpus"))

        if "evaluate-stage2" in included:
            tasks["evaluate-stage2"] = evaluate_stage2(
                seed=seed, eval=eval, stage2_model=out("sft-stage2", "stage2_model"),
                dataset=out("preprocess", "dataset"), sid_index=out("quantize-sids", "sid_index"))

        if "rl-stage3" in included:
            tasks["rl-stage3"] = rl_stage3(
                seed=seed, stage3=stage3, stage2_model=out("sft-stage2", "stage2_model"),
                dataset=out("preprocess", "dataset"), sid_index=out("quantize-sids", "sid_index"))

        if "merge-checkpoint" in included:
            tasks["merge-checkpoint"] = merge_checkpoint(
                seed=seed, stage3=stage3, stage3_checkpoint=out("rl-stage3", "stage3_checkpoint"),
                stage2_model=out("sft-stage2", "stage2_model"))

        if "evaluate-stage3" in included:
            tasks["evaluate-stage3"] = evaluate_stage3(
                seed=seed, eval=eval, stage3_model=out("merge-checkpoint", "stage3_model"),
                dataset=out("preprocess", "dataset"), sid_index=out("quantize-sids", "sid_index"))

        if "report" in included:
            tasks["report"] = report(
                seed=seed, eval=eval, baselines=out("evaluate-baselines", "baselines"),
                stage1_eval=out("evaluate-stage1", "stage1_eval"), stage2_eval=out("evaluate-stage2", "stage2_eval"),
                stage3_eval=out("evaluate-stage3", "stage3_eval"),
                dataset=out("preprocess", "dataset"), sid_index=out("quantize-sids", "sid_index"))

        if "export-model" in included:
            tasks["export-model"] = export_model(seed=seed, export=export,
                                                 stage3_model=out("merge-checkpoint", "stage3_model"))

        for name in ("sft-stage1", "sft-stage2", "rl-stage3"):
            if name in tasks:
                _training_pod(tasks[name])
        for name, task in tasks.items():
            _credentials(task, STEP_CREDENTIALS.get(name, ()))
            _resources(task, cfg.cluster.resources.get(name, StepResources()))
            if cfg.cluster.model_cache_pvc and name in MODEL_CACHE_STEPS:
                _model_cache(task, cfg.cluster)
        for name, task in tasks.items():
            # export-model writes outside the artifact store: a cache hit would skip the upload.
            task.set_caching_options(enable_caching=name not in no_cache and name not in SIDE_EFFECT_STEPS)
        return Outputs(**{
            output_name(name, artifact): task.outputs[artifact]
            for name, task in tasks.items()
            for artifact in artifact_names(name)
        })

    # The set of outputs depends on `until`, so the return type is attached here.
    sidreasoner.__signature__ = inspect.signature(sidreasoner).replace(return_annotation=Outputs)
    return dsl.pipeline(
        name=PIPELINE_NAME,
        description="SIDReasoner: LLM reasoning over Semantic IDs for generative recommendation",
    )(sidreasoner)
