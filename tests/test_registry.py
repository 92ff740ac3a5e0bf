"""The step registry is the one description of a step: the CLI, the components, the pipeline and
the compiled YAML all follow it, and a new step needs no other edit when its kind of work exists."""

import dataclasses
import inspect

import pytest
import yaml
from typer.testing import CliRunner

from sidreasoner import config
from sidreasoner.artifacts import Evaluation
from sidreasoner.cli import step_commands
from sidreasoner.components.factory import KINDS, compile_time_arguments, component_for
from sidreasoner.pipelines.pipeline import build
from sidreasoner.steps import (
    ALL_STEPS,
    DATASET,
    SID_INDEX,
    STEPS,
    Report,
    Step,
    check_registry,
    downstream,
    pipeline_steps,
)

from .test_compile import check_tasks_follow_the_registry

ARTIFACT_TITLES = {
    "Dataset": "system.Dataset",
    "Model": "system.Model",
    "Metrics": "system.Metrics",
    "HTML": "system.HTML",
    "Markdown": "system.Markdown",
}


@pytest.mark.parametrize("name", list(ALL_STEPS))
def test_each_component_takes_what_its_step_declares(name):
    step = ALL_STEPS[name]
    spec = component_for(step).component_spec
    input_kinds = {}
    for folder in step.inputs:
        producer, output = step.source(folder)
        input_kinds[folder] = ALL_STEPS[producer].artifacts()[output]
    assert {k: v.type for k, v in spec.inputs.items() if k in step.inputs} == {
        k: ARTIFACT_TITLES[kind] + "@0.0.1" for k, kind in input_kinds.items()
    }
    declared = {"step", *step.sections, *step.inputs, *compile_time_arguments(step, config.ClusterConfig())}
    assert declared <= set(spec.inputs)
    assert {k for k, v in spec.inputs.items() if not v.optional} <= declared
    # The rest are other stages' config sections that a shared component may receive, and the
    # cache-key-only arguments every task may get, and the compiled values of its sections (all
    # optional).
    others = set(spec.inputs) - declared
    every_task = {"code_version", "generation", "compiled_sections"}
    assert every_task <= others
    assert all(spec.inputs[k].optional and k in {*config.Config.model_fields, *every_task} for k in others)
    assert {k: v.type for k, v in spec.outputs.items()} == {
        k: ARTIFACT_TITLES[kind] + "@0.0.1" for k, kind in step.artifacts().items()
    }
    assert spec.name == name
    assert spec.implementation.container.image.split("/")[-1].startswith(f"sidreasoner-{step.image}")


def test_one_component_per_kind_of_work():
    kinds = [step.component for step in ALL_STEPS.values()]
    assert set(kinds) == set(KINDS)
    assert kinds.count("evaluate") == 4 and kinds.count("sft") == 2
    assert inspect.getsource(KINDS["evaluate"].python_func).count("run_component(step, locals())") == 1


def test_registry_refuses_inputs_no_earlier_step_writes():
    late = Step("early", "reads what comes later", "evaluate", "m:f", ("seed",), inputs={"model": "sft-stage1.model"})
    with pytest.raises(ValueError, match="input 'model' reads 'sft-stage1.model', which no earlier step outputs"):
        check_registry({"early": late, **STEPS})
    stray = dataclasses.replace(STEPS["sft-stage1"], reports=(Report("curve", "nowhere", "c.html"),))
    with pytest.raises(ValueError, match="report 'curve' lies in 'nowhere', not an output"):
        check_registry({**STEPS, "sft-stage1": stray})


def test_registry_refuses_a_config_section_named_like_a_folder():
    # The sft component's output is `model`: it cannot also receive the `model` config section.
    reads_model = dataclasses.replace(STEPS["sft-stage1"], sections=("seed", "stage1", "model"))
    with pytest.raises(ValueError, match="step sft-stage1: model is both a config section and a folder"):
        check_registry({**STEPS, "sft-stage1": reads_model})


# A step a contributor might add: the evaluation of the Stage 1 model on another split, a kind of
# work that exists (the `evaluate` component), so nothing but the registry changes.
EXTRA = Step(
    "evaluate-stage1-again",
    "evaluate the Stage 1 model once more",
    "evaluate",
    "sidreasoner.eval.evaluate:evaluate",
    ("seed", "eval"),
    inputs={"model": "sft-stage1.model", "dataset": DATASET, "sid_index": SID_INDEX},
    outputs={"evaluation": Evaluation},
    image="train",
    model_cache=True,
    display_name="Stage 1 again",
)


@pytest.fixture(scope="module")
def extended():
    names = list(STEPS)
    at = names.index("evaluate-stage1") + 1
    registry = {n: STEPS[n] for n in names[:at]} | {EXTRA.name: EXTRA} | {n: STEPS[n] for n in names[at:]}
    check_registry(registry)
    return registry


def test_a_new_step_gets_its_cli_command(extended):
    result = CliRunner().invoke(step_commands(extended), [EXTRA.name, "--help"])
    assert result.exit_code == 0, result.output
    assert "--model" in result.output and "--evaluation" in result.output and "sft-stage1's model" in result.output


def test_a_new_step_joins_the_pipeline_and_the_compiled_yaml(extended, tmp_path):
    from kfp import compiler

    cfg = config.load("office")
    path = tmp_path / "p.yaml"
    compiler.Compiler().compile(build(cfg, registry=extended), package_path=str(path))
    pipeline, platform = yaml.safe_load_all(path.read_text())
    tasks = pipeline["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(s.name for s in pipeline_steps(cfg, registry=extended))
    assert sorted(tasks[EXTRA.name]["dependentTasks"]) == ["preprocess", "quantize-sids", "sft-stage1"]
    assert tasks[EXTRA.name]["taskInfo"]["name"] == "Stage 1 again"
    check_tasks_follow_the_registry(pipeline, extended)  # the same checks the compile tests run
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert k8s[f"exec-{EXTRA.name}"]["pvcMount"][0]["constant"] == "sidreasoner-model-cache"
    assert downstream("sft-stage1", extended)[:3] == ["sft-stage1", "evaluate-stage1", EXTRA.name]


def test_a_new_kind_of_work_names_the_one_place_to_add_it():
    odd = dataclasses.replace(EXTRA, name="summarize", component="summarize")
    with pytest.raises(KeyError, match="no component 'summarize' in sidreasoner.components"):
        component_for(odd)
