"""The tree passes ruff's lint rules and is as ruff formats it (pyproject.toml's [tool.ruff]), with the ruff
version pyproject.toml pins: `make lint` runs the same two commands."""

import importlib.util
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _pinned_version() -> str | None:
    dev = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["dev"]
    return next((m.group(1) for m in map(re.compile(r"ruff==(\S+)").fullmatch, dev) if m), None)


def _ruff() -> list[str]:
    """The command that runs ruff: the package installed beside this Python, else one on PATH."""
    if importlib.util.find_spec("ruff") is not None:
        return [sys.executable, "-m", "ruff"]
    if found := shutil.which("ruff"):
        return [found]
    pytest.skip("ruff is not installed (pip install -e '.[dev]')")


@pytest.fixture(scope="module")
def ruff() -> list[str]:
    cmd = _ruff()
    version = subprocess.run([*cmd, "--version"], capture_output=True, text=True, check=True).stdout.split()[-1]
    pinned = _pinned_version()
    if pinned and version != pinned:
        pytest.skip(f"ruff {version} is installed, pyproject.toml pins {pinned}: its rules and format may differ")
    return cmd


def _run(cmd: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)


def test_ruff_check_finds_no_violations(ruff):
    result = _run([*ruff, "check", "--no-cache", "--output-format", "concise", "."])
    assert result.returncode == 0, (
        "ruff check found violations (fix them, `ruff check --fix` does the safe ones):\n"
        f"{result.stdout}{result.stderr}"
    )


def test_the_tree_is_formatted(ruff):
    result = _run([*ruff, "format", "--check", "--no-cache", "--output-format", "concise", "."])
    assert result.returncode == 0, (
        f"files that `ruff format` would change (run `ruff format .`):\n{result.stdout}{result.stderr}"
    )
