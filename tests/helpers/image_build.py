"""Building the project's images with podman on a machine with no registry (the image tests' set-up).

`images/podman-setup.sh` installs podman and imports a local base image; this module builds an image
from its Dockerfile on that base, taking the CPU torch wheel from the host pip's own source and pinning
every other dependency to this venv's versions, so a containerised run can be compared with a run in
this venv exactly. Images are tagged by a content hash (`build_cached`), so an unchanged tree reuses them.
"""

from __future__ import annotations

import hashlib
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sidreasoner.io import locked

ROOT = Path(__file__).resolve().parents[2]
BASE_IMAGE = "localhost/sidreasoner-base:bookworm"
WORK = Path("/var/tmp/sidreasoner-image-build")


class PodmanUnavailable(Exception):
    """podman cannot be set up on this machine; the message says why."""


def setup_podman() -> None:
    """Run images/podman-setup.sh (idempotent); PodmanUnavailable when this machine cannot have podman."""
    if shutil.which("sh") is None:
        raise PodmanUnavailable("no /bin/sh")
    result = subprocess.run(
        ["sh", str(ROOT / "images" / "podman-setup.sh"), BASE_IMAGE], capture_output=True, text=True, check=False
    )
    if result.returncode == 3:
        raise PodmanUnavailable(result.stderr.strip().splitlines()[-1])
    if result.returncode != 0:
        raise RuntimeError(f"images/podman-setup.sh failed (exit {result.returncode}):\n{result.stderr}")


def _base_image_id() -> str:
    return subprocess.run(
        ["podman", "image", "inspect", "--format", "{{.Id}}", BASE_IMAGE], capture_output=True, text=True, check=True
    ).stdout.strip()


def _cpu_torch_wheel(into: Path) -> Path | None:
    """The torch==2.13.0 wheel the host pip installs, copied into `into`, when it is the CPU build."""
    into.mkdir(parents=True, exist_ok=True)
    for old in into.glob("torch-*.whl"):
        old.unlink()
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--quiet", "torch==2.13.0", "--no-deps", "-d", str(into)], check=True
    )
    wheel = next(into.glob("torch-2.13.0*.whl"))
    return wheel if "+cpu" in wheel.name else None


def _venv_constraints() -> str:
    """This venv's versions (`pip freeze`, the project itself and local paths left out)."""
    frozen = subprocess.run(
        [sys.executable, "-m", "pip", "freeze", "--exclude-editable"], capture_output=True, text=True, check=True
    ).stdout
    return "".join(line + "\n" for line in frozen.splitlines() if "==" in line and " @ " not in line)


