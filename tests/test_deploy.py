"""deploy-model: the InferenceService it builds (checked against KServe's own CRD schema), and creating,
updating and waiting for it against a Kubernetes API server stand-in on 127.0.0.1 (tests/helpers/kube_api.py)
through the real `kubernetes` client."""

from __future__ import annotations

import copy
import gzip
import json
import urllib.error
import urllib.request
from pathlib import Path

import jsonschema
import pytest
from kubernetes.client.rest import ApiException

from sidreasoner.artifacts import Deployment, ModelExport
from sidreasoner.config import ConfigError, StepResources, Toleration, load
from sidreasoner.runner import run_step
from sidreasoner.serve import deploy
from sidreasoner.serve.deploy import (
    SERVING_POD_ENV,
    ServingPod,
    deploy_model,
    inference_service,
    namespace_of,
    serving_pod,
    serving_pod_from_env,
    storage_uri,
)

from .helpers.kube_api import GROUP, PLURAL, TOKEN, VERSION, KubeAPI, serving

SCHEMA = Path(__file__).parent / "data" / "kserve" / "inferenceservice-v1beta1.schema.json.gz"
EXPORT_URI = "minio://models/office/run-1"
POD = ServingPod(
    image="registry.example/sidreasoner-cpu:abc",
    resources=StepResources(
        cpu="2",
        memory="8Gi",
        memory_limit="8Gi",
        node_selector={"pool": "serving"},
        tolerations=[Toleration(key="dedicated", value="serving", effect="NoSchedule")],
    ),
    image_pull_secrets=("regcred",),
    labels={"team": "recsys"},
)


def _schema(strict: bool) -> dict:
    """KServe's InferenceService v1beta1 openAPIV3Schema; `strict`: an object with declared properties
    refuses others. The API server prunes unknown fields silently (a misspelt field would vanish), so the
    strict schema is what a manifest must meet."""
    schema = json.loads(gzip.decompress(SCHEMA.read_bytes()))
    if strict:
        _close(schema)
    return schema


def _close(node):
    if isinstance(node, dict):
        if node.get("type") == "object" and "properties" in node and "additionalProperties" not in node:
            if not node.get("x-kubernetes-preserve-unknown-fields"):
                node["additionalProperties"] = False
        for value in node.values():
            _close(value)
    elif isinstance(node, list):
        for value in node:
            _close(value)


def _errors(manifest: dict, strict: bool = True) -> list[str]:
    validator = jsonschema.Draft7Validator(_schema(strict))
    return sorted(f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(manifest))


def _cfg(*overrides: str):
    return load("demo", ["serve.namespace=recsys", f"export.uri={EXPORT_URI}", "serve.enabled=true", *overrides])


def _export(tmp_path: Path, uri: str = EXPORT_URI) -> Path:
    with ModelExport.writing(tmp_path / "model_export") as export:
        export.write_record({"uri": uri, "uploaded": True, "files": {}, "total_bytes": 0})
    return tmp_path / "model_export"


# ---------------------------------------------------------------- the manifest


def test_the_manifest_meets_kserves_crd_schema_and_a_bad_one_does_not():
    manifest = inference_service(_cfg(), POD, EXPORT_URI, "recsys")
    assert _errors(manifest) == []
    bad = copy.deepcopy(manifest)
    bad["spec"]["predictor"]["minReplicas"] = "one"
    bad["spec"]["predictor"]["storageUri"] = EXPORT_URI  # no such field on a custom predictor: it would be pruned
    del bad["spec"]["predictor"]["containers"][0]["name"]
    assert _errors(bad) == [
        "spec.predictor.containers.0: 'name' is a required property",
        "spec.predictor.minReplicas: 'one' is not of type 'integer'",
        "spec.predictor: Additional properties are not allowed ('storageUri' was unexpected)",
    ]
    assert _errors(bad, strict=False) == [  # KServe's schema as the API server applies it
        "spec.predictor.containers.0: 'name' is a required property",
        "spec.predictor.minReplicas: 'one' is not of type 'integer'",
    ]


