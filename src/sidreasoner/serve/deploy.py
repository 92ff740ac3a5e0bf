"""The `deploy-model` step: serve the exported model as a KServe InferenceService (serving.kserve.io/v1beta1).

The InferenceService's predictor is a custom container in the project's image running `sidreasoner serve` on
the folder KServe's storage initializer downloads from the export URI (the container's STORAGE_URI, which is
how a custom predictor names its storageUri) into /mnt/models. The step creates it, or replaces the spec of
the one of that name (keeping its metadata: the controller's finalizers, labels and annotations others set),
waits until the controller reports the new generation Ready, and records the applied manifest and the URL
(`Deployment`).

What the manifest takes from the cluster section (the image, cluster.serving's resources, node selector and
tolerations, image pull secrets, pod labels) is fixed when the pipeline is compiled: the deploy-model task
receives it as one JSON argument, `ServingPod`, which reaches this step as $SIDREASONER_SERVING_POD.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sidreasoner.artifacts import Deployment, ModelExport
from sidreasoner.config import ClusterConfig, Config, ConfigError, StepResources
from sidreasoner.config.overrides import is_bucket_uri

log = logging.getLogger(__name__)

GROUP, VERSION, PLURAL, KIND = "serving.kserve.io", "v1beta1", "inferenceservices", "InferenceService"
SERVING_POD_ENV = "SIDREASONER_SERVING_POD"
# Where KServe's storage initializer puts the files of storageUri in the predictor container.
MODEL_MOUNT = "/mnt/models"
# The port KServe routes to in a custom predictor container (its default container port).
PORT = 8080
CONTAINER = "kserve-container"  # the name KServe gives (and expects of) the predictor's container
NAMESPACE_FILE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"
POLL_S = 5.0  # between reads of the InferenceService's status while waiting for Ready
IMAGE_UID = 1000  # the user the images run as (images/*/Dockerfile: USER 1000): every step's pod and the predictor's
# Our bucket schemes as the storage initializer reads them (kserve python/storage/kserve_storage/
# kserve_storage.py `_S3_PREFIX`, `_GCS_PREFIX`); a MinIO bucket is read through the S3 API, its endpoint
# from the credentials Secret.
STORAGE_SCHEMES = {"s3": "s3", "minio": "s3", "gs": "gs"}
BUCKET_URI_HINT = "an s3://, minio:// or gs:// URI (a local folder cannot be a KServe storageUri)"
# Labels of the InferenceService and its predictor pods.
NAME_LABEL, PART_OF_LABEL = "app.kubernetes.io/name", "app.kubernetes.io/part-of"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"


def image_pull_policy(image: str) -> str:
    """A tag can be pushed again (`make push-images` after a fix): a node's copy of it may be old code under the
    new code's `code_version`. Only a digest names one image for good."""
    return "IfNotPresent" if "@sha256:" in image else "Always"


@dataclass(frozen=True)
class ServingPod:
    """The predictor pod's settings that come from the cluster section and the images, fixed at compile time."""

    image: str
    resources: StepResources = field(default_factory=StepResources)
    image_pull_secrets: tuple[str, ...] = ()
    labels: Mapping[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "image": self.image,
            "resources": self.resources.model_dump(mode="json"),
            "image_pull_secrets": list(self.image_pull_secrets),
            "labels": dict(self.labels),
        }

    @classmethod
    def from_json(cls, value: Mapping[str, Any], where: str = SERVING_POD_ENV) -> ServingPod:
        unknown = sorted(set(value) - {"image", "resources", "image_pull_secrets", "labels"})
        if unknown or not isinstance(value.get("image"), str) or not value["image"]:
            problem = f"unknown key(s) {', '.join(unknown)}" if unknown else "no 'image'"
            raise ConfigError(f"{where}: {problem} (expected image, resources, image_pull_secrets, labels)")
        return cls(
            image=value["image"],
            resources=StepResources.model_validate(value.get("resources", {})),
            image_pull_secrets=tuple(value.get("image_pull_secrets", ())),
            labels=dict(value.get("labels", {})),
        )


def serving_pod(cluster: ClusterConfig, images: Mapping[str, str]) -> ServingPod:
    """The predictor pod of `cluster`: in the training image when cluster.serving asks for GPUs (the CPU image
    has no CUDA), else in the CPU image."""
    image = images["train"] if cluster.serving.gpus > 0 else images["cpu"]
    return ServingPod(image, cluster.serving, tuple(cluster.image_pull_secrets), dict(cluster.labels))


