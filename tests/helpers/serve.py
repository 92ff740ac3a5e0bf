"""The model server as a real process on 127.0.0.1 (`sidreasoner serve`), and reading its /metrics."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pandas as pd


def add_item_ids(dataset: Path) -> list[str]:
    """Give a dataset folder's items their own ids (the `asin` column: "I0007" for item 7); returns them."""
    items = pd.read_parquet(dataset / "items.parquet")
    items["asin"] = [f"I{int(i):04d}" for i in items["item_id"]]
    items.to_parquet(dataset / "items.parquet")
    return items["asin"].tolist()


class ServerProcess:
    """`sidreasoner serve` started with `args` on 127.0.0.1:port; its output goes to `log`."""

    def __init__(self, args: list[str], port: int, name: str, log: Path):
        self.url, self.name, self.log = f"http://127.0.0.1:{port}", name, log
        cmd = [sys.executable, "-m", "sidreasoner.cli", "serve", *args, "--host", "127.0.0.1", "--port", str(port)]
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"the server exited with {self.proc.returncode}:\n{self.output()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/v1/models/{self.name}", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"the server did not become ready within {timeout}s:\n{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def predict(self, instances, timeout: float = 120.0) -> httpx.Response:
        return httpx.post(f"{self.url}/v1/models/{self.name}:predict", json={"instances": instances}, timeout=timeout)

    def infer(self, inputs: list[dict], timeout: float = 120.0) -> httpx.Response:
        return httpx.post(f"{self.url}/v2/models/{self.name}/infer", json={"inputs": inputs}, timeout=timeout)

    def terminate(self) -> None:
        self.proc.send_signal(signal.SIGTERM)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def histogram_buckets(metrics_text: str, name: str) -> dict[float, float]:
    """{upper bound: cumulative count} of a Prometheus histogram in /metrics text (labels summed)."""
    out: dict[float, float] = {}
    for line in metrics_text.splitlines():
        m = re.match(rf"{re.escape(name)}_bucket\{{(.*)\}} (\S+)$", line)
        if m:
            le = re.search(r'le="([^"]+)"', m.group(1)).group(1)
            bound = float("inf") if le == "+Inf" else float(le)
            out[bound] = out.get(bound, 0.0) + float(m.group(2))
    return out


def batches_above_one(metrics_text: str, name: str = "sidreasoner_serve_batch_size") -> float:
    """How many decoder calls had more than one instance."""
    buckets = histogram_buckets(metrics_text, name)
    return buckets.get(float("inf"), 0.0) - buckets.get(1.0, 0.0)
