"""Submit runs to, and upload the pipeline into, a Kubeflow Pipelines API server (kfp.Client)."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import sys
import tempfile
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidreasoner.config import Config, generation_params, keep_generations, to_params, with_rerun
from sidreasoner.pipelines.compile import check_pipeline_config, compile_pipeline
from sidreasoner.pipelines.pipeline import build, pipeline_name
from sidreasoner.provenance import code_version
from sidreasoner.steps import pipeline_registry, pipeline_steps


@dataclass
class Submitted:
    run_id: str
    experiment_id: str
    rerun_steps: list[str]  # the steps this run executes again (--rerun-from / --no-cache)
    state: str | None = None
    keep: str = ""  # the settings that give later runs this run's results ("" without a re-run)


def run_parameters(cfg: Config, pipeline: str = "train") -> dict:
    """The run's parameter values: the config sections the compiled pipeline declares as inputs
    (a section no built step reads is not a parameter, and the API server would refuse it) and
    every task's generation."""
    registry = pipeline_registry(pipeline)
    declared = build(cfg, registry=registry, run_time_conditions=True).component_spec.inputs or {}
    return {name: value for name, value in pipeline_parameters(cfg, pipeline).items() if name in declared}


def pipeline_parameters(cfg: Config, pipeline: str = "train") -> dict:
    steps = [step.name for step in pipeline_steps(cfg, registry=pipeline_registry(pipeline), conditional=True)]
    return {**to_params(cfg), **generation_params(cfg, steps)}


@dataclass(frozen=True)
class Auth:
    """How to get past a Kubeflow deployment's authentication, as kfp.Client supports it:
    `token`, a bearer token (e.g. `kubectl create token`, or an OIDC access token);
    `token_file`, a file re-read on every request (the projected ServiceAccount token with audience
    `pipelines.kubeflow.org` of a pod inside the cluster); `cookie`, the auth proxy's session cookie
    (`authservice_session=…` or `oauth2_proxy_kubeflow=…` from a browser session)."""

    token: str | None = None
    token_file: str | None = None
    cookie: str | None = None

    def __repr__(self) -> str:  # never print the secrets
        given = [name for name in ("token", "token_file", "cookie") if getattr(self, name)]
        return f"Auth({', '.join(given) or 'none'})"


class KFPUnavailable(RuntimeError):
    """The KFP API could not be reached, or refused the request: one line that says which and why."""


REFUSED_HINTS = {
    401: "not authenticated: pass --token, --token-file or --cookie",
    403: "not allowed: the identity behind your token needs access to this namespace (a Kubeflow profile "
    "contributor, or RBAC on pipelines.kubeflow.org)",
}


HEALTHZ = "/apis/v2beta1/healthz"
ANSWER_READ = 4096  # bytes of the health answer read to tell whether it is the API's
SHOWN_CHARS = 60  # characters of an answer that is not the API's, shown in the error


def _json_or_none(body: bytes) -> Any:
    try:
        return json.loads(body)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        return None


