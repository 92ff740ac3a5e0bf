"""Submit runs to, and upload the pipeline into, a Kubeflow Pipelines API server (kfp.Client)."""

from __future__ import annotations

import hashlib
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from sidreasoner.config import Config, to_params
from sidreasoner.pipelines.compile import compile_pipeline
from sidreasoner.pipelines.pipeline import PIPELINE_NAME, build, code_version
from sidreasoner.steps import downstream, pipeline_steps


@dataclass
class Submitted:
    run_id: str
    experiment_id: str
    rerun_steps: list[str]  # the steps --rerun-from executes again (a fresh rerun_token in their cache key)
    state: str | None = None


def run_parameters(cfg: Config) -> dict:
    """The run's parameter values: the config sections the compiled pipeline declares as inputs
    (a section no built step reads is not a parameter, and the API server would refuse it)."""
    declared = build(cfg).component_spec.inputs or {}
    return {name: value for name, value in to_params(cfg).items() if name in declared}


def rerun_token() -> str:
    """A value no earlier run used: the UTC time and a random suffix."""
    import datetime as dt
    import uuid

    return f"{dt.datetime.now(dt.timezone.utc):%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:8]}"


def _client(host: str, namespace: str | None):
    import warnings

    import kfp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="This client only works with", category=FutureWarning)
        return kfp.Client(host=host, namespace=namespace or "kubeflow")


def submit(cfg: Config, host: str, experiment: str = "sidreasoner", run_name: str | None = None,
           pipeline_root: str | None = None, no_cache: bool = False, rerun_from: str | None = None,
           wait: bool = False, timeout_s: int = 24 * 3600, namespace: str | None = None,
           service_account: str | None = None) -> Submitted:
    """Compile `cfg` and create a run. `rerun_from` re-executes that step and everything downstream
    of it while the steps before them come from the cache; `no_cache` turns caching off for the
    whole run.

    A re-run keeps caching on: KFP's driver computes a task's cache fingerprint only when its
    caching is on, and the launcher stores a cache entry only for a task with a fingerprint
    (kubeflow/pipelines backend/src/v2/driver/driver.go, backend/src/v2/cacheutils), so tasks
    compiled with caching off would leave the old entries to be served to the next run. Instead
    the re-run tasks receive `rerun_token`, a fresh value per run: their cache keys are new, they
    execute, and their results are cached under those keys."""
    if no_cache and rerun_from:
        raise ValueError("--no-cache and --rerun-from exclude each other")
    in_dag = {s.name for s in pipeline_steps(cfg)}
    rerun_steps = [name for name in downstream(rerun_from) if name in in_dag] if rerun_from else []
    params = run_parameters(cfg)
    if rerun_steps:
        params["rerun_token"] = rerun_token()
    client = _client(host, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(cfg, Path(tmp) / "pipeline.yaml", rerun=frozenset(rerun_steps))
        exp = client.create_experiment(experiment, namespace=namespace)
        run = client.run_pipeline(
            experiment_id=exp.experiment_id,
            job_name=run_name or f"{PIPELINE_NAME}-{cfg.data.category}".lower(),
            pipeline_package_path=str(package),
            params=params,
            pipeline_root=pipeline_root,
            enable_caching=False if no_cache else None,
            service_account=service_account,
        )
    submitted = Submitted(run.run_id, exp.experiment_id, rerun_steps, run.state)
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
    import json

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


def upload(cfg: Config, host: str, name: str = PIPELINE_NAME, version: str | None = None,
           namespace: str | None = None) -> Uploaded:
    """Register the pipeline, or add a version of it when one with this name exists. A version is
    named after the code version, the category and the compiled spec's digest (`version` overrides
    the name), and its description records the digest: when a version of the same spec is already
    there (by digest; the server's list of versions is read first), nothing is uploaded."""
    client = _client(host, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(cfg, Path(tmp) / "pipeline.yaml")
        digest = spec_digest(package.read_bytes())
        vname = version or version_name(cfg, digest)
        description = f"sidreasoner {code_version()} ({cfg.data.category}); compiled spec sha256:{digest}"
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            # The server names the first version after the pipeline; the description carries the digest.
            created = client.upload_pipeline(str(package), pipeline_name=name, description=description,
                                             namespace=namespace)
            return Uploaded(created.pipeline_id, name, True)
        taken = False
        for existing in _versions(client, pipeline_id):
            if f"sha256:{digest}" in (existing.description or "") or existing.display_name == version_name(cfg, digest):
                return Uploaded(pipeline_id, existing.display_name, False)
            taken = taken or existing.display_name == vname
        if taken:
            raise ValueError(f"pipeline {name} has a version {vname} of another spec; choose another --version")
        client.upload_pipeline_version(str(package), pipeline_version_name=vname, pipeline_id=pipeline_id,
                                       description=description)
        return Uploaded(pipeline_id, vname, True)
