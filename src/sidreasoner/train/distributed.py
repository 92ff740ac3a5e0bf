"""Multi-GPU SFT: re-run a step under torchrun (`maybe_launch_distributed`), and the per-rank entry
point it starts, one process per GPU:

    python -m sidreasoner.train.distributed MODULE:FUNCTION CONFIG_JSON METRICS_JSON DIR...

The step function travels as its "module:function" path, so this module imports no step module.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from sidreasoner import config as config_mod
from sidreasoner.config import Config
from sidreasoner.io import write_json

log = logging.getLogger(__name__)


def is_rank0() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def maybe_launch_distributed(
    step: Callable[..., dict[str, float]], cfg: Config, dirs: list[Path]
) -> dict[str, float] | None:
    """More than one GPU visible and not yet under torchrun: re-run `step(cfg, *dirs)` under
    `torchrun --standalone --nproc_per_node=<gpus>` (Trainer then trains with DDP; rank 0 writes
    the outputs) and return rank 0's metrics; otherwise None. Untested here: the development
    machines have no GPU."""
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if n <= 1 or "LOCAL_RANK" in os.environ:
        return None
    name = step.__name__
    work = dirs[-1].parent
    work.mkdir(parents=True, exist_ok=True)
    cfg_path, metrics_path = work / f".{name}.config-for-ranks.json", work / f".{name}.metrics-of-rank0.json"
    cfg_path.write_text(json.dumps(config_for_ranks(cfg)))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={n}",
        "-m",
        "sidreasoner.train.distributed",
        f"{step.__module__}:{step.__qualname__}",
        str(cfg_path),
        str(metrics_path),
        *map(str, dirs),
    ]
    log.info("launching %s on %d GPUs: %s", name, n, " ".join(cmd))
    subprocess.run(cmd, check=True)
    return json.loads(metrics_path.read_text())


def config_for_ranks(cfg: Config) -> dict:
    """What the ranks rebuild `cfg` from: its values (the step's generation included) and, for a step's
    scoped config, the step and the sections it may read."""
    values = cfg.model_dump(mode="json")
    if isinstance(cfg, config_mod.ScopedConfig):
        return {"config": values, "step": cfg.step_name, "sections": list(cfg.sections)}
    return {"config": values}


def config_of_rank(record: dict) -> Config:
    cfg = config_mod.validate(record["config"])
    return config_mod.scope_config(cfg, record["step"], record["sections"]) if "step" in record else cfg


def main(argv: list[str]) -> None:
    target, cfg_path, metrics_path, *dirs = argv
    module, attr = target.split(":")
    step = getattr(importlib.import_module(module), attr)
    cfg = config_of_rank(json.loads(Path(cfg_path).read_text()))
    metrics = step(cfg, *map(Path, dirs))
    if is_rank0():
        write_json(metrics_path, metrics)


if __name__ == "__main__":
    main(sys.argv[1:])
