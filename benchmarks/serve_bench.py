"""Model server benchmark: `sidreasoner serve` as a real process on 127.0.0.1, N concurrent clients (1, 8, 32)
each sending one test-split history per request (v1, non-thinking). Records requests/s, p50/p99 latency and the
server's peak RSS, and checks that every answer's top-k items equal `evaluate`'s for the same history (the same
config, run in this process on the same folders).

Models:
  (a) a model given by path with its quantize-sids and preprocess folders (the trained demo model that
      `make demo` leaves under local_outputs/): --model DIR --sid-index DIR --dataset DIR;
  (b) the evaluation benchmark's model (benchmarks/eval_bench.py `build()`: tiny Qwen3, hidden 256, 4 layers,
      RANDOM INIT, 3.4M parameters, 3,500 items with 3-level SIDs, codebook 32), saved with generated
      users (10-item histories).
      --no-bench-model leaves it out.

    .venv/bin/python benchmarks/serve_bench.py [--model DIR --sid-index DIR --dataset DIR] [--users 64]
        [--requests 96] [--clients 1,8,32] [--set serve.max_batch=32 ...] [--out benchmarks/out/serve_bench.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from _titles import generate_titles  # noqa: E402
from eval_bench import build  # noqa: E402

from sidreasoner import config  # noqa: E402
from sidreasoner.artifacts import Dataset, SidIndex  # noqa: E402
from sidreasoner.eval.evaluate import evaluate  # noqa: E402
from sidreasoner.model.loading import save_model  # noqa: E402
from sidreasoner.sid.codes import parse_sid, sid_tokens  # noqa: E402

NAME = "bench"


def bench_model_folders(root: Path, n_users: int, seed: int = 0) -> tuple[tuple[Path, Path, Path], float]:
    """eval_bench's model saved as a model folder, its SID index, and a dataset of generated users; and the
    model's parameter count."""
    n_items, history = 3500, 10
    model, tok, catalogue = build(n_items, 32, 3, seed)
    save_model(model, tok, root / "model")
    index = {i: sid_tokens(parse_sid(sid)) for i, sid in enumerate(catalogue)}
    with SidIndex.writing(root / "sid_index") as sids:
        sids.write_index(index)
        sids.write_sids(
            pd.DataFrame(
                {
                    "item_id": np.arange(n_items, dtype=np.int64),
                    "codes": [parse_sid(s) for s in catalogue],
                    "sid": catalogue,
                }
            )
        )
    rng = np.random.default_rng(seed + 1)
    with Dataset.writing(root / "dataset") as data:
        data.write_items(
            pd.DataFrame(
                {
                    "item_id": np.arange(n_items, dtype=np.int64),
                    "asin": [f"B{i:09d}" for i in range(n_items)],
                    "title": generate_titles(n_items, seed),
                }
            )
        )
        walks = [rng.choice(n_items, history + 1, replace=False).tolist() for _ in range(n_users)]
        data.write_split(
            "test",
            pd.DataFrame(
                {
                    "user_id": np.arange(n_users, dtype=np.int64),
                    "history_item_ids": [w[:-1] for w in walks],
                    "item_id": [w[-1] for w in walks],
                    "timestamp": np.arange(n_users, dtype=np.int64),
                }
            ),
        )
    return (root / "model", root / "sid_index", root / "dataset"), float(sum(p.numel() for p in model.parameters()))


def expected_answers(sets: list[str], folders, users: int, out: Path) -> list[dict]:
    """evaluate's non-thinking top-k on the first `users` test samples: [{"history", "item_ids"}] as item ids."""
    model, sid_index, dataset = folders
    cfg = config.load("demo", [*sets, 'eval.modes=["nonthink"]', 'eval.splits=["test"]', f"eval.max_users={users}"])
    evaluate(cfg, model, dataset, sid_index, out)
    ids = Dataset.at(dataset).items_table(["item_id", "asin"])
    asin = dict(zip(ids["item_id"].to_pylist(), map(str, ids["asin"].to_pylist()), strict=True))
    preds = pd.read_parquet(out / "predictions.parquet")
    return [
        {"history": [asin[i] for i in r.history_item_ids], "item_ids": [asin[i] for i in r.pred_item_ids]}
        for r in preds.itertuples()
    ]


