import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from sidreasoner import __version__, config
from sidreasoner.components.factory import compile_time_arguments
from sidreasoner.components.images import CPU_IMAGE, DOCKERFILES, IMAGES, TRAIN_IMAGE
from sidreasoner.pipelines.compile import compile_pipeline
from sidreasoner.pipelines.pipeline import STEP_LABEL
from sidreasoner.provenance import code_version
from sidreasoner.steps import STEPS, pipeline_steps

from .helpers.presets import GENERAL_DATA

# The compiled office DAG: every registered step; export-model behind its run-time condition.
OFFICE_STEPS = [s.name for s in pipeline_steps(config.load("office"), conditional=True)]
ROOT = Path(__file__).resolve().parents[1]


def step_tasks(spec, dag=None) -> dict:
    """The step tasks of a compiled pipeline, also those inside condition branches, nested or not (not the
    branches themselves, nor the tasks that decide them)."""
    tasks = {}
    for name, task in (dag or spec["root"]["dag"])["tasks"].items():
        if name.startswith("condition-"):
            tasks.update(step_tasks(spec, spec["components"][task["componentRef"]["name"]]["dag"]))
        elif not name.endswith("-enabled"):
            tasks[name] = task
    return tasks


def condition_path(spec, task_name: str, dag=None) -> list[str] | None:
    """The tasks deciding the condition branches around `task_name`, outermost first (None: not in the DAG)."""
    tasks = (dag or spec["root"]["dag"])["tasks"]
    if task_name in tasks:
        return []
    for name, task in tasks.items():
        if name.startswith("condition-"):
            inner = condition_path(spec, task_name, spec["components"][task["componentRef"]["name"]]["dag"])
            if inner is not None:
                gate = next(t for t in task["dependentTasks"] if t.endswith("-enabled"))
                return [gate, *inner]
    return None


def step_executors(spec) -> dict:
    return {name: ex for name, ex in spec["deploymentSpec"]["executors"].items() if not name.endswith("-enabled")}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = compile_pipeline(config.load("office", [GENERAL_DATA]), tmp_path_factory.mktemp("c") / "pipeline.yaml")
    return next(yaml.safe_load_all(path.read_text()))  # the pipeline spec; platform spec follows


def expected_image(executor, step):
    """The registry's image, but the training image for a pod that requests accelerators."""
    return IMAGES["train" if "accelerator" in executor["container"].get("resources", {}) else step.image]


def check_tasks_follow_the_registry(spec, registry):
    """Each registered step in the DAG is one task, named after it, wired to its inputs' producers,
    in its image, with its own config sections and the code version as parameters."""
    tasks = step_tasks(spec)
    executors = step_executors(spec)
    for name, task in tasks.items():
        step = registry[name]
        producers = {step.source(i)[0] for i in step.inputs}
        if not step.enabled_by:  # a step behind a condition gets its inputs through the branch
            assert sorted(task.get("dependentTasks", [])) == sorted(producers), name
            artifacts = task["inputs"].get("artifacts", {})
            assert {
                k: (a["taskOutputArtifact"]["producerTask"], a["taskOutputArtifact"]["outputArtifactKey"])
                for k, a in artifacts.items()
            } == {i: step.source(i) for i in step.inputs}, name
        assert set(task["inputs"]["parameters"]) == {
            "step",
            "code_version",
            "generation",
            "compiled_sections",
            *step.sections,
            *compile_time_arguments(step, config.ClusterConfig()),
        }, name
        assert task["inputs"]["parameters"]["code_version"] == {"runtimeValue": {"constant": code_version()}}, name
        channel = f"generation_{name.replace('-', '_')}"  # inside a condition branch: the branch's channel
        assert task["inputs"]["parameters"]["generation"]["componentInputParameter"] in {
            channel,
            f"pipelinechannel--{channel}",
        }, name
        assert task["taskInfo"]["name"] == step.display_name
        assert executors[f"exec-{name}"]["container"]["image"] == expected_image(executors[f"exec-{name}"], step), name
        outputs = spec["components"][f"comp-{name}"]["outputDefinitions"]["artifacts"]
        assert {k: v["artifactType"]["schemaTitle"] for k, v in outputs.items()} == {
            k: f"system.{kind}" for k, kind in step.artifacts().items()
        }, name


def test_tasks_are_the_registered_steps(spec):
    assert sorted(step_tasks(spec)) == sorted(OFFICE_STEPS)
    check_tasks_follow_the_registry(spec, STEPS)


