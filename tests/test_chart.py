"""The Helm chart (charts/sidreasoner), checked offline: rendered and linted by the
helm-python-sdk (Helm's Go SDK through ctypes, no `helm` binary), every rendered manifest validated
with kubernetes-validate in strict mode against a pinned Kubernetes version, the RayCluster (a CRD
those schemas don't know) against KubeRay's required fields, and the chart's promises (fixed names,
no secret values, least-privilege RBAC, securityContext and resources everywhere) asserted."""

import base64
import copy
import hashlib
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import pytest
import yaml

from .test_submit import _uploaded_yaml

CHART = Path(__file__).resolve().parent.parent / "charts" / "sidreasoner"
FULL_VALUES = yaml.safe_load((CHART / "ci" / "full-values.yaml").read_text())
KUBE_VERSION = "1.32.0"  # the Kubernetes version manifests are validated against
NAMESPACE = "kubeflow-user"

# What the paper presets' teacher base_url (http://sidreasoner-teacher:8000/v1) needs.
TEACHER_SERVICE, TEACHER_PORT = "sidreasoner-teacher", 8000
# Fixed Secret names and keys that pipeline steps read (pipelines/pipeline.py): the chart must provide them
# under exactly these names.
SECRETS = {
    "sidreasoner-teacher": {"api-key"},
    "sidreasoner-hf": {"token"},
    "sidreasoner-s3": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"},
    "sidreasoner-gcs": {"key.json"},
}
ONLY_EXISTING = {
    "secrets": {
        "teacher": {"existingSecret": "sidreasoner-teacher"},
        "hf": {"existingSecret": "my-hf"},
        "s3": {"existingSecret": "my-s3"},
        "gcs": {"existingSecret": "sidreasoner-gcs"},
    },
    "minio": {"enabled": True},
    "teacherServer": {"enabled": True, "requireApiKey": True},
    "rayCluster": {"enabled": True},
}


@pytest.fixture(scope="module")
def chart():
    with helm.Chart.load(CHART) as loaded:
        yield loaded


def render(chart, values=None) -> list[dict]:
    out = chart.render(values, name="sidreasoner", namespace=NAMESPACE, is_install=True)
    return [
        doc
        for path, text in sorted(out.items())
        if not path.endswith("NOTES.txt")
        for doc in yaml.safe_load_all(text)
        if doc
    ]


def render_text(chart, values=None) -> str:
    return "\n".join(chart.render(values, name="sidreasoner", namespace=NAMESPACE, is_install=True).values())


def by_kind(docs, kind):
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def one(docs, kind, name):
    return by_kind(docs, kind)[name]


def pod_specs(docs):
    """(where, pod spec) of every pod the chart makes, RayCluster templates included."""
    for d in docs:
        if d["kind"] in ("Deployment", "Job"):
            yield f"{d['kind']}/{d['metadata']['name']}", d["spec"]["template"]["spec"]
        elif d["kind"] == "RayCluster":
            yield "RayCluster head", d["spec"]["headGroupSpec"]["template"]["spec"]
            for group in d["spec"]["workerGroupSpecs"]:
                yield f"RayCluster {group['groupName']}", group["template"]["spec"]


def check_raycluster(rc):
    """KubeRay ray.io/v1's required fields, and the pod templates as strict core/v1 PodTemplates."""
    assert rc["apiVersion"] == "ray.io/v1" and rc["kind"] == "RayCluster"
    assert rc["metadata"]["name"]
    spec = rc["spec"]
    head = spec["headGroupSpec"]
    templates = [head["template"]]
    assert isinstance(head.get("rayStartParams", {}), dict)
    assert all(isinstance(v, str) for v in head.get("rayStartParams", {}).values())
    assert spec["workerGroupSpecs"], "no worker group"
    for group in spec["workerGroupSpecs"]:
        for field in ("groupName", "replicas", "minReplicas", "maxReplicas", "template"):
            assert field in group, f"worker group lacks {field}"
        assert isinstance(group["groupName"], str) and group["groupName"]
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
        assert all(isinstance(v, str) for v in group.get("rayStartParams", {}).values())
        templates.append(group["template"])
    for template in templates:
        assert template["spec"]["containers"], "pod template without containers"
        kubernetes_validate.validate(
            {
                "apiVersion": "v1",
                "kind": "PodTemplate",
                "metadata": {"name": "raycluster-template"},
                "template": template,
            },
            KUBE_VERSION,
            strict=True,
        )


def validate_all(docs):
    for doc in docs:
        if doc["kind"] == "RayCluster":
            check_raycluster(doc)
        else:
            kubernetes_validate.validate(doc, KUBE_VERSION, strict=True)


# --- lint and schema validation of every manifest ------------------------------------------------


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
def test_lint_is_clean(values):
    report = helm.lint(CHART, values, strict=True, namespace=NAMESPACE, kube_version=f"v{KUBE_VERSION}")
    assert report["errors"] == []
    # Severity 2 = warning, 3 = error; info-level hints (e.g. "icon is recommended") are allowed.
    assert [m for m in report["messages"] if m["severity"] >= 2] == []


def test_default_render_validates(chart):
    docs = render(chart)
    validate_all(docs)
    assert sorted((d["kind"], d["metadata"]["name"]) for d in docs) == [
        ("Job", "sidreasoner-model-cache-prepare"),
        ("Job", "sidreasoner-upload-pipeline"),
        ("PersistentVolumeClaim", "sidreasoner-model-cache"),
        ("Role", "sidreasoner-pipeline-runner"),
        ("Role", "sidreasoner-pipeline-uploader"),
        ("RoleBinding", "sidreasoner-pipeline-runner"),
        ("RoleBinding", "sidreasoner-pipeline-uploader"),
        ("ServiceAccount", "sidreasoner-pipeline-runner"),
        ("ServiceAccount", "sidreasoner-pipeline-uploader"),
    ]


def test_full_render_validates(chart):
    docs = render(chart, FULL_VALUES)
    validate_all(docs)
    assert sorted({d["kind"] for d in docs}) == [
        "Deployment",
        "Job",
        "NetworkPolicy",
        "PersistentVolumeClaim",
        "RayCluster",
        "Role",
        "RoleBinding",
        "Secret",
        "Service",
        "ServiceAccount",
    ]
    assert set(by_kind(docs, "Deployment")) == {"sidreasoner-teacher", "sidreasoner-minio"}
    assert set(by_kind(docs, "Service")) == {"sidreasoner-teacher", "sidreasoner-minio"}
    assert set(by_kind(docs, "PersistentVolumeClaim")) == {"sidreasoner-model-cache", "sidreasoner-minio"}


