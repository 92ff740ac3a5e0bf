"""`sidreasoner submit` / `upload` against a KFP v2beta1 API server on 127.0.0.1."""

import os
import re
import subprocess
import sys

import pytest
import yaml

from sidreasoner import config
from sidreasoner.pipelines.submit import Auth, KFPUnavailable, spec_digest, submit, upload
from sidreasoner.steps import STEPS, downstream

from .helpers.presets import GENERAL_DATA
from .test_compile import step_tasks

STEP_NAMES = tuple(STEPS)  # the training pipeline's steps


def _run_body(state):
    (call,) = state.calls("POST", "/runs")
    return call.json()


def _pipeline_spec(run_body):
    # With a platform (Kubernetes) spec the body holds {"pipeline_spec": …, "platform_spec": …}.
    return run_body["pipeline_spec"]["pipeline_spec"]


# The steps that write outside the artifact store: never served from the cache.
SIDE_EFFECTS = ("export-model", "deploy-model")


def _task_caching(run_body):
    return {
        name: t["cachingOptions"].get("enableCache", False) for name, t in step_tasks(_pipeline_spec(run_body)).items()
    }


def test_downstream_follows_the_artifacts():
    assert downstream("sft-stage1") == [
        "sft-stage1",
        "evaluate-stage1",
        "sft-stage2",
        "evaluate-stage2",
        "rl-stage3",
        "merge-checkpoint",
        "evaluate-stage3",
        "report",
        "export-model",
        "deploy-model",
    ]
    assert downstream("evaluate-baselines") == ["evaluate-baselines", "report"]
    assert downstream("download-data")[0] == "download-data"
    assert len(downstream("download-data")) == len(STEP_NAMES)