def test_the_predictor_runs_sidreasoner_serve_on_the_downloaded_export():
    manifest = inference_service(_cfg("serve.max_batch=16", "eval.num_beams=20", "seed=7"), POD, EXPORT_URI, "recsys")
    assert manifest["apiVersion"] == "serving.kserve.io/v1beta1" and manifest["kind"] == "InferenceService"
    labels = {
        "team": "recsys",
        "app.kubernetes.io/name": "sidreasoner",
        "app.kubernetes.io/part-of": "sidreasoner",
        "app.kubernetes.io/managed-by": "sidreasoner-deploy-model",
    }
    assert manifest["metadata"] == {"name": "sidreasoner", "namespace": "recsys", "labels": labels}
    predictor = manifest["spec"]["predictor"]
    (container,) = predictor.pop("containers")
    assert predictor == {
        "minReplicas": 1,
        "maxReplicas": 1,
        "labels": labels,
        "securityContext": {"runAsUser": 1000, "runAsGroup": 1000, "runAsNonRoot": True, "fsGroup": 1000},
        "imagePullSecrets": [{"name": "regcred"}],
        "nodeSelector": {"pool": "serving"},
        "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "serving", "effect": "NoSchedule"}],
    }
    args = container.pop("args")
    assert args[:11] == [
        "serve",
        "--model",
        "/mnt/models",
        "--sid-index",
        "/mnt/models/catalogue/sid_index",
        "--dataset",
        "/mnt/models/catalogue/dataset",
        "--name",
        "sidreasoner",
        "--port",
        "8080",
    ]
    settings = [value for flag, value in zip(args[11::2], args[12::2], strict=True) if flag == "--set"]
    assert len(settings) == len(args[11:]) // 2
    assert {"seed=7", "eval.num_beams=20", "eval.ks=[1, 3, 5, 10]", 'eval.device="auto"', "serve.max_batch=16"} <= set(
        settings
    )
    assert not [s for s in settings if s.startswith(("serve.port", "serve.name", "serve.namespace"))]
    assert container == {
        "name": "kserve-container",
        "image": "registry.example/sidreasoner-cpu:abc",
        "imagePullPolicy": "Always",
        "command": ["sidreasoner"],
        "ports": [{"containerPort": 8080, "protocol": "TCP"}],
        "resources": {"requests": {"cpu": "2", "memory": "8Gi"}, "limits": {"memory": "8Gi"}},
        "readinessProbe": {
            "httpGet": {"path": "/v1/models/sidreasoner", "port": 8080},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
            "initialDelaySeconds": 5,
        },
        "livenessProbe": {
            "httpGet": {"path": "/", "port": 8080},
            "periodSeconds": 20,
            "timeoutSeconds": 5,
            "failureThreshold": 6,
            "initialDelaySeconds": 60,
        },
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
        # KServe's storage initializer downloads a custom container's STORAGE_URI into /mnt/models
        # (kserve pkg/constants/constants.go CustomSpecStorageUriEnvVarKey; storage_initializer_injector.go).
        "env": [{"name": "STORAGE_URI", "value": "s3://models/office/run-1"}],
    }


def test_the_server_settings_parse_back_to_the_runs_values():
    cfg = _cfg("eval.num_beams=20", "eval.device=cpu", "serve.max_wait_ms=2.5")
    args = inference_service(cfg, POD, EXPORT_URI, "recsys")["spec"]["predictor"]["containers"][0]["args"]
    settings = [value for flag, value in zip(args[11::2], args[12::2], strict=True) if flag == "--set"]
    back = load("demo", settings)
    assert back.eval == cfg.eval and back.seed == cfg.seed
    assert (back.serve.max_batch, back.serve.max_wait_ms) == (cfg.serve.max_batch, 2.5)