def test_strict_validation_catches_a_misspelt_field(chart):
    """The validator is really strict: an unknown field in a rendered manifest fails it."""
    job = copy.deepcopy(one(render(chart), "Job", "sidreasoner-upload-pipeline"))
    job["spec"]["template"]["spec"]["containers"][0]["resource"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(job, KUBE_VERSION, strict=True)


def test_raycluster_check_catches_a_missing_field(chart):
    rc = copy.deepcopy(one(render(chart, FULL_VALUES), "RayCluster", "sidreasoner-ray"))
    del rc["spec"]["workerGroupSpecs"][0]["maxReplicas"]
    with pytest.raises(AssertionError, match="maxReplicas"):
        check_raycluster(rc)


# --- values.schema.json and template guards -------------------------------------------------------


@pytest.mark.parametrize(
    "values, where",
    [
        ({"teacherServer": {"gpus": "two"}}, "/teacherServer/gpus"),
        ({"teacherServer": {"gpus": 0}}, "/teacherServer/gpus"),
        ({"rayCluster": {"workers": {"gpus": 1.5}}}, "/rayCluster/workers/gpus"),
        ({"rayCluster": {"workers": {"gpus": 0}}}, "/rayCluster/workers/gpus"),  # verl trains on GPUs only
        ({"modelCache": {"mountPath": "models"}}, "/modelCache/mountPath"),  # absolute paths only
        ({"rbac": {"rayJobs": True}}, "rayJobs"),  # gone: the pipeline submits no RayJob
        ({"modelCache": {"accessModes": ["ReadWriteSometimes"]}}, "/modelCache/accessModes"),
        ({"modelCache": {"size": "lots"}}, "/modelCache/size"),
        ({"upload": {"resources": {"limits": None}}}, "/upload/resources"),  # null removes a default
        ({"kfpHost": "ml-pipeline:8888"}, "/kfpHost"),
        ({"teacherserver": {"enabled": True}}, "teacherserver"),  # misspelt key
        ({"images": {"train": {"digest": "sha256:ABC"}}}, "/images/train/digest"),
        ({"images": {"cpu": {"digest": "0.1.0@sha256:" + "a" * 64}}}, "/images/cpu/digest"),  # the digest alone
        ({"rayCluster": {"image": {"digest": "d" * 64}}}, "/rayCluster/image/digest"),
        ({"s3": {"endpoint": "minio:9000"}}, "/s3/endpoint"),
        ({"s3": {"endpoint": "http://minio:9000/bucket"}}, "/s3/endpoint"),
        ({"s3": {"endpoint": "http://key:secret@minio:9000"}}, "/s3/endpoint"),
    ],
)
def test_schema_rejects_bad_values(chart, values, where):
    with pytest.raises(helm.HelmValuesError, match=where):
        chart.render(values, name="sidreasoner", namespace=NAMESPACE)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"secrets": {"teacher": {"apiKey": "k", "existingSecret": "t"}}}, "either apiKey or existingSecret"),
        ({"secrets": {"s3": {"accessKeyId": "a"}}}, "both accessKeyId and secretAccessKey"),
        ({"minio": {"enabled": True}}, "minio.enabled needs root credentials"),
        ({"modelCache": {"accessModes": ["ReadWriteOnce"]}}, "modelCache.accessModes lacks ReadWriteMany"),
        (
            {"rayCluster": {"enabled": True, "workers": {"replicas": 5, "maxReplicas": 2}}},
            "minReplicas <= replicas <= maxReplicas",
        ),
    ],
)
def test_template_guards(chart, values, message):
    with pytest.raises(helm.HelmRenderError, match=message):
        chart.render(values, name="sidreasoner", namespace=NAMESPACE)


# --- credentials ------------------------------------------------------------------------------------


def test_default_render_creates_no_secret(chart):
    docs = render(chart)
    assert by_kind(docs, "Secret") == {}
    assert not [d for d in docs if "data" in d or "stringData" in d]


def test_existing_secrets_only_put_no_secret_value_in_the_output(chart):
    text = render_text(chart, ONLY_EXISTING)
    docs = render(chart, ONLY_EXISTING)
    validate_all(docs)
    assert by_kind(docs, "Secret") == {}
    assert "kind: Secret" not in text and "stringData" not in text
    # None of the full values' (placeholder) credentials, plain or base64, leaks in.
    for cred in FULL_VALUES["secrets"].values():
        for value in cred.values():
            assert value not in text and base64.b64encode(value.encode()).decode() not in text
    # The chart's pods read the named existing Secrets.
    refs = {
        (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
        for _, spec in pod_specs(docs)
        for c in spec["containers"]
        for e in c.get("env", [])
        if "valueFrom" in e
    }
    assert refs == {
        ("my-s3", "AWS_ACCESS_KEY_ID"),
        ("my-s3", "AWS_SECRET_ACCESS_KEY"),
        ("my-hf", "token"),
        ("sidreasoner-teacher", "api-key"),
    }


def test_secrets_from_values_have_fixed_names_and_keys(chart):
    secrets = by_kind(render(chart, FULL_VALUES), "Secret")
    assert {name: set(s["data"]) for name, s in secrets.items()} == SECRETS
    teacher = secrets["sidreasoner-teacher"]["data"]["api-key"]
    assert base64.b64decode(teacher).decode() == FULL_VALUES["secrets"]["teacher"]["apiKey"]
    assert all(s["type"] == "Opaque" and "stringData" not in s for s in secrets.values())


def test_no_default_secret_values():
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    for name, cred in values["secrets"].items():
        assert all(v == "" for v in cred.values()), name


# --- every container: securityContext and resources -----------------------------------------------


@pytest.mark.parametrize("values", [None, FULL_VALUES, ONLY_EXISTING], ids=["default", "full", "existing"])
def test_every_container_is_unprivileged_and_bounded(chart, values):
    specs = list(pod_specs(render(chart, values)))
    assert specs
    for where, spec in specs:
        # The model-cache prepare Job alone runs as root (test_model_cache_prepare_job).
        assert spec["securityContext"]["runAsNonRoot"] is (where != "Job/sidreasoner-model-cache-prepare"), where
        assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}, where
        for c in spec["containers"] + spec.get("initContainers", []):
            sc = c["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False, where
            assert sc["capabilities"]["drop"] == ["ALL"], where
            assert not sc.get("privileged"), where
            assert c["resources"]["requests"] and c["resources"]["limits"], where
            assert {"cpu", "memory"} <= set(c["resources"]["limits"]), where
            assert ":" in c["image"] or "@" in c["image"], where  # pinned, never implicit latest
            assert not c["image"].endswith(":latest"), where


def test_raycluster_autoscaler_is_bounded(chart):
    rc = one(render(chart, FULL_VALUES), "RayCluster", "sidreasoner-ray")
    opts = rc["spec"]["autoscalerOptions"]
    assert opts["resources"]["limits"] and opts["securityContext"]["allowPrivilegeEscalation"] is False


# --- RBAC -----------------------------------------------------------------------------------------

# deploy-model's calls (sidreasoner.serve.deploy): get, create, and replace (update) of one InferenceService.
DEPLOY_RULE = {
    "apiGroups": ["serving.kserve.io"],
    "resources": ["inferenceservices"],
    "verbs": ["get", "create", "update"],
}
KFP_RULES = [
    {"apiGroups": ["argoproj.io"], "resources": ["workflowtaskresults"], "verbs": ["create", "patch"]},
    {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
    {"apiGroups": [""], "resources": ["configmaps"], "resourceNames": ["kfp-launcher"], "verbs": ["get"]},
    DEPLOY_RULE,
    {"apiGroups": [""], "resources": ["secrets"], "resourceNames": ["mlpipeline-minio-artifact"], "verbs": ["get"]},
]
FULL_KFP_RULES = KFP_RULES[:4] + [
    {
        "apiGroups": [""],
        "resources": ["secrets"],
        "resourceNames": ["mlpipeline-minio-artifact", "sidreasoner-s3"],
        "verbs": ["get"],
    },
]


# Stage 3 (verl) reaches the RayCluster as a Ray client, not through the Kubernetes API: a RayCluster
# adds no rule.
@pytest.mark.parametrize(
    "values, rules",
    [
        (None, KFP_RULES),
        ({"rayCluster": {"enabled": True}}, KFP_RULES),
        (FULL_VALUES, FULL_KFP_RULES),
    ],
    ids=["kfp-only", "with-raycluster", "full"],
)
def test_runner_rbac_is_exactly_what_the_launchers_need(chart, values, rules):
    docs = render(chart, values)
    role = one(docs, "Role", "sidreasoner-pipeline-runner")
    assert role["rules"] == rules
    for rule in role["rules"]:
        assert "*" not in rule["verbs"] + rule["resources"] + rule["apiGroups"]
    binding = one(docs, "RoleBinding", "sidreasoner-pipeline-runner")
    assert binding["roleRef"] == {
        "apiGroup": "rbac.authorization.k8s.io",
        "kind": "Role",
        "name": "sidreasoner-pipeline-runner",
    }
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "sidreasoner-pipeline-runner", "namespace": NAMESPACE}
    ]
    assert by_kind(docs, "ClusterRole") == {} and by_kind(docs, "ClusterRoleBinding") == {}


