"""The one place components take their images from, read when the pipeline is compiled.

Override with SIDREASONER_CPU_IMAGE / SIDREASONER_TRAIN_IMAGE (e.g. a digest in your registry).
The tags follow the package version: images/ builds them with the same pins as pyproject.toml.
"""

import os

from sidreasoner import __version__

REGISTRY = os.environ.get("SIDREASONER_IMAGE_REGISTRY", "ghcr.io/sidreasoner-pipelines")
CPU_IMAGE = os.environ.get("SIDREASONER_CPU_IMAGE", f"{REGISTRY}/sidreasoner-cpu:{__version__}")
TRAIN_IMAGE = os.environ.get("SIDREASONER_TRAIN_IMAGE", f"{REGISTRY}/sidreasoner-train:{__version__}")
