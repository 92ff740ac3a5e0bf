import json
import os
import subprocess
import sys

import pytest
import yaml

from sidreasoner.steps import STEPS

from .helpers.presets import GENERAL_DATA


def sidreasoner(*args, **kw):
    return subprocess.run([sys.executable, "-m", "sidreasoner.cli", *args], capture_output=True, text=True, **kw)


@pytest.mark.parametrize("step", list(STEPS))
def test_every_step_has_help_naming_its_folders(step):
    result = sidreasoner("step", step, "--help")
    assert result.returncode == 0, result.stderr
    for folder in (*STEPS[step].inputs, *STEPS[step].outputs):
        assert "--" + folder.replace("_", "-") in result.stdout


def test_config_typo_fails_before_anything_runs(tmp_path):
    root = tmp_path / "root"
    result = sidreasoner("run", "--pipeline-root", str(root), "--set", "data.k_cor=3")
    assert result.returncode == 2
    assert "unknown config key 'data.k_cor'" in result.stderr
    assert "Did you mean 'data.k_core'?" in result.stderr
    assert not root.exists()


def test_unknown_until_step_fails_before_anything_runs(tmp_path):
    root = tmp_path / "root"
    result = sidreasoner("run", "--pipeline-root", str(root), "--until", "train")
    assert result.returncode == 2
    assert f"unknown step 'train'. Allowed: {', '.join(STEPS)}" in result.stderr
    assert not root.exists()


def test_config_prints_resolved_values():
    result = sidreasoner("config", "--preset", "games", "--set", "data.k_core=7")
    assert result.returncode == 0, result.stderr
    cfg = json.loads(result.stdout)
    assert cfg["data"]["category"] == "Video_Games"
    assert cfg["data"]["k_core"] == 7


def test_compile_writes_yaml(tmp_path):
    out = tmp_path / "p.yaml"
    result = sidreasoner("compile", "--preset", "industrial", "--set", GENERAL_DATA, "-o", str(out))
    assert result.returncode == 0, result.stderr
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["pipelineInfo"]["name"] == "sidreasoner"
    assert (
        spec["root"]["inputDefinitions"]["parameters"]["data"]["defaultValue"]["category"]
        == "Industrial_and_Scientific"
    )


def test_step_config_file_and_bad_input_folder(tmp_path):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"data": {"k_core": 2}}))
    result = sidreasoner(
        "step",
        "preprocess",
        "--raw",
        str(tmp_path / "missing"),
        "--dataset",
        str(tmp_path / "d"),
        "--config",
        str(cfg_file),
    )
    assert result.returncode == 1
    assert "input 'raw' folder" in result.stderr and "missing" in result.stderr
    assert not (tmp_path / "d").exists()


def _error(result) -> list[str]:
    """stderr's lines: one line, no traceback, is what a bad input gets."""
    return result.stderr.strip().splitlines()


@pytest.mark.parametrize(
    "content, says",
    [
        (b'{"data": ' * 100_000 + b"1" + b"}" * 100_000, "its JSON is nested too deep"),
        (b'{"data": {"demo": ' + b'{"a": ' * 900 + b"1" + b"}" * 902, "nested deeper than 32 levels, at data.demo.a.a"),
        (b'[{"data": {"k_core": 2}}]', "holds an array, not an object of config sections"),
        ('{"data": {"category": "Caf\u00e9"}}'.encode("latin-1"), "not UTF-8 text (byte 26 is 0xe9)"),
    ],
)
def test_a_config_file_that_is_no_config_is_one_line_naming_it(tmp_path, content, says):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_bytes(content)
    result = sidreasoner(
        "step",
        "preprocess",
        "--raw",
        str(tmp_path / "raw"),
        "--dataset",
        str(tmp_path / "d"),
        "--config",
        str(cfg_file),
    )
    assert result.returncode == 2
    (line,) = _error(result)
    assert line.startswith("error: ") and str(cfg_file) in line and says in line, line


