"""Run the DAG's steps in containers: kfp.local's DockerRunner against a Docker API (Docker, or podman's
`podman system service`), and a cached local build of an image for such runs.

kfp.local starts every container with auto_remove=True and then reads its logs and exit status. Under
podman the container is gone by then: the logs come back empty and kfp reports success whatever the
step's exit status was. `kept_containers` swaps in a runner that keeps each container until its logs and
exit status are read, then removes it.
"""

from __future__ import annotations

import hashlib
import shlex
import signal
import stat
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

# The capabilities the cluster's root prepare Job keeps (charts/sidreasoner/templates/model-cache-prepare.yaml).
PREPARE_CAPABILITIES = ["CHOWN", "DAC_OVERRIDE", "FOWNER"]


def _image_present(client: Any, image: str) -> bool:
    return any(image in (found.tags + found.attrs.get("RepoDigests", [])) for found in client.images.list())


def _run_and_keep(
    client: Any, image: str, command: list[str], volumes: dict, records: list[dict], **run_args: Any
) -> int:
    """kfp's run_docker_container, but the container outlives the step until its exit status is read."""
    from kfp.local.docker_task_handler import add_latest_tag_if_not_present

    image = add_latest_tag_if_not_present(image)
    if not _image_present(client, image):
        print(f"Pulling image {image!r}")
        client.images.pull(image)
    run_args = {k: v for k, v in run_args.items() if k not in ("auto_remove", "remove", "detach")}
    container = client.containers.run(image=image, command=command, volumes=volumes, detach=True, **run_args)
    try:
        for chunk in container.logs(stream=True, follow=True):
            print(chunk.decode(errors="replace"), end="")
        exit_code = container.wait()["StatusCode"]
        container.reload()
        records.append(
            {
                "image": image,
                "user": container.attrs["Config"].get("User") or "0",
                "command": command,
                "mounts": sorted(m["Destination"] for m in container.attrs.get("Mounts", [])),
                "exit_code": exit_code,
            }
        )
        return exit_code
    finally:
        container.remove(force=True)


@contextmanager
def kept_containers() -> Iterator[list[dict]]:
    """While open, kfp's DockerRunner keeps each container until it has read it, then removes it.

    Yields the list of containers run (image, user, command, mounts, exit code), filled as steps finish.
    A SIGTERM meanwhile removes the running container before the process exits.
    """
    from kfp.local import docker_task_handler

    records: list[dict] = []
    original = docker_task_handler.run_docker_container

    def run_docker_container(client, image, command, volumes, **run_args):
        return _run_and_keep(client, image, command, volumes, records, **run_args)

    def stop(signum, frame):
        raise SystemExit(128 + signum)  # unwinds through _run_and_keep, which removes the running container

    docker_task_handler.run_docker_container = run_docker_container
    in_main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, stop) if in_main_thread else None
    try:
        yield records
    finally:
        docker_task_handler.run_docker_container = original
        if in_main_thread:
            signal.signal(signal.SIGTERM, previous)


def image_user(image: str) -> str:
    """The user an image's containers run as (its USER), '0' when it sets none."""
    import docker

    client = docker.from_env()
    try:
        return client.images.get(image).attrs["Config"].get("User") or "0"
    finally:
        client.close()


def writable_by(path: Path, uid: int) -> bool:
    """Whether `uid` (not root, no supplementary groups assumed) may create files in the folder `path`."""
    info = path.stat()
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IWUSR)
    return bool(info.st_mode & stat.S_IWOTH) and bool(info.st_mode & stat.S_IXOTH)


def prepare_pipeline_root(root: Path, image: str, uid: int) -> None:
    """What the chart's model-cache prepare Job does on a cluster: one root container, holding only the
    capabilities mkdir and chown need, gives the pipeline root (not what it holds) to the steps' user."""
    import docker

    client = docker.from_env()
    try:
        client.containers.run(
            image=image,
            command=["chown", f"{uid}:{uid}", str(root)],
            user="0",
            cap_drop=["ALL"],
            cap_add=PREPARE_CAPABILITIES,
            volumes={str(root): {"bind": str(root), "mode": "rw"}},
            network_mode="none",
            remove=True,
        )
    finally:
        client.close()


# --- a local build, tagged by what went into it -----------------------------------------------------


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
