"""What every component body does: run the library step, then publish its metrics.

No kfp import: the Metrics artifact is used only through `log_metric` and `path`.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Any

from sidreasoner.io import write_json
from sidreasoner.steps import STEPS, run_step


def run_component(step: str, config: dict[str, Any], paths: dict[str, str], metrics: Any,
                  reports: dict[str, Any] | None = None) -> None:
    """Run `step`; publish its metrics, and copy the HTML pages it wrote into `reports` artifacts."""
    values = run_step(step, config, paths)
    for name, folder, filename in STEPS[step].reports:
        os.makedirs(os.path.dirname(reports[name].path), exist_ok=True)
        shutil.copyfile(os.path.join(paths[folder], filename), reports[name].path)
    for name, value in sorted(values.items()):
        metrics.log_metric(name, value)
    # kfp.local only re-uses a cached task whose Metrics artifact has a file (DESIGN §3);
    # on a cluster the same file is what the UI's artifact preview shows.
    os.makedirs(os.path.dirname(metrics.path), exist_ok=True)
    write_json(metrics.path, values)
    print(json.dumps({"step": step, "metrics": values}, sort_keys=True))
