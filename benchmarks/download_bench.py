"""Download benchmark: what checking a download costs, beside the download itself.

    .venv/bin/python benchmarks/download_bench.py [--reviews 1000000] [--repeats 3]

Serves the preprocess benchmark's Amazon-2018-format review file (1M reviews, generated once under
benchmarks/out/) from a 127.0.0.1 HTTP server and times, in one run and side by side, the medians of:
a download into an empty cache (fetch, then the checks: gzip to its end marker, JSON inside, sha256),
the checks alone on the same file, and the reuse of a cached file (size and sha256 against its
manifest). Prints one JSON object.
"""

from __future__ import annotations

import argparse
import functools
import json
import shutil
import statistics
import tempfile
import threading
import time
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from preprocess_bench import CATEGORY, generate

from sidreasoner.data.download import _check_download, _verified_cache, http_download


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


def _median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--reviews", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    src = Path(generate(args.reviews, args.items)["src"])
    name = f"{CATEGORY}.json.gz"
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(src)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/{name}"
    work = Path(tempfile.mkdtemp(prefix="download-bench-"))
    try:

        def fresh_download():
            shutil.rmtree(work / "cache", ignore_errors=True)
            http_download(url, work / "cache")

        download_s = _median_seconds(fresh_download, args.repeats)
        check_s = _median_seconds(lambda: _check_download(src / name, name, {}, True), args.repeats)
        reuse_s = _median_seconds(lambda: _verified_cache(work / "cache" / name, url), args.repeats)
    finally:
        server.shutdown()
        shutil.rmtree(work, ignore_errors=True)
    size_mb = (src / name).stat().st_size / 1e6
    print(
        json.dumps(
            {
                "file_mb": round(size_mb, 1),
                "repeats": args.repeats,
                "download_with_checks_s": round(download_s, 2),
                "checks_alone_s": round(check_s, 2),
                "checks_share_of_download": round(check_s / download_s, 2),
                "cached_reuse_check_s": round(reuse_s, 2),
                "checks_mb_per_s": round(size_mb / check_s, 1),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