class Server:
    def __init__(self, folders, sets: list[str], log: Path):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        model, sid_index, dataset = folders
        args = ["--model", str(model), "--sid-index", str(sid_index), "--dataset", str(dataset), "--name", NAME]
        args += ["--host", "127.0.0.1", "--port", str(port), *(a for s in sets for a in ("--set", s))]
        self.url = f"http://127.0.0.1:{port}"
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sidreasoner.cli", "serve", *args], stdout=out, stderr=subprocess.STDOUT
            )
        self.log = log

    def wait_ready(self, timeout: float = 600.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited ({self.proc.returncode}): {self.log.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v1/models/{NAME}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"the server was not ready within {timeout}s")

    def rss_mib(self, key: str) -> float:
        """VmRSS (now) or VmHWM (peak) of the server process, MiB."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(120)


def load(server: Server, expected: list[dict], clients: int, requests: int) -> dict:
    """`requests` one-instance requests from `clients` threads; latencies, throughput, identical answers."""
    client = httpx.Client(limits=httpx.Limits(max_connections=clients + 4), timeout=600)

    def one(i: int) -> tuple[float, bool]:
        want = expected[i % len(expected)]
        t0 = time.perf_counter()
        r = client.post(f"{server.url}/v1/models/{NAME}:predict", json={"instances": [{"history": want["history"]}]})
        seconds = time.perf_counter() - t0
        r.raise_for_status()
        return seconds, r.json()["predictions"][0]["item_ids"] == want["item_ids"]

    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, range(requests)))
    wall = time.perf_counter() - t0
    client.close()
    latencies = sorted(s for s, _ in results)
    return {
        "clients": clients,
        "requests": requests,
        "requests_per_s": requests / wall,
        "p50_ms": 1000 * statistics.median(latencies),
        "p99_ms": 1000 * latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))],
        "identical_topk_share": sum(ok for _, ok in results) / len(results),
        "server_peak_rss_mib": server.rss_mib("VmHWM"),
    }


def run_setup(label: str, folders, args, work: Path) -> dict:
    work = work / f"setup-{len(list(work.glob('setup-*')))}"
    work.mkdir()
    expected = expected_answers(args.sets, folders, args.users, work / "evaluation")
    server = Server(folders, args.sets, work / "server.log")
    try:
        server.wait_ready()
        row = {"model": label, "users": len(expected), "rss_after_load_mib": server.rss_mib("VmRSS"), "levels": []}
        load(server, expected, 1, 2)  # warm-up
        for clients in args.clients:
            level = load(server, expected, clients, args.requests)
            row["levels"].append(level)
            print(label, json.dumps(level), flush=True)
    finally:
        row_exit = server.stop()
    row["exit_code"] = row_exit
    return row


def table(rows: list[dict]) -> str:
    head = "| model | clients | requests/s | p50 ms | p99 ms | peak RSS MiB | identical top-k |"
    lines = [head, "|" + "---|" * 7]
    for row in rows:
        for lv in row["levels"]:
            lines.append(
                f"| {row['model']} | {lv['clients']} | {lv['requests_per_s']:.1f} | {lv['p50_ms']:.0f} | "
                f"{lv['p99_ms']:.0f} | {lv['server_peak_rss_mib']:.0f} | {lv['identical_topk_share']:.0%} |"
            )
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", type=Path, help="(a) a trained model folder")
    ap.add_argument("--sid-index", type=Path, help="(a) its quantize-sids folder")
    ap.add_argument("--dataset", type=Path, help="(a) its preprocess folder")
    ap.add_argument("--no-bench-model", action="store_true", help="leave out (b), eval_bench's model")
    ap.add_argument("--users", type=int, default=64, help="test samples sent (cycled)")
    ap.add_argument("--requests", type=int, default=96, help="requests per concurrency level")
    ap.add_argument("--clients", default="1,8,32", help="concurrency levels")
    ap.add_argument("--set", dest="sets", action="append", default=[], help="config override for server and evaluate")
    ap.add_argument("--out", default="benchmarks/out/serve_bench.json")
    args = ap.parse_args()
    args.clients = [int(c) for c in args.clients.split(",")]
    if args.model and not (args.sid_index and args.dataset):
        ap.error("--model needs --sid-index and --dataset")
    rows = []
    with tempfile.TemporaryDirectory(prefix="serve-bench-") as tmp:
        work = Path(tmp)
        if args.model:
            rows.append(run_setup(f"given: {args.model}", (args.model, args.sid_index, args.dataset), args, work))
        if not args.no_bench_model:
            folders, parameters = bench_model_folders(work / "bench", args.users)
            rows.append(run_setup(f"eval_bench {parameters / 1e6:.1f}M random init", folders, args, work))
    cfg = config.load("demo", args.sets)
    result = {
        "cpu_count": os.cpu_count(),
        "serve": {"max_batch": cfg.serve.max_batch, "max_wait_ms": cfg.serve.max_wait_ms},
        "eval": {"num_beams": cfg.eval.beams, "batch_size": cfg.eval.batch_size, "decoding": cfg.eval.decoding},
        "sets": args.sets,
        "rows": rows,
    }
    print(json.dumps(result["serve"]), json.dumps(result["eval"]))
    print(table(rows))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