def test_tasks_are_the_dag_steps_in_order(spec):
    tasks = step_tasks(spec)
    assert tasks["preprocess"]["dependentTasks"] == ["download-data"]
    assert tasks["embed-items"]["dependentTasks"] == ["preprocess"]
    assert sorted(tasks["quantize-sids"]["dependentTasks"]) == ["embed-items", "preprocess"]
    assert sorted(tasks["synthesize-corpus"]["dependentTasks"]) == ["preprocess", "quantize-sids"]
    assert sorted(tasks["prepare-base-model"]["dependentTasks"]) == ["preprocess", "synthesize-corpus"]
    assert sorted(tasks["sft-stage1"]["dependentTasks"]) == [
        "prepare-base-model",
        "preprocess",
        "quantize-sids",
        "synthesize-corpus",
    ]
    assert "sft-stage1" in tasks["sft-stage2"]["dependentTasks"]
    assert sorted(tasks["evaluate-stage2"]["dependentTasks"]) == ["preprocess", "quantize-sids", "sft-stage2"]
    assert sorted(tasks["rl-stage3"]["dependentTasks"]) == [
        "preprocess",
        "quantize-sids",
        "sft-stage2",
        "synthesize-corpus",
    ]
    assert sorted(tasks["merge-checkpoint"]["dependentTasks"]) == ["rl-stage3", "sft-stage2"]
    assert sorted(tasks["evaluate-stage3"]["dependentTasks"]) == ["merge-checkpoint", "preprocess", "quantize-sids"]
    merge_inputs = tasks["merge-checkpoint"]["inputs"]["artifacts"]
    assert merge_inputs["stage3_checkpoint"]["taskOutputArtifact"] == {
        "outputArtifactKey": "stage3_checkpoint",
        "producerTask": "rl-stage3",
    }
    assert merge_inputs["stage2_model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "model",
        "producerTask": "sft-stage2",
    }
    assert tasks["evaluate-stage3"]["inputs"]["artifacts"]["model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "stage3_model",
        "producerTask": "merge-checkpoint",
    }
    assert tasks["report"]["inputs"]["artifacts"]["stage2_eval"]["taskOutputArtifact"] == {
        "outputArtifactKey": "evaluation",
        "producerTask": "evaluate-stage2",
    }
    assert sorted(tasks["report"]["dependentTasks"]) == [
        "evaluate-baselines",
        "evaluate-stage1",
        "evaluate-stage2",
        "evaluate-stage3",
        "preprocess",
        "quantize-sids",
    ]


def test_every_task_caches_and_download_retries(spec):
    tasks = step_tasks(spec)
    assert all(t["cachingOptions"] == {"enableCache": True} for n, t in tasks.items() if not STEPS[n].side_effects)
    assert tasks["export-model"]["cachingOptions"] == {}  # a cache hit would skip the upload
    assert tasks["download-data"]["retryPolicy"] == {
        "backoffDuration": "30s",
        "backoffFactor": 2.0,
        "backoffMaxDuration": "600s",
        "maxRetryCount": 3,
    }
    # A teacher endpoint down for a while: the retry resumes from the response cache.
    assert tasks["synthesize-corpus"]["retryPolicy"] == {
        "backoffDuration": "120s",
        "backoffFactor": 2.0,
        "backoffMaxDuration": "600s",
        "maxRetryCount": 2,
    }
    retrying = {n for n, t in tasks.items() if "retryPolicy" in t}
    assert retrying == {"download-data", "synthesize-corpus", "sft-stage1", "sft-stage2", "rl-stage3"}


# office's tasks in the training image: the registry's "train" steps, and embed-items and quantize-sids for
# their GPUs.
OFFICE_TRAIN_IMAGE_STEPS = {
    "embed-items",
    "quantize-sids",
    "prepare-base-model",
    "sft-stage1",
    "evaluate-stage1",
    "sft-stage2",
    "evaluate-stage2",
    "rl-stage3",
    "merge-checkpoint",
    "evaluate-stage3",
}


def test_every_executor_uses_our_image_and_installs_nothing(spec):
    executors = step_executors(spec)
    assert len(executors) == len(OFFICE_STEPS)
    for name, ex in executors.items():
        container = ex["container"]
        step = name.removeprefix("exec-")
        assert container["image"] == (TRAIN_IMAGE if step in OFFICE_TRAIN_IMAGE_STEPS else CPU_IMAGE), step
        assert "pip install" not in " ".join(container["command"] + container.get("args", []))
    # The evaluation and SFT tasks share one component function each, called per stage.
    functions = {name: ex["container"]["args"][-1] for name, ex in executors.items()}
    assert functions["exec-evaluate-stage1"] == functions["exec-evaluate-stage3"] == "evaluate"
    assert functions["exec-sft-stage1"] == functions["exec-sft-stage2"] == "sft"


