"""synthesize-corpus benchmark: the `openai` teacher against a local OpenAI-compatible server that
answers every request after a fixed delay (200 ms), item narratives for 3,500 hand-made items.

Measures (1) wall time with concurrency 32 over all items, (2) concurrency 1 over a subset
(`--serial-items`, default 150), extrapolated linearly to all items (said so in the output), and
(3) the second run over all items with a warm cache (zero requests).
Run: .venv/bin/python benchmarks/teacher_bench.py [--items 3500] [--delay 0.2] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from sidreasoner import config
from sidreasoner.teacher.corpus import synthesize_corpus

HELPERS = Path(__file__).resolve().parents[1] / "tests" / "helpers" / "teacher.py"
NOUNS = ["Gel Pen", "Notebook", "Headphones", "Card Game", "Chef Knife", "Seed Kit", "Yoga Mat", "Drill Bit Set"]
BRANDS = ["Acme", "Northwind", "Contoso", "Globex", "Initech", "Umbrella", "Stark", "Wayne"]


def make_inputs(root: Path, n: int) -> tuple[Path, Path]:
    data, sid = root / "dataset", root / "sid_index"
    data.mkdir(parents=True)
    sid.mkdir(parents=True)
    items = []
    for i in range(n):
        noun, brand = NOUNS[i % len(NOUNS)], BRANDS[(i // len(NOUNS)) % len(BRANDS)]
        items.append(
            {
                "item_id": i,
                "asin": f"B{i:09d}",
                "title": f"{brand} {noun} Model {i}",
                "description": f"A {noun.lower()} from {brand}, model {i}.",
                "brand": brand,
                "categories": ["Bench", noun],
            }
        )
    pq.write_table(pa.Table.from_pylist(items), data / "items.parquet")
    schema = pa.schema(
        [
            ("user_id", pa.int64()),
            ("history_item_ids", pa.list_(pa.int64())),
            ("item_id", pa.int64()),
            ("timestamp", pa.int64()),
        ]
    )
    rows = [{"user_id": i, "history_item_ids": [i], "item_id": (i + 1) % n, "timestamp": i} for i in range(n)]
    for split in ("train", "valid", "test"):
        pq.write_table(pa.Table.from_pylist(rows, schema=schema), data / f"{split}.parquet")
    (data / "stats.json").write_text(json.dumps({"category": "Bench"}))
    index = {str(i): [f"<a_{i // 256 // 256}>", f"<b_{i // 256 % 256}>", f"<c_{i % 256}>"] for i in range(n)}
    (sid / "index.json").write_text(json.dumps(index))
    (sid / "catalogue.json").write_text(json.dumps(sorted("".join(v) for v in index.values())))
    return data, sid


class Server:
    """tests/helpers/teacher.py's FakeOpenAI in its own process, so it never competes for the client's GIL."""

    def __init__(self, delay: float):
        self.proc = subprocess.Popen(
            [sys.executable, str(HELPERS), "--delay", str(delay)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        self.base_url = self.proc.stdout.readline().strip()

    @property
    def received(self) -> int:
        with urllib.request.urlopen(self.base_url.removesuffix("/v1") + "/stats") as resp:
            return json.loads(resp.read())["received"]

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(10)


def run(cfg: config.Config, data: Path, sid: Path, out: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    metrics = synthesize_corpus(cfg, data, sid, out)
    return time.perf_counter() - start, metrics


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=3500)
    ap.add_argument("--serial-items", type=int, default=150)
    ap.add_argument("--delay", type=float, default=0.2)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    root = Path(tempfile.mkdtemp(prefix="teacher-bench-"))
    try:
        data, sid = make_inputs(root, args.items)
        sub_data, sub_sid = make_inputs(root / "subset", args.serial_items)
        base = [
            "teacher.kind=openai",
            "teacher.history_narratives=false",
            "teacher.reasoning_paths=false",
            "teacher.timeout_s=30",
            "teacher.failure_budget=0",
        ]
        srv = Server(args.delay)
        try:
            common = base + [f"teacher.base_url={srv.base_url}"]
            cfg_par = config.load(
                "demo", common + [f"teacher.concurrency={args.concurrency}", f"teacher.cache_dir={root / 'cache-par'}"]
            )
            cfg_ser = config.load("demo", common + ["teacher.concurrency=1", f"teacher.cache_dir={root / 'cache-ser'}"])
            t_par, m_par = run(cfg_par, data, sid, root / "out-par")
            req_par = srv.received
            t_warm, m_warm = run(cfg_par, data, sid, root / "out-warm")
            req_warm = srv.received - req_par
            t_ser, m_ser = run(cfg_ser, sub_data, sub_sid, root / "out-ser")
        finally:
            srv.close()
        t_ser_full = t_ser * args.items / args.serial_items
        result = {
            "items": args.items,
            "server_delay_s": args.delay,
            f"concurrency_{args.concurrency}_wall_s": round(t_par, 2),
            f"concurrency_{args.concurrency}_items_per_s": round(args.items / t_par, 1),
            "concurrency_1_subset_items": args.serial_items,
            "concurrency_1_subset_wall_s": round(t_ser, 2),
            "concurrency_1_items_per_s": round(args.serial_items / t_ser, 2),
            "concurrency_1_wall_s_extrapolated": round(t_ser_full, 1),
            "speedup": round(t_ser_full / t_par, 1),
            "warm_cache_wall_s": round(t_warm, 3),
            "warm_over_first": round(t_warm / t_par, 4),
            "first_run_requests": req_par,
            "warm_run_requests": req_warm,
            "first_run_items_narrated": m_par["items_narrated"],
            "warm_cache_hits": m_warm["cache_hits"],
            "serial_items_narrated": m_ser["items_narrated"],
            "cpu_count": os.cpu_count(),
        }
    finally:
        shutil.rmtree(root, ignore_errors=True)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
