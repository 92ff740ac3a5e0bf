"""The demo DAG with every step in the CPU image, through kfp.local's DockerRunner on podman.

What a cluster would show and the venv cannot: a file missing from the image, a dependency only the venv
has, a path uid 1000 cannot write, a component command that needs the venv's layout. The steps run as the
image's user (uid 1000), only the pipeline root is mounted (no source tree), no step installs anything,
and artifacts pass between containers through the pipeline root. The training steps run in the CPU image
too (the demo's tiny model trains on CPU). The run's metrics must equal those of a
SubprocessRunner run of the same settings (the demo preset on less data, tests/helpers/small_dag.py): the
run tests/test_pipeline_local.py made of the same tree when there is one (as under `make test` in CI), else
tests/golden/small_dag_metrics.json on the machine kind that recorded it, else a venv run of its own.

Run by `make image-test` (and by `make test` when CI is set). It sets podman up when it can (root and
apt-get) and is skipped, with the reason, when it cannot.
"""

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import tomllib
from pathlib import Path

import pytest

from .helpers.image_build import (
    BASE_IMAGE,
    PodmanUnavailable,
    build_image,
    install_snapshot,
    preparing,
    setup_podman,
    snapshot,
)
from .helpers.small_dag import CACHE_KEY, SMALL, differences, machine, read_golden, seeded_metrics, tree_hash

ROOT = Path(__file__).resolve().parents[1]
SIDREASONER = [sys.executable, "-m", "sidreasoner.cli"]
CPU_REPOSITORY = "localhost/sidreasoner-cpu"
CPU_DOCKERFILE = "images/cpu/Dockerfile"

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        os.environ.get("SIDREASONER_IMAGE_TEST") != "1",
        reason="image test: run `make image-test` (or set SIDREASONER_IMAGE_TEST=1); it installs "
        "podman, builds the CPU image and runs the demo DAG in it (minutes)",
    ),
]


