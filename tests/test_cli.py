import json
import subprocess
import sys

import pytest
import yaml

from sidreasoner.steps import STEPS


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
    result = sidreasoner("compile", "--preset", "industrial", "-o", str(out))
    assert result.returncode == 0, result.stderr
    spec = next(yaml.safe_load_all(out.read_text()))
    assert spec["pipelineInfo"]["name"] == "sidreasoner"
    assert spec["root"]["inputDefinitions"]["parameters"]["data"]["defaultValue"]["category"] == "Industrial_and_Scientific"


def test_step_config_file_and_bad_input_folder(tmp_path):
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps({"data": {"k_core": 2}}))
    result = sidreasoner("step", "preprocess", "--raw", str(tmp_path / "missing"), "--dataset", str(tmp_path / "d"),
                         "--config", str(cfg_file))
    assert result.returncode == 1
    assert "input 'raw' folder" in result.stderr and "missing" in result.stderr
    assert not (tmp_path / "d").exists()
