"""`python -m sidreasoner.train.launch STAGE CONFIG_JSON METRICS_JSON DIR...` — the per-rank entry
point that `sft._maybe_launch_distributed` starts under torchrun (one process per GPU)."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from sidreasoner import config as config_mod
from sidreasoner.io import write_json


def main(argv: list[str]) -> None:
    stage, cfg_path, metrics_path, *dirs = argv
    from sidreasoner.train import sft

    cfg = config_mod.from_step_config(json.loads(Path(cfg_path).read_text()))
    fn = {"stage1": sft.sft_stage1, "stage2": sft.sft_stage2}[stage]
    metrics = fn(cfg, *map(Path, dirs))
    if int(os.environ.get("RANK", "0")) == 0:
        write_json(metrics_path, metrics)


if __name__ == "__main__":
    main(sys.argv[1:])