def serving_pod_from_env(environ: Mapping[str, str] | None = None) -> ServingPod:
    # os.environ read at each call, not bound as a default: a library may replace the os.environ object.
    raw = (os.environ if environ is None else environ).get(SERVING_POD_ENV, "").strip()
    if not raw:
        raise ConfigError(
            f"deploy-model: ${SERVING_POD_ENV} is not set. A compiled pipeline sets it from the images and "
            f"cluster.serving; to run the step by hand set it to JSON, e.g. "
            f'{SERVING_POD_ENV}=\'{{"image": "registry/sidreasoner-cpu:TAG", "resources": {{"cpu": "1"}}}}\''
        )
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as err:
        raise ConfigError(f"${SERVING_POD_ENV}: not JSON ({err})") from None
    if not isinstance(value, dict):
        raise ConfigError(f"${SERVING_POD_ENV}: expected a JSON object, got {type(value).__name__}")
    return ServingPod.from_json(value, f"${SERVING_POD_ENV}")


def storage_uri(export_uri: str) -> str:
    """The export URI as KServe's storage initializer reads it: minio:// becomes s3://."""
    uri = export_uri.strip().rstrip("/")
    if not is_bucket_uri(uri):
        raise ConfigError(f"deploy-model: the model was exported to {export_uri!r}; KServe needs {BUCKET_URI_HINT}")
    scheme, _, rest = uri.partition("://")
    return f"{STORAGE_SCHEMES[scheme]}://{rest}"


def _flatten(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [pair for key, item in value.items() for pair in _flatten(f"{prefix}.{key}", item)]
    return [(prefix, value)]


# The server's own flags (--name, --port) say these; the others are about deploying, not serving.
SERVE_KEYS = ("max_batch", "max_wait_ms")


def server_args(cfg: Config) -> list[str]:
    """`sidreasoner serve` on the downloaded export, with the run's seed, eval section and batching settings."""
    settings = [("seed", cfg.seed)]
    settings += _flatten("eval", cfg.eval.model_dump(mode="json"))
    settings += [(f"serve.{key}", getattr(cfg.serve, key)) for key in SERVE_KEYS]
    args = [
        "serve",
        "--model",
        MODEL_MOUNT,
        "--sid-index",
        f"{MODEL_MOUNT}/{ModelExport.CATALOGUE_SID_INDEX}",
        "--dataset",
        f"{MODEL_MOUNT}/{ModelExport.CATALOGUE_DATASET}",
        "--name",
        cfg.serve.name,
        "--port",
        str(PORT),
    ]
    for key, value in settings:
        args += ["--set", f"{key}={json.dumps(value)}"]
    return args


def _resources(res: StepResources) -> dict[str, dict[str, str]]:
    requests = {"cpu": res.cpu, "memory": res.memory}
    limits = {"cpu": res.cpu_limit, "memory": res.memory_limit}
    if res.gpus:
        requests[res.accelerator] = limits[res.accelerator] = str(res.gpus)
    return {
        "requests": {k: str(v) for k, v in requests.items() if v},
        "limits": {k: str(v) for k, v in limits.items() if v},
    }


def _probe(path: str, period_s: int, failures: int) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": PORT},
        "periodSeconds": period_s,
        "timeoutSeconds": 5,
        "failureThreshold": failures,
    }


def _container(cfg: Config, pod: ServingPod) -> dict[str, Any]:
    return {
        "name": CONTAINER,
        "image": pod.image,
        "imagePullPolicy": image_pull_policy(pod.image),
        "command": ["sidreasoner"],
        "args": server_args(cfg),
        "ports": [{"containerPort": PORT, "protocol": "TCP"}],
        "resources": _resources(pod.resources),
        # kserve's REST server: GET / is its liveness (protocol/rest/server.py:143), GET /v1/models/<name> is
        # 200 once the model is loaded (protocol/rest/v1_endpoints.py:158). Loading a model takes a while: a
        # long readiness allowance, liveness only on the process answering at all.
        "readinessProbe": {**_probe(f"/v1/models/{cfg.serve.name}", 10, 3), "initialDelaySeconds": 5},
        "livenessProbe": {**_probe("/", 20, 6), "initialDelaySeconds": 60},
        "securityContext": {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]}},
    }


def labels(cfg: Config, pod: ServingPod) -> dict[str, str]:
    return {
        **pod.labels,
        NAME_LABEL: cfg.serve.name,
        PART_OF_LABEL: "sidreasoner",
        MANAGED_BY_LABEL: "sidreasoner-deploy-model",
    }


