"""Run the DAG's steps in containers: kfp.local's DockerRunner against a Docker API (Docker, or podman's
`podman system service`).

kfp.local starts every container with auto_remove=True and then reads its logs and exit status. Under
podman the container is gone by then: the logs come back empty and kfp reports success whatever the
step's exit status was. `kept_containers` swaps in a runner that keeps each container until its logs and
exit status are read, then removes it.
"""

from __future__ import annotations

import signal
import stat
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
