"""The SIDReasoner DAG (DESIGN §1): read it top to bottom like the step table.

Pipeline parameters are the config sections (`seed`, `data`, `embed`, `sid`), their defaults the
preset's values. Each task receives only the sections it reads, so its cache key covers exactly
those. Steps not built yet are absent, not placeholders.
"""


import inspect
from typing import NamedTuple

from kfp import dsl, kubernetes
from kfp.dsl import Dataset, Metrics

from sidreasoner.components.data import download_data, preprocess
from sidreasoner.components.sid import embed_items, quantize_sids
from sidreasoner.components.teacher import synthesize_corpus
from sidreasoner.config import Config, to_params
from sidreasoner.steps import STEPS, steps_until

PIPELINE_NAME = "sidreasoner"

# Kubernetes Secret holding the teacher's API key (key `api-key`), mapped to the variable the
# teacher reads. Optional: the template teacher and in-cluster vLLM servers need no key.
TEACHER_SECRET = "sidreasoner-teacher"
TEACHER_KEY_ENV = "SIDREASONER_TEACHER_API_KEY"


def output_name(step: str, output: str) -> str:
    """Name of a step's artifact among the pipeline's outputs, e.g. preprocess_dataset."""
    return f"{step.replace('-', '_')}_{output}"


def _outputs_type(included: list[str]) -> type:
    fields = []
    for name in included:
        fields += [(output_name(name, out), Dataset) for out in STEPS[name].outputs]
        fields.append((output_name(name, "metrics"), Metrics))
    return NamedTuple("Outputs", fields)


def build(cfg: Config, until: str | None = None, no_cache: frozenset[str] = frozenset()):
    """The pipeline function for `cfg`, holding the steps up to and including `until`; the steps
    in `no_cache` always execute (caching off), the others may be served from the cache."""
    included = [s.name for s in steps_until(until)]
    defaults = to_params(cfg)
    Outputs = _outputs_type(included)

    def sidreasoner(
        seed: int = defaults["seed"],
        data: dict = defaults["data"],
        embed: dict = defaults["embed"],
        sid: dict = defaults["sid"],
        teacher: dict = defaults["teacher"],
    ):
        tasks: dict[str, dsl.PipelineTask] = {}

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
            kubernetes.use_secret_as_env(tasks["synthesize-corpus"], secret_name=TEACHER_SECRET,
                                         secret_key_to_env={"api-key": TEACHER_KEY_ENV}, optional=True)

        for name, task in tasks.items():
            task.set_caching_options(enable_caching=name not in no_cache)
        return Outputs(**{
            output_name(name, out): task.outputs[out]
            for name, task in tasks.items()
            for out in (*STEPS[name].outputs, "metrics")
        })

    # The set of outputs depends on `until`, so the return type is attached here.
    sidreasoner.__signature__ = inspect.signature(sidreasoner).replace(return_annotation=Outputs)
    return dsl.pipeline(
        name=PIPELINE_NAME,
        description="SIDReasoner: LLM reasoning over Semantic IDs for generative recommendation",
    )(sidreasoner)
