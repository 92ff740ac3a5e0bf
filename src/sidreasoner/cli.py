"""`sidreasoner`: run the pipeline locally, compile it for a cluster, or run one step on its own."""

from __future__ import annotations

import json
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated

import typer

from sidreasoner import config as config_mod
from sidreasoner.artifacts import ReportPages
from sidreasoner.config import Config, ConfigError
from sidreasoner.steps import ALL_STEPS, STEPS, Step

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)

PresetOpt = Annotated[str, typer.Option("--preset", "-p", help=f"one of: {', '.join(config_mod.PRESETS)}")]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override a config key: section.key=value (repeatable)"),
]
ConfigFileOpt = Annotated[
    Path | None,
    typer.Option("--config", help="JSON file with config sections (e.g. a KFP task's inputs); --set still applies"),
]
MetricsOpt = Annotated[Path | None, typer.Option("--metrics", help="also write the step's metrics JSON here")]


def _fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _load_config(preset: str, overrides: list[str] | None, config_file: Path | None = None) -> Config:
    """The config, or a one-line error; a URL with credentials in it is refused before anything is
    written or logged."""
    try:
        if config_file is None:
            cfg = config_mod.load(preset, overrides)
        else:
            cfg = config_mod.load_from(_read_config_file(config_file), overrides)
        config_mod.refuse_url_credentials(cfg.model_dump(mode="json"))
        return cfg
    except ConfigError as err:
        _fail(str(err))


JSON_KINDS = {
    list: "an array",
    str: "a string",
    int: "a number",
    float: "a number",
    bool: "true or false",
    type(None): "null",
}


def _read_config_file(path: Path) -> dict:
    """A --config file's sections: a JSON object in UTF-8 text, else a ConfigError naming the file and why."""
    try:
        base = json.loads(path.read_text(encoding="utf-8-sig"))
    except UnicodeDecodeError as err:
        bad = err.object[err.start]
        raise ConfigError(f"cannot read config file {path}: not UTF-8 text (byte {err.start} is {bad:#04x})") from None
    except RecursionError:
        raise ConfigError(f"cannot read config file {path}: its JSON is nested too deep") from None
    except (OSError, json.JSONDecodeError) as err:
        raise ConfigError(f"cannot read config file {path}: {err}") from None
    where = config_mod.too_deep(base)
    if where:
        raise ConfigError(f"config file {path}: nested deeper than {config_mod.MAX_DEPTH} levels, at {where[:200]}")
    if not isinstance(base, dict):
        raise ConfigError(
            f"config file {path} holds {JSON_KINDS.get(type(base), 'a JSON value')}, not an object of "
            'config sections ({"data": {…}, "stage1": {…}})'
        )
    return base


NoCacheOpt = Annotated[
    bool,
    typer.Option(
        "--no-cache",
        help="execute every step again, with fresh training (a new generation of the first step; caching "
        "stays on, so later runs given that generation get these results)",
    ),
]
RerunFromOpt = Annotated[
    str | None,
    typer.Option(
        help="execute this step and every step after it again, with fresh training (a new generation of the step); "
        "earlier steps come from the cache"
    ),
]


PipelineOpt = Annotated[
    str,
    typer.Option(
        "--pipeline",
        help="train: the whole DAG, training included; evaluate: the data and SID steps and the baselines, then the "
        "model model.base names (trained elsewhere: a folder, hub id or bucket URI), its evaluation and a report",
    ),
]