def _shown(body: bytes | str) -> str:
    """A short, escaped prefix of what a server answered: no control character reaches the terminal."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else str(body)
    return ascii(text[:SHOWN_CHARS]) + ("…" if len(text) > SHOWN_CHARS else "")


def _not_kfp(host: str, request: str, status: Any, body: bytes | str, expected: str) -> str:
    return (
        f"{host} is not the Kubeflow Pipelines API: {request} answered {status} {_shown(body)}, not "
        f"{expected}; check --host (the API's base URL, e.g. http://localhost:8080)"
    )


def _checked(host: str, client, request: str, key: str, call: Callable, **kwargs) -> Any:
    """`call`'s answer when it holds `key` as the v2beta1 API's answers do (backend/api/v2beta1: a Run its
    run_id, a Pipeline its pipeline_id), else KFPUnavailable saying what the server answered. kfp.Client
    prints a link to the UI with every answer, even one without an id: it is printed only for a real answer."""
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        answer = call(**kwargs)
    value = getattr(answer, key, None)
    if not (isinstance(value, str) and value):
        # Every service of a kfp.Client shares one ApiClient, which keeps the last raw answer.
        last = getattr(getattr(getattr(client, "_run_api", None), "api_client", None), "last_response", None)
        raise KFPUnavailable(
            _not_kfp(
                host, request, getattr(last, "status", "?"), getattr(last, "data", b""), f"an object holding {key}"
            )
        )
    sys.stdout.write(printed.getvalue())
    return answer


def _headers(auth: Auth) -> dict[str, str]:
    headers = {}
    if auth.token or auth.token_file:
        token = auth.token or Path(auth.token_file).read_text().strip()
        headers["Authorization"] = f"Bearer {token}"
    if auth.cookie:
        headers["Cookie"] = auth.cookie
    return headers


def _probe(host: str, auth: Auth, attempts: int = 3, timeout_s: float = 10.0) -> None:
    """One request to the API's health endpoint first, so that an unreachable host, a refusal or a server
    that is not the API (its answer is not a JSON object) is one clear line after a bounded retry
    (kfp.Client retries its own health check 5 times, 5 s apart, logging a traceback each time)."""
    import time
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{host.rstrip('/')}{HEALTHZ}", headers=_headers(auth))
    for attempt in range(1, attempts + 1):
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                kind = response.headers.get_content_type()
                body = response.read(ANSWER_READ)
            if kind == "text/html":
                raise KFPUnavailable(
                    f"{host} answered with a web page, not the Kubeflow Pipelines API (a login "
                    "page?): pass --token or --cookie, or check the URL"
                )
            if not isinstance(_json_or_none(body), dict):
                raise KFPUnavailable(_not_kfp(host, f"GET {HEALTHZ}", response.status, body, "a JSON object"))
            return
        except urllib.error.HTTPError as err:
            if err.code in REFUSED_HINTS:
                raise KFPUnavailable(
                    f"the Kubeflow Pipelines API at {host} answered {err.code} {err.reason}: {REFUSED_HINTS[err.code]}"
                ) from None
            return  # another status: the server is there; the client reports what it says
        except (urllib.error.URLError, OSError) as err:
            if attempt == attempts:
                reason = getattr(err, "reason", err)
                raise KFPUnavailable(f"cannot reach the Kubeflow Pipelines API at {host}: {reason}") from None
            time.sleep(attempt)


def _client(host: str, namespace: str | None, auth: Auth = Auth()):
    import warnings

    import kfp
    from kfp.client.set_volume_credentials import ServiceAccountTokenVolumeCredentials

    if auth.token_file and not auth.token and not Path(auth.token_file).is_file():
        raise KFPUnavailable(f"token file {auth.token_file} does not exist")
    _probe(host, auth)
    credentials = ServiceAccountTokenVolumeCredentials(auth.token_file) if auth.token_file and not auth.token else None
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This client only works with", category=FutureWarning)
        return kfp.Client(
            host=host,
            namespace=namespace or "kubeflow",
            existing_token=auth.token or None,
            cookies=auth.cookie or None,
            credentials=credentials,
        )


@contextmanager
def _api_errors(host: str):
    """Connection failures and refusals as one-line KFPUnavailable errors. The client's HTTP pool
    retries a failed connection 3 times (urllib3's default) before giving up."""
    from kfp_server_api.exceptions import ApiException
    from urllib3.exceptions import HTTPError

    try:
        yield
    except ApiException as err:
        hint = REFUSED_HINTS.get(err.status, "")
        reason = (err.reason or "").strip()
        raise KFPUnavailable(
            f"the Kubeflow Pipelines API at {host} answered {err.status} {reason}" + (f": {hint}" if hint else "")
        ) from None
    except (HTTPError, OSError) as err:
        cause = getattr(err, "reason", None) or err
        raise KFPUnavailable(f"cannot reach the Kubeflow Pipelines API at {host}: {_short(cause)}") from None


def _short(error: object) -> str:
    """The last part of urllib3's nested message ("…: Failed to establish a new connection: [Errno 111]
    Connection refused")."""
    text = str(error)
    return text.rsplit("Failed to establish a new connection: ", 1)[-1] if "Failed to establish" in text else text


def submit(
    cfg: Config,
    host: str,
    experiment: str = "sidreasoner",
    run_name: str | None = None,
    pipeline_root: str | None = None,
    no_cache: bool = False,
    rerun_from: str | None = None,
    wait: bool = False,
    timeout_s: int = 24 * 3600,
    namespace: str | None = None,
    service_account: str | None = None,
    auth: Auth = Auth(),
    pipeline: str = "train",
) -> Submitted:
    """Compile `cfg` as pipeline `pipeline` (train or evaluate) and create a run. `rerun_from` re-executes
    that step and everything downstream of it while the steps before them come from the cache; `no_cache`
    re-executes every step.

    Both keep caching on and raise one step's generation (`with_rerun`): KFP's driver computes a
    task's cache fingerprint only when its caching is on, and the launcher stores a cache entry only
    for a task with a fingerprint (kubeflow/pipelines backend/src/v2/driver/cache.go
    `getFingerPrintsAndID`, `createCache`), so tasks compiled with caching off would leave the old
    entries to be served to the next run. A lookup returns the newest entry with the key
    (backend/src/v2/cacheutils/cache.go `GetExecutionCache`, "created_at desc"): a later run given
    the same generation (`Submitted.keep`) gets this run's results; one without it gets the results
    of the generation it names."""
    check_pipeline_config(cfg, pipeline)
    cfg, rerun_steps = with_rerun(cfg, no_cache, rerun_from, pipeline_registry(pipeline))
    params = run_parameters(cfg, pipeline)
    with tempfile.TemporaryDirectory() as tmp, _api_errors(host):
        package = compile_pipeline(cfg, Path(tmp) / "pipeline.yaml", pipeline=pipeline)
        client = _client(host, namespace, auth)
        exp = _checked(
            host,
            client,
            f"creating experiment {experiment}",
            "experiment_id",
            client.create_experiment,
            name=experiment,
            namespace=namespace,
        )
        run = _checked(
            host,
            client,
            "creating the run",
            "run_id",
            client.run_pipeline,
            experiment_id=exp.experiment_id,
            job_name=run_name or f"{pipeline_name(pipeline)}-{cfg.data.category}".lower(),
            pipeline_package_path=str(package),
            params=params,
            pipeline_root=pipeline_root,
            service_account=service_account,
        )
        submitted = Submitted(
            run.run_id, exp.experiment_id, rerun_steps, run.state, keep=keep_generations(cfg) if rerun_steps else ""
        )
        if wait:
            submitted.state = client.wait_for_run_completion(run.run_id, timeout=timeout_s).state
    return submitted


@dataclass
class Uploaded:
    pipeline_id: str
    version: str  # the name of the version holding this spec
    created: bool  # False when the server already had a version of this exact spec


def spec_digest(text: str | bytes) -> str:
    """The first 12 hex digits of the SHA-256 of the compiled YAML's documents as canonical JSON (the
    compiler's header comment lists default values in a different order in every process). The
    spec holds `code_version`, so a code change changes the digest."""
    import yaml

    canonical = json.dumps(list(yaml.safe_load_all(text)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:12]


def version_name(cfg: Config, digest: str) -> str:
    """`<code version>-<category>-<spec digest>`, e.g. `0.1.0-g1a2b3c4d5e6f-office-products-0f3a…`, in
    the characters a Kubernetes object name allows (KFP may store versions as Kubernetes objects)."""
    raw = f"{code_version()}-{cfg.data.category}-{digest}".lower()
    return re.sub(r"[^a-z0-9.-]+", "-", raw).strip("-.")


def _versions(client, pipeline_id: str):
    token = ""
    while True:
        page = client.list_pipeline_versions(pipeline_id, page_token=token, page_size=100)
        yield from page.pipeline_versions or []
        token = page.next_page_token
        if not token:
            return


def _pipeline_id(client, name: str, namespace: str | None) -> str | None:
    """The id of the pipeline called `name` in `namespace` (shared pipelines without one).
    kfp.Client.get_pipeline_id lists shared pipelines only."""
    name_filter = json.dumps(
        {"predicates": [{"operation": 1, "key": "display_name", "stringValue": name}]}
    )  # 1: EQUALS
    found = client.list_pipelines(filter=name_filter, namespace=namespace).pipelines or []
    if len(found) > 1:
        raise ValueError(f"several pipelines are called {name}{f' in namespace {namespace}' if namespace else ''}")
    return found[0].pipeline_id if found else None


def upload(
    cfg: Config,
    host: str,
    name: str | None = None,
    version: str | None = None,
    namespace: str | None = None,
    auth: Auth = Auth(),
    pipeline: str = "train",
) -> Uploaded:
    """Register the pipeline, or add a version of it when one with this name exists. A version is
    named after the code version, the category and the compiled spec's digest (`version` overrides
    the name), and its description records the digest: when a version of the same spec is already
    there (by digest; the server's list of versions is read first), nothing is uploaded.

    With `namespace` the pipeline belongs to that namespace (a Kubeflow profile) and only its
    members see it; without, it is shared with every profile, which multi-user Kubeflow lets only
    identities with rights in its own namespace create. A single-user server ignores the namespace
    (kubeflow/pipelines backend/src/apiserver/resource/resource_manager.go `ReplaceNamespace`).

    `pipeline` (`--pipeline`) says which pipeline; `name` defaults to its compiled name (sidreasoner,
    sidreasoner-evaluate)."""
    name = name or pipeline_name(pipeline)
    with tempfile.TemporaryDirectory() as tmp, _api_errors(host):
        package = compile_pipeline(cfg, Path(tmp) / "pipeline.yaml", pipeline=pipeline)
        digest = spec_digest(package.read_bytes())
        vname = version or version_name(cfg, digest)
        description = f"sidreasoner {code_version()} ({cfg.data.category}); compiled spec sha256:{digest}"
        client = _client(host, namespace, auth)
        pipeline_id = _pipeline_id(client, name, namespace)
        if pipeline_id is None:
            # The server names the first version after the pipeline; the description carries the digest.
            created = _checked(
                host,
                client,
                f"uploading pipeline {name}",
                "pipeline_id",
                client.upload_pipeline,
                pipeline_package_path=str(package),
                pipeline_name=name,
                description=description,
                namespace=namespace,
            )
            return Uploaded(created.pipeline_id, name, True)
        taken = False
        for existing in _versions(client, pipeline_id):
            if f"sha256:{digest}" in (existing.description or "") or existing.display_name == version_name(cfg, digest):
                return Uploaded(pipeline_id, existing.display_name, False)
            taken = taken or existing.display_name == vname
        if taken:
            raise ValueError(f"pipeline {name} has a version {vname} of another spec; choose another --version")
        _checked(
            host,
            client,
            f"uploading version {vname}",
            "pipeline_version_id",
            client.upload_pipeline_version,
            pipeline_package_path=str(package),
            pipeline_version_name=vname,
            pipeline_id=pipeline_id,
            description=description,
        )
        return Uploaded(pipeline_id, vname, True)