def test_every_image_has_a_dockerfile_with_the_project_pins(spec):
    torch_pin = re.search(r'"torch==([^"]+)"', (ROOT / "pyproject.toml").read_text()).group(1)
    images = {ex["container"]["image"] for ex in step_executors(spec).values()}
    assert images == set(DOCKERFILES)
    for image in images:
        dockerfile = (ROOT / DOCKERFILES[image]).read_text()
        instructions = "\n".join(line for line in dockerfile.splitlines() if not line.lstrip().startswith("#"))
        assert re.findall(r"torch==([\w.+]+)", instructions) == [torch_pin]
        assert "USER 1000" in dockerfile
        assert re.search(r"pip install '?\.(\[\w+\])?'?", dockerfile)  # installs this project itself


def test_make_images_builds_exactly_the_compiled_images(spec, tmp_path):
    env = {**os.environ, "SIDREASONER_IMAGE_REGISTRY": "registry.example/team"}
    printed = subprocess.run(
        [sys.executable, "-m", "sidreasoner.components.images", "--push"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.splitlines()
    version = code_version()
    tag = version.replace("+", "-")
    label = f"--label io.sidreasoner.code-version={version}"
    assert printed == [
        f"docker build -f images/cpu/Dockerfile {label} -t registry.example/team/sidreasoner-cpu:{tag} "
        "-t registry.example/team/sidreasoner-cpu:0.1.0 .",
        f"docker build -f images/train/Dockerfile {label} -t registry.example/team/sidreasoner-train:{tag} "
        "-t registry.example/team/sidreasoner-train:0.1.0 .",
        f"docker push registry.example/team/sidreasoner-cpu:{tag}",
        "docker push registry.example/team/sidreasoner-cpu:0.1.0",
        f"docker push registry.example/team/sidreasoner-train:{tag}",
        "docker push registry.example/team/sidreasoner-train:0.1.0",
    ]
    out = tmp_path / "p.yaml"
    subprocess.run([sys.executable, "-m", "sidreasoner.cli", "compile", "-o", str(out)], env=env, check=True)
    compiled = {
        ex["container"]["image"]
        for ex in next(yaml.safe_load_all(out.read_text()))["deploymentSpec"]["executors"].values()
    }
    # The pipeline names the code-version tags, which a later push of other code cannot move.
    assert compiled == {f"registry.example/team/sidreasoner-{kind}:{tag}" for kind in ("cpu", "train")}


def test_training_pods_get_shared_memory_and_retries(tmp_path):
    text = compile_pipeline(config.load("office", [GENERAL_DATA]), tmp_path / "p.yaml").read_text()
    pipeline, platform = yaml.safe_load_all(text)
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    training = [s.name for s in STEPS.values() if s.training_pod]
    assert training == ["sft-stage1", "sft-stage2", "rl-stage3"]
    for step in training:
        assert executors[f"exec-{step}"]["emptyDirMounts"] == [
            {
                "medium": "Memory",
                "mountPath": "/dev/shm",
                "volumeName": "dshm",
                "sizeLimit": "32Gi" if step == "rl-stage3" else "64Gi",
            }
        ]
        assert pipeline["root"]["dag"]["tasks"][step]["retryPolicy"]["maxRetryCount"] == 2
    assert "emptyDirMounts" not in executors["exec-merge-checkpoint"]
    assert "retryPolicy" not in pipeline["root"]["dag"]["tasks"]["merge-checkpoint"]


def test_parameters_default_to_the_preset(spec):
    params = spec["root"]["inputDefinitions"]["parameters"]
    assert set(params) == {
        "seed",
        "data",
        "embed",
        "sid",
        "teacher",
        "model",
        "stage1",
        "stage2",
        "stage3",
        "eval",
        "export",
        "serve",
        *(f"generation_{s.replace('-', '_')}" for s in OFFICE_STEPS),
    }
    data = params["data"]["defaultValue"]
    assert data["category"] == "Office_Products"
    assert data["time_window"] == {"start": "2017-10-01", "end": "2018-11-01"}
    assert params["sid"]["defaultValue"]["codebook_size"] == 256
    assert params["embed"]["defaultValue"]["model"] == "Qwen/Qwen3-Embedding-4B"
    assert params["model"]["defaultValue"]["base"] == "Qwen/Qwen3-1.7B"
    assert params["stage1"]["defaultValue"]["lr"] == 3e-4
    assert params["stage2"]["defaultValue"]["lr"] == 1e-5


def test_outputs_are_typed_artifacts(spec):
    outputs = spec["components"]["comp-quantize-sids"]["outputDefinitions"]["artifacts"]
    assert outputs["sid_index"]["artifactType"]["schemaTitle"] == "system.Dataset"
    assert outputs["metrics"]["artifactType"]["schemaTitle"] == "system.Metrics"
    stage1 = spec["components"]["comp-sft-stage1"]["outputDefinitions"]["artifacts"]
    assert stage1["model"]["artifactType"]["schemaTitle"] == "system.Model"
    assert stage1["loss_curve"]["artifactType"]["schemaTitle"] == "system.HTML"
    report = spec["components"]["comp-report"]["outputDefinitions"]["artifacts"]
    assert report["report_html"]["artifactType"]["schemaTitle"] == "system.HTML"
    assert report["report_md"]["artifactType"]["schemaTitle"] == "system.Markdown"


def test_image_override_from_environment(tmp_path):
    out = tmp_path / "p.yaml"
    env = {**os.environ, "SIDREASONER_CPU_IMAGE": "registry.example/sid-cpu@sha256:" + "a" * 64}
    subprocess.run([sys.executable, "-m", "sidreasoner.cli", "compile", "-o", str(out)], env=env, check=True)
    spec = next(yaml.safe_load_all(out.read_text()))
    images = {ex["container"]["image"] for ex in step_executors(spec).values()}
    assert "registry.example/sid-cpu@sha256:" + "a" * 64 in images
    assert CPU_IMAGE not in images


def test_teacher_key_is_a_secret_reference_never_a_value(tmp_path, monkeypatch):
    secret = "sk-test-" + "z" * 24
    monkeypatch.setenv("SIDREASONER_TEACHER_API_KEY", secret)
    monkeypatch.setenv("OPENAI_API_KEY", secret)
    cfg = config.load("office", [GENERAL_DATA, "teacher.kind=openai", "teacher.base_url=http://teacher.svc:8000/v1"])
    text = compile_pipeline(cfg, tmp_path / "p.yaml").read_text()
    assert secret not in text
    spec = list(yaml.safe_load_all(text))
    env = spec[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]["exec-synthesize-corpus"]["secretAsEnv"]
    assert env[0]["secretName"] == "sidreasoner-teacher"
    assert env[0]["optional"] is True
    assert env[0]["keyToEnv"] == [{"envVar": "SIDREASONER_TEACHER_API_KEY", "secretKey": "api-key"}]


# Resource expectations per step for the paper presets: (CPU request, memory request, GPUs).
PAPER_RESOURCES = {
    "download-data": ("2", "8Gi", 0),
    "preprocess": ("2", "16Gi", 0),
    "embed-items": ("4", "32Gi", 1),
    "quantize-sids": ("8", "16Gi", 1),
    "synthesize-corpus": ("2", "8Gi", 0),
    "evaluate-baselines": ("2", "8Gi", 0),
    "prepare-base-model": ("4", "32Gi", 0),
    "sft-stage1": ("32", "256Gi", 8),
    "evaluate-stage1": ("8", "64Gi", 1),
    "sft-stage2": ("32", "256Gi", 8),
    "evaluate-stage2": ("8", "64Gi", 1),
    "rl-stage3": ("16", "128Gi", 4),
    "merge-checkpoint": ("8", "64Gi", 0),
    "evaluate-stage3": ("8", "64Gi", 1),
    "report": ("1", "4Gi", 0),
    "export-model": ("2", "8Gi", 0),
    "deploy-model": ("500m", "512Mi", 0),
}
GIB = 1024**3


@pytest.mark.parametrize("step", OFFICE_STEPS)
def test_paper_preset_resources(spec, step):
    resources = step_executors(spec)[f"exec-{step}"]["container"]["resources"]
    cpu, memory, gpus = PAPER_RESOURCES[step]
    assert resources["resourceCpuRequest"] == cpu
    assert resources["resourceMemoryRequest"] == memory
    if gpus:
        assert resources["accelerator"]["resourceType"] == "nvidia.com/gpu"
        assert resources["accelerator"]["resourceCount"] == str(gpus)
    else:
        assert "accelerator" not in resources


def test_quantize_sids_trains_the_paper_rqvae_on_its_gpu(spec):
    # the paper presets' RQ-VAE (10,000 full-batch epochs) runs on the pod's GPU: the pod requests one, runs
    # in the CUDA image, and the step's sid section picks CUDA when it is there
    container = step_executors(spec)["exec-quantize-sids"]["container"]
    assert container["resources"]["accelerator"] == {
        "count": "1",
        "resourceCount": "1",
        "resourceType": "nvidia.com/gpu",
        "type": "nvidia.com/gpu",
    }
    assert container["image"] == TRAIN_IMAGE
    parameters = step_tasks(spec)["quantize-sids"]["inputs"]["parameters"]
    sid = parameters["compiled_sections"]["runtimeValue"]["constant"]["sid"]
    assert (sid["method"], sid["rqvae"]["device"]) == ("rqvae", "auto")


def test_model_cache_pvc_node_selectors_and_tolerations(tmp_path):
    override = (
        'cluster.resources={"sft-stage1": {"gpus": 2, "node_selector": {"gpu": "h100"}, '
        '"tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]}}'
    )
    text = compile_pipeline(config.load("office", [GENERAL_DATA, override]), tmp_path / "p.yaml").read_text()
    pipeline, platform = yaml.safe_load_all(text)
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    stage1 = k8s["exec-sft-stage1"]
    assert stage1["nodeSelector"] == {"labels": {"gpu": "h100"}}
    assert stage1["tolerations"] == [{"effect": "NoSchedule", "key": "nvidia.com/gpu", "operator": "Exists"}]
    container = pipeline["deploymentSpec"]["executors"]["exec-sft-stage1"]["container"]
    assert container["resources"]["accelerator"]["resourceCount"] == "2"
    assert container["resources"]["resourceMemoryRequest"] == "256Gi"  # the rest of the preset kept
    assert {"name": "HF_HOME", "value": "/models/hf"} in container["env"]
    for step in (
        "download-data",
        "embed-items",
        "prepare-base-model",
        "sft-stage1",
        "evaluate-stage2",
        "merge-checkpoint",
    ):
        assert k8s[f"exec-{step}"]["pvcMount"][0]["constant"] == "sidreasoner-model-cache", step
    assert "pvcMount" not in k8s.get("exec-report", {})
    no_pvc = compile_pipeline(
        config.load("office", [GENERAL_DATA, "cluster.model_cache_pvc="]), tmp_path / "q.yaml"
    ).read_text()
    assert "pvcMount" not in no_pvc


def test_cluster_resources_reject_unknown_steps():
    with pytest.raises(config.ConfigError, match="unknown step\\(s\\) sft-stage9"):
        config.load("office", ['cluster.resources={"sft-stage9": {"gpus": 1}}'])


def test_credentials_are_optional_secret_references(tmp_path):
    pipeline, platform = yaml.safe_load_all(
        compile_pipeline(config.load("office", [GENERAL_DATA]), tmp_path / "p.yaml").read_text()
    )
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    download = k8s["exec-download-data"]
    assert {s["secretName"] for s in download["secretAsEnv"]} == {"sidreasoner-s3", "sidreasoner-hf"}
    assert all(s["optional"] for s in download["secretAsEnv"])
    assert download["secretAsVolume"][0]["secretName"] == "sidreasoner-gcs"
    assert download["secretAsVolume"][0]["optional"] is True
    env = pipeline["deploymentSpec"]["executors"]["exec-download-data"]["container"]["env"]
    assert {"name": "SIDREASONER_GCS_KEY_FILE", "value": "/var/secrets/gcs/key.json"} in env
    # never point ADC at a file that is absent when the optional Secret is
    assert all(e["name"] != "GOOGLE_APPLICATION_CREDENTIALS" for e in env)
    # Stage 1 may read its general data from a bucket; no other training pod holds storage credentials.
    assert {s["secretName"] for s in k8s["exec-sft-stage1"]["secretAsEnv"]} == {"sidreasoner-s3"}
    assert "secretAsEnv" not in k8s.get("exec-sft-stage2", {}) and "secretAsEnv" not in k8s.get("exec-rl-stage3", {})


def _s3_endpoints(cfg, path) -> tuple[dict, dict]:
    """{executor: its SIDREASONER_S3_ENDPOINT values} and the platform spec's executors, compiled."""
    pipeline, platform = yaml.safe_load_all(compile_pipeline(cfg, path).read_text())
    endpoints = {
        name: [e["value"] for e in ex["container"].get("env", []) if e["name"] == "SIDREASONER_S3_ENDPOINT"]
        for name, ex in pipeline["deploymentSpec"]["executors"].items()
    }
    return endpoints, platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]


def test_s3_endpoint_reaches_exactly_the_tasks_with_s3_credentials(tmp_path):
    endpoint = "http://sidreasoner-minio.kubeflow-user.svc:9000"
    endpoints, k8s = _s3_endpoints(
        config.load("office", [GENERAL_DATA, f"cluster.s3_endpoint={endpoint}"]), tmp_path / "p.yaml"
    )
    holders = {
        name for name, ex in k8s.items() if "sidreasoner-s3" in {s["secretName"] for s in ex.get("secretAsEnv", [])}
    }
    assert holders == {"exec-download-data", "exec-prepare-base-model", "exec-sft-stage1", "exec-export-model"}
    assert {name: values for name, values in endpoints.items() if values} == {name: [endpoint] for name in holders}
    unset, _ = _s3_endpoints(config.load("office", [GENERAL_DATA]), tmp_path / "q.yaml")
    assert [name for name, values in unset.items() if values] == []


@pytest.mark.parametrize(
    "endpoint", ["http://minio:9000", "https://s3.eu-west-1.amazonaws.com/", "http://10.0.0.5:9000"]
)
def test_s3_endpoint_takes_an_http_host(endpoint):
    assert config.load("office", [f"cluster.s3_endpoint={endpoint}"]).cluster.s3_endpoint == endpoint


@pytest.mark.parametrize(
    "endpoint, problem",
    [
        ("minio:9000", "expected http(s)://host[:port] with no path"),
        ("ftp://minio:9000", "expected http(s)://host[:port] with no path"),
        ("http://minio:9000/bucket", "expected http(s)://host[:port] with no path"),
        ("http://minio:port", "expected http(s)://host[:port] with no path"),
        ("http://minio:9000?secure=1", "expected http(s)://host[:port] with no path"),
        ("http://access-key-0000:secret-key-0000@minio:9000", "credentials do not belong in the endpoint"),
    ],
)
def test_s3_endpoint_rejects_anything_else_naming_the_key(endpoint, problem):
    with pytest.raises(config.ConfigError) as err:
        config.load("office", [f"cluster.s3_endpoint={endpoint}"])
    assert f"  cluster.s3_endpoint: {problem}" in str(err.value)
    assert "key-0000" not in str(err.value)  # an error never repeats credentials


def test_export_model_runs_when_the_run_sets_export_uri_uncached_with_storage_credentials(spec):
    """export-model is compiled in whatever the preset says, behind a condition task that reads the
    run's `export` parameter: setting export.uri in the UI of an uploaded pipeline turns it on."""
    assert spec["root"]["inputDefinitions"]["parameters"]["export"]["defaultValue"] == {"uri": "", "overwrite": False}
    root = spec["root"]["dag"]["tasks"]
    gate = root["export-model-enabled"]
    assert gate["inputs"]["parameters"]["section"] == {"componentInputParameter": "export"}
    assert gate["inputs"]["parameters"]["compiled_section"]["runtimeValue"]["constant"] == {
        "uri": "",
        "overwrite": False,
    }
    branch = next(t for name, t in root.items() if name.startswith("condition-"))
    assert (
        branch["triggerPolicy"]["condition"]
        == "inputs.parameter_values['pipelinechannel--export-model-enabled-Output'] == true"
    )
    assert sorted(branch["dependentTasks"]) == [
        "export-model-enabled",
        "merge-checkpoint",
        "preprocess",  # the catalogue exported with the model: the item table
        "quantize-sids",  # and the SID index
    ]
    assert branch["inputs"]["artifacts"]["pipelinechannel--merge-checkpoint-stage3_model"]["taskOutputArtifact"] == {
        "outputArtifactKey": "stage3_model",
        "producerTask": "merge-checkpoint",
    }
    task = step_tasks(spec)["export-model"]
    assert task["inputs"]["artifacts"]["stage3_model"] == {
        "componentInputArtifact": "pipelinechannel--merge-checkpoint-stage3_model"
    }
    assert task["inputs"]["parameters"]["export"] == {"componentInputParameter": "pipelinechannel--export"}
    assert spec["deploymentSpec"]["executors"]["exec-export-model"]["container"]["image"] == CPU_IMAGE
    assert spec["deploymentSpec"]["executors"]["exec-export-model-enabled"]["container"]["image"] == CPU_IMAGE
    outputs = spec["components"]["comp-export-model"]["outputDefinitions"]["artifacts"]
    assert outputs["model_export"]["artifactType"]["schemaTitle"] == "system.Model"


def test_export_model_credentials(tmp_path):
    platform = list(
        yaml.safe_load_all(compile_pipeline(config.load("office", [GENERAL_DATA]), tmp_path / "e.yaml").read_text())
    )[1]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert {s["secretName"] for s in k8s["exec-export-model"]["secretAsEnv"]} == {"sidreasoner-s3"}
    assert k8s["exec-export-model"]["secretAsVolume"][0]["secretName"] == "sidreasoner-gcs"
    assert "secretAsEnv" not in k8s["exec-export-model-enabled"]


def test_make_images_refuses_a_digest(tmp_path):
    env = {**os.environ, "SIDREASONER_TRAIN_IMAGE": "registry.example/sid-train@sha256:" + "b" * 64}
    result = subprocess.run(
        [sys.executable, "-m", "sidreasoner.components.images"], env=env, capture_output=True, text=True
    )
    assert result.returncode != 0 and result.stdout == ""
    assert "cannot build registry.example/sid-train@sha256:" in result.stderr


def test_code_version_is_a_constant_of_every_task(spec):
    version = code_version()
    assert re.fullmatch(re.escape(__version__) + r"\+src[0-9a-f]{12}", version)
    for name, task in step_tasks(spec).items():
        assert task["inputs"]["parameters"]["code_version"] == {"runtimeValue": {"constant": version}}, name


def test_every_step_has_a_generation_parameter_passed_in_every_run(tmp_path):
    """A value passed only in some runs would give a task two keys (the driver fills no default for a
    component's optional parameter): every task gets its generation, from a run parameter with the
    config's value as default."""
    cfg = config.load("office", [GENERAL_DATA, "generations.rl-stage3=7"])
    pipeline = next(yaml.safe_load_all(compile_pipeline(cfg, tmp_path / "g.yaml").read_text()))
    declared = pipeline["root"]["inputDefinitions"]["parameters"]
    generations = {k: v for k, v in declared.items() if k.startswith("generation_")}
    assert set(generations) == {f"generation_{s.replace('-', '_')}" for s in OFFICE_STEPS}
    assert generations["generation_rl_stage3"] == {
        "defaultValue": 7.0,
        "isOptional": True,
        "parameterType": "NUMBER_INTEGER",
    }
    assert generations["generation_sft_stage2"] == {
        "defaultValue": 0.0,
        "isOptional": True,
        "parameterType": "NUMBER_INTEGER",
    }
    tasks = step_tasks(pipeline)
    assert all(t["cachingOptions"] == {"enableCache": True} for n, t in tasks.items() if not STEPS[n].side_effects)
    assert "rerun_token" not in declared and "generations" not in declared


def test_pods_run_as_the_images_user_and_tags_are_pulled_again(spec, tmp_path):
    platform = list(
        yaml.safe_load_all(compile_pipeline(config.load("office", [GENERAL_DATA]), tmp_path / "s.yaml").read_text())
    )[1]
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(k8s) == set(spec["deploymentSpec"]["executors"])  # the condition task too
    for name, executor in k8s.items():
        assert executor["securityContext"] == {"runAsUser": "1000", "runAsGroup": "1000", "runAsNonRoot": True}, name
        image = spec["deploymentSpec"]["executors"][name]["container"]["image"]
        assert executor["imagePullPolicy"] == ("IfNotPresent" if "@sha256:" in image else "Always"), name
    resources = spec["deploymentSpec"]["executors"]["exec-export-model-enabled"]["container"]["resources"]
    assert (resources["cpuRequest"], resources["cpuLimit"], resources["memoryRequest"], resources["memoryLimit"]) == (
        0.1,
        1.0,
        0.268435456,
        1.073741824,
    )


def test_a_digest_pinned_image_is_not_pulled_again(tmp_path, monkeypatch):
    from sidreasoner.components import images

    digest = "registry.example/sidreasoner-train@sha256:" + "c" * 64
    monkeypatch.setitem(images.IMAGES, "train", digest)
    docs = list(
        yaml.safe_load_all(compile_pipeline(config.load("office", [GENERAL_DATA]), tmp_path / "d.yaml").read_text())
    )
    k8s = docs[1]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    in_train = [n for n, ex in docs[0]["deploymentSpec"]["executors"].items() if ex["container"]["image"] == digest]
    assert "exec-rl-stage3" in in_train
    assert {k8s[n]["imagePullPolicy"] for n in in_train} == {"IfNotPresent"}


def test_pods_requesting_accelerators_run_in_the_training_image(spec):
    executors = step_executors(spec)
    with_gpus = [name for name, ex in executors.items() if "accelerator" in ex["container"]["resources"]]
    assert "exec-embed-items" in with_gpus and "exec-sft-stage1" in with_gpus
    assert STEPS["embed-items"].image == "cpu"  # the registry's image; its GPU moves it
    for name in with_gpus:
        assert executors[name]["container"]["image"] == TRAIN_IMAGE, name


def test_every_pod_has_a_deadline_memory_limit_and_cost_labels(tmp_path):
    override = 'cluster.resources={"report": {"cpu": "1", "memory": "4Gi", "timeout": 600}}'
    pipeline, platform = yaml.safe_load_all(
        compile_pipeline(config.load("office", [GENERAL_DATA, override]), tmp_path / "p.yaml").read_text()
    )
    k8s = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    for step in OFFICE_STEPS:
        executor = k8s[f"exec-{step}"]
        expected = 600 if step == "report" else STEPS[step].timeout_s
        assert int(executor["activeDeadlineSeconds"]) == expected, step
        assert executor["podMetadata"]["labels"] == {
            STEP_LABEL: step,
            "sidreasoner.io/preset": "office",
            "sidreasoner.io/category": "Office_Products",
        }, step
        resources = pipeline["deploymentSpec"]["executors"][f"exec-{step}"]["container"]["resources"]
        if step != "report":
            assert resources["resourceMemoryLimit"] == resources["resourceMemoryRequest"], step
    assert STEPS["sft-stage1"].timeout_s == STEPS["rl-stage3"].timeout_s == 72 * 3600
    assert STEPS["evaluate-stage1"].timeout_s == 12 * 3600 and STEPS["preprocess"].timeout_s == 6 * 3600


def test_deploy_model_sits_in_a_condition_nested_in_export_models(spec):
    """deploy-model reads export-model's output, so KFP needs it inside export-model's branch; its own
    condition task reads the run's `serve` section there."""
    assert condition_path(spec, "deploy-model") == ["export-model-enabled", "deploy-model-enabled"]
    assert condition_path(spec, "export-model") == ["export-model-enabled"]
    task = step_tasks(spec)["deploy-model"]
    assert task["cachingOptions"] == {}  # it changes the cluster: a cache hit would skip that
    assert task["inputs"]["artifacts"]["model_export"] == {
        "componentInputArtifact": "pipelinechannel--export-model-model_export"
    }
    pod = task["inputs"]["parameters"]["serving_pod"]["runtimeValue"]["constant"]
    assert pod == {
        "image": CPU_IMAGE,
        "resources": config.load("office").cluster.serving.model_dump(mode="json"),
        "image_pull_secrets": [],
        "labels": {"sidreasoner.io/preset": "office"},
    }
    export_branch = spec["components"][
        next(t for n, t in spec["root"]["dag"]["tasks"].items() if n.startswith("condition-"))["componentRef"]["name"]
    ]
    gate = export_branch["dag"]["tasks"]["deploy-model-enabled"]
    assert gate["inputs"]["parameters"]["section"] == {"componentInputParameter": "pipelinechannel--serve"}
    assert spec["root"]["inputDefinitions"]["parameters"]["serve"]["defaultValue"]["enabled"] is False
    outputs = spec["components"]["comp-deploy-model"]["outputDefinitions"]["artifacts"]
    assert set(outputs) == {"deployment", "metrics"}
    assert "deploy_model_deployment" not in spec["root"].get("outputDefinitions", {}).get("artifacts", {})


def test_a_serving_pod_with_gpus_runs_in_the_training_image(tmp_path):
    cfg = config.load("demo", ['cluster.serving={"cpu": "4", "memory": "16Gi", "gpus": 1}'])
    spec = next(yaml.safe_load_all(compile_pipeline(cfg, tmp_path / "p.yaml").read_text()))
    pod = step_tasks(spec)["deploy-model"]["inputs"]["parameters"]["serving_pod"]["runtimeValue"]["constant"]
    assert pod["image"] == TRAIN_IMAGE and pod["resources"]["gpus"] == 1
    assert spec["deploymentSpec"]["executors"]["exec-deploy-model"]["container"]["image"] == CPU_IMAGE


def test_a_local_dag_has_deploy_model_only_when_serving_and_exporting():
    def names(*overrides):
        return [s.name for s in pipeline_steps(config.load("demo", list(overrides)))]

    assert "deploy-model" not in names()
    assert "deploy-model" not in names("export.uri=s3://models/run-1")
    assert names("export.uri=s3://models/run-1", "serve.enabled=true")[-2:] == ["export-model", "deploy-model"]
    with pytest.raises(config.ConfigError, match=r"serve.enabled needs export.uri to be an s3://.*\(it is empty\)"):
        names("serve.enabled=true")
    with pytest.raises(config.ConfigError, match=r"\(it is '/data/models'\)"):
        names("serve.enabled=true", "export.uri=/data/models")


def test_enclosing_conditions_nest_gated_steps_that_read_gated_steps():
    from sidreasoner.pipelines.pipeline import enclosing_conditions

    steps = pipeline_steps(config.load("demo"), conditional=True)
    enclosing = enclosing_conditions(steps, {"export-model", "deploy-model"})
    assert enclosing["deploy-model"] == ("export-model",)
    assert enclosing["export-model"] == () and enclosing["report"] == ()
    assert enclosing_conditions(steps, set())["deploy-model"] == ()


def test_a_step_reading_two_unnested_gated_steps_is_refused():
    from sidreasoner.pipelines.pipeline import _ConditionGroups

    with pytest.raises(ValueError, match="reads outputs of the gated steps a, b, whose conditions are not nested"):
        _ConditionGroups().enter("c", ("a", "b"))