@app.command()
def run(
    preset: PresetOpt = "demo",
    overrides: SetOpt = None,
    pipeline_root: Annotated[Path, typer.Option(help="where kfp.local keeps artifacts and its cache")] = Path(
        "local_outputs"
    ),
    until: Annotated[str | None, typer.Option(help="stop after this step")] = None,
    summary: Annotated[Path | None, typer.Option(help="write a JSON summary of every task here")] = None,
    runner: Annotated[
        str,
        typer.Option(
            help="subprocess: every step in this environment; docker: every step in "
            "its image, through the Docker API DOCKER_HOST names (Docker or podman)"
        ),
    ] = "subprocess",
    prepare_root: Annotated[
        bool,
        typer.Option(
            help="docker runner: hand a pipeline root the images' user cannot write to that user, from a root container"
        ),
    ] = False,
    no_cache: NoCacheOpt = False,
    rerun_from: RerunFromOpt = None,
    pipeline: PipelineOpt = "train",
) -> None:
    """Run the pipeline DAG on this machine through kfp.local (caching on: re-runs reuse finished steps)."""
    from sidreasoner.pipelines.compile import check_pipeline_config
    from sidreasoner.steps import pipeline_registry, pipeline_steps

    cfg = _load_config(preset, overrides)
    try:
        registry = pipeline_registry(pipeline)
        check_pipeline_config(cfg, pipeline, until)
        in_run = [step.name for step in pipeline_steps(cfg, until, registry)]
        cfg, rerun_steps = config_mod.with_rerun(cfg, no_cache, rerun_from, registry)
        if rerun_from and rerun_from not in in_run:
            raise ConfigError(
                f"--rerun-from {rerun_from}: the step is not in this run (--until {until}, or a step "
                "whose setting is not set)"
            )
    except ConfigError as err:
        _fail(str(err))
    if pipeline_root.exists() and not pipeline_root.is_dir():
        _fail(f"--pipeline-root {pipeline_root} is a file; give a folder (it is created when absent)")
    if summary is not None and summary.is_dir():
        _fail(f"--summary {summary} is a folder; give the path of the JSON file to write")
    if summary is not None:
        _writable_folder(f"--summary {summary}: its folder", summary.parent)
    _writable_folder("--pipeline-root", pipeline_root)
    from sidreasoner.pipelines.console import ESCAPES, TaskFailed
    from sidreasoner.pipelines.local import run_local

    try:
        result = run_local(
            cfg,
            pipeline_root,
            until=until,
            summary_path=summary,
            runner=runner,
            prepare_root=prepare_root,
            pipeline=pipeline,
        )
    except (ValueError, PermissionError, TaskFailed) as err:
        _fail(str(err), code=1)
    except RuntimeError as err:  # from kfp.local, with its terminal colours
        _fail(ESCAPES.sub("", str(err)), code=1)
    typer.echo(f"\nPipeline finished in {result['wall_seconds']} s. Artifacts:")
    for name, task in result["tasks"].items():
        typer.echo(f"  {name:<18} {task['status']:<9}")
        for out, path in task["outputs"].items():
            typer.echo(f"      {out:<11} {path}")
        typer.echo(f"      {'metrics':<11} {task['metrics_path']}")
    _print_headline(result["tasks"].get("report") or result["tasks"].get("report-model"))
    if summary:
        typer.echo(f"Summary: {summary}")
    if rerun_steps:
        _print_keep(cfg, [name for name in rerun_steps if name in result["tasks"]], "sidreasoner run")


