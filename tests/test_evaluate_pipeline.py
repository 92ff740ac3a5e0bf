"""The evaluate-only pipeline (`--pipeline evaluate`): a model trained elsewhere, evaluated on the run's data
and SIDs next to the baselines, with no training step."""

import json
import subprocess
import sys

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from sidreasoner import config
from sidreasoner.artifacts import ModelFolder, ReportPages
from sidreasoner.errors import ConfigError
from sidreasoner.eval.trained_model import SidTokensMissing, load_model, missing_tokens_message
from sidreasoner.pipelines.compile import compile_pipeline
from sidreasoner.steps import ALL_STEPS, EVALUATE_STEPS, PIPELINES, STEP_NAMES, STEPS

from .test_compile import check_tasks_follow_the_registry

EVALUATE_TASKS = [
    "download-data",
    "preprocess",
    "embed-items",
    "quantize-sids",
    "evaluate-baselines",
    "load-model",
    "evaluate-model",
    "report-model",
]
TRAINING_STEPS = {
    "synthesize-corpus",
    "prepare-base-model",
    "sft-stage1",
    "sft-stage2",
    "rl-stage3",
    "merge-checkpoint",
}
# tiny_artifacts' SID index: codes a_0..a_1, b_0..b_3, c_0..c_3.
SID_TOKENS = 10


def sidreasoner(*args):
    return subprocess.run([sys.executable, "-m", "sidreasoner.cli", *args], capture_output=True, text=True)


def test_the_registries_share_steps_by_name():
    assert list(EVALUATE_STEPS) == EVALUATE_TASKS
    assert all(EVALUATE_STEPS[name] is STEPS[name] for name in EVALUATE_TASKS[:5])
    assert PIPELINES == {"train": STEPS, "evaluate": EVALUATE_STEPS}
    assert STEP_NAMES == (*STEPS, "load-model", "evaluate-model", "report-model") == tuple(ALL_STEPS)
    assert EVALUATE_STEPS["evaluate-model"].function == STEPS["evaluate-stage3"].function
    assert EVALUATE_STEPS["evaluate-model"].component == STEPS["evaluate-stage3"].component == "evaluate"
    # A config may size and re-run the new steps like any other.
    cfg = config.load("demo", ["cluster.resources.evaluate-model.gpus=1", "generations.load-model=3"])
    assert cfg.cluster.resources["evaluate-model"].gpus == 1 and cfg.generations == {"load-model": 3}


@pytest.fixture(scope="module")
def office_spec(tmp_path_factory):
    cfg = config.load("office", ["model.base=s3://models/sidreasoner/office"])
    path = compile_pipeline(cfg, tmp_path_factory.mktemp("c") / "evaluate.yaml", pipeline="evaluate")
    return next(yaml.safe_load_all(path.read_text()))


