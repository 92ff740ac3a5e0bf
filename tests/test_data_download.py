"""download-data: sources, category checks, raw folders, and HTTP resume against a real local server."""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time

import pytest

from sidreasoner.artifacts import Dataset, RawData
from sidreasoner.config import load
from sidreasoner.data.download import DownloadError, download_data, http_download
from sidreasoner.data.preprocess import preprocess
from sidreasoner.io import atomic_dir, atomic_file, locked

PAYLOAD = bytes(range(256)) * 40  # 10240 bytes


@pytest.fixture
def server(flaky_http):
    return flaky_http({"/f.bin": PAYLOAD})


def _ranges(server):
    return [rng for _, rng, _ in server.requests]


def test_fresh_download_then_cached(server, tmp_path):
    got = http_download(f"{server.url}/f.bin", tmp_path)
    assert (got.path, got.bytes_downloaded, got.resumed) == (tmp_path / "f.bin", 10240, False)
    assert got.path.read_bytes() == PAYLOAD and not (tmp_path / "f.bin.part").exists()
    assert json.loads((tmp_path / "f.bin.manifest.json").read_text()) == {
        "url": f"{server.url}/f.bin",
        "bytes": 10240,
        "sha256": hashlib.sha256(PAYLOAD).hexdigest(),
    }
    again = http_download(f"{server.url}/f.bin", tmp_path)
    assert again.bytes_downloaded == 0 and _ranges(server) == [None]


def test_resume_from_part(server, tmp_path):
    (tmp_path / "f.bin.part").write_bytes(PAYLOAD[:1000])
    got = http_download(f"{server.url}/f.bin", tmp_path)
    assert (got.bytes_downloaded, got.resumed) == (9240, True)
    assert _ranges(server) == ["bytes=1000-"]
    assert got.path.read_bytes() == PAYLOAD and not (tmp_path / "f.bin.part").exists()


def test_truncated_response_fails_keeps_part_then_resumes(server, tmp_path):
    server.mode = "truncate"
    with pytest.raises(DownloadError, match=r"f\.bin: .*5120 bytes kept in .*f\.bin\.part, run again to resume"):
        http_download(f"{server.url}/f.bin", tmp_path, attempts=1)
    assert not (tmp_path / "f.bin").exists()
    assert (tmp_path / "f.bin.part").read_bytes() == PAYLOAD[:5120]
    server.mode = "normal"
    got = http_download(f"{server.url}/f.bin", tmp_path)
    assert got.resumed and got.bytes_downloaded == 5120 and got.path.read_bytes() == PAYLOAD


def test_cut_responses_are_resumed_within_one_run(server, tmp_path):
    server.plan = ["truncate", "truncate"]
    got = http_download(f"{server.url}/f.bin", tmp_path, attempts=3, backoff_s=0)
    assert got.path.read_bytes() == PAYLOAD and (got.bytes_downloaded, got.resumed) == (10240, True)
    assert _ranges(server) == [None, "bytes=5120-", "bytes=7680-"]


def test_stalled_response_times_out_and_is_resumed(server, tmp_path):
    server.plan, server.stall_s = ["stall"], 10
    started = time.monotonic()
    got = http_download(f"{server.url}/f.bin", tmp_path, timeout=0.5, attempts=2, backoff_s=0)
    assert got.path.read_bytes() == PAYLOAD and len(server.requests) == 2 and time.monotonic() - started < 5


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