def _writable_folder(what: str, folder: Path) -> None:
    """Fail now, not after the run, when `folder` cannot be created or written to (a read-only mount, a
    file in its path, no permission)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as err:
        _fail(f"{what} {folder} is not writable: {err.strerror or err}")


def _print_keep(cfg, rerun_steps: list[str], command: str) -> None:
    keep = config_mod.keep_generations(cfg)
    typer.echo(
        f"Re-executed with a new generation: {', '.join(rerun_steps)}.\n"
        f"Later runs get these results only when given the same generations: {command} … {keep}\n"
        "(a run without them is served the results of the generations it names: the earlier ones)"
    )


def _print_headline(report_task: dict | None) -> None:
    """The report's opening paragraph, a file:// link that opens its page in a browser, and one line per
    model and mode: HR@K against the popularity baseline."""
    if not report_task:
        return
    page = next(r for r in STEPS["report"].reports if r.name == "report_html")
    pages = ReportPages.at(report_task["outputs"][page.folder])
    try:
        told = pages.headline()
    except (OSError, ValueError):
        told = {}
    typer.echo(f"\n{told['text']}" if told.get("text") else "")
    typer.echo(f"Report: {pages.file(page.filename).resolve().as_uri()}")
    metrics = report_task["metrics"]
    hr = {k: v for k, v in metrics.items() if "_hr@" in k}
    popularity = next((v for k, v in hr.items() if k.startswith("popularity_")), None)
    if popularity is None:
        return
    typer.echo(f"{told.get('split', 'test').capitalize()} split:")
    for key, value in hr.items():
        label, metric = key.rsplit("_", 1)
        ratio = (
            f"  ({value / popularity:.1f}x popularity)" if popularity > 0 and not key.startswith("popularity") else ""
        )
        typer.echo(f"  {label:<18} {metric.upper()} {value:.3f}{ratio}")


@app.command("compile")
def compile_cmd(
    preset: PresetOpt = "demo",
    overrides: SetOpt = None,
    output: Annotated[Path, typer.Option("--output", "-o", help="pipeline YAML to write")] = Path(
        "sidreasoner-pipeline.yaml"
    ),
    pipeline: PipelineOpt = "train",
) -> None:
    """Write the KFP pipeline YAML; the preset's values become the parameters' defaults."""
    from sidreasoner.pipelines.compile import compile_pipeline

    cfg = _load_config(preset, overrides)
    try:
        typer.echo(f"Wrote {compile_pipeline(cfg, output, pipeline=pipeline)}")
    except ConfigError as err:
        _fail(str(err))


HostOpt = Annotated[
    str,
    typer.Option("--host", help="KFP API endpoint, e.g. http://localhost:8080 or https://kubeflow.example/pipeline"),
]
NamespaceOpt = Annotated[
    str | None, typer.Option(help="Kubernetes namespace: your Kubeflow profile (multi-user Kubeflow)")
]
TokenOpt = Annotated[
    str | None,
    typer.Option(
        envvar="SIDREASONER_KFP_TOKEN",
        show_default=False,
        help="bearer token for the KFP API (e.g. `kubectl create token default-editor -n <profile> "
        "--audience pipelines.kubeflow.org`); prefer the environment variable, the command line is visible to others",
    ),
]
TokenFileOpt = Annotated[
    str | None,
    typer.Option(
        envvar="KF_PIPELINES_SA_TOKEN_PATH",
        help="file holding the bearer token, re-read on every request (a pod's projected ServiceAccount token)",
    ),
]
CookieOpt = Annotated[
    str | None,
    typer.Option(
        envvar="SIDREASONER_KFP_COOKIE",
        show_default=False,
        help="session cookie of the auth proxy in front of Kubeflow, e.g. authservice_session=…",
    ),
]


def _auth(token: str | None, token_file: str | None, cookie: str | None):
    from sidreasoner.pipelines.submit import Auth

    return Auth(token=token, token_file=token_file, cookie=cookie)


@app.command()
def submit(
    host: HostOpt,
    preset: PresetOpt = "demo",
    overrides: SetOpt = None,
    experiment: Annotated[
        str, typer.Option(help="experiment to file the run under (created if absent)")
    ] = "sidreasoner",
    run_name: Annotated[str | None, typer.Option(help="run display name")] = None,
    pipeline_root: Annotated[
        str | None, typer.Option(help="artifact root URI (s3://, gs://, minio://); default: the server's")
    ] = None,
    no_cache: NoCacheOpt = False,
    rerun_from: RerunFromOpt = None,
    wait: Annotated[
        bool, typer.Option("--wait", help="wait for the run to finish; exit 1 unless it succeeded")
    ] = False,
    namespace: NamespaceOpt = None,
    service_account: Annotated[str | None, typer.Option(help="service account the run's pods use")] = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    cookie: CookieOpt = None,
    pipeline: PipelineOpt = "train",
) -> None:
    """Compile the pipeline with the preset's values and create a run on a Kubeflow Pipelines server."""
    from sidreasoner.pipelines.submit import KFPUnavailable
    from sidreasoner.pipelines.submit import submit as submit_run

    cfg = _load_config(preset, overrides)
    try:
        config_mod.refuse_url_credentials({"--pipeline-root": pipeline_root})
        result = submit_run(
            cfg,
            host,
            experiment=experiment,
            run_name=run_name,
            pipeline_root=pipeline_root,
            no_cache=no_cache,
            rerun_from=rerun_from,
            wait=wait,
            namespace=namespace,
            service_account=service_account,
            auth=_auth(token, token_file, cookie),
            pipeline=pipeline,
        )
    except (ConfigError, ValueError) as err:
        _fail(str(err))
    except KFPUnavailable as err:
        _fail(str(err), code=1)
    typer.echo(f"Run {result.run_id} created in experiment {experiment}.")
    if result.rerun_steps:
        typer.echo(
            f"Re-executing with a new generation: {', '.join(result.rerun_steps)}.\n"
            f"Later runs get this run's results only when given the same generations: sidreasoner submit … "
            f"{result.keep}\n(in the KFP UI: the run parameters generation_<step>; a run without them is "
            "served the results of the generations it names: the earlier ones)"
        )
    if wait:
        typer.echo(f"Run finished: {result.state}")
        if (result.state or "").upper() != "SUCCEEDED":
            raise typer.Exit(1)