def test_gpus_service_account_and_replicas():
    cfg = load(
        "demo",
        [
            f"export.uri={EXPORT_URI}",
            "serve.enabled=true",
            "serve.service_account=models-reader",
            "serve.min_replicas=0",
            "serve.max_replicas=3",
            'cluster.serving={"cpu": "4", "memory": "16Gi", "gpus": 1}',
            'cluster.image_pull_secrets=["regcred"]',
        ],
    )
    pod = serving_pod(cfg.cluster, {"cpu": "cpu-image", "train": "train-image@sha256:" + "0" * 64})
    manifest = inference_service(cfg, pod, "gs://models/run-1/", "ns")
    predictor = manifest["spec"]["predictor"]
    container = predictor["containers"][0]
    assert container["image"] == "train-image@sha256:" + "0" * 64 and container["imagePullPolicy"] == "IfNotPresent"
    assert container["resources"] == {
        "requests": {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"},
        "limits": {"nvidia.com/gpu": "1"},
    }
    assert container["env"] == [{"name": "STORAGE_URI", "value": "gs://models/run-1"}]
    assert (predictor["minReplicas"], predictor["maxReplicas"]) == (0, 3)
    assert predictor["serviceAccountName"] == "models-reader"
    assert predictor["imagePullSecrets"] == [{"name": "regcred"}]
    assert _errors(manifest) == []


def test_storage_uri_schemes():
    assert storage_uri("minio://models/run-1") == "s3://models/run-1"
    assert storage_uri("s3://models/run-1/") == "s3://models/run-1"
    assert storage_uri("gs://models/run-1") == "gs://models/run-1"
    for local in ("/data/models", "file:///data/models", "s3://", "hdfs://models/run-1"):
        with pytest.raises(ConfigError, match="KServe needs an s3://, minio:// or gs:// URI"):
            storage_uri(local)


def test_serve_enabled_needs_a_bucket_export_uri():
    with pytest.raises(ConfigError, match=r"serve.enabled needs export.uri .*\(it is 'file:///data/m'\)"):
        load("demo", ["serve.enabled=true", "export.uri=file:///data/m"])
    with pytest.raises(ConfigError, match=r"\(it is empty\)"):
        load("demo", ["serve.enabled=true"])
    assert load("demo", ["serve.enabled=true", "export.uri=gs://m/r"]).serve.enabled


def test_the_namespace_is_the_settings_else_the_pods_own(tmp_path):
    own = tmp_path / "namespace"
    assert namespace_of(_cfg(), own) == "recsys"
    cfg = load("demo")
    with pytest.raises(ConfigError, match=r"serve.namespace is empty and .*namespace is not there.*--set serve"):
        namespace_of(cfg, own)
    own.write_text("kubeflow-user\n")
    assert namespace_of(cfg, own) == "kubeflow-user"


def test_the_serving_pod_setting_round_trips_and_is_required(monkeypatch):
    assert ServingPod.from_json(json.loads(json.dumps(POD.to_json()))) == POD
    with pytest.raises(ConfigError, match=rf"\${SERVING_POD_ENV} is not set.*to run the step by hand"):
        serving_pod_from_env({})
    with pytest.raises(ConfigError, match=r"unknown key\(s\) imag"):
        serving_pod_from_env({SERVING_POD_ENV: '{"imag": "x"}'})
    with pytest.raises(ConfigError, match="not JSON"):
        serving_pod_from_env({SERVING_POD_ENV: "{"})


# ---------------------------------------------------------------- against the API server stand-in


@pytest.fixture
def kube(tmp_path, monkeypatch):
    """The stand-in, and a kubeconfig naming it as $KUBECONFIG (as on a machine outside the cluster)."""
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(deploy, "POLL_S", 0.01)
    with serving() as api:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
        yield api


def _deploy(tmp_path: Path, out: str, *overrides: str) -> tuple[dict, Deployment]:
    metrics = deploy_model(_cfg(*overrides), _export(tmp_path), tmp_path / out, pod=POD)
    return metrics, Deployment(tmp_path / out)


def test_deploy_creates_then_updates_the_same_inference_service(kube, tmp_path):
    metrics, first = _deploy(tmp_path, "d1")
    assert metrics["created"] == 1.0 and metrics["generation"] == 1.0
    assert first.record() == {
        "name": "sidreasoner",
        "namespace": "recsys",
        "url": "http://sidreasoner.recsys.example.com",
        "generation": 1,
    }
    assert first.manifest() == inference_service(_cfg(), POD, EXPORT_URI, "recsys")
    assert [r.method for r in kube.requests] == ["GET", "POST", "GET", "GET"]  # 404, create, unobserved, Ready
    assert {r.authorization for r in kube.requests} == {f"Bearer {TOKEN}"}
    stored = kube.objects[("recsys", "sidreasoner")]
    uid = stored["metadata"]["uid"]
    assert _errors(stored, strict=False) == []  # with the stand-in controller's status
    # What the KServe controller and others add to the object, which an update must keep.
    stored["metadata"]["finalizers"] = ["inferenceservice.finalizers"]
    stored["metadata"]["annotations"] = {"owner": "recsys-team"}

    kube.requests.clear()
    metrics, second = _deploy(tmp_path, "d2", "serve.max_batch=16")
    assert metrics["created"] == 0.0 and metrics["generation"] == 2.0
    assert second.record()["generation"] == 2 and second.record()["url"] == "http://sidreasoner.recsys.example.com"
    assert [r.method for r in kube.requests] == ["GET", "PUT", "GET", "GET"]
    stored = kube.objects[("recsys", "sidreasoner")]
    assert stored["metadata"]["uid"] == uid and stored["metadata"]["generation"] == 2
    assert stored["metadata"]["finalizers"] == ["inferenceservice.finalizers"]
    assert stored["metadata"]["annotations"] == {"owner": "recsys-team"}
    assert "serve.max_batch=16" in stored["spec"]["predictor"]["containers"][0]["args"]

    # The same settings again: the spec is unchanged, so is the generation (and the controller has seen it).
    kube.requests.clear()
    metrics, _ = _deploy(tmp_path, "d3", "serve.max_batch=16")
    assert metrics["generation"] == 2.0 and [r.method for r in kube.requests] == ["GET", "PUT", "GET"]


def test_a_failed_load_fails_with_the_controllers_reason(kube, tmp_path):
    kube.controller = "fail"
    with pytest.raises(
        RuntimeError,
        match=r"InferenceService recsys/sidreasoner failed: BlockedByFailedLoad: ModelLoadFailed: "
        r"sidreasoner serve: no model under /mnt/models",
    ):
        _deploy(tmp_path, "d1")
    assert not (tmp_path / "d1").exists()


def test_never_ready_times_out_naming_the_condition(kube, tmp_path):
    kube.controller = "never"
    with pytest.raises(
        TimeoutError,
        match=r"recsys/sidreasoner not Ready after 1 s \(serve.ready_timeout_s\): Ready=Unknown \(RevisionMissing: "
        r'Configuration "sidreasoner-predictor" is waiting',
    ):
        _deploy(tmp_path, "d1", "serve.ready_timeout_s=1")


def test_the_registered_step_deploys_with_the_compiled_pod_setting(kube, tmp_path, monkeypatch):
    monkeypatch.setenv(SERVING_POD_ENV, json.dumps(POD.to_json()))
    paths = {"model_export": _export(tmp_path), "deployment": tmp_path / "deployment"}
    metrics = run_step("deploy-model", _cfg(), paths)
    assert metrics["created"] == 1.0
    assert Deployment(tmp_path / "deployment").manifest()["spec"]["predictor"]["containers"][0]["image"] == POD.image


def test_an_api_error_names_the_status_and_the_rbac(kube, tmp_path):
    api = deploy.custom_objects_api()
    manifest = inference_service(_cfg(), POD, EXPORT_URI, "recsys")
    api.create_namespaced_custom_object(GROUP, VERSION, "recsys", PLURAL, manifest)
    with pytest.raises(ApiException) as err:
        api.create_namespaced_custom_object(GROUP, VERSION, "recsys", PLURAL, manifest)
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "AlreadyExists"
    forbidden = ApiException(status=403, reason="Forbidden")
    forbidden.body = json.dumps({"message": 'inferenceservices.serving.kserve.io "x" is forbidden'})
    message = str(deploy._api_error(forbidden, "create", "x", "recsys"))
    assert "HTTP 403" in message and "chart's RBAC" in message


# ---------------------------------------------------------------- the stand-in keeps the API server's rules


def _raw_patch(kube: KubeAPI, content_type: str, body) -> dict:
    url = f"{kube.url}/apis/{GROUP}/{VERSION}/namespaces/recsys/{PLURAL}/sidreasoner"
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), method="PATCH", headers={"Content-Type": content_type}
    )
    with urllib.request.urlopen(request, timeout=10) as answer:
        return json.loads(answer.read())


