"""Shop-export benchmark: a synthetic Parquet export (data.format=interactions) through download-data + preprocess.

    .venv/bin/python benchmarks/shop_export_bench.py [--events 10000000] [--users 1000000] [--items 200000]
        [--times ms|iso]

Writes the export once into benchmarks/out/shop_<events>_<users>_<items>_<times>/ (reused when present): a
folder interactions/ of 1M-row Parquet part files (customer, sku, event_time: epoch milliseconds, or ISO-8601
text with a zone; stars) and items.parquet (sku, name, blurb, category). Runs the steps in a child process so
that its peak RSS is measured alone, and prints one JSON object: events/s, wall seconds, peak RSS.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

sys.path.insert(0, str(Path(__file__).resolve().parent))
from preprocess_bench import peak_rss_kib  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
PART_ROWS = 1_000_000
T_START, T_END = 1_577_836_800, 1_735_689_600  # 2020-01-01 .. 2025-01-01


def _ids(prefix: str, numbers: np.ndarray) -> pa.Array:
    return pc.binary_join_element_wise(prefix, pc.cast(pa.array(numbers), pa.string()), "")


def write_export(root: Path, events: int, users: int, items: int, times: str, seed: int = 0) -> None:
    """Zipf-skewed users and items, random times; every part file 1M events."""
    rng = np.random.default_rng(seed)
    (root / "interactions").mkdir(parents=True)
    for part, start in enumerate(range(0, events, PART_ROWS)):
        n = min(PART_ROWS, events - start)
        user = (rng.zipf(1.3, n) + rng.integers(0, users, n)) % users
        item = (rng.zipf(1.2, n) * 7919 + rng.integers(0, 50, n)) % items
        ms = rng.integers(T_START, T_END, n) * 1000 + rng.integers(0, 1000, n)
        when = pa.array(ms)
        if times == "iso":
            when = pc.cast(pc.cast(when, pa.timestamp("ms", tz="UTC")), pa.string())  # '2021-03-04 05:06:07.123Z'
        table = pa.table(
            {"customer": _ids("C", user), "sku": _ids("SKU-", item), "event_time": when, "stars": rng.integers(1, 6, n)}
        )
        pq.write_table(table, root / "interactions" / f"part-{part:05d}.snappy.parquet")
    numbers = np.arange(items)
    titles = pc.binary_join_element_wise("Shop Product ", pc.cast(pa.array(numbers), pa.string()), " Deluxe", "")
    pq.write_table(
        pa.table(
            {
                "sku": _ids("SKU-", numbers),
                "name": titles,
                "blurb": _ids("A fine thing, number ", numbers),
                "category": _ids("Aisle ", numbers % 40),
            }
        ),
        root / "items.parquet",
    )


def generate(events: int, users: int, items: int, times: str) -> dict:
    root = OUT / f"shop_{events}_{users}_{items}_{times}"
    info = root / "info.json"
    if info.is_file():
        return json.loads(info.read_text())
    t0 = time.perf_counter()
    write_export(root, events, users, items, times)
    out = {
        "src": str(root),
        "events": events,
        "users": users,
        "items": items,
        "times": times,
        "parquet_mib": round(sum(p.stat().st_size for p in root.rglob("*.parquet")) / 2**20, 1),
        "generate_seconds": round(time.perf_counter() - t0, 1),
    }
    info.write_text(json.dumps(out))
    return out


def run_step(src: str) -> dict:
    """Child process: download-data (folder source) + preprocess; report its own peak RSS."""
    from sidreasoner.config import load
    from sidreasoner.data.download import download_data
    from sidreasoner.data.preprocess import preprocess

    baseline = peak_rss_kib()
    sets = [
        f"data.source={src}",
        "data.format=interactions",
        "data.category=Shop",
        "data.columns.user_id=customer",
        "data.columns.item_id=sku",
        "data.columns.timestamp=event_time",
        "data.columns.rating=stars",
        "data.columns.title=name",
        "data.columns.description=blurb",
        'data.item_text_columns=["category"]',
    ]
    cfg = load("demo", sets)
    raw, data = OUT / "shop_raw", OUT / "shop_data"
    for folder in (raw, data):
        subprocess.run(["rm", "-rf", str(folder)], check=True)
    t0 = time.perf_counter()
    download_data(cfg, raw)
    t1 = time.perf_counter()
    metrics = preprocess(cfg, raw, data)
    t2 = time.perf_counter()
    return {
        "download_seconds": round(t1 - t0, 2),
        "preprocess_seconds": round(t2 - t1, 2),
        "events_per_second": round(metrics["raw_review_lines"] / (t2 - t1)),
        "peak_rss_mib": round(peak_rss_kib() / 1024, 1),
        "rss_after_imports_mib": round(baseline / 1024, 1),
        "metrics": metrics,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--times", choices=["ms", "iso"], default="ms")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(run_step(args.child)))
        return
    gen = generate(args.events, args.users, args.items, args.times)
    command = [sys.executable, __file__, "--child", gen["src"]]
    child = subprocess.run(command, check=True, capture_output=True, text=True)
    print(json.dumps({**gen, **json.loads(child.stdout.strip().splitlines()[-1])}, indent=2))


if __name__ == "__main__":
    main()
