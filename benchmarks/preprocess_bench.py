"""Preprocess benchmark: 1M Amazon-2018-format reviews (+50k items) through download-data + preprocess.

    .venv/bin/python benchmarks/preprocess_bench.py [--reviews 1000000] [--items 50000]

Writes the raw files once into benchmarks/out/raw_src/ (reused when present), runs the step in a child
process so its peak RSS is measured alone, and prints one JSON object: rows/s, wall seconds, peak RSS,
and the raw sizes (gzipped, uncompressed) for comparison.
"""

from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parent / "out"
CATEGORY = "Bench"
TEXTS = [
    "Works exactly as described and arrived on time. " * 4,
    "Not great, the quality could be better for the price but it does the job. " * 3,
    "My kids love it! We bought a second one for the grandparents. " * 3,
]


def _asin(i: int) -> str:
    return f"B{i:09d}"


def write_meta(path: Path, items: int) -> None:
    with gzip.open(path, "wt", compresslevel=1) as fh:
        for i in range(items):
            title = f"Bench Product {i} &amp; Accessories" if i % 50 else ""  # 2% empty titles
            fh.write(
                json.dumps(
                    {
                        "asin": _asin(i),
                        "title": title,
                        "description": [f"Description of item {i}."],
                        "brand": f"Brand{i % 300}",
                        "category": ["Bench", f"Sub{i % 40}"],
                        "price": "$9.99",
                    }
                )
                + "\n"
            )


def write_reviews(path: Path, reviews: int, items: int, seed: int = 0) -> int:
    """Zipf-skewed users and items, random 2014-2018 timestamps; returns uncompressed bytes."""
    rng = np.random.default_rng(seed)
    users = max(1000, reviews // 8)
    chunk, total = 200_000, 0
    with gzip.open(path, "wb", compresslevel=1) as fh:
        for start in range(0, reviews, chunk):
            n = min(chunk, reviews - start)
            u = (rng.zipf(1.3, n) + rng.integers(0, users, n)) % users
            it = (rng.zipf(1.2, n) * 7919 + rng.integers(0, 50, n)) % items
            ts = rng.integers(1_388_534_400, 1_546_300_800, n) // 86_400 * 86_400
            stars = rng.integers(1, 6, n)
            lines = "".join(
                f'{{"overall": {s}.0, "verified": true, "reviewTime": "01 1, 2017", "reviewerID": "A{a:011d}", '
                f'"asin": "{_asin(b)}", "reviewerName": "Someone", "reviewText": "{TEXTS[b % 3]}", '
                f'"summary": "Five Stars", "unixReviewTime": {t}}}\n'
                for a, b, t, s in zip(u.tolist(), it.tolist(), ts.tolist(), stars.tolist(), strict=True)
            )
            data = lines.encode()
            total += len(data)
            fh.write(data)
    return total


def generate(reviews: int, items: int) -> dict:
    src = OUT / f"raw_src_{reviews}_{items}"
    info = src / "info.json"
    if info.is_file():
        return json.loads(info.read_text())
    src.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    write_meta(src / f"meta_{CATEGORY}.json.gz", items)
    raw_bytes = write_reviews(src / f"{CATEGORY}.json.gz", reviews, items)
    out = {
        "src": str(src),
        "reviews": reviews,
        "items": items,
        "uncompressed_review_bytes": raw_bytes,
        "gz_review_bytes": (src / f"{CATEGORY}.json.gz").stat().st_size,
        "generate_seconds": round(time.perf_counter() - t0, 1),
    }
    info.write_text(json.dumps(out))
    return out


def peak_rss_kib() -> int:
    """This process image's peak RSS: VmHWM resets at exec (ru_maxrss keeps the forking parent's peak)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux


def run_step(src: str) -> dict:
    """Child process: download-data (folder source) + preprocess; report its own peak RSS."""
    from sidreasoner.config import load
    from sidreasoner.data.download import download_data
    from sidreasoner.data.preprocess import preprocess

    baseline = peak_rss_kib()
    cfg = load("demo", [f"data.source={src}", f"data.category={CATEGORY}"])
    t0 = time.perf_counter()
    download_data(cfg, OUT / "raw")
    t1 = time.perf_counter()
    metrics = preprocess(cfg, OUT / "raw", OUT / "data")
    t2 = time.perf_counter()
    peak = peak_rss_kib()
    return {
        "download_seconds": round(t1 - t0, 2),
        "preprocess_seconds": round(t2 - t1, 2),
        "rows_per_second": round(metrics["raw_review_lines"] / (t2 - t1)),
        "peak_rss_mib": round(peak / 1024, 1),
        "rss_after_imports_mib": round(baseline / 1024, 1),
        "metrics": metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reviews", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_step(args.child)))
        return
    gen = generate(args.reviews, args.items)
    child = subprocess.run(
        [sys.executable, __file__, "--child", gen["src"]], check=True, capture_output=True, text=True
    )
    result = {**gen, **json.loads(child.stdout.strip().splitlines()[-1])}
    result["uncompressed_review_mib"] = round(result["uncompressed_review_bytes"] / 2**20, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
