"""The one place components take their images from, read when the pipeline is compiled.

Override with SIDREASONER_CPU_IMAGE / SIDREASONER_TRAIN_IMAGE (e.g. a digest in your registry).
The tags follow the package version: images/ builds them with the same pins as pyproject.toml.
"""

import os

from sidreasoner import __version__

REGISTRY = os.environ.get("SIDREASONER_IMAGE_REGISTRY", "ghcr.io/sidreasoner-pipelines")
CPU_IMAGE = os.environ.get("SIDREASONER_CPU_IMAGE", f"{REGISTRY}/sidreasoner-cpu:{__version__}")
TRAIN_IMAGE = os.environ.get("SIDREASONER_TRAIN_IMAGE", f"{REGISTRY}/sidreasoner-train:{__version__}")

# The image each kind of step pod runs in (`Step.image` in the registry).
IMAGES = {"cpu": CPU_IMAGE, "train": TRAIN_IMAGE}

# The Dockerfile that builds each image (paths from the repository root).
DOCKERFILES = {CPU_IMAGE: "images/cpu/Dockerfile", TRAIN_IMAGE: "images/train/Dockerfile"}


def build_commands(push: bool = False) -> list[str]:
    """The `docker build` (and `docker push`) commands for every image, run from the repository root."""
    pinned = [image for image in DOCKERFILES if "@" in image]
    if pinned:
        raise SystemExit(f"cannot build {', '.join(pinned)}: a digest names an image that exists already. Set "
                         "SIDREASONER_CPU_IMAGE / SIDREASONER_TRAIN_IMAGE to digests only when compiling or submitting")
    commands = [f"docker build -f {dockerfile} -t {image} ." for image, dockerfile in DOCKERFILES.items()]
    if push:
        commands += [f"docker push {image}" for image in DOCKERFILES]
    return commands


if __name__ == "__main__":  # `make images` / `make push-images`
    import sys

    print("\n".join(build_commands(push="--push" in sys.argv)))
