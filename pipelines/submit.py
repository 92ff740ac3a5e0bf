"""Submit runs to, and upload the pipeline into, a Kubeflow Pipelines API server (kfp.Client)."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

from sidreasoner.config import Config, to_params
from sidreasoner.pipelines.compile import compile_pipeline
from sidreasoner.pipelines.pipeline import PIPELINE_NAME, build
from sidreasoner.steps import downstream, pipeline_steps


@dataclass
class Submitted:
    run_id: str
    experiment_id: str
    no_cache_steps: list[str]
    state: str | None = None


def run_parameters(cfg: Config) -> dict:
    """The run's parameter values: the config sections the compiled pipeline declares as inputs
    (a section no built step reads is not a parameter, and the API server would refuse it)."""
    declared = build(cfg).component_spec.inputs or {}
    return {name: value for name, value in to_params(cfg).items() if name in declared}


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
    """Compile `cfg` and create a run. `rerun_from` compiles that step and everything downstream of
    it with caching off (kfp's submit-time `enable_caching` only reaches top-level tasks), so
    those re-execute and the steps before them come from the cache; `no_cache` turns caching off
    for the whole run."""
    if no_cache and rerun_from:
        raise ValueError("--no-cache and --rerun-from exclude each other")
    in_dag = {s.name for s in pipeline_steps(cfg)}
    no_cache_steps = [name for name in downstream(rerun_from) if name in in_dag] if rerun_from else []
    client = _client(host, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package = compile_pipeline(cfg, Path(tmp) / "pipeline.yaml", no_cache=frozenset(no_cache_steps))
        exp = client.create_experiment(experiment, namespace=namespace)
        run = client.run_pipeline(
            experiment_id=exp.experiment_id,
            job_name=run_name or f"{PIPELINE_NAME}-{cfg.data.category}".lower(),
            pipeline_package_path=str(package),
            params=run_parameters(cfg),
            pipeline_root=pipeline_root,
            enable_caching=False if no_cache else None,
            service_account=service_account,
        )
    submitted = Submitted(run.run_id, exp.experiment_id, no_cache_steps, run.state)
    if wait:
        submitted.state = client.wait_for_run_completion(run.run_id, timeout=timeout_s).state
    return submitted


def upload(cfg: Config, host: str, name: str = PIPELINE_NAME, version: str | None = None,
           namespace: str | None = None) -> str:
    """Register the pipeline, or a new version of it when one with this name exists; returns its id."""
    client = _client(host, namespace)
    with tempfile.TemporaryDirectory() as tmp:
        package = str(compile_pipeline(cfg, Path(tmp) / "pipeline.yaml"))
        pipeline_id = client.get_pipeline_id(name)
        if pipeline_id is None:
            return client.upload_pipeline(package, pipeline_name=name, namespace=namespace).pipeline_id
        client.upload_pipeline_version(package, pipeline_version_name=version or _version_name(cfg),
                                       pipeline_id=pipeline_id)
        return pipeline_id


def _version_name(cfg: Config) -> str:
    import datetime as dt

    from sidreasoner import __version__

    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%d-%H%M%S")
    return f"{__version__}-{cfg.data.category.lower()}-{stamp}"