def test_submit_sends_spec_parameters_root_and_caching(kfp_api):
    cfg = config.load("office", [GENERAL_DATA, "data.k_core=7"])
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
    assert _task_caching(body) == {step: step not in SIDE_EFFECTS for step in STEP_NAMES}  # the upload never cached
    executors = body["pipeline_spec"]["platform_spec"]["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert executors["exec-synthesize-corpus"]["secretAsEnv"][0]["secretName"] == "sidreasoner-teacher"


def test_existing_experiment_is_reused(kfp_api):
    cfg = config.load("demo")
    url, state = kfp_api
    first = submit(cfg, url, experiment="e")
    second = submit(cfg, url, experiment="e")
    assert first.experiment_id == second.experiment_id
    assert len(state.calls("POST", "/experiments")) == 1


def _generations(run_body) -> dict[str, int]:
    """Each task's generation in this run: the run parameter its `generation` input names."""
    params = run_body["runtime_config"]["parameters"]
    out = {}
    for name, task in step_tasks(_pipeline_spec(run_body)).items():
        source = task["inputs"]["parameters"]["generation"]["componentInputParameter"]
        out[name] = params[source.removeprefix("pipelinechannel--")]
    return out


def test_rerun_from_keeps_caching_and_raises_the_steps_generation(kfp_api):
    url, state = kfp_api
    result = submit(config.load("demo"), url, rerun_from="quantize-sids")
    rerun = [
        "quantize-sids",
        "synthesize-corpus",
        "evaluate-baselines",
        "prepare-base-model",
        "sft-stage1",
        "evaluate-stage1",
        "sft-stage2",
        "evaluate-stage2",
        "rl-stage3",
        "merge-checkpoint",
        "evaluate-stage3",
        "report",
        "export-model",
        "deploy-model",
    ]
    assert result.rerun_steps == rerun
    body = _run_body(state)
    # Caching stays on everywhere, so the re-run tasks write cache entries under their new keys.
    assert _task_caching(body) == {step: step not in SIDE_EFFECTS for step in STEP_NAMES}
    generations = _generations(body)
    generation = generations.pop("quantize-sids")
    assert re.fullmatch(r"20\d{12}", str(generation)) and set(generations.values()) == {0}
    assert result.keep == f"--set generations.quantize-sids={generation}"
    # The compiled default is the re-run's generation too: the spec shows what the run did.
    declared = _pipeline_spec(body)["root"]["inputDefinitions"]["parameters"]
    assert declared["generation_quantize_sids"]["defaultValue"] == generation
    kept = config.load("demo", [f"generations.quantize-sids={generation}"])
    submit(kept, url, rerun_from="quantize-sids")
    second = state.calls("POST", "/runs")[-1].json()["runtime_config"]["parameters"]["generation_quantize_sids"]
    assert second > generation  # every re-run gets a key no earlier run used


def test_a_plain_run_passes_every_generation(kfp_api):
    url, state = kfp_api
    result = submit(config.load("demo", ["generations.rl-stage3=5"]), url)
    body = _run_body(state)
    assert _generations(body) == {s: 5 if s == "rl-stage3" else 0 for s in STEP_NAMES}
    assert (result.rerun_steps, result.keep) == ([], "")


def test_no_cache_executes_every_task_and_still_writes_the_cache(kfp_api):
    """Caching off would leave no cache entry, so the next plain run would be served older results:
    the first step gets a new generation instead, with caching on, and every task reads its outputs."""
    url, state = kfp_api
    result = submit(config.load("demo"), url, no_cache=True)
    body = _run_body(state)
    assert result.rerun_steps == list(STEP_NAMES)
    assert _task_caching(body) == {step: step not in SIDE_EFFECTS for step in STEP_NAMES}
    generations = _generations(body)
    assert generations["download-data"] > 0 and result.keep.startswith("--set generations.download-data=")


def test_no_cache_and_rerun_from_exclude_each_other():
    with pytest.raises(config.ConfigError, match="exclude each other"):
        submit(config.load("demo"), "http://127.0.0.1:9", no_cache=True, rerun_from="preprocess")


def _uploaded_yaml(call):
    return call.body.split(b"\r\n\r\n", 1)[1].rsplit(b"\r\n--", 1)[0]


def _uploaded_spec(call):
    return next(yaml.safe_load_all(_uploaded_yaml(call)))


def test_upload_names_versions_by_code_and_spec_and_never_twice(kfp_api, monkeypatch):
    monkeypatch.setattr("sidreasoner.pipelines.submit.code_version", lambda: "0.1.0+srcABCDEF123456")
    cfg = config.load("games", [GENERAL_DATA])
    url, state = kfp_api
    first = upload(cfg, url)
    assert first.created and first.version == "sidreasoner"  # the server names the first version
    (up,) = state.calls("POST", "/pipelines/upload")
    assert up.query["name"] == ["sidreasoner"]
    spec = _uploaded_spec(up)
    assert spec["root"]["inputDefinitions"]["parameters"]["data"]["defaultValue"]["category"] == "Video_Games"
    digest = spec_digest(_uploaded_yaml(up))
    assert f"sha256:{digest}" in up.query["description"][0]
    # The same spec again: the server's versions are listed, and nothing is uploaded.
    again = upload(cfg, url)
    assert (again.pipeline_id, again.version, again.created) == (first.pipeline_id, "sidreasoner", False)
    assert state.calls("GET", f"/pipelines/{first.pipeline_id}/versions")
    assert not state.calls("POST", "/pipelines/upload_version")
    # Another spec: a new version named after the code version, the category and the spec's digest.
    changed = upload(config.load("games", [GENERAL_DATA, "data.k_core=7"]), url)
    assert changed.created and changed.pipeline_id == first.pipeline_id
    (up2,) = state.calls("POST", "/pipelines/upload_version")
    digest2 = spec_digest(_uploaded_yaml(up2))
    assert digest2 != digest
    assert changed.version == up2.query["name"][0] == f"0.1.0-srcabcdef123456-video-games-{digest2}"
    assert re.fullmatch(r"[a-z0-9][a-z0-9.-]*[a-z0-9]", changed.version)
    assert upload(config.load("games", [GENERAL_DATA, "data.k_core=7"]), url).created is False
    assert len(state.versions) == 2


def test_upload_finds_its_spec_past_the_first_page_of_versions(kfp_api):
    cfg = config.load("demo")
    url, state = kfp_api
    first = upload(cfg, url)
    for i in range(150):  # older versions: the spec's own is on the second page of 100
        state.versions.insert(
            0,
            {
                "pipeline_version_id": f"old-{i}",
                "pipeline_id": first.pipeline_id,
                "display_name": f"old-{i}",
                "description": "",
            },
        )
    assert upload(cfg, url).created is False
    assert len(state.calls("GET", f"/pipelines/{first.pipeline_id}/versions")) == 2


def test_upload_with_an_explicit_version_name(kfp_api):
    url, state = kfp_api
    first = upload(config.load("demo"), url)
    named = upload(config.load("demo", ["seed=3"]), url, version="v2")
    assert (named.pipeline_id, named.version, named.created) == (first.pipeline_id, "v2", True)
    assert state.versions[-1]["display_name"] == "v2"
    with pytest.raises(ValueError, match="has a version v2 of another spec"):
        upload(config.load("demo", ["seed=4"]), url, version="v2")
    assert upload(config.load("demo", ["seed=3"]), url, version="v3").version == "v2"  # same spec: kept


def test_upload_of_the_evaluate_pipeline_registers_it_under_its_own_name(kfp_api):
    url, state = kfp_api
    uploaded = upload(config.load("demo", ["model.base=s3://models/released"]), url, pipeline="evaluate")
    assert uploaded.created and uploaded.version == "sidreasoner-evaluate"
    (up,) = state.calls("POST", "/pipelines/upload")
    assert up.query["name"] == ["sidreasoner-evaluate"]
    spec = _uploaded_spec(up)
    assert spec["pipelineInfo"]["name"] == "sidreasoner-evaluate"
    tasks = set(spec["root"]["dag"]["tasks"])
    assert {"load-model", "evaluate-model", "report-model"} <= tasks and "sft-stage1" not in tasks


def test_cli_upload_says_when_nothing_was_uploaded(kfp_api):
    url, state = kfp_api
    command = [sys.executable, "-m", "sidreasoner.cli", "upload", "--host", url]
    env = dict(os.environ)
    first = subprocess.run(command, capture_output=True, text=True, env=env)
    assert first.returncode == 0, first.stderr[-2000:]
    assert "version sidreasoner uploaded" in first.stdout
    second = subprocess.run(command, capture_output=True, text=True, env=env)
    assert "already has this spec as version sidreasoner; nothing uploaded" in second.stdout
    assert len(state.calls("POST", "/pipelines/upload")) == 1 and not state.calls("POST", "/pipelines/upload_version")


def test_cli_submit_wait_and_secret_free_requests(kfp_api):
    secret = "sk-never-" + "q" * 20
    url, state = kfp_api
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidreasoner.cli",
            "submit",
            "--host",
            url,
            "--preset",
            "office",
            "--set",
            "teacher.model=gpt-4o",
            "--set",
            GENERAL_DATA,
            "--rerun-from",
            "report",
            "--wait",
        ],
        capture_output=True,
        text=True,
        env={**os.environ, "OPENAI_API_KEY": secret},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Re-executing with a new generation: report." in result.stdout
    assert re.search(r"sidreasoner submit … --set generations.report=20\d{12}\n", result.stdout)
    assert "Run finished: SUCCEEDED" in result.stdout
    assert state.calls("GET", f"/runs/{next(iter(state.runs))}")  # --wait polled the run
    assert all(secret.encode() not in r.body for r in state.requests)