@pytest.fixture(scope="module")
def workdir():
    """This module's scratch folder, outside pytest's numbered temp folders: pytest deletes the oldest of
    those when other sessions start, which on a shared machine can happen during a half-hour DAG run."""
    path = Path(tempfile.mkdtemp(prefix="sidreasoner-image-test-", dir="/var/tmp"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def tmp_path(workdir, request):
    path = workdir / request.node.name
    path.mkdir()
    return path


@pytest.fixture(scope="module")
def docker_host(workdir):
    """podman's Docker API on a unix socket of this test's own, for kfp's DockerRunner."""
    if os.getuid() != 0:
        pytest.skip(
            "the image tests run as root: rootful podman, where uid 1000 in a container is uid 1000 "
            "on the pipeline root, and a root-owned folder stands for a fresh volume"
        )
    try:
        with preparing():
            setup_podman()
    except PodmanUnavailable as err:
        pytest.skip(f"podman cannot be set up on this machine: {err}")
    socket = workdir / "docker.sock"
    service = subprocess.Popen(
        ["podman", "system", "service", "--time=0", f"unix://{socket}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while not socket.exists():
        assert service.poll() is None, "podman system service exited at start"
        assert time.monotonic() < deadline, "podman system service did not open its socket in 30 s"
        time.sleep(0.1)
    yield f"unix://{socket}"
    service.terminate()
    service.wait(timeout=30)


@pytest.fixture(scope="module")
def tree(workdir):
    """The project as the image gets it: others may edit the working tree while the test runs."""
    return snapshot(CPU_DOCKERFILE, workdir / "context")


@pytest.fixture(scope="module")
def cpu_image(docker_host, tree):
    started = time.monotonic()
    with preparing():
        image, built, log = build_image(CPU_DOCKERFILE, CPU_REPOSITORY, context=tree)
    print(f"{image}: {'built' if built else 'reused'} in {time.monotonic() - started:.0f} s (log {log})")
    return image


def _run_demo(root: Path, tmp_path: Path, runner: str, env: dict, *extra: str) -> subprocess.CompletedProcess:
    """The demo DAG on less data and shorter training, as tests/test_pipeline_local.py runs it: every step and
    artifact of the demo, in about a fifth of its time (what the demo learns is test_demo_reasoning_pays' job)."""
    summary = tmp_path / f"{runner}-summary.json"
    command = [
        *SIDREASONER,
        "run",
        "--preset",
        "demo",
        *sum((["--set", s] for s in SMALL), []),
        "--pipeline-root",
        str(root),
        "--summary",
        str(summary),
        "--runner",
        runner,
        *extra,
    ]
    # About 1 min on an idle 2-core machine; much more when it is shared with other heavy jobs.
    return subprocess.run(
        command, cwd=tmp_path, env={**os.environ, **env}, capture_output=True, text=True, timeout=5400, check=False
    )


def _summary(tmp_path: Path, runner: str, result: subprocess.CompletedProcess) -> dict:
    assert result.returncode == 0, f"{runner} run failed:\n{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
    return json.loads((tmp_path / f"{runner}-summary.json").read_text())


def _images_env(image: str, docker_host: str) -> dict:
    return {"SIDREASONER_CPU_IMAGE": image, "SIDREASONER_TRAIN_IMAGE": image, "DOCKER_HOST": docker_host}


def _venv_metrics(pytestconfig, tree: Path, tmp_path: Path, snapshot_env: dict) -> tuple[dict, str]:
    """What a SubprocessRunner run of the image's tree gives, and where that came from: the pipeline test's
    run of this tree, the golden file on the machine kind that recorded it, or a venv run made now."""
    record = pytestconfig.cache.get(CACHE_KEY, None)
    if record and record["tree"] == tree_hash(tree):
        return record["metrics"], "tests/test_pipeline_local.py's run of this tree"
    golden = read_golden()
    if golden["machine"] == machine():
        return golden["metrics"], (
            "tests/golden/small_dag_metrics.json (no pipeline test run of this tree: if this "
            "tree changes the figures, `make golden`)"
        )
    started = time.monotonic()
    in_venv = _summary(tmp_path, "subprocess", _run_demo(tmp_path / "venv", tmp_path, "subprocess", snapshot_env))
    print(f"demo DAG: {time.monotonic() - started:.0f} s in the venv (golden file from another machine kind)")
    return seeded_metrics(in_venv["tasks"]), "a venv run of this tree"


def test_demo_dag_in_the_cpu_image_equals_the_venv_run(cpu_image, docker_host, tree, tmp_path, pytestconfig):
    # The container run imports the snapshot the image was built from (installed beside the venv's packages)
    # for the pipeline it builds (the components' bodies).
    snapshot_env = install_snapshot(tree, tmp_path / "snapshot-site")
    # A fresh folder owned by root, as a fresh volume is: --prepare-root hands it to uid 1000 the way the
    # chart's prepare Job does, from a root container holding CHOWN, DAC_OVERRIDE and FOWNER only.
    containers_root = tmp_path / "containers"
    containers_root.mkdir(mode=0o755)
    assert containers_root.stat().st_uid == os.getuid() == 0
    started = time.monotonic()
    in_containers = _summary(
        tmp_path,
        "docker",
        _run_demo(
            containers_root,
            tmp_path,
            "docker",
            {**snapshot_env, **_images_env(cpu_image, docker_host)},
            "--prepare-root",
        ),
    )
    print(f"demo DAG: {time.monotonic() - started:.0f} s in containers")
    assert containers_root.stat().st_uid == 1000

    tasks = in_containers["tasks"]
    assert {task["status"] for task in tasks.values()} == {"SUCCEEDED"}
    _check_containers(in_containers, cpu_image, containers_root)
    expected, source = _venv_metrics(pytestconfig, tree, tmp_path, snapshot_env)
    print(f"container metrics compared with {source}")
    differing = differences(seeded_metrics(tasks), expected)
    assert not differing, f"metrics (containers, venv) differ from those of {source}: {differing}"
    assert tasks["report"]["metrics"], "the report step wrote no metrics"


def _check_containers(summary: dict, cpu_image: str, containers_root: Path) -> None:
    """One container per task, all in the CPU image, as uid 1000, exit 0, the pipeline root mounted and not
    the source tree, no step installing anything at start; artifacts passed through the pipeline root."""
    ran, tasks = summary["containers"], summary["tasks"]
    assert len(ran) == len(tasks)
    for container in ran:
        assert (container["image"], container["user"], container["exit_code"]) == (cpu_image, "1000", 0)
        # kfp.local also mounts an empty workspace folder of its own at /kfp-workspace; nothing else.
        assert container["mounts"] == sorted([str(containers_root), "/kfp-workspace"])
        assert "pip install" not in " ".join(container["command"])
    for task in tasks.values():
        for path in task["outputs"].values():
            assert Path(path).is_relative_to(containers_root) and Path(path).exists(), path


def test_a_root_owned_pipeline_root_fails_naming_the_fix(cpu_image, docker_host, tmp_path):
    root = tmp_path / "volume"
    root.mkdir(mode=0o755)
    result = _run_demo(root, tmp_path, "docker", _images_env(cpu_image, docker_host))
    assert result.returncode == 1
    message = " ".join(result.stderr.split())
    assert f"pipeline root {root} (owner uid 0, mode 0o755) is not writable by uid 1000" in message
    assert f"run `chown 1000:1000 {root}`" in message and "--prepare-root" in message
    assert os.listdir(root) == []  # refused before any step ran


def _print_then_exit_3() -> None:
    print("step output before exit 3")
    raise SystemExit(3)


def test_a_failing_step_fails_the_run_with_its_log(cpu_image, docker_host, tmp_path, monkeypatch, capfd):
    """Under podman, kfp's own DockerRunner loses an auto-removed container before reading it and reports
    success; with the containers kept until read, the exit status and the log come through."""
    from kfp import dsl, local

    from sidreasoner.pipelines.containers import kept_containers

    monkeypatch.setenv("DOCKER_HOST", docker_host)
    root = tmp_path / "root"
    root.mkdir()
    os.chown(root, 1000, 1000)
    step = dsl.component(base_image=cpu_image, install_kfp_package=False)(_print_then_exit_3)
    local.init(runner=local.DockerRunner(), pipeline_root=str(root))
    with kept_containers() as ran, pytest.raises(RuntimeError, match="print-then-exit-3"):
        step()
    assert [(c["image"], c["user"], c["exit_code"]) for c in ran] == [(cpu_image, "1000", 3)]
    assert "step output before exit 3" in capfd.readouterr().out
    assert _containers_of(cpu_image) == []  # removed once read


def _containers_of(image: str) -> list[str]:
    return subprocess.run(
        ["podman", "ps", "-aq", "--filter", f"ancestor={image}"], capture_output=True, text=True, check=True
    ).stdout.split()


def test_sigterm_removes_the_running_step_container(cpu_image, docker_host, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    os.chown(root, 1000, 1000)
    run = subprocess.Popen(
        [*SIDREASONER, "run", "--preset", "demo", "--pipeline-root", str(root), "--runner", "docker"],
        env={**os.environ, **_images_env(cpu_image, docker_host)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not _containers_of(cpu_image):
        assert run.poll() is None and time.monotonic() < deadline, "no step container started"
        time.sleep(0.2)
    run.send_signal(signal.SIGTERM)
    assert run.wait(timeout=60) == 128 + signal.SIGTERM
    assert _containers_of(cpu_image) == []


# Run from / (the WORKDIR's copied components/ and pipelines/ would shadow the installed ones).
INSTALLED = (
    "import importlib.util, json, pathlib, sysconfig, sidreasoner.components, sidreasoner.pipelines\n"
    "import sidreasoner.components.images, sidreasoner.pipelines.compile\n"
    "site = sysconfig.get_paths()['purelib']\n"
    "print(json.dumps({'site': site, 'components': sidreasoner.components.__file__,\n"
    "  'generic': {g: bool(importlib.util.find_spec(g)) for g in ('components', 'pipelines')},\n"
    "  'generic_dirs': [g for g in ('components', 'pipelines') if (pathlib.Path(site) / g).exists()],\n"
    "  'torch': __import__('torch').__version__}))\n"
)


def test_cpu_image_holds_the_installed_package(cpu_image, docker_host):
    """What tests/test_images.py's clean-venv replay of the Dockerfile checks (skipped under CI, where this
    test runs): the package imports from site-packages, only `sidreasoner` is a top-level name, torch 2.13.0."""
    out = subprocess.run(
        ["podman", "run", "--rm", "--workdir", "/", cpu_image, "python", "-c", INSTALLED],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    found = json.loads(out)
    assert found["components"].startswith(found["site"])
    assert found["generic"] == {"components": False, "pipelines": False} and found["generic_dirs"] == []
    assert found["torch"].startswith("2.13.0")


def test_base_image_stands_in_for_python_slim(docker_host):
    """The local base answers `python` and `pip` as python:3.11-slim does, with Python 3.11."""
    out = subprocess.run(
        ["podman", "run", "--rm", BASE_IMAGE, "sh", "-c", "python --version && pip --version"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert out.startswith("Python 3.11.") and "python 3.11" in out


@pytest.mark.skipif(
    os.environ.get("SIDREASONER_TEST_TRAIN_IMAGE") != "1",
    reason="set SIDREASONER_TEST_TRAIN_IMAGE=1 to build images/train/Dockerfile: it downloads "
    "several GB (CUDA torch, vLLM) and leaves an image of 10.5 GB (about 11 min here)",
)
def test_training_image_builds_and_imports_the_training_stack(docker_host):
    started = time.monotonic()
    image, built, log = build_image("images/train/Dockerfile", "localhost/sidreasoner-train", cpu=False)
    seconds = time.monotonic() - started
    check = (
        "import importlib.metadata as m, torch, transformers, peft, trl, verl, vllm, sidreasoner.components; "
        "print(' '.join(f'{p}=={m.version(p)}' for p in "
        "('torch', 'transformers', 'peft', 'trl', 'verl', 'vllm')))"
    )
    out = subprocess.run(
        ["podman", "run", "--rm", image, "python", "-c", check], capture_output=True, text=True, check=False
    )
    assert out.returncode == 0, out.stderr[-4000:]
    size = subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Size}}", image], capture_output=True, text=True, check=True
    ).stdout.strip()
    print(
        f"{image}: {'built' if built else 'reused'} in {seconds:.0f} s, {int(size) / 1e9:.1f} GB; "
        f"{out.stdout.strip()} (log {log})"
    )
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = dict(
        line.replace("[verl-core]", "").split("==")
        for line in project["dependencies"]
        + project["optional-dependencies"]["rl"]
        + project["optional-dependencies"]["gpu"]
        if "==" in line
    )
    installed = dict(pin.split("==") for pin in out.stdout.split())
    assert installed == {name: pins[name] for name in installed}