def test_amazon2018_download_from_local_mirror(tmp_path, flaky_http):
    reviews = _gz_lines([{"reviewerID": "U", "asin": "A", "overall": 5.0, "unixReviewTime": 1}])
    meta = _gz_lines([{"asin": "A", "title": "T"}])
    srv = flaky_http({"/categoryFilesSmall/Software_5.json.gz": reviews, "/metaFiles2/meta_Software.json.gz": meta})
    cfg = load(
        "demo",
        [
            "data.source=amazon2018",
            "data.category=Software",
            "data.five_core=true",
            f"data.base_url={srv.url}",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
    )
    m = download_data(cfg, tmp_path / "raw")
    assert m["bytes_downloaded"] == len(reviews) + len(meta) and m["files"] == 2 and m["resumed"] == 0
    manifest = RawData.at(tmp_path / "raw").manifest()
    assert (manifest["format"], manifest["reviews"], manifest["meta"]) == (
        "amazon2018",
        "Software_5.json.gz",
        "meta_Software.json.gz",
    )
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
    reviews = [
        {
            "user_id": f"U{u}",
            "parent_asin": f"P{i}",
            "asin": f"P{i}-x",
            "rating": 4.0,
            "timestamp": ms + (u + 10 * i) * 86_400_000,
        }
        for u in range(4)
        for i in range(4)
    ]
    meta = [
        {
            "parent_asin": f"P{i}",
            "title": f"Item &amp; {i}",
            "description": [],
            "features": [f"feat {i}"],
            "store": "Shop",
            "categories": ["Cat"],
        }
        for i in range(4)
    ]
    (src / "Tiny.jsonl").write_text("\n".join(json.dumps(r) for r in reviews) + "\n")
    (src / "meta_Tiny.jsonl.gz").write_bytes(_gz_lines(meta))
    cfg = load(
        "demo",
        [f"data.source={src}", "data.format=amazon2023", "data.category=Tiny", "data.k_core=2", "data.min_samples=1"],
    )
    download_data(cfg, tmp_path / "raw")
    assert RawData.at(tmp_path / "raw").manifest()["meta"] == "meta_Tiny.jsonl.gz"
    m = preprocess(cfg, tmp_path / "raw", tmp_path / "data")
    assert (m["users"], m["items"], m["samples_train"], m["samples_valid"], m["samples_test"]) == (4, 4, 9, 1, 2)
    inter = Dataset.at(tmp_path / "data").read_table(Dataset.INTERACTIONS).to_pydict()
    assert inter["timestamp"][:2] == [1_600_000_000, 1_600_000_000 + 10 * 86_400]
    items = Dataset.at(tmp_path / "data").items_table().to_pylist()
    assert (items[2]["title"], items[2]["description"], items[2]["brand"]) == ("Item & 2", "feat 2", "Shop")


# ---------------------------------------------------------------- what arrived is checked before it is cached

_RNG = random.Random(0)
REVIEWS = _gz_lines(
    [
        {
            "reviewerID": f"U{i}",
            "asin": f"A{i % 7}",
            "overall": 5.0,
            "unixReviewTime": i,
            "summary": f"{_RNG.getrandbits(128):032x}",
        }
        for i in range(2000)
    ]
)  # about 60 KB
META = _gz_lines([{"asin": f"A{i}", "title": f"T{i}"} for i in range(7)])
MIRROR = {"/categoryFilesSmall/Software_5.json.gz": REVIEWS, "/metaFiles2/meta_Software.json.gz": META}
REVIEWS_URL = "/categoryFilesSmall/Software_5.json.gz"


def _cached(cache):
    """The cache folder's files (no lock files), name -> bytes."""
    return {p.name: p.read_bytes() for p in cache.iterdir() if not p.name.endswith(".lock")}


def test_cut_download_without_content_length_is_not_cached(flaky_http, tmp_path):
    srv = flaky_http(MIRROR)
    srv.mode = "no_length_cut"
    with pytest.raises(
        DownloadError,
        match=r"Software_5\.json\.gz: the gzip stream ends before its end marker "
        r"\(the download was cut\); \d+ bytes kept in .*\.part, run again",
    ):
        http_download(srv.url + REVIEWS_URL, tmp_path, attempts=1)
    assert list(_cached(tmp_path)) == ["Software_5.json.gz.part"]
    srv.mode = "no_length"  # the next run: a whole body, still without Content-Length
    got = http_download(srv.url + REVIEWS_URL, tmp_path)
    assert got.path.read_bytes() == REVIEWS and set(_cached(tmp_path)) == {
        "Software_5.json.gz",
        "Software_5.json.gz.manifest.json",
    }


def test_step_cut_without_content_length_fails_and_keeps_nothing(flaky_http, tmp_path):
    srv = flaky_http(MIRROR)
    srv.mode = "no_length_cut"
    cfg = load(
        "demo",
        [
            "data.source=amazon2018",
            "data.category=Software",
            "data.five_core=true",
            f"data.base_url={srv.url}",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
    )
    with pytest.raises(DownloadError, match="ends before its end marker"):
        download_data(cfg, tmp_path / "raw")
    assert not (tmp_path / "raw").exists() and not (tmp_path / "cache/amazon2018/Software_5.json.gz").exists()


def test_html_login_page_is_refused(flaky_http, tmp_path):
    srv = flaky_http(MIRROR)
    srv.mode = "html"
    with pytest.raises(
        DownloadError,
        match=r"Software_5\.json\.gz: the server sent an HTML page \(Content-Type "
        r"text/html; charset=utf-8\).*\(data\.base_url\); nothing was cached",
    ):
        http_download(srv.url + REVIEWS_URL, tmp_path)
    assert _cached(tmp_path) == {} and srv.count(REVIEWS_URL) == 1  # a login page is not retried


@pytest.mark.parametrize(
    "body, reason",
    [
        (
            b"<!DOCTYPE html><html>Please log in</html>",
            r"an HTML page where gzip was expected \(starts with b'<!DOCTYPE",
        ),
        (gzip.compress(b"<html>Please log in</html>"), r"not JSON lines \(starts with b'<html>"),
        (REVIEWS[:-8] + bytes(8), r"corrupt gzip data \(CRC check failed"),
    ],
)
def test_wrong_or_corrupt_body_with_right_length_is_not_cached(flaky_http, tmp_path, body, reason):
    srv = flaky_http({REVIEWS_URL: body})
    with pytest.raises(DownloadError, match=rf"Software_5\.json\.gz: {reason}.*; nothing was cached"):
        http_download(srv.url + REVIEWS_URL, tmp_path, attempts=2, backoff_s=0)
    assert _cached(tmp_path) == {} and srv.count(REVIEWS_URL) == 2


def _b64(digest: bytes) -> str:
    return base64.b64encode(digest).decode()


@pytest.mark.parametrize("header", ["x-goog-hash", "Repr-Digest"])
def test_published_digest_is_checked(flaky_http, tmp_path, header):
    srv = flaky_http(MIRROR)
    published = {
        "x-goog-hash": lambda body: f"crc32c=AAAAAA==,md5={_b64(hashlib.md5(body).digest())}",
        "Repr-Digest": lambda body: f"sha-256=:{_b64(hashlib.sha256(body).digest())}:",
    }[header]
    srv.headers[REVIEWS_URL] = {header: published(META)}  # what another file would have
    with pytest.raises(
        DownloadError,
        match=r"Software_5\.json\.gz: (md5|sha256) [0-9a-f]+ differs from the "
        r"published [0-9a-f]+; nothing was cached",
    ):
        http_download(srv.url + REVIEWS_URL, tmp_path, attempts=1)
    assert _cached(tmp_path) == {}
    srv.headers[REVIEWS_URL] = {header: published(REVIEWS)}
    assert http_download(srv.url + REVIEWS_URL, tmp_path).path.read_bytes() == REVIEWS


def test_gzip_cut_on_the_server_is_reported_not_retried(flaky_http, tmp_path):
    srv = flaky_http({REVIEWS_URL: REVIEWS[: len(REVIEWS) // 2]})  # served whole, with its Content-Length
    with pytest.raises(
        DownloadError,
        match=r"ends before its end marker \(the download was cut\), although it "
        r"has the size the server announced: the file on the server is damaged",
    ):
        http_download(srv.url + REVIEWS_URL, tmp_path)
    assert _cached(tmp_path) == {} and srv.count(REVIEWS_URL) == 1


def test_whole_part_left_by_a_killed_run_is_checked_not_downloaded_again(flaky_http, tmp_path):
    srv = flaky_http(MIRROR)
    (tmp_path / "Software_5.json.gz.part").write_bytes(REVIEWS)
    got = http_download(srv.url + REVIEWS_URL, tmp_path)
    assert got.bytes_downloaded == 0 and got.path.read_bytes() == REVIEWS
    assert [rng for _, rng, _ in srv.requests] == [f"bytes={len(REVIEWS)}-"]


# ---------------------------------------------------------------- a cached file is re-checked before reuse


def test_cached_file_that_no_longer_matches_its_manifest_is_downloaded_again(flaky_http, tmp_path):
    srv = flaky_http(MIRROR)
    http_download(srv.url + REVIEWS_URL, tmp_path)
    cached = tmp_path / "Software_5.json.gz"
    for damaged in (REVIEWS[:100] + b"X" + REVIEWS[101:], REVIEWS + REVIEWS[:50]):  # same size; appended to
        cached.write_bytes(damaged)
        got = http_download(srv.url + REVIEWS_URL, tmp_path)
        assert got.bytes_downloaded == len(REVIEWS) and cached.read_bytes() == REVIEWS
    assert srv.count(REVIEWS_URL) == 3


def test_cached_file_without_manifest_is_checked_before_reuse(flaky_http, tmp_path):
    srv = flaky_http(MIRROR)
    (tmp_path / "Software_5.json.gz").write_bytes(REVIEWS[: len(REVIEWS) // 2])  # an older run's cut file
    got = http_download(srv.url + REVIEWS_URL, tmp_path)
    assert got.bytes_downloaded == len(REVIEWS) and got.path.read_bytes() == REVIEWS
    (tmp_path / "Software_5.json.gz.manifest.json").unlink()  # a whole file without one is kept
    assert http_download(srv.url + REVIEWS_URL, tmp_path).bytes_downloaded == 0 and srv.count(REVIEWS_URL) == 1
    assert json.loads((tmp_path / "Software_5.json.gz.manifest.json").read_text())["bytes"] == len(REVIEWS)


# ---------------------------------------------------------------- runs sharing one cache (real processes)


def _step(raw, url, cache, *, stdout=subprocess.PIPE, stderr=subprocess.PIPE):
    """`sidreasoner step download-data` for Software (5-core) from the mirror at `url`, as a process."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sidreasoner.cli",
            "step",
            "download-data",
            "--raw",
            str(raw),
            "-s",
            "data.source=amazon2018",
            "-s",
            "data.category=Software",
            "-s",
            "data.five_core=true",
            "-s",
            f"data.base_url={url}",
            "-s",
            f"data.cache_dir={cache}",
        ],
        stdout=stdout,
        stderr=stderr,
        text=True,
    )


def _wait_for(predicate, timeout_s=30.0):
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _verify_raw(raw):
    """The raw folder's files match its manifest and hold exactly what the mirror serves."""
    manifest = RawData.at(raw).manifest()
    for name, want in manifest["files"].items():
        body = (raw / name).read_bytes()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (want["bytes"], want["sha256"])
    assert (raw / "Software_5.json.gz").read_bytes() == REVIEWS and (raw / "meta_Software.json.gz").read_bytes() == META


def test_two_runs_sharing_a_cache_both_finish_with_whole_files(flaky_http, tmp_path):
    srv = flaky_http(MIRROR)
    srv.plan, srv.stall_s = ["stall"], 60  # the first run's review file stalls halfway until the second one waits
    cache = tmp_path / "cache"
    first = _step(tmp_path / "raw1", srv.url, cache)
    _wait_for(lambda: srv.requests)
    second = _step(tmp_path / "raw2", srv.url, cache)
    waited = next((line for line in iter(second.stderr.readline, "") if "waiting" in line), "")
    srv.end_stalls.set()
    errs = [proc.communicate(timeout=60)[1] for proc in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], errs
    assert "waiting for another run downloading" in waited and waited.rstrip().endswith("Software_5.json.gz")
    _verify_raw(tmp_path / "raw1")
    _verify_raw(tmp_path / "raw2")
    assert _cached(cache / "amazon2018")["Software_5.json.gz"] == REVIEWS
    assert srv.count(REVIEWS_URL) == 1  # the second run reused the first one's file


# ---------------------------------------------------------------- temp folders of killed steps


def _temps(folder, name):
    return sorted(p.name for p in folder.iterdir() if p.name.startswith(f".{name}.tmp-"))


def test_killed_step_leaves_temp_folder_that_the_next_run_removes(flaky_http, tmp_path):
    srv = flaky_http(MIRROR)
    srv.mode, srv.stall_s = "stall", 60
    cache, part = tmp_path / "cache", tmp_path / "cache/amazon2018/Software_5.json.gz.part"
    proc = _step(tmp_path / "raw", srv.url, cache)
    _wait_for(lambda: part.is_file() and srv.requests)
    time.sleep(0.2)  # into the stall
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (tmp_path / _temps(tmp_path, "raw")[0]).is_dir()
    srv.mode = "normal"
    rerun = _step(tmp_path / "raw", srv.url, cache)
    _, err = rerun.communicate(timeout=60)
    assert rerun.returncode == 0, err[-2000:]
    _verify_raw(tmp_path / "raw")
    assert _temps(tmp_path, "raw") == [] and sorted(p.name for p in tmp_path.iterdir()) == ["cache", "raw"]


LIVE_WRITER = """
import sys
from sidreasoner.io import atomic_dir, locked
with atomic_dir(sys.argv[1]) as tmp:
    (tmp / "mine.txt").write_text("live")
    print("ready", flush=True)
    sys.stdin.readline()
"""


def test_next_writer_removes_dead_temps_and_keeps_a_live_writers(tmp_path):
    live = subprocess.Popen(
        [sys.executable, "-c", LIVE_WRITER, str(tmp_path / "out")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert live.stdout.readline() == "ready\n"
        (tmp_path / ".out.tmp-legacy").mkdir()  # left by a writer without lock files
        (tmp_path / ".out.tmp-legacy" / "shard.bin").write_bytes(b"x")
        live_tmp = next(p for p in tmp_path.glob(".out.tmp-*") if p.is_dir() and p.name != ".out.tmp-legacy")
        with atomic_dir(tmp_path / "out") as tmp:
            (tmp / "theirs.txt").write_text("next")
        assert not (tmp_path / ".out.tmp-legacy").exists() and (live_tmp / "mine.txt").read_text() == "live"
        assert [p.name for p in (tmp_path / "out").iterdir()] == ["theirs.txt"]
    finally:
        live.communicate("done\n", timeout=30)
    assert live.returncode == 0 and _temps(tmp_path, "out") == []
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["mine.txt"]


FILE_WRITER = """
import sys
from sidreasoner.io import atomic_file
with atomic_file(sys.argv[1]) as tmp:
    tmp.write_text(sys.argv[2])
    print("ready", flush=True)
    sys.stdin.readline()
"""


def _file_writer(path, text):
    proc = subprocess.Popen(
        [sys.executable, "-c", FILE_WRITER, str(path), text], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline() == "ready\n"
    return proc


def test_next_file_writer_removes_a_killed_writers_temp_and_keeps_a_live_writers(tmp_path):
    dead = _file_writer(tmp_path / "metrics.json", "dead")
    dead.send_signal(signal.SIGKILL)
    dead.wait()
    left = _temps(tmp_path, "metrics.json")
    assert len(left) == 2 and left[1] == left[0] + ".lock"  # the half-written file and its lock
    live = _file_writer(tmp_path / "metrics.json", "live")
    try:
        live_tmp = [name for name in _temps(tmp_path, "metrics.json") if not name.endswith(".lock")]
        assert live_tmp != left[:1] and len(live_tmp) == 1  # the dead writer's temp went when the live one began
        with atomic_file(tmp_path / "metrics.json") as tmp:
            tmp.write_text("next")
        assert (tmp_path / live_tmp[0]).read_text() == "live"
        assert (tmp_path / "metrics.json").read_text() == "next"
    finally:
        live.communicate("done\n", timeout=30)
    assert live.returncode == 0 and _temps(tmp_path, "metrics.json") == []
    assert (tmp_path / "metrics.json").read_text() == "live"


# ---------------------------------------------------------------- soak: many runs, one cache, a flaky mirror

SERVED = {path.rsplit("/", 1)[-1]: body for path, body in MIRROR.items()}


def _spoil_cache(cache, rng):
    """What a cache on a shared volume may meet between runs, done under the file's lock like a careful
    cleaner: the file evicted, or replaced by a cut or padded copy (an older version's poisoned cache)."""
    for name, body in SERVED.items():
        with locked(cache / f".{name}.lock"):
            kind = rng.choice(["keep", "keep", "evict", "cut", "padded"])
            if kind == "evict":
                (cache / name).unlink(missing_ok=True)
            elif kind != "keep" and (cache / name).is_file():
                bad = body[: len(body) // 2] if kind == "cut" else body + b"\0" * 10
                (cache / "spoiled").write_bytes(bad)
                os.replace(cache / "spoiled", cache / name)  # a new file: finished runs' links keep theirs


@pytest.mark.slow
def test_soak_runs_sharing_a_cache_against_a_flaky_mirror(flaky_http, tmp_path):
    """20 download-data processes (at most 5 at a time, 3 of them SIGKILLed midway) share one cache while the
    mirror cuts, stalls, drops Content-Length and answers login pages at random, and the cache is evicted or
    spoiled between launches. Every run that finishes holds exactly the served files; every other run says
    why in one line; the cache holds no bad file."""
    rng = random.Random(7)
    srv = flaky_http(MIRROR, seed=7)
    srv.random_modes = ("normal",) * 5 + (
        "truncate",
        "ignore_range",
        "no_length",
        "no_length_cut",
        "stall",
        "stall_cut",
        "html",
    )
    srv.piece, srv.piece_delay_s, srv.stall_s = 8192, 0.02, 0.5
    cache, started, running, results = tmp_path / "cache", time.monotonic(), {}, {}
    (cache / "amazon2018").mkdir(parents=True)
    to_kill = set(rng.sample(range(20), 3))
    for i in range(20):
        while len(running) >= 5:
            _reap(running, results)
        _spoil_cache(cache / "amazon2018", rng)
        err = open(tmp_path / f"err{i}.txt", "w+")  # noqa: SIM115 - closed by _reap when the run ends
        running[i] = (
            _step(tmp_path / f"raw{i}", srv.url, cache, stdout=subprocess.DEVNULL, stderr=err),
            time.monotonic(),
            err,
        )
        if i in to_kill:
            time.sleep(rng.uniform(0.3, 1.2))
            running[i][0].send_signal(signal.SIGKILL)
        time.sleep(rng.uniform(0, 0.2))
    while running:
        _reap(running, results)
    assert time.monotonic() - started < 180
    finished = [i for i, (code, _) in results.items() if code == 0]
    for i, (code, err) in results.items():
        assert code in (0, 1, -signal.SIGKILL) and "Traceback" not in err, err[-3000:]
        if code == 1:
            assert err.rstrip().splitlines()[-1].startswith("error: download-data: http://127.0.0.1"), err[-2000:]
        if code == 0:
            _verify_raw(tmp_path / f"raw{i}")
        elif code == -signal.SIGKILL and (tmp_path / f"raw{i}").exists():
            _verify_raw(tmp_path / f"raw{i}")  # killed after its folder was renamed into place: whole, never half
        else:
            assert not (tmp_path / f"raw{i}").exists()
    assert len(finished) >= 10, {i: r[1][-300:] for i, r in results.items() if r[0] == 1}
    for path in (cache / "amazon2018").iterdir():
        if path.name in SERVED:
            manifest = json.loads(path.with_name(path.name + ".manifest.json").read_text())
            assert path.read_bytes() == SERVED[path.name]
            assert (manifest["bytes"], manifest["sha256"]) == (
                len(SERVED[path.name]),
                hashlib.sha256(SERVED[path.name]).hexdigest(),
            )
        else:
            assert path.name.endswith((".manifest.json", ".part", ".lock")), path.name
    faulty = sum(mode != "normal" for _, _, mode in srv.requests)
    print(
        f"soak: {len(finished)} of 20 finished, {len(results) - len(finished) - len(to_kill)} failed, "
        f"{len(to_kill)} killed; {len(srv.requests)} requests ({faulty} faulty); {time.monotonic() - started:.1f} s"
    )


def _reap(running, results, timeout_s=90.0):
    """Wait a moment for the running processes {i: (process, start, stderr file)}; record each finished
    one's (exit code, stderr) in `results`."""
    time.sleep(0.05)
    for i, (proc, since, err) in list(running.items()):
        if proc.poll() is None:
            assert time.monotonic() - since < timeout_s, f"run {i} hangs"
            continue
        err.seek(0)
        results[i] = (proc.returncode, err.read())
        err.close()
        del running[i]


# ---------------------------------------------------------------- a local data.source folder


def _tiny_source(src):
    """A data.source folder with Tiny.json (amazon2018 reviews) and meta_Tiny.json."""
    src.mkdir(parents=True)
    reviews = [
        {"reviewerID": f"U{u}", "asin": f"A{i}", "overall": 5.0, "unixReviewTime": 1_500_000_000 + u * 9 + i}
        for u in range(4)
        for i in range(4)
    ]
    (src / "Tiny.json").write_text("".join(json.dumps(r) + "\n" for r in reviews))
    (src / "meta_Tiny.json").write_text(
        "".join(json.dumps({"asin": f"A{i}", "title": f"T {i}"}) + "\n" for i in range(4))
    )
    return src


def _folder_cfg(src):
    return load(
        "demo",
        [
            f"data.source={src}",
            "data.category=Tiny",
            "data.five_core=false",
            "data.k_core=2",
            "data.min_samples=1",
            "data.time_window.start=null",
        ],
    )


def test_a_symlink_out_of_the_source_folder_is_refused_and_never_read(tmp_path):
    secret = tmp_path / "private" / "credentials.json"
    secret.parent.mkdir()
    secret.write_text("TOKEN=hunter2\n")
    secret.chmod(0o600)
    src = _tiny_source(tmp_path / "src")
    (src / "meta_Tiny.json").unlink()
    (src / "meta_Tiny.json").symlink_to(secret)
    with pytest.raises(DownloadError) as err:
        download_data(_folder_cfg(src), tmp_path / "raw")
    assert str(err.value) == (
        f"data.source: {src / 'meta_Tiny.json'} is a symbolic link to {secret}, outside {src}; "
        "only files inside the folder are read (copy the file there)"
    )
    assert not (tmp_path / "raw").exists() and "hunter2" not in str(err.value)

    (src / "meta_Tiny.json").unlink()  # a link that stays inside the folder is read, as a copy
    (src / "versions").mkdir()
    (src / "versions" / "meta_v2.json").write_text(json.dumps({"asin": "A1", "title": "T"}) + "\n")
    (src / "meta_Tiny.json").symlink_to("versions/meta_v2.json")
    download_data(_folder_cfg(src), tmp_path / "raw")
    assert not (tmp_path / "raw" / "meta_Tiny.json").is_symlink()
    assert (tmp_path / "raw" / "meta_Tiny.json").read_text() == (src / "versions" / "meta_v2.json").read_text()


def test_a_source_file_changed_after_download_leaves_the_artifact_as_its_manifest_says(tmp_path):
    src = _tiny_source(tmp_path / "src")
    cfg = _folder_cfg(src)
    download_data(cfg, tmp_path / "raw")
    raw = tmp_path / "raw"
    with open(src / "Tiny.json", "a") as fh:  # the user adds reviews after the step finished
        fh.write(json.dumps({"reviewerID": "U9", "asin": "A1", "overall": 1.0, "unixReviewTime": 1_500_000_000}) + "\n")
    for name, want in RawData.at(raw).manifest()["files"].items():
        body = (raw / name).read_bytes()
        assert (len(body), hashlib.sha256(body).hexdigest()) == (want["bytes"], want["sha256"]), name
        assert os.stat(raw / name).st_nlink == 1  # a copy, not a second name of the user's file
    assert preprocess(cfg, raw, tmp_path / "data")["users"] == 4


def test_a_symlink_out_of_a_research_bundle_folder_is_refused(tmp_path, write_research_bundle):
    bundle = write_research_bundle(tmp_path / "Amazon", "Office_Products", n_users=6, n_items=12)
    split = bundle["root"] / "index" / "Office_Products.item.json"
    elsewhere = tmp_path / "elsewhere.json"
    split.rename(elsewhere)
    split.symlink_to(elsewhere)
    cfg = load("demo", ["data.format=research", f"data.source={bundle['root']}", "data.category=Office_Products"])
    with pytest.raises(DownloadError, match=rf"{split} is a symbolic link to {elsewhere}, outside {bundle['root']}"):
        download_data(cfg, tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