def test_cli_wait_exits_1_when_the_run_fails(kfp_api):
    url, state = kfp_api
    state.final_state = "FAILED"
    result = subprocess.run(
        [sys.executable, "-m", "sidreasoner.cli", "submit", "--host", url, "--wait"], capture_output=True, text=True
    )
    assert result.returncode == 1
    assert "Run finished: FAILED" in result.stdout


def test_cli_rerun_from_unknown_step_fails_clearly():
    result = subprocess.run(
        [sys.executable, "-m", "sidreasoner.cli", "submit", "--host", "http://127.0.0.1:9", "--rerun-from", "train"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert "unknown step 'train'" in result.stderr


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "sidreasoner.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        timeout=120,
    )


def test_cli_bearer_token_from_the_environment_reaches_every_request_and_no_output(kfp_api):
    url, state = kfp_api
    token = "eyJ-token-" + "t" * 24
    state.required_token = token
    result = _cli("submit", "--host", url, "--namespace", "team-a", env={"SIDREASONER_KFP_TOKEN": token})
    assert result.returncode == 0, result.stderr[-2000:]
    assert state.requests and all(r.headers.get("authorization") == f"Bearer {token}" for r in state.requests)
    assert token not in result.stdout + result.stderr
    assert state.calls("POST", "/experiments")[0].json()["namespace"] == "team-a"


def test_cli_without_a_token_says_so_in_one_line(kfp_api):
    url, state = kfp_api
    state.required_token = "needed"
    result = _cli("upload", "--host", url)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: the Kubeflow Pipelines API at {url} answered 401 Unauthorized: not authenticated: "
        "pass --token, --token-file or --cookie"
    ]


def test_token_file_is_read_on_every_request(kfp_api, tmp_path):
    """A pod's projected ServiceAccount token (the chart's upload Job) rotates: kfp re-reads the file."""
    url, state = kfp_api
    token_file = tmp_path / "token"
    token_file.write_text("first-token\n")
    upload(config.load("demo"), url, auth=Auth(token_file=str(token_file)))
    token_file.write_text("rotated-token\n")
    before = len(state.requests)
    upload(config.load("demo"), url, auth=Auth(token_file=str(token_file)))
    assert {r.headers.get("authorization") for r in state.requests[:before]} == {"Bearer first-token"}
    assert {r.headers.get("authorization") for r in state.requests[before:]} == {"Bearer rotated-token"}
    with pytest.raises(KFPUnavailable, match="token file .*missing does not exist"):
        upload(config.load("demo"), url, auth=Auth(token_file=str(tmp_path / "missing")))