def inference_service(cfg: Config, pod: ServingPod, export_uri: str, namespace: str) -> dict[str, Any]:
    """The InferenceService serving the model exported to `export_uri` with `cfg`'s serve and eval settings."""
    res = pod.resources
    predictor: dict[str, Any] = {
        "minReplicas": cfg.serve.min_replicas,
        "maxReplicas": cfg.serve.max_replicas,
        "labels": labels(cfg, pod),
        "securityContext": {
            "runAsUser": IMAGE_UID,
            "runAsGroup": IMAGE_UID,
            "runAsNonRoot": True,
            "fsGroup": IMAGE_UID,
        },
        "containers": [{**_container(cfg, pod), "env": [{"name": "STORAGE_URI", "value": storage_uri(export_uri)}]}],
    }
    if cfg.serve.service_account:
        predictor["serviceAccountName"] = cfg.serve.service_account
    if pod.image_pull_secrets:
        predictor["imagePullSecrets"] = [{"name": name} for name in pod.image_pull_secrets]
    if res.node_selector:
        predictor["nodeSelector"] = dict(res.node_selector)
    if res.tolerations:
        predictor["tolerations"] = [
            {key: value for key, value in t.model_dump(mode="json").items() if value not in ("", None)}
            for t in res.tolerations
        ]
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": cfg.serve.name, "namespace": namespace, "labels": labels(cfg, pod)},
        "spec": {"predictor": predictor},
    }


def namespace_of(cfg: Config, namespace_file: str | os.PathLike = NAMESPACE_FILE) -> str:
    """serve.namespace, else the namespace of the pod this runs in (its ServiceAccount token's), else an error."""
    if cfg.serve.namespace:
        return cfg.serve.namespace
    path = Path(namespace_file)
    own = path.read_text().strip() if path.is_file() else ""
    if not own:
        raise ConfigError(
            f"deploy-model: serve.namespace is empty and {path} is not there (not running in a pod): set "
            "serve.namespace (--set serve.namespace=NAMESPACE)"
        )
    return own


def custom_objects_api():
    """The Kubernetes API as this process may use it: the pod's ServiceAccount in a cluster, else the
    kubeconfig ($KUBECONFIG, else ~/.kube/config)."""
    from kubernetes import client, config

    configuration = client.Configuration()
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        config.load_incluster_config(client_configuration=configuration)
    else:
        # $KUBECONFIG read now: the client's default is the value it had when `kubernetes` was imported.
        config.load_kube_config(
            config_file=os.environ.get("KUBECONFIG") or None, client_configuration=configuration, persist_config=False
        )
    return client.CustomObjectsApi(client.ApiClient(configuration))


def _api_error(err, what: str, name: str, namespace: str) -> RuntimeError:
    """An ApiException as one line: the HTTP status and the Status body's reason and message."""
    try:
        body = json.loads(err.body or "{}")
    except (TypeError, json.JSONDecodeError):
        body = {}
    detail = body.get("message") or err.reason
    hint = ""
    if err.status == 403:
        hint = " (the pipeline runner's ServiceAccount needs the chart's RBAC for serving.kserve.io inferenceservices)"
    elif err.status == 404 and what != "get":
        hint = " (is KServe installed? its InferenceService CRD must be in the cluster)"
    return RuntimeError(f"deploy-model: {what} InferenceService {namespace}/{name}: HTTP {err.status}: {detail}{hint}")


def _merged_metadata(current: Mapping[str, Any], ours: Mapping[str, Any]) -> dict[str, Any]:
    """The existing object's metadata (resourceVersion, finalizers, owner references, what others set) with
    our labels and annotations over its own: a replace must not drop the controller's finalizer."""
    metadata = dict(current)
    for key in ("labels", "annotations"):
        if ours.get(key):
            metadata[key] = {**current.get(key, {}), **ours[key]}
    return metadata


def apply(api, manifest: dict[str, Any], attempts: int = 3) -> tuple[dict[str, Any], bool]:
    """Create the InferenceService, or replace the spec of the one that exists; (the object as stored, created)."""
    from kubernetes.client.rest import ApiException

    name, namespace = manifest["metadata"]["name"], manifest["metadata"]["namespace"]
    for attempt in range(attempts):
        try:
            current = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as err:
            if err.status != 404:
                raise _api_error(err, "get", name, namespace) from None
            current = None
        try:
            if current is None:
                return api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, manifest), True
            body = {**manifest, "metadata": _merged_metadata(current["metadata"], manifest["metadata"])}
            return api.replace_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body), False
        except ApiException as err:
            # 409: created or changed by someone else since our get (AlreadyExists, or a stale resourceVersion).
            if err.status != 409 or attempt == attempts - 1:
                raise _api_error(err, "create" if current is None else "replace", name, namespace) from None
            log.info("deploy-model: %s/%s changed meanwhile (%s); reading it again", namespace, name, err.reason)
    raise AssertionError("unreachable")


