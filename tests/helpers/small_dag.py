"""The demo DAG on small settings, and the metrics it gives: what tests/test_pipeline_local.py runs and
tests/test_image_dag.py compares its container run with, so that CI runs this DAG once in the venv.

Two records of those metrics, timing figures left out:
- the pipeline test's own run, kept in pytest's cache with a hash of the source tree it ran; the image test
  compares with it exactly when its image holds the same tree (`make test` under CI runs both);
- tests/golden/small_dag_metrics.json, with the machine it was recorded on; the pipeline test checks its run
  against it on a machine of that kind, and the image test falls back on it when run alone.
  `make golden` records it again (`python -m tests.helpers.small_dag`).

The figures are the same run to run on one machine (seeded); another CPU or thread count may round
differently, so the golden file is compared only where the machine matches.
"""

from __future__ import annotations

import hashlib
import json
import platform
import re
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT / "tests" / "golden" / "small_dag_metrics.json"
CACHE_KEY = "sidreasoner/small_dag_metrics"
# What the steps import: the sources the CPU image copies.
SOURCES = ("pyproject.toml", "README.md", "src", "components", "pipelines")

# Small data and short training: the DAG and its artifacts in about a fifth of the demo's time; whether the
# stages learn is tests/test_train_e2e.py's job, what the demo shows test_demo_reasoning_pays'.
SMALL = [
    "data.demo.num_items=120",
    "data.demo.num_users=400",
    "sid.codebook_size=16",
    "sid.rqvae.epochs=40",
    "stage1.max_per_task=60",
    "stage1.epochs=1",
    "stage1.hr_samples=20",
    "stage1.valid_samples=20",
    "stage2.max_samples=40",
    "stage2.valid_samples=8",
    "stage2.reasoning_holdout=8",
    "stage2.epochs=1",
    "stage3.max_steps=2",
    "stage3.max_samples=8",
    "stage3.valid_samples=4",
    "stage3.max_response_length=24",
    "eval.max_users=16",
    "eval.think_max_tokens=12",
]

# Metrics that time a step (wall_seconds, wall_s, test_think_seconds, items_per_s, …): the only ones that
# may differ between two runs of the same seeded code.
TIMING = re.compile(r"(^|_)(seconds|wall_s)$|_per_s$")


def seeded_metrics(tasks: dict) -> dict:
    """{task: {metric: value}} of a run summary's tasks, timing figures left out."""
    return {
        name: {key: value for key, value in task["metrics"].items() if not TIMING.search(key)}
        for name, task in tasks.items()
    }


def differences(got: dict, expected: dict) -> dict:
    """{task: {metric: (got, expected)}} for every metric (or task) that one side lacks or that differs."""
    missing = object()
    found = {}
    for name in sorted(got.keys() | expected.keys()):
        ours, theirs = got.get(name, {}), expected.get(name, {})
        differing = {
            key: (ours.get(key, missing), theirs.get(key, missing))
            for key in ours.keys() | theirs.keys()
            if ours.get(key, missing) != theirs.get(key, missing)
        }
        if differing or name not in got or name not in expected:
            found[name] = {key: tuple("(none)" if v is missing else v for v in pair) for key, pair in differing.items()}
    return found


def _files(root: Path) -> list[Path]:
    files = []
    for source in SOURCES:
        path = root / source
        if path.is_file():
            files.append(path)
        else:
            files += sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and "__pycache__" not in p.parts
                and p.suffix != ".pyc"
                and not any(part.endswith(".egg-info") for part in p.parts)
            )
    return files


def tree_hash(root: Path = ROOT) -> str:
    """A hash of the sources under `root` that the DAG's steps run (the working tree, or an image's snapshot)."""
    digest = hashlib.sha256()
    for file in _files(root):
        digest.update(str(file.relative_to(root)).encode() + b"\0" + file.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def machine() -> dict:
    """What decides how this machine rounds the DAG's arithmetic: CPU, kernels torch picks, threads, versions."""
    import numpy
    import torch

    cpu = platform.processor() or platform.machine()
    info = Path("/proc/cpuinfo")
    if info.exists():
        # A virtual machine's model name can be bare ("AMD EPYC"); family, model and stepping tell the generation.
        names = re.findall(r"^(?:vendor_id|model name|cpu family|model|stepping)\s*:\s*(.+)$", info.read_text(), re.M)
        cpu = " ".join(dict.fromkeys(names)) or cpu
    return {
        "cpu": cpu,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
    }


def read_golden() -> dict:
    """{"machine": …, "metrics": …} as `make golden` recorded them."""
    return json.loads(GOLDEN.read_text())


def write_golden(metrics: dict) -> None:
    GOLDEN.parent.mkdir(exist_ok=True)
    GOLDEN.write_text(json.dumps({"machine": machine(), "metrics": metrics}, indent=1, sort_keys=True) + "\n")


def run_small(root: Path, summary_path: Path | None = None) -> dict:
    """The demo DAG on SMALL settings in this venv (kfp.local's SubprocessRunner): run_local's summary."""
    from sidreasoner import config
    from sidreasoner.pipelines.local import run_local

    return run_local(config.load("demo", SMALL), root, summary_path=summary_path)


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="sidreasoner-golden-") as work:
        run = run_small(Path(work) / "root")
    failed = {name: task["status"] for name, task in run["tasks"].items() if task["status"] != "SUCCEEDED"}
    if failed:
        sys.exit(f"the small DAG did not succeed: {failed}")
    write_golden(seeded_metrics(run["tasks"]))
    print(f"wrote {GOLDEN.relative_to(ROOT)}: {len(run['tasks'])} tasks, machine {machine()}")


if __name__ == "__main__":
    main()
