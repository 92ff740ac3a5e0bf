"""`sidreasoner submit` / `upload` against a KFP v2beta1 API server on 127.0.0.1."""

import os
import subprocess
import sys

import pytest
import yaml

from sidreasoner import config
from sidreasoner.pipelines.submit import submit, upload
from sidreasoner.steps import STEP_NAMES, downstream


def _run_body(state):
    (call,) = state.calls("POST", "/runs")
    return call.json()


def _pipeline_spec(run_body):
    # With a platform (Kubernetes) spec the body holds {"pipeline_spec": …, "platform_spec": …}.
    return run_body["pipeline_spec"]["pipeline_spec"]


def _task_caching(run_body):
    return {name: t["cachingOptions"].get("enableCache", False)
            for name, t in _pipeline_spec(run_body)["root"]["dag"]["tasks"].items()}


def test_downstream_follows_the_artifacts():
    assert downstream("sft-stage1") == ["sft-stage1", "evaluate-stage1", "sft-stage2", "evaluate-stage2", "rl-stage3",
                                        "merge-checkpoint", "evaluate-stage3", "report", "export-model"]
    assert downstream("evaluate-baselines") == ["evaluate-baselines", "report"]
    assert downstream("download-data")[0] == "download-data"
    assert len(downstream("download-data")) == len(STEP_NAMES)


def test_submit_sends_spec_parameters_root_and_caching(kfp_api):
    cfg = config.load("office", ["data.k_core=7"])
    url, state = kfp_api
    result = submit(cfg, url, experiment="office-exp", run_name="r1", pipeline_root="s3://bucket/root")
    (exp_call,) = state.calls("POST", "/experiments")
    assert exp_call.json()["display_name"] == "office-exp"
    body = _run_body(state)
    assert body["display_name"] == "r1"
    assert body["experiment_id"] == result.experiment_id
    assert body["runtime_config"]["pipeline_root"] == "s3://bucket/root"
    params = body["runtime_config"]["parameters"]
    assert params["data"]["k_core"] == 7 and params["data"]["category"] == "Office_Products"
    assert params["sid"]["method"] == "rqvae"
    declared = _pipeline_spec(body)["root"]["inputDefinitions"]["parameters"]
    assert set(params) == set(declared)  # only what the pipeline declares; cluster is compile-time
    assert _pipeline_spec(body)["pipelineInfo"]["name"] == "sidreasoner"
    assert all(_task_caching(body).values())
    executors = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-synthesize-corpus"]["secretAsEnv"][0]["secretName"] == "sidreasoner-teacher"


def test_existing_experiment_is_reused(kfp_api):
    cfg = config.load("demo")
    url, state = kfp_api
    first = submit(cfg, url, experiment="e")
    second = submit(cfg, url, experiment="e")
    assert first.experiment_id == second.experiment_id
    assert len(state.calls("POST", "/experiments")) == 1


def test_rerun_from_turns_caching_off_downstream_only(kfp_api):
    url, state = kfp_api
    result = submit(config.load("demo"), url, rerun_from="quantize-sids")
    rerun = ["quantize-sids", "synthesize-corpus", "evaluate-baselines", "prepare-base-model", "sft-stage1",
             "evaluate-stage1", "sft-stage2", "evaluate-stage2", "rl-stage3", "merge-checkpoint", "evaluate-stage3",
             "report"]
    assert result.no_cache_steps == rerun
    caching = _task_caching(_run_body(state))
    assert caching == {step: step not in rerun for step in STEP_NAMES if step != "export-model"}  # no export.uri


def test_no_cache_applies_to_every_task(kfp_api):
    url, state = kfp_api
    submit(config.load("demo"), url, no_cache=True)
    body = _run_body(state)
    assert not any(_task_caching(body).values())


def test_no_cache_and_rerun_from_exclude_each_other():
    with pytest.raises(ValueError, match="exclude each other"):
        submit(config.load("demo"), "http://127.0.0.1:9", no_cache=True, rerun_from="preprocess")


def test_upload_then_new_version(kfp_api):
    cfg = config.load("games")
    url, state = kfp_api
    pipeline_id = upload(cfg, url)
    again = upload(cfg, url, version="v2")
    assert again == pipeline_id
    (up,) = state.calls("POST", "/pipelines/upload")
    assert up.query["name"] == ["sidreasoner"]
    spec = next(yaml.safe_load_all(up.body.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]))
    assert spec["root"]["inputDefinitions"]["parameters"]["data"]["defaultValue"]["category"] == "Video_Games"
    assert state.versions == [{"pipeline_version_id": state.versions[0]["pipeline_version_id"],
                               "pipeline_id": pipeline_id, "display_name": "v2"}]


def test_cli_submit_wait_and_secret_free_requests(kfp_api):
    secret = "sk-never-" + "q" * 20
    url, state = kfp_api
    result = subprocess.run(
        [sys.executable, "-m", "sidreasoner.cli", "submit", "--host", url, "--preset", "office",
         "--set", "teacher.model=gpt-4o", "--rerun-from", "report", "--wait"],
        capture_output=True, text=True, env={**os.environ, "OPENAI_API_KEY": secret},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Caching off for: report" in result.stdout
    assert "Run finished: SUCCEEDED" in result.stdout
    assert state.calls("GET", f"/runs/{next(iter(state.runs))}")  # --wait polled the run
    assert all(secret.encode() not in r.body for r in state.requests)


def test_cli_wait_exits_1_when_the_run_fails(kfp_api):
    url, state = kfp_api
    state.final_state = "FAILED"
    result = subprocess.run([sys.executable, "-m", "sidreasoner.cli", "submit", "--host", url, "--wait"],
                            capture_output=True, text=True)
    assert result.returncode == 1
    assert "Run finished: FAILED" in result.stdout


def test_cli_rerun_from_unknown_step_fails_clearly():
    result = subprocess.run([sys.executable, "-m", "sidreasoner.cli", "submit", "--host", "http://127.0.0.1:9",
                             "--rerun-from", "train"], capture_output=True, text=True)
    assert result.returncode == 2
    assert "unknown step 'train'" in result.stderr