def test_cli_token_file_from_kfps_environment_variable(kfp_api, tmp_path):
    url, state = kfp_api
    (tmp_path / "token").write_text("sa-token")
    result = _cli("upload", "--host", url, env={"KF_PIPELINES_SA_TOKEN_PATH": str(tmp_path / "token")})
    assert result.returncode == 0, result.stderr[-2000:]
    assert {r.headers.get("authorization") for r in state.requests} == {"Bearer sa-token"}


def test_session_cookie_reaches_the_server(kfp_api):
    url, state = kfp_api
    auth = Auth(cookie="authservice_session=s3ss10n")
    submit(config.load("demo"), url, auth=auth)
    assert {r.headers.get("cookie") for r in state.requests} == {"authservice_session=s3ss10n"}
    assert "s3ss10n" not in repr(auth)


def test_upload_into_a_namespace_is_the_profiles_own_pipeline(kfp_api):
    url, state = kfp_api
    cfg = config.load("demo")
    mine = upload(cfg, url, namespace="team-a")
    (up,) = state.calls("POST", "/pipelines/upload")
    assert up.query["namespace"] == ["team-a"]
    assert state.calls("GET", "/pipelines")[0].query["namespace"] == ["team-a"]
    assert upload(cfg, url, namespace="team-a").created is False  # found in its namespace
    shared = upload(cfg, url)  # the shared pipeline of that name is another one
    assert shared.created and shared.pipeline_id != mine.pipeline_id
    assert "namespace" not in state.calls("POST", "/pipelines/upload")[1].query


def test_cli_unreachable_host_is_one_line(unused_port):
    url = f"http://127.0.0.1:{unused_port}"
    for command in ("submit", "upload"):
        result = _cli(command, "--host", url)
        assert result.returncode == 1, command
        assert result.stderr.strip().splitlines() == [
            f"error: cannot reach the Kubeflow Pipelines API at {url}: [Errno 111] Connection refused"
        ], command


def test_credentials_in_a_url_are_refused_before_anything_is_sent(kfp_api):
    url, state = kfp_api
    result = _cli("submit", "--host", url, "--pipeline-root", "s3://AKIAXXXX:hunter2@bucket/root")
    assert result.returncode == 2
    assert "--pipeline-root has credentials inside its URL (s3://***@bucket/…)" in result.stderr
    assert "hunter2" not in result.stderr and not state.requests


@pytest.mark.parametrize("command", [["upload"], ["submit"], ["submit", "--wait"]])
@pytest.mark.parametrize("body, content_type", [(b"OK", "text/plain"), (b"{}", "application/json")])
def test_a_server_that_is_not_kfp_is_one_line_naming_its_answer(not_kfp_api, body, content_type, command):
    url = not_kfp_api(body, content_type)
    result = _cli(*command, "--host", url)
    assert result.returncode == 1, result.stdout + result.stderr[-2000:]
    if body == b"OK":
        shown = "GET /apis/v2beta1/healthz answered 200 'OK', not a JSON object"
    elif command == ["upload"]:
        shown = "uploading pipeline sidreasoner answered 200 '{}', not an object holding pipeline_id"
    else:
        shown = "creating experiment sidreasoner answered 200 '{}', not an object holding experiment_id"
    assert result.stderr.strip().splitlines() == [
        f"error: {url} is not the Kubeflow Pipelines API: {shown}; check --host (the API's base URL, e.g. "
        "http://localhost:8080)"
    ]
    assert "created" not in result.stdout and "uploaded" not in result.stdout and "None" not in result.stdout


def test_what_the_server_answered_is_shown_short_and_escaped(not_kfp_api):
    url = not_kfp_api(b"\x1b[2J<status>fine</status>" + b"x" * 500, "application/xml")
    result = _cli("submit", "--host", url)
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()
    assert "answered 200 '\\x1b[2J<status>fine</status>xxx" in line and "\x1b" not in line
    assert line.count("x") < 100 and "…, not a JSON object" in line


def test_a_run_answer_without_a_run_id_is_not_a_created_run(kfp_api):
    url, state = kfp_api
    state.answers["POST", "/runs"] = {"note": "accepted"}
    result = _cli("submit", "--host", url, "--wait")
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f'error: {url} is not the Kubeflow Pipelines API: creating the run answered 200 \'{{"note": "accepted"}}\', '
        "not an object holding run_id; check --host (the API's base URL, e.g. http://localhost:8080)"
    ]
    assert "Run details" not in result.stdout and "created" not in result.stdout
    assert not state.calls("GET", "/runs/None")
