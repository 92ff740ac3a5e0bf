"""The one place components take their images from, read when the pipeline is compiled.

Override with SIDREASONER_CPU_IMAGE / SIDREASONER_TRAIN_IMAGE (e.g. a digest in your registry; the
Helm chart's upload Job sets them to its `images` values). By default the tag is the code version
(`sidreasoner.provenance`), so a pushed image names the code it holds; images/ builds them with the
same pins as pyproject.toml, labelled with that code version.
"""

import os

from sidreasoner import __version__
from sidreasoner.provenance import code_version, image_tag

REGISTRY = os.environ.get("SIDREASONER_IMAGE_REGISTRY", "ghcr.io/sidreasoner-pipelines")
CPU_IMAGE = os.environ.get("SIDREASONER_CPU_IMAGE", f"{REGISTRY}/sidreasoner-cpu:{image_tag()}")
TRAIN_IMAGE = os.environ.get("SIDREASONER_TRAIN_IMAGE", f"{REGISTRY}/sidreasoner-train:{image_tag()}")

# The image each kind of step pod runs in (`Step.image` in the registry).
IMAGES = {"cpu": CPU_IMAGE, "train": TRAIN_IMAGE}

# The Dockerfile that builds each image (paths from the repository root).
DOCKERFILES = {CPU_IMAGE: "images/cpu/Dockerfile", TRAIN_IMAGE: "images/train/Dockerfile"}
CODE_VERSION_LABEL = "io.sidreasoner.code-version"


def _tags(image: str) -> list[str]:
    """The image's reference, and for a code-version tag also the release tag the chart defaults to."""
    name, _, tag = image.rpartition(":")
    return [image, f"{name}:{__version__}"] if tag == image_tag() else [image]


def build_commands(push: bool = False) -> list[str]:
    """The `docker build` (and `docker push`) commands for every image, run from the repository root."""
    pinned = [image for image in DOCKERFILES if "@" in image]
    if pinned:
        raise SystemExit(
            f"cannot build {', '.join(pinned)}: a digest names an image that exists already. Set "
            "SIDREASONER_CPU_IMAGE / SIDREASONER_TRAIN_IMAGE to digests only when compiling or submitting"
        )
    commands = [
        f"docker build -f {dockerfile} --label {CODE_VERSION_LABEL}={code_version()} "
        + " ".join(f"-t {tag}" for tag in _tags(image))
        + " ."
        for image, dockerfile in DOCKERFILES.items()
    ]
    if push:
        commands += [f"docker push {tag}" for image in DOCKERFILES for tag in _tags(image)]
    return commands


if __name__ == "__main__":  # `make images` / `make push-images`
    import sys

    print("\n".join(build_commands(push="--push" in sys.argv)))