def test_compiled_evaluate_pipeline_has_no_training_step(office_spec):
    tasks = office_spec["root"]["dag"]["tasks"]
    assert office_spec["pipelineInfo"]["name"] == "sidreasoner-evaluate"
    assert sorted(tasks) == sorted(EVALUATE_TASKS)
    assert not TRAINING_STEPS & set(tasks)
    check_tasks_follow_the_registry(office_spec, EVALUATE_STEPS)
    # The report reads the model's evaluation, which reads the model load-model resolved.
    report = tasks["report-model"]["inputs"]["artifacts"]
    assert report["model_eval"]["taskOutputArtifact"] == {
        "producerTask": "evaluate-model",
        "outputArtifactKey": "evaluation",
    }
    assert report["baselines"]["taskOutputArtifact"]["producerTask"] == "evaluate-baselines"
    model = tasks["evaluate-model"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"]
    assert model == {"producerTask": "load-model", "outputArtifactKey": "trained_model"}
    assert sorted(tasks["load-model"]["dependentTasks"]) == ["quantize-sids"]
    # The paper presets give the model's evaluation one GPU, as each stage's.
    resources = office_spec["deploymentSpec"]["executors"]["exec-evaluate-model"]["container"]["resources"]
    assert resources["accelerator"]["resourceCount"] == "1"


def test_the_training_pipeline_stays_the_default(tmp_path):
    path = compile_pipeline(config.load("demo"), tmp_path / "train.yaml", until="quantize-sids")
    spec = next(yaml.safe_load_all(path.read_text()))
    assert spec["pipelineInfo"]["name"] == "sidreasoner"
    assert sorted(spec["root"]["dag"]["tasks"]) == sorted(EVALUATE_TASKS[:4])


def test_evaluate_pipeline_refuses_the_untrained_tiny_model(tmp_path):
    with pytest.raises(ConfigError, match="model.base=tiny is the built-in untrained model"):
        compile_pipeline(config.load("demo"), tmp_path / "e.yaml", pipeline="evaluate")
    assert not (tmp_path / "e.yaml").exists()
    result = sidreasoner("run", "--pipeline", "evaluate", "--pipeline-root", str(tmp_path / "root"))
    assert result.returncode == 2
    assert "model.base=tiny is the built-in untrained model" in result.stderr
    assert not (tmp_path / "root").exists()


def test_unknown_pipeline_and_step_name_the_allowed_ones(tmp_path):
    result = sidreasoner("compile", "--pipeline", "serve", "-o", str(tmp_path / "p.yaml"))
    assert result.returncode == 2
    assert "unknown pipeline 'serve'. Allowed: train, evaluate" in result.stderr
    result = sidreasoner(
        "run", "--pipeline", "evaluate", "--until", "sft-stage1", "--set", "model.base=/m", "--pipeline-root", "r"
    )
    assert result.returncode == 2
    assert f"unknown step 'sft-stage1'. Allowed: {', '.join(EVALUATE_TASKS)}" in result.stderr


# ---------------------------------------------------------------- load-model


@pytest.fixture(scope="module")
def model_lacking_tokens(tmp_path_factory, tiny_artifacts, build_tiny_model):
    """A tiny model whose tokenizer has only codes 0 and 1 of each level: <b_2>, <b_3>, <c_2>, <c_3> missing."""
    out = tmp_path_factory.mktemp("lacking") / "model"
    build_tiny_model(out, np.array(tiny_artifacts["codes"]), codebook=2)
    return out


def test_load_model_names_the_sid_tokens_its_tokenizer_lacks(tmp_path, tiny_artifacts, model_lacking_tokens):
    cfg = config.load("demo", [f"model.base={model_lacking_tokens}"])
    with pytest.raises(SidTokensMissing) as raised:
        load_model(cfg, tiny_artifacts["sid_index"], tmp_path / "out")
    assert str(raised.value).startswith(
        f"model.base {model_lacking_tokens}: its tokenizer lacks 4 of the SID index's {SID_TOKENS} tokens: "
        "<b_2>, <b_3>, <c_2>, <c_3>. "
    )
    assert not (tmp_path / "out").exists()


def test_a_long_list_of_missing_tokens_is_cut():
    missing = [f"<c_{i}>" for i in range(25)]
    message = missing_tokens_message("Qwen/Qwen3-1.7B", missing, 768)
    shown = ", ".join(missing[:20])
    assert message.startswith(
        f"model.base Qwen/Qwen3-1.7B: its tokenizer lacks 25 of the SID index's 768 tokens: {shown}, ..."
    )


def test_load_model_resolves_a_folder_without_changing_it(tmp_path, tiny_artifacts, tiny_sid_model):
    cfg = config.load("demo", [f"model.base={tiny_sid_model['dir']}"])
    metrics = load_model(cfg, tiny_artifacts["sid_index"], tmp_path / "out")
    assert metrics["sid_tokens"] == SID_TOKENS
    assert metrics["vocab_size"] == len(tiny_sid_model["tok"])
    out = ModelFolder.at(tmp_path / "out")
    assert out.base_model()["source"] == str(tiny_sid_model["dir"])
    weights, original = load_file(out.file("model.safetensors")), load_file(tiny_sid_model["dir"] / "model.safetensors")
    assert weights.keys() == original.keys()
    assert all(weights[k].dtype == original[k].dtype and weights[k].equal(original[k]) for k in weights)


def test_step_command_load_model(tmp_path, tiny_artifacts, tiny_sid_model, model_lacking_tokens):
    ok = sidreasoner(
        "step", "load-model", "--sid-index", str(tiny_artifacts["sid_index"]), "--trained-model", str(tmp_path / "m"),
        "--set", f"model.base={tiny_sid_model['dir']}",
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["sid_tokens"] == SID_TOKENS
    assert ModelFolder.at(tmp_path / "m").is_model()
    refused = sidreasoner(
        "step", "load-model", "--sid-index", str(tiny_artifacts["sid_index"]), "--trained-model", str(tmp_path / "n"),
        "--set", f"model.base={model_lacking_tokens}",
    )  # fmt: skip
    assert refused.returncode == 1
    assert "error: load-model: model.base" in refused.stderr and "<b_2>, <b_3>, <c_2>, <c_3>" in refused.stderr


# ---------------------------------------------------------------- acceptance

TIMING = ("_seconds", "_users_per_s")


def untimed(keys) -> list[str]:
    return sorted(k for k in keys if not k.endswith(TIMING))


@pytest.mark.slow
def test_evaluating_the_demo_stage3_model_gives_its_metrics(demo_run, tmp_path):
    """`run --pipeline evaluate` on the demo's merged Stage 3 model: the same metrics as the demo's own
    evaluation of it (the same data, SIDs and decoding), timing aside."""
    from sidreasoner.pipelines.local import run_local

    stage3_model = demo_run["tasks"]["merge-checkpoint"]["outputs"]["stage3_model"]
    cfg = config.load("demo", [f"model.base={stage3_model}"])
    run = run_local(cfg, tmp_path / "root", pipeline="evaluate")
    assert run["pipeline"] == "sidreasoner-evaluate"
    assert list(run["tasks"]) == EVALUATE_TASKS
    assert all(task["status"] == "SUCCEEDED" for task in run["tasks"].values())
    ours, theirs = run["tasks"]["evaluate-model"]["metrics"], demo_run["tasks"]["evaluate-stage3"]["metrics"]
    shared = untimed(ours.keys() & theirs.keys())
    assert len(shared) > 20 and "test_think_hr@10" in shared
    assert {k: ours[k] for k in shared} == {k: theirs[k] for k in shared}
    ours, theirs = run["tasks"]["evaluate-baselines"]["metrics"], demo_run["tasks"]["evaluate-baselines"]["metrics"]
    assert {k: ours[k] for k in untimed(ours)} == {k: theirs[k] for k in untimed(theirs)}
    theirs = demo_run["tasks"]["evaluate-stage3"]["metrics"]
    report = run["tasks"]["report-model"]
    assert report["metrics"]["model_think_hr@10"] == theirs["test_think_hr@10"]
    assert "the model" in ReportPages.at(report["outputs"]["report"]).headline()["text"]