def test_run_refuses_a_summary_folder_before_running(tmp_path):
    root = tmp_path / "root"
    (tmp_path / "summary").mkdir()
    result = sidreasoner(
        "run", "--pipeline-root", str(root), "--until", "download-data", "--summary", str(tmp_path / "summary")
    )
    assert result.returncode == 2
    assert _error(result) == [
        f"error: --summary {tmp_path / 'summary'} is a folder; give the path of the JSON file to write"
    ]
    assert not root.exists()


@pytest.fixture()
def read_only_folder(tmp_path):
    """A folder nobody may write into: a read-only tmpfs when the tests run as root (root writes through
    permissions), else a folder of mode 0555."""
    folder = tmp_path / "ro"
    folder.mkdir()
    if os.geteuid() == 0:
        mounted = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(folder)], capture_output=True, text=True
        )
        if mounted.returncode:
            pytest.skip(f"cannot mount a read-only tmpfs: {mounted.stderr.strip()}")
        yield folder
        subprocess.run(["umount", str(folder)], check=False)
    else:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)


def test_run_refuses_a_read_only_pipeline_root_before_running(read_only_folder, tmp_path):
    for root, what in ((read_only_folder, "--pipeline-root"), (read_only_folder / "root", "--pipeline-root")):
        result = sidreasoner("run", "--pipeline-root", str(root), "--until", "download-data")
        assert result.returncode == 2
        (line,) = _error(result)
        assert line.startswith(f"error: {what} {root} is not writable: "), line
        assert "Read-only file system" in line or "Permission denied" in line
    result = sidreasoner(
        "run", "--pipeline-root", str(tmp_path / "root"), "--summary", str(read_only_folder / "s.json")
    )
    assert _error(result)[0].startswith(
        f"error: --summary {read_only_folder / 's.json'}: its folder {read_only_folder} is not writable"
    )
    assert not (tmp_path / "root").exists()


def test_a_base_model_folder_that_is_no_model_is_one_line(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "c").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "README.md").write_text("not a model\n")
    for base, says in (
        (
            tmp_path / "notes",
            f"{tmp_path / 'notes'} is not a saved Hugging Face model folder: it has "
            "no config.json and no safetensors weights and no tokenizer files",
        ),
        (tmp_path / "gone", f"model folder {tmp_path / 'gone'} does not exist"),
    ):
        result = sidreasoner(
            "step",
            "prepare-base-model",
            "--dataset",
            str(tmp_path / "d"),
            "--corpus",
            str(tmp_path / "c"),
            "--base-model",
            str(tmp_path / "out"),
            "--set",
            f"model.base={base}",
        )
        assert result.returncode == 1
        assert _error(result) == [f"error: prepare-base-model: {says}"]


def test_an_instruction_line_nested_too_deep_names_its_line(tmp_path):
    from sidreasoner.train.data import InstructionFileError, read_instruction_file

    path = tmp_path / "general.jsonl"
    path.write_text('{"prompt": "hi", "response": "hello"}\n{"messages": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(InstructionFileError, match=rf"^{path}:2: its JSON is nested too deep to read$"):
        read_instruction_file(path)


def test_recommend_with_a_model_folder_that_is_no_model_is_one_line(
    tmp_path, write_dataset, write_sid_index, random_codes
):
    write_dataset(tmp_path / "dataset", 12, 4)
    write_sid_index(tmp_path / "sid_index", range(12), random_codes(12, 3, 4))
    (tmp_path / "notes").mkdir()
    for model, says in (
        (tmp_path / "notes", f"{tmp_path / 'notes'} is not a saved Hugging Face model folder"),
        (tmp_path / "gone", f"model folder {tmp_path / 'gone'} does not exist"),
    ):
        result = sidreasoner(
            "recommend",
            "--model",
            str(model),
            "--history",
            "0,1",
            "--sid-index",
            str(tmp_path / "sid_index"),
            "--dataset",
            str(tmp_path / "dataset"),
        )
        assert result.returncode == 1
        (line,) = _error(result)
        assert line.startswith(f"error: {says}"), line
