"""What a run can change without recompiling: sections completed from the compiled values, the
export condition decided at run time, URLs refused with credentials in them, pull secrets."""

import subprocess
import sys

import pytest
import yaml

from sidreasoner import config
from sidreasoner.components.factory import condition_for
from sidreasoner.config import complete_sections, enabled_at_run_time, refuse_url_credentials
from sidreasoner.pipelines.compile import compile_pipeline
from sidreasoner.steps import STEPS

from .helpers.presets import GENERAL_DATA


def test_a_section_given_in_part_keeps_the_compiled_values():
    compiled = {
        "seed": 0,
        "stage3": {"max_steps": 400, "lr": 1e-6, "verl": {"rollout_n": 8, "tp": 2}},
        "export": {"uri": "", "overwrite": False},
    }
    given = {"seed": 3, "stage3": {"max_steps": 50, "verl": {"tp": 1}}, "export": {"uri": "s3://b/m"}}
    assert complete_sections(given, compiled) == {
        "seed": 3,
        "stage3": {"max_steps": 50, "lr": 1e-6, "verl": {"rollout_n": 8, "tp": 1}},
        "export": {"uri": "s3://b/m", "overwrite": False},
    }
    assert complete_sections(given, None) == given  # a task compiled before compiled_sections existed
    assert complete_sections({"stage3": {"max_steps": 5}}, {}) == {"stage3": {"max_steps": 5}}


def test_a_partial_section_no_longer_falls_back_to_the_library_defaults():
    office = config.load("office")
    compiled = {"stage3": config.to_params(office)["stage3"]}
    run = config.from_step_config(complete_sections({"stage3": {"max_steps": 7}}, compiled))
    assert run.stage3.max_steps == 7
    assert run.stage3.backend == office.stage3.backend == "verl"  # the library's default is trl
    assert run.stage3.verl == office.stage3.verl


def test_export_is_enabled_by_the_runs_value_of_export_uri():
    assert enabled_at_run_time("export-model", {"uri": "s3://models/run-1"}, {"uri": "", "overwrite": False})
    assert not enabled_at_run_time("export-model", {"overwrite": True}, {"uri": "", "overwrite": False})
    assert enabled_at_run_time("export-model", {"overwrite": True}, {"uri": "gs://b/m", "overwrite": False})
    assert not enabled_at_run_time("export-model", {"uri": "  "})


@pytest.mark.slow
def test_the_condition_task_runs_under_kfp_local(tmp_path):
    from kfp import local

    local.init(runner=local.SubprocessRunner(use_venv=False), pipeline_root=str(tmp_path))
    gate = condition_for(STEPS["export-model"])
    compiled = {"uri": "", "overwrite": False}
    assert gate(step="export-model", section={"uri": "file:///tmp/m"}, compiled_section=compiled).output is True
    assert gate(step="export-model", section={}, compiled_section=compiled).output is False


@pytest.mark.parametrize(
    "url, shown",
    [
        ("https://user:pa55@teacher.example/v1", "https://***@teacher.example/…"),
        ("s3://AKIAEXAMPLE:s3cr3t@bucket/models", "s3://***@bucket/…"),
        ("minio://token@minio:9000/b", "minio://***@minio:9000/…"),
    ],
)
def test_credentials_inside_a_url_are_refused_without_repeating_them(url, shown):
    with pytest.raises(config.ConfigError) as err:
        refuse_url_credentials({"export": {"uri": url}})
    message = str(err.value)
    assert message.startswith(f"export.uri has credentials inside its URL ({shown})")
    assert "sidreasoner-s3" in message and "pa55" not in message and "s3cr3t" not in message
    with pytest.raises(config.ConfigError, match="export.uri has credentials"):
        config.to_params(config.load("demo", [f"export.uri={url}"]))


def test_urls_without_credentials_and_emails_pass():
    refuse_url_credentials(
        {
            "teacher": {"base_url": "https://api.example/v1?user=a@b"},
            "model": {"name": "org/model@main"},
            "export": {"uri": "s3://bucket/a@b/x"},
            "eval": {"ks": [1, 5]},
        }
    )


def test_cli_compile_refuses_credentials_in_a_url(tmp_path):
    out = tmp_path / "p.yaml"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidreasoner.cli",
            "compile",
            "-o",
            str(out),
            "--set",
            "export.uri=s3://KEY:pr1vate-k3y@bucket/x",
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2 and not out.exists()
    assert result.stderr.startswith("error: export.uri has credentials inside its URL (s3://***@bucket/…)")
    assert "pr1vate-k3y" not in result.stderr


def test_image_pull_secrets_reach_every_pod(tmp_path):
    cfg = config.load("office", [GENERAL_DATA, 'cluster.image_pull_secrets=["regcred", "mirror"]'])
    platform = list(yaml.safe_load_all(compile_pipeline(cfg, tmp_path / "p.yaml").read_text()))[1]
    executors = platform["platforms"]["kubernetes"]["deploymentSpec"]["executors"]
    assert set(executors) == {f"exec-{name}" for name in STEPS} | {
        "exec-export-model-enabled",
        "exec-deploy-model-enabled",
    }
    for name, executor in executors.items():
        assert [s["secretName"] for s in executor["imagePullSecret"]] == ["regcred", "mirror"], name
    default = list(
        yaml.safe_load_all(compile_pipeline(config.load("office", [GENERAL_DATA]), tmp_path / "q.yaml").read_text())
    )[1]
    assert "imagePullSecret" not in str(default)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--until", "export-model"], "error: step 'export-model' is in the DAG only when export.uri is set"),
        (["--pipeline-root", "{file}"], "error: --pipeline-root {file} is a file; give a folder"),
    ],
)
def test_cli_run_refuses_bad_arguments_in_one_line(tmp_path, args, message):
    file = tmp_path / "root"
    file.write_text("")
    args = [a.format(file=file) for a in args]
    result = subprocess.run(
        [sys.executable, "-m", "sidreasoner.cli", "run", "--pipeline-root", str(tmp_path / "r"), *args],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[0].startswith(message.format(file=file))
    assert "Traceback" not in result.stderr


def test_step_config_file_with_a_byte_order_mark_is_read(tmp_path):
    """A config file saved by an editor that writes a byte-order mark reads like any other."""
    from typer.testing import CliRunner

    from sidreasoner.cli import app

    config_file = tmp_path / "task.json"
    config_file.write_bytes(b"\xef\xbb\xbf" + b'{"seed": 3, "data": {"source": "demo"}}')
    result = CliRunner().invoke(
        app,
        [
            "step",
            "preprocess",
            "--config",
            str(config_file),
            "--raw",
            str(tmp_path / "absent"),
            "--dataset",
            str(tmp_path / "out"),
        ],
    )
    assert result.exit_code == 1
    assert "cannot read config file" not in result.output
    assert "input 'raw' folder" in result.output
