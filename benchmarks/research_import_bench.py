"""Research-bundle import benchmark: a bundle the size of the released Office_Products one, imported.

    .venv/bin/python benchmarks/research_import_bench.py [--items 3500] [--users 5000] [--general 60000]

Writes a bundle (tests/helpers/bundle.py, with its quirks) into a temp folder: 3,500 items, 5,000 users
with sequences of 4-18 items, one in 25 a re-buy (about 40,000 train samples, 5,000 valid and 5,000
test, histories up to 10), item.json descriptions of ~700 characters, item narratives, one integrated
narrative per train sample and `--general` general reasoning chats. Then a child process (so that its
peak memory is measured alone) imports it as the pipeline does on the office preset with
data.format=research — download-data, preprocess, embed-items (skipped), quantize-sids (import),
synthesize-corpus (import) — and one JSON object is printed: seconds per step and in all, peak RSS of
the child and of its interpreter and imports alone, file sizes and the steps' metrics.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CATEGORY = "Office_Products"


def _vm_hwm_kib() -> int:
    """Peak RSS of this process (VmHWM; ru_maxrss would carry the parent's peak over the fork)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM in /proc/self/status")


def child(folder: str) -> None:
    """The import as the pipeline runs it: download-data, preprocess, embed-items (skipped),
    quantize-sids (import) and synthesize-corpus (import) on the office preset, each timed."""
    from sidreasoner import config
    from sidreasoner.runner import run_step

    cfg = config.load(
        "office",
        [
            "data.format=research",
            f"data.source={folder}",
            f"data.category={CATEGORY}",
            "data.cache_dir=",
            "teacher.cache_dir=",
        ],
    )
    base_kib = _vm_hwm_kib()
    seconds, metrics = {}, {}
    with tempfile.TemporaryDirectory(prefix="research_bench_out_") as out:
        paths = {k: Path(out) / k for k in ("raw", "dataset", "embeddings", "sid_index", "corpus")}
        for step in ("download-data", "preprocess", "embed-items", "quantize-sids", "synthesize-corpus"):
            t0 = time.perf_counter()
            metrics[step] = run_step(step, cfg, paths)
            seconds[step] = round(time.perf_counter() - t0, 2)
    peak_kib = _vm_hwm_kib()
    print(
        json.dumps(
            {
                "import_seconds": round(sum(seconds.values()), 2),
                "step_seconds": seconds,
                "peak_rss_mib": round(peak_kib / 1024, 1),
                "imports_rss_mib": round(base_kib / 1024, 1),
                "preprocess_metrics": metrics["preprocess"],
                "sid_metrics": metrics["quantize-sids"],
                "corpus_metrics": metrics["synthesize-corpus"],
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=3500)
    ap.add_argument("--users", type=int, default=5000)
    ap.add_argument("--general", type=int, default=60000)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child)
        return
    sys.path.insert(0, str(ROOT))
    from tests.helpers.bundle import write_bundle

    with tempfile.TemporaryDirectory(prefix="research_bench_") as tmp:
        t0 = time.perf_counter()
        write_bundle(
            Path(tmp),
            CATEGORY,
            n_users=args.users,
            n_items=args.items,
            seed=0,
            min_len=4,
            max_len=18,
            n_general=args.general,
            text_words=30,
            repeat=0.04,
        )
        generate = time.perf_counter() - t0
        sizes = {
            str(p.relative_to(tmp)): round(p.stat().st_size / 2**20, 1)
            for p in sorted(Path(tmp).rglob("*"))
            if p.is_file()
        }
        t0 = time.perf_counter()
        out = subprocess.run([sys.executable, __file__, "--child", tmp], check=True, capture_output=True, text=True)
        total = time.perf_counter() - t0
    result = json.loads(out.stdout)
    result.update(child_process_seconds=round(total, 2), generate_seconds=round(generate, 1), file_mib=sizes)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
