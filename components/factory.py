"""The component for each registered step: its kind's function (named in the registry),
renamed to the step so that its task and its executor carry the step's name, in the step's image."""

from __future__ import annotations

import dataclasses
from typing import Any

from kfp.dsl.python_component import PythonComponent

from sidreasoner.components import condition, data, evaluate, serve, sid, teacher, train
from sidreasoner.components.images import IMAGES
from sidreasoner.config import ClusterConfig
from sidreasoner.serve.deploy import serving_pod
from sidreasoner.steps import Image, Step

KINDS: dict[str, PythonComponent] = {
    component.python_func.__name__: component
    for component in (
        data.download_data,
        data.preprocess,
        sid.embed_items,
        sid.quantize_sids,
        teacher.synthesize_corpus,
        evaluate.evaluate_baselines,
        train.prepare_base_model,
        train.sft,
        evaluate.evaluate,
        train.rl_stage3,
        train.merge_checkpoint,
        evaluate.report,
        train.export_model,
        serve.deploy_model,
        evaluate.load_model,
        evaluate.report_model,
    )
}


def compile_time_arguments(step: Step, cluster: ClusterConfig) -> dict[str, Any]:
    """Arguments a step's component takes from the compile-time cluster section and images, not from a run
    parameter: deploy-model's `serving_pod` (the InferenceService's predictor pod)."""
    if step.component == "deploy_model":
        return {"serving_pod": serving_pod(cluster, IMAGES).to_json()}
    return {}


def _renamed(kind: PythonComponent, name: str, image: str) -> PythonComponent:
    spec = kind.component_spec
    container = dataclasses.replace(spec.implementation.container, image=image)
    renamed = dataclasses.replace(
        spec, name=name, implementation=dataclasses.replace(spec.implementation, container=container)
    )
    return PythonComponent(component_spec=renamed, python_func=kind.python_func)


def condition_for(step: Step) -> PythonComponent:
    """The task that decides at run time whether `step` (one with `enabled_by`) runs:
    `<step>-enabled`, in the CPU image."""
    return _renamed(condition.step_enabled, f"{step.name}-enabled", IMAGES["cpu"])


def component_for(step: Step, image: Image | None = None) -> PythonComponent:
    """The component that runs `step`: named after it, in its image (`image` overrides the
    registry's, e.g. the training image for a pod the cluster section gives GPUs)."""
    if step.component not in KINDS:
        raise KeyError(
            f"step {step.name}: no component '{step.component}' in sidreasoner.components (known: {', '.join(KINDS)})"
        )
    return _renamed(KINDS[step.component], step.name, IMAGES[image or step.image])
