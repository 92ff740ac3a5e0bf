import os
import subprocess
import sys

import pytest
import yaml

from sidreasoner import config
from sidreasoner.components.images import CPU_IMAGE
from sidreasoner.pipelines.compile import compile_pipeline

STEP_NAMES = ["download-data", "preprocess", "embed-items", "quantize-sids", "synthesize-corpus"]


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = compile_pipeline(config.load("office"), tmp_path_factory.mktemp("c") / "pipeline.yaml")
    return next(yaml.safe_load_all(path.read_text()))  # the pipeline spec; platform spec follows


def test_tasks_are_the_dag_steps_in_order(spec):
    tasks = spec["root"]["dag"]["tasks"]
    assert sorted(tasks) == sorted(STEP_NAMES)
    assert tasks["preprocess"]["dependentTasks"] == ["download-data"]
    assert tasks["embed-items"]["dependentTasks"] == ["preprocess"]
    assert sorted(tasks["quantize-sids"]["dependentTasks"]) == ["embed-items", "preprocess"]
    assert sorted(tasks["synthesize-corpus"]["dependentTasks"]) == ["preprocess", "quantize-sids"]


def test_every_task_caches_and_download_retries(spec):
    tasks = spec["root"]["dag"]["tasks"]
    assert all(t["cachingOptions"] == {"enableCache": True} for t in tasks.values())
    assert tasks["download-data"]["retryPolicy"]["maxRetryCount"] == 3


def test_every_executor_uses_our_image_and_installs_nothing(spec):
    executors = spec["deploymentSpec"]["executors"]
    assert len(executors) == len(STEP_NAMES)
    for ex in executors.values():
        container = ex["container"]
        assert container["image"] == CPU_IMAGE
        assert "pip install" not in " ".join(container["command"] + container.get("args", []))


def test_parameters_default_to_the_preset(spec):
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {"seed", "data", "embed", "sid", "teacher"}
    data = params["data"]["defaultValue"]
    assert data["category"] == "Office_Products"
    assert data["time_window"] == {"start": "2016-10-01", "end": "2018-11-30"}
    assert params["sid"]["defaultValue"]["codebook_size"] == 256
    assert params["embed"]["defaultValue"]["model"] == "Qwen/Qwen3-Embedding-4B"


def test_outputs_are_typed_artifacts(spec):
    outputs = spec["components"]["comp-quantize-sids"]["outputDefinitions"]["artifacts"]
    assert outputs["sid_index"]["artifactType"]["schemaTitle"] == "system.Dataset"
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"


def test_image_override_from_environment(tmp_path):
    out = tmp_path / "p.yaml"
    env = {**os.environ, "SIDREASONER_CPU_IMAGE": "registry.example/sid-cpu@sha256:" + "a" * 64}
    subprocess.run([sys.executable, "-m", "sidreasoner.cli", "compile", "-o", str(out)], env=env, check=True)
    spec = next(yaml.safe_load_all(out.read_text()))
    images = {ex["container"]["image"] for ex in spec["deploymentSpec"]["executors"].values()}
    assert images == {"registry.example/sid-cpu@sha256:" + "a" * 64}


def test_teacher_key_is_a_secret_reference_never_a_value(tmp_path, monkeypatch):
    secret = "sk-test-" + "z" * 24
    monkeypatch.setenv("SIDREASONER_TEACHER_API_KEY", secret)
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    cfg = config.load("office", ["teacher.kind=openai", "teacher.base_url=http://teacher.svc:8000/v1"])
    text = compile_pipeline(cfg, tmp_path / "p.yaml").read_text()
    assert secret not in text
    spec = list(yaml.safe_load_all(text))
    env = spec[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-synthesize-corpus"]["secretAsEnv"]
    assert env[0]["secretName"] == "sidreasoner-teacher"
    assert env[0]["optional"] is True
    assert env[0]["keyToEnv"] == [{"envVar": "SIDREASONER_TEACHER_API_KEY", "secretKey": "api-key"}]