@app.command()
def upload(
    host: HostOpt,
    preset: PresetOpt = "demo",
    overrides: SetOpt = None,
    name: Annotated[
        str | None, typer.Option(help="pipeline name in the KFP UI (default: sidreasoner, sidreasoner-evaluate)")
    ] = None,
    version: Annotated[
        str | None,
        typer.Option(
            help="version name when the pipeline exists "
            "(default: code version, category and the compiled spec's digest)"
        ),
    ] = None,
    namespace: NamespaceOpt = None,
    token: TokenOpt = None,
    token_file: TokenFileOpt = None,
    cookie: CookieOpt = None,
    pipeline: PipelineOpt = "train",
) -> None:
    """Register the compiled pipeline on a Kubeflow Pipelines server, or add a new version of it
    (none when the server has a version of the same compiled spec). With --namespace the pipeline
    belongs to that profile; without, it is shared with all profiles."""
    from sidreasoner.pipelines.pipeline import pipeline_name
    from sidreasoner.pipelines.submit import KFPUnavailable
    from sidreasoner.pipelines.submit import upload as upload_pipeline

    cfg = _load_config(preset, overrides)
    name = name or pipeline_name(pipeline)
    try:
        result = upload_pipeline(
            cfg,
            host,
            name=name,
            version=version,
            namespace=namespace,
            auth=_auth(token, token_file, cookie),
            pipeline=pipeline,
        )
    except (ConfigError, ValueError) as err:
        _fail(str(err))
    except KFPUnavailable as err:
        _fail(str(err), code=1)
    if result.created:
        typer.echo(f"Pipeline {name} ({result.pipeline_id}): version {result.version} uploaded.")
    else:
        typer.echo(
            f"Pipeline {name} ({result.pipeline_id}) already has this spec as version {result.version}; "
            "nothing uploaded."
        )


@app.command()
def recommend(
    model: Annotated[Path, typer.Option(help="a trained model folder (sft-stage1/2's output)", file_okay=False)],
    history: Annotated[str, typer.Option(help="item ids the user interacted with, oldest first: 12,7,301")],
    sid_index: Annotated[Path, typer.Option(help="quantize-sids' folder", file_okay=False)],
    dataset: Annotated[Path, typer.Option(help="preprocess' folder (titles)", file_okay=False)],
    think: Annotated[bool, typer.Option("--think", help="reason first (thinking mode), then decode SIDs")] = False,
    k: Annotated[int, typer.Option("-k", min=1, help="how many recommendations")] = 10,
    as_json: Annotated[
        bool,
        typer.Option("--json", help="print one JSON object: the recommendations, the reasoning and the history used"),
    ] = False,
    preset: PresetOpt = "demo",
    overrides: SetOpt = None,
) -> None:
    """Print top-k recommendations (SID, title, score) for one history, and the reasoning with --think.
    Item ids not in the SID index are left out, and only the most recent ones the training data kept
    (data.max_history) are used; a warning line says so."""
    from sidreasoner.eval.recommend import recommend as recommend_items

    cfg = _load_config(preset, overrides)
    try:
        ids = [int(x) for x in history.replace(" ", "").split(",") if x]
    except ValueError:
        _fail(f"--history must be comma-separated item ids, got {history!r}")
    try:
        found = recommend_items(model, sid_index, dataset, ids, k=k, think=think, cfg=cfg)
    except (ValueError, OSError) as err:
        _fail(str(err), code=1)
    for note in found.notes():
        typer.secho(f"warning: {note}", fg=typer.colors.YELLOW, err=True)
    if as_json:
        typer.echo(
            json.dumps(
                {
                    "recommendations": found.items,
                    "reasoning": found.reasoning,
                    "history_used": found.history_used,
                    "unknown_item_ids": found.unknown_ids,
                    "older_items_dropped": found.older_dropped,
                    "max_history": found.max_history,
                },
                indent=2,
            )
        )
        return
    if found.notes():
        typer.echo(f"History used (oldest first): {', '.join(map(str, found.history_used))}")
    if think:
        typer.echo(f"Reasoning:\n{found.reasoning.strip()}\n")
    for rec in found.items:
        titles = "; ".join(rec["titles"]) or "?"
        typer.echo(f"{rec['rank']:>3}. {rec['sid']}  {titles}  (log-prob {rec['score']:.3f})")