def snapshot(dockerfile: str, into: Path) -> Path:
    """A copy of what a build of `dockerfile` reads (images/ and every COPY source), so that the image and a
    run in this venv see the same code while the working tree goes on changing."""

    into.mkdir(parents=True)
    for source in ["images", *copy_sources(ROOT / dockerfile)]:
        if (ROOT / source).is_dir():
            shutil.copytree(ROOT / source, into / source, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
        else:
            shutil.copy2(ROOT / source, into / source)
    return into


def install_snapshot(context: Path, target: Path) -> dict:
    """Install the snapshot's project into `target` (no dependencies: this venv has them); the environment
    that makes `python -m sidreasoner.cli` run it instead of the editable install."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(context),
        ],
        check=True,
    )
    return {"PYTHONPATH": str(target)}


def _build_inputs(dockerfile: str, repository: str, cpu: bool) -> tuple[dict, list[str], list[str], Path]:
    """(build arguments, podman build flags, inputs to hash besides the context, log path)."""
    WORK.mkdir(parents=True, exist_ok=True)
    pip_conf = ["[global]", "cert = /etc/ssl/certs/ca-certificates.crt"]
    flags = ["--network", "host", "-v", "/etc/ssl/certs:/etc/ssl/certs:ro"]
    hash_extra = [_base_image_id()]
    build_args = {"BASE_IMAGE": BASE_IMAGE}
    wheel = _cpu_torch_wheel(WORK / "wheels") if cpu else None
    if wheel is not None:
        build_args["TORCH_SOURCE"] = "--find-links /wheels"
        flags += ["-v", f"{wheel.parent}:/wheels:ro"]
        hash_extra.append(wheel.name)
    if cpu:
        constraints = _venv_constraints()
        (WORK / "constraints.txt").write_text(constraints)
        pip_conf.append("constraint = /etc/sidreasoner-constraints.txt")
        flags += ["-v", f"{WORK / 'constraints.txt'}:/etc/sidreasoner-constraints.txt:ro"]
        hash_extra.append(constraints)
    name = repository.rsplit("/", 1)[-1]
    (WORK / f"{name}.pip.conf").write_text("\n".join(pip_conf) + "\n")
    flags += ["-v", f"{WORK / f'{name}.pip.conf'}:/etc/pip.conf:ro"]
    return build_args, flags, hash_extra, WORK / f"{name}.build.log"


def build_image(dockerfile: str, repository: str, cpu: bool = True, context: Path = ROOT) -> tuple[str, bool, Path]:
    """Build `dockerfile` on the local base (cached by content hash); (image, built now, build log).

    cpu: the CPU image, its torch from the host pip's CPU wheel and every dependency at this venv's version;
    otherwise the Dockerfile's own sources and pip's resolution (the training image: CUDA torch, vLLM).
    """
    build_args, flags, hash_extra, log = _build_inputs(dockerfile, repository, cpu)
    image, built = build_cached(context, context / dockerfile, repository, build_args, flags, hash_extra, log)
    return image, built, log


# ---------------------------------------------------------------- a local build, tagged by what went into it


def copy_sources(dockerfile: Path) -> list[str]:
    """The source paths of every COPY in a Dockerfile (continuation lines are not used by COPY here)."""
    sources = []
    for line in dockerfile.read_text().splitlines():
        words = line.split()
        if words and words[0].upper() == "COPY":
            sources += [w for w in words[1:-1] if not w.startswith("--")]
    return sources


def _files_under(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(
        p
        for p in path.rglob("*")
        if p.is_file()
        and "__pycache__" not in p.parts
        and not p.name.endswith(".pyc")
        and ".egg-info" not in str(p.relative_to(path))
    )


def content_tag(context: Path, dockerfile: Path, extra: list[str]) -> str:
    """A tag naming the image an unchanged build would make again: a hash of the Dockerfile, every file its
    COPY lines take from the context, and `extra` (build arguments, base image id, …)."""
    digest = hashlib.sha256()
    digest.update(dockerfile.read_bytes())
    for source in copy_sources(dockerfile):
        for file in _files_under(context / source):
            digest.update(str(file.relative_to(context)).encode() + b"\0" + file.read_bytes() + b"\0")
    for item in extra:
        digest.update(item.encode() + b"\0")
    return digest.hexdigest()[:16]


def cached_reference(
    context: Path, dockerfile: Path, repository: str, build_args: dict[str, str], hash_extra: list[str]
) -> str:
    """`repository:<content tag>`, the name `build_cached` gives the image these inputs build."""
    extra = [f"{k}={v}" for k, v in sorted(build_args.items())] + hash_extra
    return f"{repository}:{content_tag(context, dockerfile, extra)}"


def build_cached(
    context: Path,
    dockerfile: Path,
    repository: str,
    build_args: dict[str, str],
    build_flags: list[str],
    hash_extra: list[str],
    log_path: Path,
) -> tuple[str, bool]:
    """`podman build` the Dockerfile as `repository:<content tag>` unless that image exists already.

    Returns (image reference, whether it was built now). The build's output goes to `log_path`. Images that
    earlier trees built stay (a run may still be using one): `podman rmi` them when disk is short.
    """
    image = cached_reference(context, dockerfile, repository, build_args, hash_extra)
    if subprocess.run(["podman", "image", "exists", image], check=False).returncode == 0:
        return image, False
    command = ["podman", "build", "-f", str(dockerfile), "-t", image, *build_flags]
    for key, value in build_args.items():
        command += ["--build-arg", f"{key}={value}"]
    command.append(str(context))
    with open(log_path, "w") as log:
        log.write(shlex.join(command) + "\n")
        log.flush()
        result = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"podman build of {dockerfile} failed (exit {result.returncode}); its log: {log_path}")
    return image, True


# ---------------------------------------------------------------- set-up ahead of the image test


@contextmanager
def preparing() -> Iterator[None]:
    """Hold the set-up lock: `make test` under CI prepares podman and the CPU image in the background while
    pytest runs (`python -m tests.helpers.image_build --prepare`), and the image test waits for it here
    rather than starting the same build beside it."""
    WORK.mkdir(parents=True, exist_ok=True)
    with locked(WORK / "prepare.lock"):
        yield


def prepare(dockerfile: str, repository: str) -> None:
    """podman set up and `dockerfile` built from a snapshot of the tree, as the image test builds it (the
    same content tag, so the test reuses the image)."""
    with preparing():
        setup_podman()
        with tempfile.TemporaryDirectory(dir=WORK) as scratch:
            print(build_image(dockerfile, repository, context=snapshot(dockerfile, Path(scratch) / "context")))


# python -m tests.helpers.image_build [--prepare] images/cpu/Dockerfile localhost/sidreasoner-cpu
if __name__ == "__main__":
    if sys.argv[1] == "--prepare":
        prepare(sys.argv[2], sys.argv[3])
    else:
        setup_podman()
        print(build_image(sys.argv[1], sys.argv[2]))
