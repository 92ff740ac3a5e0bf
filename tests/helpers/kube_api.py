"""A stand-in for the Kubernetes API server on 127.0.0.1, for KServe InferenceServices only, with the KServe
controller's part played after every change. A real HTTP server that the `kubernetes` client talks to as it
talks to a cluster (a kubeconfig names it); it records every request.

What it models, from the API server's code (kubernetes staging/src/k8s.io/apiextensions-apiserver/pkg/registry/
customresource/strategy.go, the strategy of every custom resource, and apiserver's generic registry):
- POST creates (201) or answers 409 AlreadyExists; `status` is dropped on create (PrepareForCreate: "create cannot
  set status") and `metadata.generation` is 1.
- PUT needs `metadata.resourceVersion` (AllowUnconditionalUpdate() is false: 422 Invalid without it), answers 409
  Conflict when it is not the stored one, never creates (AllowCreateOnUpdate() is false: 404); it keeps the stored
  `status` (the status subresource is installed: PrepareForUpdate copies the old status) and raises `generation`
  when anything but metadata changed (PrepareForUpdate, copyNonMetadata).
- PATCH takes application/merge-patch+json (RFC 7386; what kubernetes' CustomObjectsApi sends,
  client/api/custom_objects_api.py `patch_namespaced_custom_object`) and application/json-patch+json (RFC 6902:
  add, replace, remove, test); custom resources refuse strategic merge patch (415).
- Errors are `Status` objects with the reason and code the API server gives (NotFound, AlreadyExists, Conflict,
  Invalid, BadRequest, UnsupportedMediaType).
The controller (kserve pkg/apis/serving/v1beta1/inference_service_status.go) answers the first read after a change
with the old status, then sets `observedGeneration` and either a Ready condition and `url` ("ready"), a Ready
condition stuck at Unknown ("never"), or a failed model load: `modelStatus.transitionStatus` BlockedByFailedLoad
with `lastFailureInfo` ("fail").
"""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import json
import re
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Literal

import yaml

GROUP, VERSION, PLURAL = "serving.kserve.io", "v1beta1", "inferenceservices"
RESOURCE = f"{PLURAL}.{GROUP}"
PATH = re.compile(rf"^/apis/{GROUP}/{VERSION}/namespaces/([a-z0-9-]+)/{PLURAL}(?:/([a-z0-9.-]+))?$")
TOKEN = "stand-in-token"


@dataclass
class Request:
    method: str
    path: str
    content_type: str
    authorization: str
    body: Any