def _ready_condition(status: Mapping[str, Any]) -> Mapping[str, Any]:
    return next((c for c in status.get("conditions", []) if c.get("type") == "Ready"), {})


def _failure(status: Mapping[str, Any]) -> str | None:
    """Why the controller gave up on this generation, or None. KServe sets modelStatus.transitionStatus to
    BlockedByFailedLoad (the model or runtime failed to load) or InvalidSpec (pkg/apis/serving/v1beta1/
    inference_service_status.go, TransitionStatus), with lastFailureInfo's reason and message."""
    model = status.get("modelStatus", {})
    if model.get("transitionStatus") not in ("BlockedByFailedLoad", "InvalidSpec"):
        return None
    info, ready = model.get("lastFailureInfo", {}), _ready_condition(status)
    reason = info.get("reason") or ready.get("reason") or model["transitionStatus"]
    message = info.get("message") or ready.get("message") or ""
    return f"{model['transitionStatus']}: {reason}" + (f": {message}" if message else "")


def _describe(status: Mapping[str, Any]) -> str:
    ready = _ready_condition(status)
    if not ready:
        return "no Ready condition yet"
    text = f"Ready={ready.get('status', 'Unknown')}"
    if ready.get("reason"):
        text += f" ({ready['reason']}"
        text += f": {ready['message']})" if ready.get("message") else ")"
    return text


def wait_ready(
    api,
    name: str,
    namespace: str,
    generation: int,
    timeout_s: float,
    poll_s: float | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, Any]:
    """The InferenceService once the controller has observed `generation` and reports it Ready; an error with
    the controller's reason when it failed to load, or when `timeout_s` passes first."""
    from kubernetes.client.rest import ApiException

    deadline = clock() + timeout_s
    while True:
        try:
            isvc = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        except ApiException as err:
            raise _api_error(err, "get", name, namespace) from None
        status = isvc.get("status") or {}
        current = status.get("observedGeneration", 0) >= generation
        if current and _ready_condition(status).get("status") == "True":
            return isvc
        failure = _failure(status) if current else None
        if failure:
            raise RuntimeError(f"deploy-model: InferenceService {namespace}/{name} failed: {failure}")
        if clock() >= deadline:
            seen = _describe(status) if current else f"generation {generation} not yet observed by the controller"
            raise TimeoutError(
                f"deploy-model: InferenceService {namespace}/{name} not Ready after {timeout_s:g} s "
                f"(serve.ready_timeout_s): {seen}. `kubectl -n {namespace} describe inferenceservice {name}` "
                "and the predictor pod's events say why"
            )
        time.sleep(POLL_S if poll_s is None else poll_s)


def deploy_model(
    cfg: Config,
    model_export: ModelExport | Path,
    deployment: Deployment | Path,
    api=None,
    pod: ServingPod | None = None,
    poll_s: float | None = None,
) -> dict[str, float]:
    """Create or update the InferenceService serving the model `model_export` records, wait until it is Ready,
    and record it (`deployment`). `api` (a kubernetes CustomObjectsApi) and `pod` default to this process's
    cluster access and $SIDREASONER_SERVING_POD."""
    start = time.time()
    export_uri = ModelExport.at(model_export).uri()
    manifest = inference_service(cfg, pod or serving_pod_from_env(), export_uri, namespace_of(cfg))
    name, namespace = cfg.serve.name, manifest["metadata"]["namespace"]
    api = api or custom_objects_api()
    stored, created = apply(api, manifest)
    generation = int(stored["metadata"].get("generation", 1))
    log.info("deploy-model: %s %s/%s (generation %d)", "created" if created else "updated", namespace, name, generation)
    isvc = wait_ready(api, name, namespace, generation, cfg.serve.ready_timeout_s, poll_s)
    url = (isvc.get("status") or {}).get("url", "")
    with Deployment.writing(deployment) as out:
        out.write(manifest, {"name": name, "namespace": namespace, "url": url, "generation": generation})
    log.info("deploy-model: %s/%s is Ready at %s", namespace, name, url)
    return {"created": float(created), "generation": float(generation), "ready_seconds": time.time() - start}