@app.command()
def serve(
    model: Annotated[
        str, typer.Option(help="a merged model folder, or its s3:// / minio:// / gs:// URI (export-model's)")
    ],
    sid_index: Annotated[
        Path | None,
        typer.Option(help="quantize-sids' folder; default: the model's catalogue/sid_index", file_okay=False),
    ] = None,
    dataset: Annotated[
        Path | None,
        typer.Option(help="preprocess' folder; default: the model's catalogue/dataset", file_okay=False),
    ] = None,
    name: Annotated[str | None, typer.Option(help="the model's name in the URLs (default: serve.name)")] = None,
    port: Annotated[int | None, typer.Option(help="HTTP port (default: serve.port)")] = None,
    host: Annotated[str, typer.Option(help="address to listen on; 127.0.0.1: this machine only")] = "0.0.0.0",
    preset: PresetOpt = "demo",
    overrides: SetOpt = None,
) -> None:
    """Serve a trained model as a KServe predictor (REST v1 and v2, /metrics): top-k items for a history,
    decoded as `evaluate` decodes, concurrent requests batched (serve.max_batch, serve.max_wait_ms). SIGTERM
    answers the requests in flight, then exits."""
    given = [f"serve.{key}={value}" for key, value in (("name", name), ("port", port)) if value is not None]
    cfg = _load_config(preset, [*(overrides or []), *given])
    from sidreasoner.serve.server import load_recommender, run_server

    try:
        recommender = load_recommender(cfg, model, sid_index, dataset)
    except (ValueError, OSError) as err:
        _fail(str(err))
    run_server(recommender, cfg.serve.port, host)


@app.command("config")
def show_config(preset: PresetOpt = "demo", overrides: SetOpt = None) -> None:
    """Print the resolved config (preset plus overrides) as JSON."""
    typer.echo(json.dumps(_load_config(preset, overrides).model_dump(mode="json"), indent=2))


def _run_step(
    step: Step,
    preset: str,
    overrides,
    config_file,
    paths: dict[str, Path],
    metrics: Path | None,
    registry: Mapping[str, Step],
) -> None:
    from sidreasoner.io import write_json
    from sidreasoner.runner import run_step

    name = step.name
    cfg = _load_config(preset, overrides, config_file)
    try:
        values = run_step(name, cfg, paths, registry)
    except (ValueError, RuntimeError, OSError) as err:  # the library's errors; bugs keep their traceback
        _fail(f"{name}: {err}", code=1)
    if metrics:
        write_json(metrics, values)
    typer.echo(json.dumps(values, indent=2, sort_keys=True))


def _step_command(step: Step, registry: Mapping[str, Step]):
    """`sidreasoner step NAME --<input> DIR … --<output> DIR …`, generated from the step's registry entry."""
    import inspect

    def command(**kwargs) -> None:
        paths = {k: kwargs.pop(k) for k in step.folders}
        _run_step(step, kwargs["preset"], kwargs["overrides"], kwargs["config"], paths, kwargs["metrics"], registry)

    def folder(name: str, help: str) -> inspect.Parameter:
        option = typer.Option(f"--{name.replace('_', '-')}", help=help, file_okay=False)
        return inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=Annotated[Path, option])

    inputs = [folder(name, "input: {}'s {} folder".format(*step.source(name))) for name in step.inputs]
    outputs = [folder(name, "output folder (appears only when complete)") for name in step.outputs]
    common = [
        inspect.Parameter("preset", inspect.Parameter.KEYWORD_ONLY, default="demo", annotation=PresetOpt),
        inspect.Parameter("overrides", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=SetOpt),
        inspect.Parameter("config", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=ConfigFileOpt),
        inspect.Parameter("metrics", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=MetricsOpt),
    ]
    command.__signature__ = inspect.Signature(inputs + outputs + common)
    return command


def step_commands(registry: Mapping[str, Step] = ALL_STEPS) -> typer.Typer:
    """The `sidreasoner step` group: one command per registered step."""
    group = typer.Typer(no_args_is_help=True, help="Run one pipeline step on its own, on local folders.")
    for step in registry.values():
        group.command(step.name, help=step.summary[:1].upper() + step.summary[1:] + ".")(_step_command(step, registry))
    return group


app.add_typer(step_commands(), name="step")


def main() -> None:
    app(prog_name="sidreasoner")


if __name__ == "__main__":
    sys.exit(main())
