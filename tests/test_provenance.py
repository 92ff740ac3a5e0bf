"""`code_version` names the code: the same tree gives the same value from this checkout, from a shallow
clone's wheel and from a `.git`-less copy's wheel; a change to a module or a pin gives another."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sidreasoner.provenance import image_tag, source_digest

from .helpers.image_build import install_snapshot

ROOT = Path(__file__).resolve().parents[1]
PRINT_VERSION = "import sidreasoner, sidreasoner.provenance as p; print(sidreasoner.__file__); print(p.code_version())"


def _tree_copy(target: Path) -> Path:
    """This checkout's files (tracked and untracked, not ignored), without .git."""
    listed = (
        subprocess.run(
            ["git", "-C", str(ROOT), "ls-files", "-co", "--exclude-standard", "-z"], capture_output=True, check=True
        )
        .stdout.decode()
        .split("\0")
    )
    for name in filter(None, listed):
        source = ROOT / name
        if source.is_file():
            (target / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, target / name)
    return target


def _installed_version(source: Path, target: Path) -> tuple[str, str]:
    """Build and install `source` as a wheel into `target` (no dependencies, no .git involved), then read
    the code version there in a fresh interpreter."""
    env = {k: v for k, v in os.environ.items() if k != "SIDREASONER_CODE_VERSION"}
    env.update(install_snapshot(source, target))
    out = subprocess.run(
        [sys.executable, "-c", PRINT_VERSION], env=env, cwd=target, capture_output=True, text=True, check=True
    ).stdout.split()
    return out[0], out[1]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs this project as a git checkout")
    return _tree_copy(tmp_path_factory.mktemp("tree"))


def test_same_tree_same_version_from_a_checkout_a_shallow_clone_and_a_plain_copy(tree, tmp_path):
    here = f"0.1.0+src{source_digest()[:12]}"
    repo = tmp_path / "repo"
    shutil.copytree(tree, repo)
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", "-c", "commit.gpgsign=false"]
    subprocess.run([*git, "init", "-q"], cwd=repo, check=True)
    subprocess.run([*git, "add", "-A"], cwd=repo, check=True)
    subprocess.run([*git, "commit", "-qm", "tree"], cwd=repo, check=True)
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", "--depth", "1", f"file://{repo}", str(clone)], check=True)
    from_clone = _installed_version(clone, tmp_path / "site-clone")
    from_copy = _installed_version(tree, tmp_path / "site-copy")
    assert from_clone[0].startswith(str(tmp_path / "site-clone"))  # the installed copy, not this checkout
    assert from_copy[0].startswith(str(tmp_path / "site-copy"))
    assert from_clone[1] == from_copy[1] == here


def test_a_changed_module_or_pin_changes_the_version(tree, tmp_path):
    base = _installed_version(tree, tmp_path / "a")[1]
    runtime = tree / "components" / "runtime.py"
    runtime.write_text(runtime.read_text() + "\n# a change\n")
    changed_module = _installed_version(tree, tmp_path / "b")[1]
    pyproject = tree / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace('"tqdm>=4.66"', '"tqdm>=4.67"'))
    changed_pin = _installed_version(tree, tmp_path / "c")[1]
    assert len({base, changed_module, changed_pin}) == 3


def test_image_tag_is_the_code_version_in_tag_characters(monkeypatch):
    monkeypatch.setattr("sidreasoner.provenance.code_version", lambda: "0.1.0+src1a2b3c4d5e6f")
    assert image_tag() == "0.1.0-src1a2b3c4d5e6f"