@pytest.mark.parametrize("values", [None, FULL_VALUES, ONLY_EXISTING], ids=["default", "full", "existing"])
def test_no_rule_grants_ray_io(chart, values):
    rules = [rule for d in render(chart, values) if d["kind"] in ("Role", "ClusterRole") for rule in d["rules"]]
    assert rules
    assert not [r for r in rules if "ray.io" in r["apiGroups"] or {"rayjobs", "rayclusters"} & set(r["resources"])]


def test_rbac_and_service_accounts_can_be_left_to_the_cluster(chart):
    docs = render(
        chart,
        {
            "rbac": {"create": False},
            "serviceAccount": {"create": False, "name": "pipeline-runner"},
            "upload": {"serviceAccount": {"create": False, "name": "uploader"}},
        },
    )
    assert {d["kind"] for d in docs} == {"PersistentVolumeClaim", "Job"}
    assert (
        one(docs, "Job", "sidreasoner-upload-pipeline")["spec"]["template"]["spec"]["serviceAccountName"] == "uploader"
    )


# --- model cache ----------------------------------------------------------------------------------


def test_model_cache_pvc_from_values(chart):
    pvc = one(render(chart, FULL_VALUES), "PersistentVolumeClaim", "sidreasoner-model-cache")
    assert pvc["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "storageClassName": "nfs-client",
        "resources": {"requests": {"storage": "500Gi"}},
    }
    assert pvc["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    default = one(render(chart), "PersistentVolumeClaim", "sidreasoner-model-cache")
    assert "storageClassName" not in default["spec"] and default["spec"]["accessModes"] == ["ReadWriteMany"]
    minio = one(render(chart, FULL_VALUES), "PersistentVolumeClaim", "sidreasoner-minio")
    assert minio["spec"]["storageClassName"] == ""  # "-": bind a pre-created volume


def test_existing_model_cache_claim_is_mounted_not_created(chart):
    values = {
        "modelCache": {"existingClaim": "shared-models"},
        "teacherServer": {"enabled": True},
        "rayCluster": {"enabled": True},
    }
    docs = render(chart, values)
    assert by_kind(docs, "PersistentVolumeClaim") == {}
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for _, spec in pod_specs(docs)
        for v in spec.get("volumes", [])
        if "persistentVolumeClaim" in v
    }
    assert claims == {"shared-models"}


# --- vLLM teacher ---------------------------------------------------------------------------------