def test_the_stand_in_answers_as_the_api_server(kube):
    api = deploy.custom_objects_api()
    manifest = inference_service(_cfg(), POD, EXPORT_URI, "recsys")
    with pytest.raises(ApiException) as err:
        api.get_namespaced_custom_object(GROUP, VERSION, "recsys", PLURAL, "sidreasoner")
    assert err.value.status == 404 and json.loads(err.value.body)["reason"] == "NotFound"
    created = api.create_namespaced_custom_object(GROUP, VERSION, "recsys", PLURAL, {**manifest, "status": {"x": 1}})
    assert "status" not in created and created["metadata"]["generation"] == 1
    with pytest.raises(ApiException) as err:  # an update must name the version it replaces
        api.replace_namespaced_custom_object(GROUP, VERSION, "recsys", PLURAL, "sidreasoner", manifest)
    assert err.value.status == 422
    stale = {**manifest, "metadata": {**manifest["metadata"], "resourceVersion": "0"}}
    with pytest.raises(ApiException) as err:
        api.replace_namespaced_custom_object(GROUP, VERSION, "recsys", PLURAL, "sidreasoner", stale)
    assert err.value.status == 409 and json.loads(err.value.body)["reason"] == "Conflict"
    # The client's PATCH is a merge patch; a label changes no generation, the spec does.
    patched = api.patch_namespaced_custom_object(
        GROUP, VERSION, "recsys", PLURAL, "sidreasoner", {"metadata": {"labels": {"extra": "1"}}}
    )
    assert patched["metadata"]["generation"] == 1 and patched["metadata"]["labels"]["extra"] == "1"
    patched = api.patch_namespaced_custom_object(
        GROUP, VERSION, "recsys", PLURAL, "sidreasoner", {"spec": {"predictor": {"maxReplicas": 2}}}
    )
    assert patched["metadata"]["generation"] == 2 and patched["spec"]["predictor"]["minReplicas"] == 1
    # A json-patch, as kubectl sends it (this client's custom-object PATCH sends merge patches only).
    patched = _raw_patch(
        kube, "application/json-patch+json", [{"op": "replace", "path": "/spec/predictor/maxReplicas", "value": 3}]
    )
    assert patched["metadata"]["generation"] == 3 and patched["spec"]["predictor"]["maxReplicas"] == 3
    assert [r.content_type for r in kube.calls("PATCH")] == [
        "application/merge-patch+json",
        "application/merge-patch+json",
        "application/json-patch+json",
    ]
    with pytest.raises(urllib.error.HTTPError) as refused:  # custom resources take no strategic merge patch
        _raw_patch(kube, "application/strategic-merge-patch+json", {"spec": {}})
    assert refused.value.code == 415
    api.delete_namespaced_custom_object(GROUP, VERSION, "recsys", PLURAL, "sidreasoner")
    with pytest.raises(ApiException) as err:
        api.delete_namespaced_custom_object(GROUP, VERSION, "recsys", PLURAL, "sidreasoner")
    assert err.value.status == 404


def test_the_stand_in_controllers_statuses_meet_kserves_schema():
    for controller in ("ready", "never", "fail"):
        api = KubeAPI(controller=controller)
        manifest = inference_service(_cfg(), POD, EXPORT_URI, "recsys")
        api.create("recsys", manifest)
        api.get("recsys", "sidreasoner")
        _, stored = api.get("recsys", "sidreasoner")
        assert stored["status"]["observedGeneration"] == 1
        assert _errors(stored, strict=True) == [], controller
