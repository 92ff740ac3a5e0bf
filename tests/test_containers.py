"""The pieces of the container runs that need no container: the content tag and the pipeline-root check.
(The runs themselves: tests/test_image_dag.py.)"""

import os

import pytest

from sidreasoner.config import load
from sidreasoner.pipelines.containers import writable_by
from sidreasoner.pipelines.local import run_local

from .helpers.image_build import content_tag


@pytest.fixture
def context(tmp_path):
    (tmp_path / "Dockerfile").write_text("FROM base\nCOPY a.txt ./\nCOPY src ./src\nRUN true\n")
    (tmp_path / "a.txt").write_text("a")
    (tmp_path / "b.txt").write_text("not copied")
    (tmp_path / "src" / "pkg").mkdir(parents=True)
    (tmp_path / "src" / "pkg" / "m.py").write_text("x = 1\n")
    return tmp_path


def test_content_tag_follows_what_the_copy_lines_take(context):
    tag = content_tag(context, context / "Dockerfile", ["BASE=1"])
    assert len(tag) == 16 and tag == content_tag(context, context / "Dockerfile", ["BASE=1"])

    (context / "b.txt").write_text("changed")  # not copied into the image
    (context / "src" / "pkg" / "__pycache__").mkdir()
    (context / "src" / "pkg" / "__pycache__" / "m.cpython-311.pyc").write_bytes(b"\0")
    assert content_tag(context, context / "Dockerfile", ["BASE=1"]) == tag

    assert content_tag(context, context / "Dockerfile", ["BASE=2"]) != tag  # a build argument
    (context / "src" / "pkg" / "m.py").write_text("x = 2\n")
    changed_source = content_tag(context, context / "Dockerfile", ["BASE=1"])
    assert changed_source != tag
    (context / "src" / "pkg" / "m.py").rename(context / "src" / "pkg" / "n.py")  # same bytes, another name
    assert content_tag(context, context / "Dockerfile", ["BASE=1"]) not in (tag, changed_source)
    (context / "Dockerfile").write_text("FROM base\nCOPY a.txt ./\nCOPY src ./src\nRUN false\n")
    assert content_tag(context, context / "Dockerfile", ["BASE=1"]) not in (tag, changed_source)


@pytest.mark.skipif(os.getuid() != 0, reason="chown needs root")
def test_writable_by_reads_owner_and_mode(tmp_path):
    folder = tmp_path / "root"
    folder.mkdir(mode=0o755)
    assert not writable_by(folder, 1000)  # a fresh volume: root's, 755
    os.chmod(folder, 0o777)
    assert writable_by(folder, 1000)
    os.chmod(folder, 0o755)
    os.chown(folder, 1000, 1000)
    assert writable_by(folder, 1000) and not writable_by(folder, 1001)
    os.chmod(folder, 0o555)
    assert not writable_by(folder, 1000)


def test_run_local_names_the_runners(tmp_path):
    with pytest.raises(ValueError, match="runner must be one of subprocess, docker, got 'podman'"):
        run_local(load("demo"), tmp_path / "root", runner="podman")
    assert not (tmp_path / "root").exists()