def test_teacher_server(chart):
    docs = render(chart, FULL_VALUES)
    service = one(docs, "Service", TEACHER_SERVICE)
    assert [(p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [(TEACHER_PORT, "http")]
    deployment = one(docs, "Deployment", TEACHER_SERVICE)
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (vllm,) = pod["spec"]["containers"]
    assert vllm["image"].startswith("vllm/vllm-openai:v")
    args = vllm["args"]
    assert args[args.index("--model") + 1] == "Qwen/Qwen3-32B"
    assert args[args.index("--tensor-parallel-size") + 1] == "2"
    assert args[args.index("--port") + 1] == "8000"
    # Qwen3's think block goes to reasoning_content, not into the reply text the corpus keeps.
    assert args[args.index("--reasoning-parser") + 1] == "qwen3"
    assert vllm["ports"] == [{"name": "http", "containerPort": 8000}]
    assert vllm["resources"]["limits"]["nvidia.com/gpu"] == 2
    assert vllm["readinessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert vllm["startupProbe"]["failureThreshold"] * vllm["startupProbe"]["periodSeconds"] == 1800
    env = {e["name"]: e for e in vllm["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "sidreasoner-hf", "key": "token", "optional": True}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "sidreasoner-teacher", "key": "api-key"}
    volumes = {v["name"]: v for v in pod["spec"]["volumes"]}
    assert volumes["shm"]["emptyDir"] == {"medium": "Memory", "sizeLimit": "16Gi"}
    assert volumes["model-cache"]["persistentVolumeClaim"]["claimName"] == "sidreasoner-model-cache"
    assert {m["mountPath"] for m in vllm["volumeMounts"]} >= {"/dev/shm", "/models"}
    assert pod["spec"]["nodeSelector"] == {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert pod["spec"]["tolerations"][0]["key"] == "nvidia.com/gpu"


def test_teacher_server_without_a_reasoning_parser(chart):
    docs = render(chart, {"teacherServer": {"enabled": True, "reasoningParser": ""}})
    (vllm,) = one(docs, "Deployment", TEACHER_SERVICE)["spec"]["template"]["spec"]["containers"]
    assert "--reasoning-parser" not in vllm["args"]


def test_teacher_server_defaults_match_the_paper_presets(chart):
    from sidreasoner.config import load

    docs = render(chart, {"teacherServer": {"enabled": True}})
    teacher = load("office").teacher
    service = one(docs, "Service", TEACHER_SERVICE)
    assert teacher.base_url == f"http://{service['metadata']['name']}:{service['spec']['ports'][0]['port']}/v1"
    (vllm,) = one(docs, "Deployment", TEACHER_SERVICE)["spec"]["template"]["spec"]["containers"]
    assert vllm["args"][vllm["args"].index("--model") + 1] == teacher.model
    assert vllm["args"][vllm["args"].index("--reasoning-parser") + 1] == "qwen3"
    # The API key is required by default, from a Secret the chart generates under the fixed name.
    env = {e["name"]: e for e in vllm["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "sidreasoner-teacher", "key": "api-key"}
    assert set(one(docs, "Secret", "sidreasoner-teacher")["data"]) == {"api-key"}
    assert "HF_TOKEN" not in {e["name"] for e in vllm["env"]}  # no HF Secret configured


# --- MinIO, RayCluster, upload Job ------------------------------------------------------------------


def test_minio_reads_the_s3_secret(chart):
    docs = render(chart, FULL_VALUES)
    deployment = one(docs, "Deployment", "sidreasoner-minio")
    (minio,) = deployment["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in minio["env"]}
    assert env == {
        "MINIO_ROOT_USER": {"name": "sidreasoner-s3", "key": "AWS_ACCESS_KEY_ID"},
        "MINIO_ROOT_PASSWORD": {"name": "sidreasoner-s3", "key": "AWS_SECRET_ACCESS_KEY"},
    }
    assert minio["readinessProbe"]["httpGet"]["path"] == "/minio/health/ready"
    service = one(docs, "Service", "sidreasoner-minio")
    assert service["spec"]["selector"].items() <= deployment["spec"]["template"]["metadata"]["labels"].items()
    assert [p["port"] for p in service["spec"]["ports"]] == [9000, 9001]


def ray_pods(rc):
    """(where, pod spec, Ray container) of the head and every worker group."""
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]
    yield "head", head, head["containers"][0]
    for group in rc["spec"]["workerGroupSpecs"]:
        spec = group["template"]["spec"]
        yield group["groupName"], spec, spec["containers"][0]


@pytest.mark.parametrize("values", [{"rayCluster": {"enabled": True}}, FULL_VALUES], ids=["default", "full"])
def test_raycluster_serves_stage3_as_a_ray_client(chart, values):
    """What stage3.verl.ray_address=ray://sidreasoner-ray-head-svc.<ns>…:10001 needs: the client port on
    the head (KubeRay's head Service exposes the head container's named ports), the model cache on head
    and workers at the pipeline's mount path (the step stages inputs under stage3.checkpoint_dir and reads
    verl's checkpoints back), RAM-backed /dev/shm, and GPUs on the workers."""
    from sidreasoner.config import ClusterConfig, load

    rc = one(render(chart, values), "RayCluster", "sidreasoner-ray")
    check_raycluster(rc)
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    assert {p["name"]: p["containerPort"] for p in head["ports"]} == {
        "client": 10001,
        "gcs-server": 6379,
        "dashboard": 8265,
    }
    cluster = load("office").cluster
    mount = ClusterConfig().model_cache_mount
    assert cluster.model_cache_mount == mount == "/models"
    assert load("office").stage3.checkpoint_dir.startswith(mount + "/")  # verl's checkpoints are on the claim
    for where, spec, c in ray_pods(rc):
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
        assert volumes[mounts[mount]]["persistentVolumeClaim"] == {"claimName": cluster.model_cache_pvc}, where
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory", where
        assert volumes[mounts["/dev/shm"]]["emptyDir"]["sizeLimit"], where
        assert {e["name"]: e.get("value") for e in c["env"]}["HF_HOME"] == f"{mount}/hf", where
        assert c["image"] == "ghcr.io/sidreasoner-pipelines/sidreasoner-train:0.1.0", where
    assert rc["spec"]["headGroupSpec"]["rayStartParams"]["num-gpus"] == "0"  # verl's GPU work goes to workers
    for group in rc["spec"]["workerGroupSpecs"]:
        resources = group["template"]["spec"]["containers"][0]["resources"]
        assert resources["requests"]["nvidia.com/gpu"] == resources["limits"]["nvidia.com/gpu"] == 8


def test_raycluster_follows_the_model_cache_mount_path(chart):
    docs = render(
        chart,
        {
            "rayCluster": {"enabled": True},
            "teacherServer": {"enabled": True},
            "modelCache": {"mountPath": "/data/cache/"},
        },
    )
    rc = one(docs, "RayCluster", "sidreasoner-ray")
    (teacher,) = one(docs, "Deployment", TEACHER_SERVICE)["spec"]["template"]["spec"]["containers"]
    for where, c in [(w, c) for w, _, c in ray_pods(rc)] + [("teacher", teacher)]:
        assert "/data/cache" in {m["mountPath"] for m in c["volumeMounts"]}, where
        assert "/models" not in {m["mountPath"] for m in c["volumeMounts"]}, where
        assert {e["name"]: e.get("value") for e in c["env"]}["HF_HOME"] == "/data/cache/hf", where


def test_raycluster_ray_version_matches_the_installed_ray():
    """rayVersion must equal the ray that verl brings into images.train (the same resolution as this
    environment's `rl` extra); a Ray client also refuses a cluster of another version."""
    from importlib import metadata

    values = yaml.safe_load((CHART / "values.yaml").read_text())
    try:
        installed = metadata.version("ray")
    except metadata.PackageNotFoundError:
        pytest.skip("ray is not installed (the rl extra)")
    assert values["rayCluster"]["rayVersion"] == installed


def test_notes_say_how_stage3_reaches_the_raycluster(chart):
    notes = chart.render({"rayCluster": {"enabled": True}}, name="sidreasoner", namespace=NAMESPACE)[
        "sidreasoner/templates/NOTES.txt"
    ]
    assert f"stage3.verl.ray_address=ray://sidreasoner-ray-head-svc.{NAMESPACE}.svc.cluster.local:10001" in notes
    assert "stage3.verl.nnodes=1 --set stage3.verl.n_gpus_per_node=8" in notes
    single = chart.render(
        {"rayCluster": {"enabled": True}, "modelCache": {"accessModes": ["ReadWriteOnce"], "allowSingleNode": True}},
        name="sidreasoner",
        namespace=NAMESPACE,
    )
    assert "not ReadWriteMany" in single["sidreasoner/templates/NOTES.txt"]
    assert "not ReadWriteMany" not in notes  # the default claim is ReadWriteMany
    full = chart.render(FULL_VALUES, name="sidreasoner", namespace=NAMESPACE)["sidreasoner/templates/NOTES.txt"]
    assert "stage3.verl.nnodes=2 --set stage3.verl.n_gpus_per_node=8" in full
    assert "WARNING" not in full
    assert (
        "ray_address"
        not in chart.render(None, name="sidreasoner", namespace=NAMESPACE)["sidreasoner/templates/NOTES.txt"]
    )
    # The printed settings are a config the paper presets accept (the step's own pod then has no GPU).
    from sidreasoner import config

    sets = re.findall(r"--set (\S+=\S+)", full)
    cfg = config.load("office", sets)
    assert cfg.cluster.resources["rl-stage3"].gpus == 0 and cfg.stage3.verl.ray_address.startswith("ray://")


def test_raycluster_defaults_to_the_training_image(chart):
    rc = one(render(chart, {"rayCluster": {"enabled": True}}), "RayCluster", "sidreasoner-ray")
    check_raycluster(rc)
    head = rc["spec"]["headGroupSpec"]["template"]["spec"]["containers"][0]
    (group,) = rc["spec"]["workerGroupSpecs"]
    worker = group["template"]["spec"]["containers"][0]
    assert head["image"] == worker["image"] == "ghcr.io/sidreasoner-pipelines/sidreasoner-train:0.1.0"
    assert worker["resources"]["limits"]["nvidia.com/gpu"] == 8
    assert group["rayStartParams"] == {}
    assert rc["spec"]["enableInTreeAutoscaling"] is True and rc["spec"]["autoscalerOptions"]["idleTimeoutSeconds"]


CPU_PINNED = "mirror.example/ml/sidreasoner-cpu@sha256:" + "c" * 64
TRAIN_PINNED = "mirror.example/ml/sidreasoner-train@sha256:" + "d" * 64
PINNED_IMAGES = {
    "images": {
        "cpu": {"repository": "mirror.example/ml/sidreasoner-cpu", "digest": "sha256:" + "c" * 64},
        "train": {"repository": "mirror.example/ml/sidreasoner-train", "digest": "sha256:" + "d" * 64},
    },
    "rayCluster": {"enabled": True},
}
IMAGE_ENV = ("SIDREASONER_CPU_IMAGE", "SIDREASONER_TRAIN_IMAGE")


def _upload_env(docs) -> dict[str, str]:
    (c,) = one(docs, "Job", "sidreasoner-upload-pipeline")["spec"]["template"]["spec"]["containers"]
    return {e["name"]: e["value"] for e in c["env"] if "value" in e}


def test_pinned_images_reach_the_upload_job_and_the_raycluster(chart):
    docs = render(chart, PINNED_IMAGES)
    validate_all(docs)
    env = _upload_env(docs)
    assert [env[name] for name in IMAGE_ENV] == [CPU_PINNED, TRAIN_PINNED]
    for job in ("sidreasoner-upload-pipeline", "sidreasoner-model-cache-prepare"):
        assert one(docs, "Job", job)["spec"]["template"]["spec"]["containers"][0]["image"] == CPU_PINNED, job
    rc = one(docs, "RayCluster", "sidreasoner-ray")
    assert [(where, c["image"]) for where, _, c in ray_pods(rc)] == [("head", TRAIN_PINNED), ("gpu", TRAIN_PINNED)]


def test_default_images_are_the_packages_own(chart):
    from sidreasoner import __version__

    env = _upload_env(render(chart))
    assert [env[name] for name in IMAGE_ENV] == [
        f"ghcr.io/sidreasoner-pipelines/sidreasoner-{kind}:{__version__}" for kind in ("cpu", "train")
    ]


def test_upload_job_compiles_the_pipeline_in_the_charts_images(chart, tmp_path):
    """The Job's image settings, given to `sidreasoner compile` as the Job gives them to `sidreasoner
    upload`: every step's pod runs one of the chart's two pinned images, and the demo's CPU and
    training steps use both."""
    env = _upload_env(render(chart, PINNED_IMAGES))
    out = tmp_path / "pipeline.yaml"
    result = subprocess.run(
        [str(Path(sys.executable).parent / "sidreasoner"), "compile", "--preset", "demo", "-o", str(out)],
        env={**os.environ, **{name: env[name] for name in IMAGE_ENV}},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    executors = next(yaml.safe_load_all(out.read_text()))["deploymentSpec"]["executors"]
    assert {ex["container"]["image"] for ex in executors.values()} == {CPU_PINNED, TRAIN_PINNED}


@pytest.mark.parametrize(
    "image, expected",
    [
        ({}, TRAIN_PINNED),
        ({"repository": "mirror.example/ray"}, "mirror.example/ray@sha256:" + "d" * 64),  # the same image elsewhere
        ({"tag": "custom"}, "mirror.example/ml/sidreasoner-train:custom"),  # another image: not the training digest
        ({"tag": "custom", "digest": "sha256:" + "e" * 64}, "mirror.example/ml/sidreasoner-train@sha256:" + "e" * 64),
    ],
    ids=["train", "repository", "tag", "digest"],
)
def test_raycluster_image_overrides(chart, image, expected):
    values = copy.deepcopy(PINNED_IMAGES)
    values["rayCluster"]["image"] = image
    rc = one(render(chart, values), "RayCluster", "sidreasoner-ray")
    assert {c["image"] for _, _, c in ray_pods(rc)} == {expected}


MINIO_ENDPOINT = f"http://sidreasoner-minio.{NAMESPACE}.svc:9000"


@pytest.mark.parametrize(
    "values, endpoint",
    [
        (None, None),
        (ONLY_EXISTING, MINIO_ENDPOINT),
        (
            {**ONLY_EXISTING, "minio": {"enabled": True, "service": {"port": 9100}}},
            f"http://sidreasoner-minio.{NAMESPACE}.svc:9100",
        ),
        ({"s3": {"endpoint": "https://s3.eu-west-1.amazonaws.com"}}, "https://s3.eu-west-1.amazonaws.com"),
        ({**ONLY_EXISTING, "s3": {"endpoint": "https://objects.example.com:9443"}}, "https://objects.example.com:9443"),
    ],
    ids=["none", "chart-minio", "minio-port", "given", "given-over-minio"],
)
def test_upload_points_the_s3_steps_at_the_endpoint(chart, values, endpoint):
    from sidreasoner.config import load

    docs = render(chart, values)
    sets = [s for s in _upload_sets(docs) if s.startswith("cluster.s3_endpoint=")]
    assert sets == ([f"cluster.s3_endpoint={endpoint}"] if endpoint else [])
    if endpoint:
        assert load("office", sets).cluster.s3_endpoint == endpoint  # what `sidreasoner upload` accepts
    if endpoint and "sidreasoner-minio" in endpoint:
        service = one(docs, "Service", "sidreasoner-minio")
        s3_port = service["spec"]["ports"][0]
        assert (s3_port["name"], endpoint) == (
            "s3",
            f"http://{service['metadata']['name']}.{NAMESPACE}.svc:{s3_port['port']}",
        )


def test_upload_job(chart):
    job = one(render(chart, FULL_VALUES), "Job", "sidreasoner-upload-pipeline")
    assert job["metadata"]["annotations"]["helm.sh/hook"] == "post-install,post-upgrade"
    spec = job["spec"]["template"]["spec"]
    (c,) = spec["containers"]
    assert c["image"] == "ghcr.io/sidreasoner-pipelines/sidreasoner-cpu:0.1.0"
    assert c["command"] == ["/bin/sh", "-c"]
    assert c["args"][0] == 'exec sidreasoner upload --host "$KFP_HOST" --preset "$PRESET" "$@"'
    assert c["args"][2:] == [
        "--set",
        "cluster.model_cache_pvc=sidreasoner-model-cache",
        "--namespace",
        NAMESPACE,
        "--set",
        'cluster.image_pull_secrets=["ghcr-pull"]',
        "--set",
        f"cluster.s3_endpoint=http://sidreasoner-minio.{NAMESPACE}.svc:9000",
        "--set",
        "stage1.instruction_file=/models/general/sampled_data.arrow",
        "--set",
        "teacher.max_samples=2000",
    ]
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["KFP_HOST"] == "http://ml-pipeline.kubeflow.svc.cluster.local:8888" and env["PRESET"] == "office"
    assert spec["restartPolicy"] == "Never" and spec["automountServiceAccountToken"] is False
    token = {v["name"]: v for v in spec["volumes"]}["kfp-token"]["projected"]["sources"][0]["serviceAccountToken"]
    assert token["audience"] == "pipelines.kubeflow.org"
    assert c["securityContext"]["readOnlyRootFilesystem"] is True


def test_notes_warn_about_a_secret_the_pipeline_cannot_see(chart):
    notes = chart.render(ONLY_EXISTING, name="sidreasoner", namespace=NAMESPACE)["sidreasoner/templates/NOTES.txt"]
    assert 'pipeline steps read "sidreasoner-s3", not "my-s3"' in notes
    assert 'pipeline steps read "sidreasoner-teacher"' not in notes


# --- cluster plan: shared cache, permissions, pull secrets, idle GPUs, network (docs/cluster.md) ---


@pytest.mark.parametrize("values", [None, FULL_VALUES], ids=["default", "full"])
def test_model_cache_claim_is_read_write_many(chart, values):
    """Parallel GPU steps on different nodes mount the claim at once (evaluate-stage1 beside sft-stage2,
    evaluate-stage2 beside rl-stage3): a ReadWriteOnce claim would stall them on Multi-Attach."""
    pvc = one(render(chart, values), "PersistentVolumeClaim", "sidreasoner-model-cache")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"]


def test_a_single_node_claim_must_be_acknowledged(chart):
    with pytest.raises(helm.HelmRenderError, match="lacks ReadWriteMany.*allowSingleNode"):
        chart.render({"modelCache": {"accessModes": ["ReadWriteOnce"]}}, name="sidreasoner", namespace=NAMESPACE)
    docs = render(chart, {"modelCache": {"accessModes": ["ReadWriteOnce"], "allowSingleNode": True}})
    assert one(docs, "PersistentVolumeClaim", "sidreasoner-model-cache")["spec"]["accessModes"] == ["ReadWriteOnce"]
    # An existing claim's access modes are the cluster's business: nothing to refuse.
    assert (
        by_kind(
            render(chart, {"modelCache": {"existingClaim": "shared-models", "accessModes": ["ReadWriteOnce"]}}),
            "PersistentVolumeClaim",
        )
        == {}
    )


def _upload_sets(docs):
    args = one(docs, "Job", "sidreasoner-upload-pipeline")["spec"]["template"]["spec"]["containers"][0]["args"]
    return [args[i + 1] for i in range(2, len(args) - 1) if args[i] == "--set"]


@pytest.mark.parametrize(
    "upload, instruction_sets",
    [
        ({}, ["stage1.instruction_file=/models/general/sampled_data.arrow"]),
        ({"instructionFile": "/models/bundle/general.jsonl"}, ["stage1.instruction_file=/models/bundle/general.jsonl"]),
        ({"instructionFile": "", "extraArgs": ["--set", "stage1.tasks.instructions=0"]}, []),
        ({"preset": "demo"}, []),  # the demo preset has no general data (it opts out)
    ],
    ids=["default", "given", "opted-out", "demo"],
)
def test_upload_compiles_stage1_with_its_general_data(chart, upload, instruction_sets):
    """A paper preset refuses to compile without Stage 1's general-reasoning data: the Job gives the path on the
    model-cache volume, and what it passes is what `sidreasoner upload` accepts."""
    from sidreasoner.config import load
    from sidreasoner.config.stage1_data import require_stage1_data

    docs = render(chart, {"upload": upload})
    sets = _upload_sets(docs)
    assert [s for s in sets if s.startswith("stage1.instruction_file=")] == instruction_sets
    preset = one(docs, "Job", "sidreasoner-upload-pipeline")["spec"]["template"]["spec"]["containers"][0]["env"]
    preset = {e["name"]: e.get("value") for e in preset}["PRESET"]
    require_stage1_data(load(preset, sets))


def test_upload_job_runs_as_its_own_account_allowed_only_to_upload(chart):
    docs = render(chart)
    spec = one(docs, "Job", "sidreasoner-upload-pipeline")["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "sidreasoner-pipeline-uploader" != "sidreasoner-pipeline-runner"
    assert one(docs, "ServiceAccount", "sidreasoner-pipeline-uploader")["automountServiceAccountToken"] is False
    assert one(docs, "Role", "sidreasoner-pipeline-uploader")["rules"] == [
        {
            "apiGroups": ["pipelines.kubeflow.org"],
            "resources": ["pipelines", "pipelines/versions"],
            "verbs": ["create", "get", "list"],
        }
    ]
    binding = one(docs, "RoleBinding", "sidreasoner-pipeline-uploader")
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "sidreasoner-pipeline-uploader", "namespace": NAMESPACE}
    ]
    shared = render(chart, {"upload": {"namespaced": False}})
    assert (
        "--namespace"
        not in one(shared, "Job", "sidreasoner-upload-pipeline")["spec"]["template"]["spec"]["containers"][0]["args"]
    )


@pytest.mark.slow
def test_rendered_upload_command_reaches_the_api_with_namespace_token_and_pull_secrets(chart, kfp_api, tmp_path):
    """The Job's own command line, run here against the 127.0.0.1 API server: the pipeline lands in
    the release's namespace, with the projected token, and its pods pull with the chart's Secrets."""
    url, state = kfp_api
    values = {**FULL_VALUES, "upload": {**FULL_VALUES["upload"], "preset": "demo", "extraArgs": []}}
    (c,) = one(render(chart, values), "Job", "sidreasoner-upload-pipeline")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e["value"] for e in c["env"] if "value" in e}
    token = tmp_path / "token"
    token.write_text("projected-sa-token")
    env.update(
        KFP_HOST=url,
        KF_PIPELINES_SA_TOKEN_PATH=str(token),
        HOME=str(tmp_path),
        PATH=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"],
    )
    result = subprocess.run([*c["command"], *c["args"]], env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    (up,) = state.calls("POST", "/pipelines/upload")
    assert up.query["namespace"] == [NAMESPACE]
    assert {r.headers.get("authorization") for r in state.requests} == {"Bearer projected-sa-token"}
    platform = list(yaml.safe_load_all(_uploaded_yaml(up)))[1]
    for executor in platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"].values():
        assert [s["secretName"] for s in executor["imagePullSecret"]] == ["ghcr-pull"]


@pytest.mark.parametrize(
    "values, claim",
    [
        (None, "sidreasoner-model-cache"),
        (FULL_VALUES, "sidreasoner-model-cache"),
        ({"modelCache": {"existingClaim": "shared-models"}}, "shared-models"),
        ({"modelCache": {"name": "my-cache"}}, "my-cache"),
    ],
    ids=["default", "full", "existing", "renamed"],
)
def test_upload_compiles_the_pipeline_for_the_releases_claim(chart, values, claim):
    docs = render(chart, values)
    assert _upload_sets(docs)[0] == f"cluster.model_cache_pvc={claim}"
    claims = {
        v["persistentVolumeClaim"]["claimName"]
        for _, spec in pod_specs(docs)
        for v in spec.get("volumes", [])
        if v["name"] == "model-cache"
    }
    assert claims == {claim}
    # Without any cache the pipeline keeps its own setting.
    assert not [
        s
        for s in _upload_sets(render(chart, {"modelCache": {"enabled": False}}))
        if s.startswith("cluster.model_cache_pvc=")
    ]


@pytest.mark.parametrize(
    "values, claim",
    [
        (None, "sidreasoner-model-cache"),
        (FULL_VALUES, "sidreasoner-model-cache"),
        ({"modelCache": {"existingClaim": "shared-models"}}, "shared-models"),
    ],
    ids=["default", "full", "existing"],
)
def test_model_cache_prepare_job(chart, values, claim):
    """Pipeline pods run as uid 1000 and KFP sets no fsGroup; a fresh volume's root is root's. A hook Job,
    before the upload, creates the folders the steps write and hands them to 1000:1000 — as root, with
    only the capabilities mkdir and chown need."""
    docs = render(chart, values)
    job = one(docs, "Job", "sidreasoner-model-cache-prepare")
    annotations = job["metadata"]["annotations"]
    assert annotations["helm.sh/hook"] == "post-install,post-upgrade"
    upload = one(docs, "Job", "sidreasoner-upload-pipeline")["metadata"]["annotations"]
    assert int(annotations["helm.sh/hook-weight"]) < int(upload["helm.sh/hook-weight"])
    spec = job["spec"]["template"]["spec"]
    assert spec["securityContext"]["runAsUser"] == 0 and spec["securityContext"]["runAsNonRoot"] is False
    assert spec["automountServiceAccountToken"] is False and spec["restartPolicy"] == "Never"
    (c,) = spec["containers"]
    assert c["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN", "DAC_OVERRIDE", "FOWNER"]}
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    assert c["image"] == "ghcr.io/sidreasoner-pipelines/sidreasoner-cpu:0.1.0"
    (script,) = c["args"]
    folders = " ".join(f"/models/{f}" for f in ("hf", "checkpoints", "downloads", "teacher-cache"))
    assert c["command"] == ["/bin/sh", "-ec"]
    assert script.startswith(f"mkdir -p {folders} && chown 1000:1000 /models {folders}")
    volumes = {v["name"]: v for v in spec["volumes"]}
    (mount,) = c["volumeMounts"]
    assert mount["mountPath"] == "/models"
    assert volumes[mount["name"]]["persistentVolumeClaim"] == {"claimName": claim}
    if values is FULL_VALUES:
        assert spec["imagePullSecrets"] == [{"name": "ghcr-pull"}]


def test_model_cache_prepare_job_can_be_left_out(chart):
    assert "sidreasoner-model-cache-prepare" not in by_kind(
        render(chart, {"modelCache": {"prepare": {"enabled": False}}}), "Job"
    )
    assert "sidreasoner-model-cache-prepare" not in by_kind(render(chart, {"modelCache": {"enabled": False}}), "Job")


@pytest.mark.parametrize(
    "values, secrets", [(None, None), (FULL_VALUES, [{"name": "ghcr-pull"}])], ids=["default", "full"]
)
def test_runner_service_account_carries_the_image_pull_secrets(chart, values, secrets):
    """The pipeline's pods run as the runner ServiceAccount: its imagePullSecrets reach them."""
    sa = one(render(chart, values), "ServiceAccount", "sidreasoner-pipeline-runner")
    assert sa.get("imagePullSecrets") == secrets


@pytest.mark.parametrize(
    "values",
    [{"teacherServer": {"enabled": True}, "rayCluster": {"enabled": True}}, FULL_VALUES],
    ids=["default", "full"],
)
def test_no_gpu_is_held_while_no_run_needs_it(chart, values):
    docs = render(chart, values)
    assert one(docs, "Deployment", TEACHER_SERVICE)["spec"]["replicas"] == 0
    rc = one(docs, "RayCluster", "sidreasoner-ray")
    assert rc["spec"]["enableInTreeAutoscaling"] is True  # workers start when verl asks for GPUs
    if values is not FULL_VALUES:
        (group,) = rc["spec"]["workerGroupSpecs"]
        assert (group["replicas"], group["minReplicas"], group["maxReplicas"]) == (0, 0, 1)
        notes = chart.render(values, name="sidreasoner", namespace=NAMESPACE)["sidreasoner/templates/NOTES.txt"]
        assert f"kubectl -n {NAMESPACE} scale deploy/{TEACHER_SERVICE} --replicas=1" in notes


PIPELINE_PODS = {"podSelector": {"matchLabels": {"pipelines.kubeflow.org/v2_component": "true"}}}


def _selects(selector, labels):
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        assert e["operator"] == "In"
        if labels.get(e["key"]) not in e["values"]:
            return False
    return True


@pytest.mark.parametrize(
    "values",
    [{"teacherServer": {"enabled": True}, "rayCluster": {"enabled": True}}, FULL_VALUES, ONLY_EXISTING],
    ids=["default", "full", "existing"],
)
def test_network_policies_let_only_the_pipeline_in(chart, values):
    """KFP labels every pod of a run pipelines.kubeflow.org/v2_component=true: those pods (and the Ray pods
    among themselves) reach the teacher's port and the Ray head's client port, nothing else does."""
    docs = render(chart, values)
    policies = by_kind(docs, "NetworkPolicy")
    assert set(policies) == {TEACHER_SERVICE, "sidreasoner-ray"}
    teacher = policies[TEACHER_SERVICE]["spec"]
    pod = one(docs, "Deployment", TEACHER_SERVICE)["spec"]["template"]["metadata"]["labels"]
    assert _selects(teacher["podSelector"], pod) and teacher["policyTypes"] == ["Ingress"]
    assert teacher["ingress"] == [{"from": [PIPELINE_PODS], "ports": [{"protocol": "TCP", "port": TEACHER_PORT}]}]
    ray = policies["sidreasoner-ray"]["spec"]
    rc = one(docs, "RayCluster", "sidreasoner-ray")
    ray_labels = [rc["spec"]["headGroupSpec"]["template"]["metadata"]["labels"]] + [
        g["template"]["metadata"]["labels"] for g in rc["spec"]["workerGroupSpecs"]
    ]
    assert all(_selects(ray["podSelector"], labels) for labels in ray_labels)
    assert not _selects(ray["podSelector"], pod)
    within, client = ray["ingress"]
    assert [p["podSelector"] for p in within["from"]] == [ray["podSelector"]] and "ports" not in within
    assert client["from"] == [PIPELINE_PODS]
    assert {p["port"] for p in client["ports"]} == {10001, 8265}


def test_network_policies_can_be_widened_or_left_out(chart):
    extra = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ray-system"}}}
    docs = render(
        chart,
        {
            "teacherServer": {"enabled": True, "networkPolicy": {"allowFrom": [extra]}},
            "rayCluster": {"enabled": True, "networkPolicy": {"enabled": False}},
        },
    )
    (teacher,) = by_kind(docs, "NetworkPolicy").values()
    assert teacher["spec"]["ingress"][0]["from"] == [PIPELINE_PODS, extra]


def test_teacher_api_key_is_generated_when_none_is_given(chart):
    docs = render(chart, {"teacherServer": {"enabled": True}})
    key = base64.b64decode(one(docs, "Secret", "sidreasoner-teacher")["data"]["api-key"]).decode()
    assert len(key) == 40 and key.isalnum()
    again = base64.b64decode(
        one(render(chart, {"teacherServer": {"enabled": True}}), "Secret", "sidreasoner-teacher")["data"]["api-key"]
    ).decode()
    assert again != key  # random (lookup keeps the cluster's one on upgrades; offline there is none)
    notes = chart.render({"teacherServer": {"enabled": True}}, name="sidreasoner", namespace=NAMESPACE)[
        "sidreasoner/templates/NOTES.txt"
    ]
    assert "sidreasoner-teacher: generated by this release" in notes
    # A given key or existing Secret is used as it is: nothing generated.
    assert by_kind(render(chart, ONLY_EXISTING), "Secret") == {}
    given = by_kind(
        render(chart, {"teacherServer": {"enabled": True}, "secrets": {"teacher": {"apiKey": "k"}}}), "Secret"
    )
    assert base64.b64decode(given["sidreasoner-teacher"]["data"]["api-key"]).decode() == "k"
    # Turned off, no key and no Secret.
    assert by_kind(render(chart, {"teacherServer": {"enabled": True, "requireApiKey": False}}), "Secret") == {}


def _checksum(data: dict) -> str:
    """Helm's `toJson | sha256sum` of a Secret's data."""
    return hashlib.sha256(json.dumps(data, separators=(",", ":")).encode()).hexdigest()


def _teacher_pod_annotations(docs) -> dict:
    return one(docs, "Deployment", TEACHER_SERVICE)["spec"]["template"]["metadata"].get("annotations", {})


def test_teacher_server_rolls_with_the_key_the_chart_applies(chart):
    """Under `helm template` (Argo CD) `lookup` finds no Secret and every render generates another key:
    the server's pod template carries the checksum of the rendered Secret's data, so applying a render
    restarts the server with the key that the synthesize-corpus step reads."""
    values = {"teacherServer": {"enabled": True}}
    sums = []
    for docs in (render(chart, values), render(chart, values)):
        data = one(docs, "Secret", "sidreasoner-teacher")["data"]
        assert _teacher_pod_annotations(docs) == {"checksum/teacher-api-key": _checksum(data)}
        sums.append(_checksum(data))
    assert sums[0] != sums[1]
    given = render(chart, {**values, "secrets": {"teacher": {"apiKey": "k"}}})
    assert _teacher_pod_annotations(given) == {"checksum/teacher-api-key": _checksum({"api-key": "aw=="})}
    assert one(given, "Secret", "sidreasoner-teacher")["data"] == {"api-key": "aw=="}
    assert _teacher_pod_annotations(render(chart, {"teacherServer": {"enabled": True, "requireApiKey": False}})) == {}


def test_teacher_key_from_an_existing_secret_renders_the_same_every_time(chart):
    """The GitOps mode: the key lives in a Secret the platform manages (External Secrets, Sealed Secrets);
    the chart creates and generates none, so every `helm template` gives the same manifests."""
    values = {"teacherServer": {"enabled": True}, "secrets": {"teacher": {"existingSecret": "sidreasoner-teacher"}}}
    assert chart.render(values, name="sidreasoner", namespace=NAMESPACE) == chart.render(
        values, name="sidreasoner", namespace=NAMESPACE
    )
    docs = render(chart, values)
    validate_all(docs)
    assert by_kind(docs, "Secret") == {}
    (vllm,) = one(docs, "Deployment", TEACHER_SERVICE)["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e for e in vllm["env"]}
    assert env["VLLM_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": "sidreasoner-teacher", "key": "api-key"}
    assert _teacher_pod_annotations(docs) == {}


def test_the_deploy_rule_grants_exactly_the_calls_deploy_model_makes(kube_calls):
    """deploy_model against the API server stand-in: every method it sent is one of the rule's verbs, and
    every verb of the rule is used (GET is get, POST create, PUT update)."""
    verbs = {"GET": "get", "POST": "create", "PUT": "update", "PATCH": "patch", "DELETE": "delete"}
    assert {verbs[method] for method in kube_calls} == set(DEPLOY_RULE["verbs"])


@pytest.fixture
def kube_calls(tmp_path, monkeypatch):
    """The HTTP methods of two deploy_model calls (a create, then an update) against the stand-in."""
    from sidreasoner.artifacts import ModelExport
    from sidreasoner.config import load
    from sidreasoner.serve import deploy

    from .helpers.kube_api import serving

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(deploy, "POLL_S", 0.01)
    with ModelExport.writing(tmp_path / "export") as export:
        export.write_record({"uri": "s3://models/run-1", "uploaded": True, "files": {}, "total_bytes": 0})
    pod = deploy.ServingPod(image="registry.example/sidreasoner-cpu:abc")
    with serving() as api:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
        for run, batch in enumerate((8, 16)):
            cfg = load(
                "demo",
                [
                    "serve.enabled=true",
                    "export.uri=s3://models/run-1",
                    "serve.namespace=ns",
                    f"serve.max_batch={batch}",
                ],
            )
            deploy.deploy_model(cfg, tmp_path / "export", tmp_path / f"deployment{run}", pod=pod)
        return {request.method for request in api.requests}
