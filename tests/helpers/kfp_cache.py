"""A model of what a Kubeflow Pipelines backend does with a compiled pipeline's caching, replayed on the
compiled YAML: which tasks execute, which are served from the cache, and which results each run gets.

Every rule is the backend's, read from kubeflow/pipelines (commit 7b70c7b9, August 2026):

- Run parameters: the run's values; a root parameter the run does not give takes the compiled default
  (backend/src/v2/compiler/argocompiler/argo.go, "fill root component default parameters", l.102-112).
  A run parameter replaces the whole default (a dict is not merged).
- A task's executor input parameters: its constants and the root parameters it names. A component's
  optional parameter the task does not pass gets no value at all: the driver skips it ("They are
  resolved internally within the component", backend/src/v2/driver/resolve.go l.194-199).
- Input artifacts are MLMD artifacts, named by their MLMD id (backend/src/v2/metadata/converter.go
  `toRuntimeArtifact`, `Name: strconv.FormatInt(artifact.GetId(), 10)`); an executed task's outputs are
  new artifacts, a cached task's are the cached execution's own (backend/src/v2/driver/cache.go
  `collectOutputArtifactMetadataFromCache`).
- The cache key: input artifact names, input parameter values, output artifact specs (name, type,
  metadata: no URI), output parameter types, image, command + args, PVC names
  (backend/src/v2/cacheutils/cache.go `GenerateCacheKey`), hashed (`GenerateFingerPrint`); computed only
  for a task with caching on (backend/src/v2/driver/cache.go `getFingerPrintsAndID`).
- Lookup: the newest entry with that fingerprint, pipeline name and namespace (cache.go
  `GetExecutionCache`, `SortBy: "created_at desc"`, `PageSize: 1`); an executed task with a fingerprint
  writes an entry (driver/cache.go `createCache`).
- Output URIs: `<pipeline root>/<pipeline name>/<run id>/<task>/<salt>/<output>`
  (backend/src/v2/metadata/client.go l.420, backend/src/v2/driver/driver.go l.767-778), mounted in the
  pod at `/minio/…`, `/s3/…`, `/gcs/…` (backend/src/v2/component/launcher_v2.go `LocalPathForURI`).

Not modelled: condition branches (the scenarios set no export.uri, so the branch never runs), loops,
retries inside a run (`retry` replays one task with the same inputs), namespaces.

Training steps are replayed through the project's own code: the task's config slice as the component
builds it (`components.runtime.task_config`) and the checkpoint folder key the step computes
(`model.checkpoints.checkpoint_key`) over the input artifacts' mounted paths. A folder that holds a
finished training from an earlier execution is "resumed" at its last step: 0 steps trained.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from sidreasoner.components.runtime import task_config
from sidreasoner.config import from_step_config
from sidreasoner.model.checkpoints import checkpoint_key
from sidreasoner.steps import STEPS

PIPELINE_ROOT = "minio://mlpipeline/v2/artifacts"
# The stage section and the inputs (registry order) each training step keys its checkpoints on.
TRAINING = {"sft-stage1": "stage1", "sft-stage2": "stage2", "rl-stage3": "stage3"}


@dataclass
class Artifact:
    id: int
    uri: str
    run: str  # the run whose execution wrote it
    task: str


@dataclass
class TaskResult:
    status: str  # "EXECUTED" or "CACHED"
    outputs: dict[str, Artifact]
    steps_trained: int | None = None  # training steps only: 0 when it resumed a finished checkpoint


@dataclass
class Backend:
    """The cache table, MLMD's artifacts and the model-cache volume's checkpoint folders, across runs."""

    cache: list[tuple[str, dict[str, Artifact]]] = field(default_factory=list)  # (fingerprint, outputs), oldest first
    next_id: int = 1
    checkpoints: set[str] = field(default_factory=set)  # keys of checkpoint folders holding a finished training
    runs: int = 0

    def run(self, compiled_yaml: str, parameters: dict[str, Any] | None = None) -> dict[str, TaskResult]:
        self.runs += 1
        run_id = f"run-{self.runs}"
        docs = list(yaml.safe_load_all(compiled_yaml))
        spec, platform = docs[0], (docs[1] if len(docs) > 1 else {})
        root_params = _root_parameters(spec, parameters or {})
        executors = platform.get("platforms", {}).get("kubernetes", {}).get("deploymentSpec", {}).get("executors", {})
        results: dict[str, TaskResult] = {}
        for name, task in _in_order(spec["root"]["dag"]["tasks"]):
            if name.startswith("condition-"):
                continue
            results[name] = self._task(spec, executors, name, task, root_params, results, run_id)
        return results

    def retry(
        self, compiled_yaml: str, parameters: dict[str, Any], results: dict[str, TaskResult], name: str
    ) -> TaskResult:
        """Argo's retry of one failed pod of the run that gave `results`: the same executor input (parameters and input
        artifacts), executed again; no cache lookup, since the first attempt wrote no entry."""
        spec = next(yaml.safe_load_all(compiled_yaml))
        task = spec["root"]["dag"]["tasks"][name]
        params = _parameters(task, _root_parameters(spec, parameters))
        inputs = _input_artifacts(task, results)
        trained = self._train(name, params, inputs) if name in TRAINING else None
        return TaskResult("EXECUTED", results[name].outputs, trained)

    def _task(self, spec, executors, name, task, root_params, results, run_id) -> TaskResult:
        component = spec["components"][task["componentRef"]["name"]]
        label = component["executorLabel"]
        container = spec["deploymentSpec"]["executors"][label]["container"]
        params = _parameters(task, root_params)
        inputs = _input_artifacts(task, results)
        outputs_spec = component.get("outputDefinitions", {}).get("artifacts", {})
        key = {
            "inputArtifactNames": {k: {"artifactNames": [str(a.id)]} for k, a in inputs.items()},
            "inputParameterValues": params,
            "outputArtifactsSpec": {k: {"name": k, "type": v["artifactType"]} for k, v in outputs_spec.items()},
            "outputParametersSpec": {
                k: v["parameterType"] for k, v in component.get("outputDefinitions", {}).get("parameters", {}).items()
            },
            "containerSpec": {
                "image": container["image"],
                "cmdArgs": container["command"] + container["args"],
                "pvcNames": sorted({p["constant"] for p in executors.get(label, {}).get("pvcMount", [])}),
            },
        }
        fingerprint = None
        if task.get("cachingOptions", {}).get("enableCache"):
            fingerprint = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()
            hit = next((outs for fp, outs in reversed(self.cache) if fp == fingerprint), None)
            if hit is not None:
                return TaskResult("CACHED", hit)
        outputs = {}
        for output in outputs_spec:
            outputs[output] = Artifact(
                self.next_id, f"{PIPELINE_ROOT}/sidreasoner/{run_id}/{name}/salt/{output}", run_id, name
            )
            self.next_id += 1
        trained = self._train(name, params, inputs) if name in TRAINING else None
        if fingerprint:
            self.cache.append((fingerprint, outputs))
        return TaskResult("EXECUTED", outputs, trained)

    def _train(self, step_name: str, params: dict, inputs: dict[str, Artifact]) -> int:
        """What the training step does with its checkpoint folder: resume a finished one, or train."""
        stage = TRAINING[step_name]
        cfg = from_step_config(task_config(step_name, params), step_name)
        folders = [Path(local_path(inputs[name].uri)) for name in STEPS[step_name].inputs]
        folder = checkpoint_key(stage, cfg, getattr(cfg, stage), folders)
        if folder in self.checkpoints:
            return 0
        self.checkpoints.add(folder)
        return 1


def local_path(uri: str) -> str:
    """Where the launcher mounts an artifact (launcher_v2.go `LocalPathForURI`)."""
    scheme, rest = uri.split("://", 1)
    return f"/{ {'gs': 'gcs'}.get(scheme, scheme) }/{rest}"


def _root_parameters(spec: dict, given: dict[str, Any]) -> dict[str, Any]:
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    unknown = set(given) - set(declared)
    if unknown:
        raise ValueError(f"run parameters the pipeline does not declare: {sorted(unknown)}")
    return {
        name: given.get(name, p.get("defaultValue"))
        for name, p in declared.items()
        if name in given or "defaultValue" in p
    }


def _parameters(task: dict, root_params: dict[str, Any]) -> dict[str, Any]:
    values = {}
    for name, source in task["inputs"].get("parameters", {}).items():
        if "componentInputParameter" in source:
            values[name] = root_params[source["componentInputParameter"]]
        elif "runtimeValue" in source:
            values[name] = source["runtimeValue"]["constant"]
        else:
            raise NotImplementedError(f"task parameter {name}: {source}")
    return json.loads(json.dumps(values))  # protobuf Values: numbers are floats, as in the backend


def _input_artifacts(task: dict, results: dict[str, TaskResult]) -> dict[str, Artifact]:
    """Each input artifact of `task`: the producing task's output in this run (cached or executed)."""
    return {
        key: results[a["taskOutputArtifact"]["producerTask"]].outputs[a["taskOutputArtifact"]["outputArtifactKey"]]
        for key, a in task["inputs"].get("artifacts", {}).items()
    }


def _in_order(tasks: dict[str, dict]) -> list[tuple[str, dict]]:
    done: list[str] = []
    while len(done) < len(tasks):
        ready = sorted(n for n, t in tasks.items() if n not in done and set(t.get("dependentTasks", [])) <= set(done))
        if not ready:
            raise ValueError("the DAG has a cycle")
        done.extend(ready)
    return [(n, tasks[n]) for n in done]