@dataclass
class KubeAPI:
    controller: Literal["ready", "never", "fail"] = "ready"
    failure_reason: str = "ModelLoadFailed"
    failure_message: str = "sidreasoner serve: no model under /mnt/models"
    objects: dict[tuple[str, str], dict] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    url: str = ""
    _version: int = 0
    _unobserved: set[tuple[str, str]] = field(default_factory=set)  # changed, not yet seen by the controller
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def calls(self, method: str) -> list[Request]:
        return [r for r in self.requests if r.method == method]

    def kubeconfig(self, path: Path, namespace: str = "default") -> Path:
        """A kubeconfig whose current context is this server, with a bearer token."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "stand-in", "cluster": {"server": self.url}}],
            "users": [{"name": "runner", "user": {"token": TOKEN}}],
            "contexts": [
                {"name": "stand-in", "context": {"cluster": "stand-in", "user": "runner", "namespace": namespace}}
            ],
            "current-context": "stand-in",
        }
        path.write_text(yaml.safe_dump(config))
        return path

    # ------------------------------------------------------------ the API server's rules

    def _next_version(self) -> str:
        self._version += 1
        return str(self._version)

    def create(self, namespace: str, body: dict) -> tuple[int, dict]:
        meta = body.get("metadata") or {}
        name = meta.get("name", "")
        if not name:
            return _status(
                422,
                "Invalid",
                f'{RESOURCE} "" is invalid: metadata.name: Required value: name or generateName is required',
            )
        if meta.get("namespace", namespace) != namespace:
            return _status(
                400,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            )
        if (namespace, name) in self.objects:
            return _status(409, "AlreadyExists", f'{RESOURCE} "{name}" already exists', name)
        stored = {key: copy.deepcopy(value) for key, value in body.items() if key != "status"}
        stored["metadata"] = {
            **copy.deepcopy(meta),
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "resourceVersion": self._next_version(),
            "generation": 1,
            "creationTimestamp": _now(),
        }
        self.objects[(namespace, name)] = stored
        self._unobserved.add((namespace, name))
        return 201, stored

    def update(self, namespace: str, name: str, body: dict, conditional: bool = True) -> tuple[int, dict]:
        current = self.objects.get((namespace, name))
        if current is None:
            return _status(404, "NotFound", f'{RESOURCE} "{name}" not found', name)
        meta = body.get("metadata") or {}
        if meta.get("name", name) != name:
            return _status(400, "BadRequest", "the name of the object does not match the name on the URL")
        version = meta.get("resourceVersion")
        if conditional and not version:
            return _status(
                422,
                "Invalid",
                f'{RESOURCE} "{name}" is invalid: metadata.resourceVersion: Invalid value: '
                "0x0: must be specified for an update",
                name,
            )
        if version and version != current["metadata"]["resourceVersion"]:
            return _status(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {RESOURCE} "{name}": the object has '
                "been modified; please apply your changes to the latest version and try again",
                name,
            )
        new = copy.deepcopy(body)
        new.pop("status", None)
        if "status" in current:
            new["status"] = copy.deepcopy(current["status"])
        kept = {key: current["metadata"][key] for key in ("uid", "creationTimestamp", "generation", "namespace")}
        new["metadata"] = {**copy.deepcopy(meta), **kept, "name": name, "resourceVersion": self._next_version()}
        if _non_metadata(new) != _non_metadata(current):
            new["metadata"]["generation"] = current["metadata"]["generation"] + 1
            self._unobserved.add((namespace, name))
        self.objects[(namespace, name)] = new
        return 200, new

    def patch(self, namespace: str, name: str, content_type: str, body: Any) -> tuple[int, dict]:
        current = self.objects.get((namespace, name))
        if current is None:
            return _status(404, "NotFound", f'{RESOURCE} "{name}" not found', name)
        if content_type == "application/merge-patch+json":
            patched = _merge_patch(copy.deepcopy(current), body)
        elif content_type == "application/json-patch+json":
            try:
                patched = _json_patch(copy.deepcopy(current), body)
            except (KeyError, IndexError, ValueError) as err:
                return _status(422, "Invalid", f"the server rejected our request due to an error in our request: {err}")
        else:
            return _status(
                415,
                "UnsupportedMediaType",
                f"the body of the request was in an unknown format - accepted "
                f"media types include: application/json-patch+json, application/merge-patch+json, "
                f"application/apply-patch+yaml (got {content_type})",
            )
        return self.update(namespace, name, patched, conditional=False)

    def delete(self, namespace: str, name: str) -> tuple[int, dict]:
        current = self.objects.pop((namespace, name), None)
        if current is None:
            return _status(404, "NotFound", f'{RESOURCE} "{name}" not found', name)
        return 200, current

    def get(self, namespace: str, name: str) -> tuple[int, dict]:
        key = (namespace, name)
        if key not in self.objects:
            return _status(404, "NotFound", f'{RESOURCE} "{name}" not found', name)
        answer = copy.deepcopy(self.objects[key])
        if key in self._unobserved:  # the controller reconciles after this read
            self._unobserved.discard(key)
            self.objects[key]["status"] = self._status_for(self.objects[key])
        return 200, answer

    # ------------------------------------------------------------ the controller

    def _status_for(self, obj: dict) -> dict:
        meta = obj["metadata"]
        name, namespace, generation = meta["name"], meta["namespace"], meta["generation"]
        if self.controller == "ready":
            url = f"http://{name}.{namespace}.example.com"
            conditions = [
                _condition("IngressReady", "True"),
                _condition("PredictorReady", "True"),
                _condition("Ready", "True"),
            ]
            return {
                "observedGeneration": generation,
                "url": url,
                "address": {"url": f"http://{name}-predictor.{namespace}.svc.cluster.local"},
                "conditions": conditions,
                "modelStatus": {
                    "transitionStatus": "UpToDate",
                    "states": {"activeModelState": "Loaded", "targetModelState": "Loaded"},
                },
            }
        if self.controller == "never":
            waiting = f'Configuration "{name}-predictor" is waiting for a Revision to become ready.'
            return {
                "observedGeneration": generation,
                "conditions": [
                    _condition("PredictorReady", "Unknown", "RevisionMissing", waiting),
                    _condition("Ready", "Unknown", "RevisionMissing", waiting),
                ],
                "modelStatus": {
                    "transitionStatus": "InProgress",
                    "states": {"activeModelState": "Pending", "targetModelState": "Pending"},
                },
            }
        failed = f'Revision "{name}-predictor-00001" failed with message: Container failed with: {self.failure_message}'
        return {
            "observedGeneration": generation,
            "conditions": [
                _condition("PredictorReady", "False", "RevisionFailed", failed),
                _condition("Ready", "False", "RevisionFailed", failed),
            ],
            "modelStatus": {
                "transitionStatus": "BlockedByFailedLoad",
                "states": {"activeModelState": "", "targetModelState": "FailedToLoad"},
                "lastFailureInfo": {"reason": self.failure_reason, "message": self.failure_message, "exitCode": 1},
            },
        }

    # ------------------------------------------------------------ HTTP

    def answer(self, method: str, path: str, content_type: str, body: Any) -> tuple[int, dict]:
        match = PATH.match(path)
        if not match:
            return _status(404, "NotFound", "the server could not find the requested resource")
        namespace, name = match.groups()
        with self._lock:
            if name is None:
                if method == "POST":
                    return self.create(namespace, body)
                return _status(405, "MethodNotAllowed", f"{method} on the collection is not served by the stand-in")
            if method == "GET":
                return self.get(namespace, name)
            if method == "PUT":
                return self.update(namespace, name, body)
            if method == "PATCH":
                return self.patch(namespace, name, content_type, body)
            if method == "DELETE":
                return self.delete(namespace, name)
        return _status(405, "MethodNotAllowed", "the server does not allow this method on the requested resource")


def _now() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _condition(kind: str, status: str, reason: str = "", message: str = "") -> dict:
    condition = {"type": kind, "status": status, "lastTransitionTime": _now()}
    if reason:
        condition["reason"] = reason
    if message:
        condition["message"] = message
    return condition


def _status(code: int, reason: str, message: str, name: str = "") -> tuple[int, dict]:
    """A failure as the API server writes it (k8s.io/apimachinery/pkg/api/errors)."""
    status = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if name:
        status["details"] = {"name": name, "group": GROUP, "kind": PLURAL}
    return code, status


def _non_metadata(obj: dict) -> dict:
    return {key: value for key, value in obj.items() if key != "metadata"}


def _merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386: objects merge key by key, null deletes, anything else replaces."""
    if not isinstance(patch, dict):
        return patch
    if not isinstance(target, dict):
        target = {}
    for key, value in patch.items():
        if value is None:
            target.pop(key, None)
        else:
            target[key] = _merge_patch(target.get(key), value)
    return target


