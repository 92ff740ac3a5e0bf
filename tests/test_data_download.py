"""download-data: sources, category checks, raw folders, and HTTP resume against a real local server."""

from __future__ import annotations

import gzip
import http.server
import json
import threading

import pyarrow.parquet as pq
import pytest

from sidreasoner.config import load
from sidreasoner.data.download import DownloadError, download_data, http_download
from sidreasoner.data.preprocess import preprocess

PAYLOAD = bytes(range(256)) * 40  # 10240 bytes


class Server:
    """A 127.0.0.1 file server with byte ranges; `mode` = normal | truncate | ignore_range."""

    def __init__(self, files):
        self.files, self.mode, self.range_headers = files, "normal", []
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                outer.range_headers.append(self.headers.get("Range"))
                start, status = 0, 200
                rng = self.headers.get("Range")
                if rng and outer.mode != "ignore_range":
                    start, status = int(rng.removeprefix("bytes=").split("-")[0]), 206
                    if start >= len(body):
                        self.send_error(416)
                        return
                self.send_response(status)
                self.send_header("Content-Length", str(len(body) - start))
                if status == 206:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                chunk = body[start:]
                self.wfile.write(chunk[: len(chunk) // 2] if outer.mode == "truncate" else chunk)
                self.close_connection = True

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.fixture
def server():
    srv = Server({"/f.bin": PAYLOAD})
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()


def test_fresh_download_then_cached(server, tmp_path):
    got = http_download(f"{server.url}/f.bin", tmp_path)
    assert (got.path, got.bytes_downloaded, got.resumed) == (tmp_path / "f.bin", 10240, False)
    assert got.path.read_bytes() == PAYLOAD and not (tmp_path / "f.bin.part").exists()
    again = http_download(f"{server.url}/f.bin", tmp_path)
    assert again.bytes_downloaded == 0 and server.range_headers == [None]


def test_resume_from_part(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
    got = http_download(f"{server.url}/f.bin", tmp_path)
    assert (got.bytes_downloaded, got.resumed) == (9240, True)
    assert server.range_headers == ["bytes=1000-"]
    assert got.path.read_bytes() == PAYLOAD and not (tmp_path / "f.bin.part").exists()


def test_truncated_response_fails_keeps_part_then_resumes(server, tmp_path):
    server.mode = "truncate"
    with pytest.raises(DownloadError, match=r"f\.bin.*5120 bytes kept in .*f\.bin\.part|got 5120 of 10240"):
        http_download(f"{server.url}/f.bin", tmp_path)
    assert not (tmp_path / "f.bin").exists()
    assert (tmp_path / "f.bin.part").read_bytes() == PAYLOAD[:5120]
    server.mode = "normal"
    got = http_download(f"{server.url}/f.bin", tmp_path)
    assert got.resumed and got.bytes_downloaded == 5120 and got.path.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts(server, tmp_path):
    server.mode = "ignore_range"
    (tmp_path / "f.bin.part").write_bytes(b"garbage" * 10)
    got = http_download(f"{server.url}/f.bin", tmp_path)
    assert (got.bytes_downloaded, got.resumed) == (10240, False) and got.path.read_bytes() == PAYLOAD


def test_http_error_names_url(server, tmp_path):
    with pytest.raises(DownloadError, match=r"/missing\.bin: HTTP 404"):
        http_download(f"{server.url}/missing.bin", tmp_path)


def _gz_lines(records):
    return gzip.compress(("\n".join(json.dumps(r) for r in records) + "\n").encode())


def test_amazon2018_download_from_local_mirror(tmp_path):
    reviews = _gz_lines([{"reviewerID": "U", "asin": "A", "overall": 5.0, "unixReviewTime": 1}])
    meta = _gz_lines([{"asin": "A", "title": "T"}])
    srv = Server({"/categoryFilesSmall/Software_5.json.gz": reviews, "/metaFiles2/meta_Software.json.gz": meta})
    try:
        cfg = load("demo", ["data.source=amazon2018", "data.category=Software", "data.five_core=true",
                            f"data.base_url={srv.url}", f"data.cache_dir={tmp_path / 'cache'}"])
        m = download_data(cfg, tmp_path / "raw")
    finally:
        srv.httpd.shutdown()
        srv.httpd.server_close()
    assert m["bytes_downloaded"] == len(reviews) + len(meta) and m["files"] == 2 and m["resumed"] == 0
    manifest = json.loads((tmp_path / "raw/manifest.json").read_text())
    assert (manifest["format"], manifest["reviews"], manifest["meta"]) == ("amazon2018", "Software_5.json.gz", "meta_Software.json.gz")
    assert (tmp_path / "raw/Software_5.json.gz").read_bytes() == reviews
    assert (tmp_path / "cache/amazon2018/Software_5.json.gz").is_file()


@pytest.mark.parametrize("source, allowed", [("amazon2018", "Video_Games"), ("amazon2023", "Baby_Products")])
def test_unknown_category_lists_allowed_before_network(tmp_path, source, allowed):
    cfg = load("demo", [f"data.source={source}", "data.category=Office", "data.base_url=http://127.0.0.1:9"])
    with pytest.raises(DownloadError, match=rf"unknown {source} category 'Office'.*{allowed}"):
        download_data(cfg, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_unknown_scheme_lists_supported(tmp_path):
    with pytest.raises(DownloadError, match=r"unsupported scheme ftp://.*s3://, minio://, gs://"):
        download_data(load("demo", ["data.source=ftp://host/raw"]), tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    # bucket sources (s3://, minio://, gs://) are tested against real local servers in test_storage_*.py


def test_folder_missing_files_names_folder_expected_and_present(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "Tiny.json.gz").write_bytes(b"")
    (tmp_path / "src" / "notes.txt").write_text("x")
    cfg = load("demo", [f"data.source=file://{tmp_path / 'src'}", "data.category=Tiny"])
    with pytest.raises(DownloadError) as err:
        download_data(cfg, tmp_path / "raw")
    msg = str(err.value)
    assert str(tmp_path / "src") in msg and "meta_Tiny.json.gz" in msg and "'notes.txt'" in msg
    assert not (tmp_path / "raw").exists()


def test_amazon2023_folder_source_end_to_end(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    ms = 1_600_000_000_000
    reviews = [{"user_id": f"U{u}", "parent_asin": f"P{i}", "asin": f"P{i}-x", "rating": 4.0,
                "timestamp": ms + (u + 10 * i) * 86_400_000} for u in range(4) for i in range(4)]
    meta = [{"parent_asin": f"P{i}", "title": f"Item &amp; {i}", "description": [], "features": [f"feat {i}"],
             "store": "Shop", "categories": ["Cat"]} for i in range(4)]
    (src / "Tiny.jsonl").write_text("\n".join(json.dumps(r) for r in reviews) + "\n")
    (src / "meta_Tiny.jsonl.gz").write_bytes(_gz_lines(meta))
    cfg = load("demo", [f"data.source={src}", "data.format=amazon2023", "data.category=Tiny", "data.k_core=2",
                        "data.min_samples=1"])
    download_data(cfg, tmp_path / "raw")
    assert json.loads((tmp_path / "raw/manifest.json").read_text())["meta"] == "meta_Tiny.jsonl.gz"
    m = preprocess(cfg, tmp_path / "raw", tmp_path / "data")
    assert (m["users"], m["items"], m["samples_train"], m["samples_valid"], m["samples_test"]) == (4, 4, 9, 1, 2)
    inter = pq.read_table(tmp_path / "data/interactions.parquet").to_pydict()
    assert inter["timestamp"][:2] == [1_600_000_000, 1_600_000_000 + 10 * 86_400]
    items = pq.read_table(tmp_path / "data/items.parquet").to_pylist()
    assert (items[2]["title"], items[2]["description"], items[2]["brand"]) == ("Item & 2", "feat 2", "Shop")