def _pointer(doc: Any, path: str) -> tuple[Any, str]:
    parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
    if not parts:
        raise ValueError(f"json-patch path {path!r} names the whole document")
    for part in parts[:-1]:
        doc = doc[int(part)] if isinstance(doc, list) else doc[part]
    return doc, parts[-1]


def _json_patch(doc: dict, ops: Any) -> dict:
    """RFC 6902's add, replace, remove and test."""
    if not isinstance(ops, list):
        raise ValueError("a json-patch is a list of operations")
    for op in ops:
        parent, key = _pointer(doc, op["path"])
        kind = op["op"]
        if isinstance(parent, list):
            index = len(parent) if key == "-" else int(key)
            if kind == "add":
                parent.insert(index, op["value"])
            elif kind == "replace":
                parent[index] = op["value"]
            elif kind == "remove":
                del parent[index]
            elif kind == "test" and parent[index] != op["value"]:
                raise ValueError(f"test failed at {op['path']}")
        elif kind in ("add", "replace"):
            if kind == "replace" and key not in parent:
                raise KeyError(f"replace of a missing path {op['path']}")
            parent[key] = op["value"]
        elif kind == "remove":
            del parent[key]
        elif kind == "test" and parent.get(key) != op["value"]:
            raise ValueError(f"test failed at {op['path']}")
        elif kind not in ("add", "replace", "remove", "test"):
            raise ValueError(f"unsupported json-patch op {kind!r}")
    return doc


def _handler(api: KubeAPI):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):
            pass

        def _serve(self):
            length = int(self.headers.get("Content-Length") or 0)
            raw = self.rfile.read(length) if length else b""
            content_type = (self.headers.get("Content-Type") or "").split(";")[0].strip()
            try:
                body = json.loads(raw) if raw else None
            except json.JSONDecodeError:
                code, answer = _status(400, "BadRequest", "the request body is not JSON")
            else:
                path = self.path.split("?")[0]
                api.requests.append(
                    Request(self.command, path, content_type, self.headers.get("Authorization", ""), body)
                )
                code, answer = api.answer(self.command, path, content_type, body)
            data = json.dumps(answer).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    return Handler


@contextlib.contextmanager
def serving(api: KubeAPI | None = None) -> Iterator[KubeAPI]:
    """`api` (a new one by default) served on a free port of 127.0.0.1 until the block ends."""
    api = api or KubeAPI()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(api))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    api.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield api
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
