"""download-data: fetch raw reviews + item metadata into the raw data artifact, with its manifest.

Sources: `demo` (built-in generator), `amazon2018` (HTTP from data.base_url), `amazon2023` (the
Hugging Face dataset repo), or a folder (`file://...`, a plain path, or a bucket folder `s3://`,
`minio://`, `gs://` read through sidreasoner.storage) holding raw files under their official names, a
research bundle, or a shop's own export (data.format interactions: the events and items tables, each a file
or a folder of part files; recbole: `.inter` and `.item` atomic files), copied under its own names. HTTP
downloads go through a cache folder that concurrent runs may share, resume from `<name>.part` with a Range
request, and never pass a short, cut or wrong file as complete.

A file of the user's own folder is copied into the artifact (a reflink where the filesystem has them), never
hard-linked, so that changing it later cannot change a finished artifact; a symbolic link there that leads out
of the folder is refused. A file of the download cache is hard-linked: the cache is this step's own, and its
files are only ever replaced by a rename, which leaves the artifact's link to the old bytes as it was.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import gzip
import hashlib
import logging
import os
import shutil
import socket
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

import requests
import urllib3
from tqdm import tqdm

from sidreasoner.artifacts import research_layout
from sidreasoner.artifacts.raw import RawData
from sidreasoner.config import AMAZON2023_REPO, Config, DataConfig
from sidreasoner.config.hf_address import is_hf_source
from sidreasoner.data.demo import generate_demo_raw
from sidreasoner.io import locked, read_json, write_json

AMAZON2018_CATEGORIES: tuple[str, ...] = (
    "AMAZON_FASHION",
    "All_Beauty",
    "Appliances",
    "Arts_Crafts_and_Sewing",
    "Automotive",
    "Books",
    "CDs_and_Vinyl",
    "Cell_Phones_and_Accessories",
    "Clothing_Shoes_and_Jewelry",
    "Digital_Music",
    "Electronics",
    "Gift_Cards",
    "Grocery_and_Gourmet_Food",
    "Home_and_Kitchen",
    "Industrial_and_Scientific",
    "Kindle_Store",
    "Luxury_Beauty",
    "Magazine_Subscriptions",
    "Movies_and_TV",
    "Musical_Instruments",
    "Office_Products",
    "Patio_Lawn_and_Garden",
    "Pet_Supplies",
    "Prime_Pantry",
    "Software",
    "Sports_and_Outdoors",
    "Tools_and_Home_Improvement",
    "Toys_and_Games",
    "Video_Games",
)
AMAZON2023_CATEGORIES: tuple[str, ...] = (
    "All_Beauty",
    "Amazon_Fashion",
    "Appliances",
    "Arts_Crafts_and_Sewing",
    "Automotive",
    "Baby_Products",
    "Beauty_and_Personal_Care",
    "Books",
    "CDs_and_Vinyl",
    "Cell_Phones_and_Accessories",
    "Clothing_Shoes_and_Jewelry",
    "Digital_Music",
    "Electronics",
    "Gift_Cards",
    "Grocery_and_Gourmet_Food",
    "Handmade_Products",
    "Health_and_Household",
    "Health_and_Personal_Care",
    "Home_and_Kitchen",
    "Industrial_and_Scientific",
    "Kindle_Store",
    "Magazine_Subscriptions",
    "Movies_and_TV",
    "Musical_Instruments",
    "Office_Products",
    "Patio_Lawn_and_Garden",
    "Pet_Supplies",
    "Software",
    "Sports_and_Outdoors",
    "Subscription_Boxes",
    "Tools_and_Home_Improvement",
    "Toys_and_Games",
    "Video_Games",
    "Unknown",
)
CHUNK = 1 << 20
log = logging.getLogger(__name__)


class DownloadError(RuntimeError):
    """A download or raw-folder lookup failed; the message names the URL/folder and what to do."""


def check_category(category: str, allowed: tuple[str, ...], source: str) -> None:
    if category not in allowed:
        raise DownloadError(f"unknown {source} category {category!r} (data.category). Allowed: {', '.join(allowed)}")


# ---------------------------------------------------------------- HTTP with resume

# Every cached file `<name>` has a manifest `<name>` + CACHE_MANIFEST_SUFFIX (url, bytes, sha256) written only
# after the download was checked (size, published digest, gzip to its end, JSON lines inside), and one lock file
# `.<name>.lock`: runs sharing the cache (a shared PVC) take turns on a file, and the `.part` a killed run
# leaves is resumed by the next one. These are the download cache's own files, not an artifact's.
CACHE_MANIFEST_SUFFIX = ".manifest.json"


@dataclass
class Fetched:
    path: Path
    bytes_downloaded: int
    resumed: bool
    sha256: str = ""


class _AttemptFailed(DownloadError):
    """One download attempt failed. keep_part: the partial file is a good prefix to resume from;
    retry: another attempt may succeed."""

    def __init__(self, reason: str, keep_part: bool, retry: bool = True):
        super().__init__(reason)
        self.reason, self.keep_part, self.retry = reason, keep_part, retry


def _expected_total(resp: requests.Response, offset: int) -> int | None:
    """Full file size from Content-Range (206) or Content-Length (200); None when not sent."""
    if resp.status_code == 206:
        crange = resp.headers.get("Content-Range", "")
        start = crange.split(" ", 1)[-1].split("-", 1)[0]
        if not start.isdigit() or int(start) != offset:
            raise _AttemptFailed(
                f"server answered Range bytes={offset}- with Content-Range {crange!r}", keep_part=True, retry=False
            )
        total = crange.rsplit("/", 1)[-1]
        if total.isdigit():
            return int(total)
    length = resp.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return None
    return int(length) + (offset if resp.status_code == 206 else 0)


def _published_digests(resp: requests.Response) -> dict[str, str]:
    """Whole-file digests the server publishes (hex by hashlib name): Repr-Digest / Digest (sha-256, md5),
    x-goog-hash md5, and Content-MD5 on a full (200) response."""
    found: dict[str, str] = {}
    fields = [resp.headers.get("Repr-Digest", ""), resp.headers.get("Digest", ""), resp.headers.get("x-goog-hash", "")]
    if resp.status_code == 200 and resp.headers.get("Content-MD5"):
        fields.append(f"md5={resp.headers['Content-MD5']}")
    for item in ",".join(fields).split(","):
        algo, _, value = item.strip().partition("=")
        algo = {"sha-256": "sha256", "md5": "md5"}.get(algo.strip().lower())
        if algo and value:
            try:
                found[algo] = base64.b64decode(value.strip().strip(":"), validate=True).hex()
            except ValueError:
                continue
    return found


@dataclass
class _Progress:
    received: int = 0  # bytes written to the partial file over all attempts
    resumed: bool = False


def _stream_to(
    resp: requests.Response, part: Path, mode: str, offset: int, total: int | None, progress: _Progress
) -> None:
    with (
        open(part, mode) as fh,
        tqdm(
            total=total, initial=offset, unit="B", unit_scale=True, desc=part.name.split(".part")[0], mininterval=2
        ) as bar,
    ):
        # Raw bytes (sizes match headers), in pieces small enough that a killed run keeps nearly all it got.
        for chunk in resp.raw.stream(1 << 16, decode_content=False):
            fh.write(chunk)
            progress.received += len(chunk)
            bar.update(len(chunk))


def _fetch_once(url: str, part: Path, timeout: float, progress: _Progress) -> tuple[dict[str, str], bool]:
    """One GET into `part`, resuming it with a Range request: (published digests, whether the server
    confirmed the file's size)."""
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Accept-Encoding": "identity", **({"Range": f"bytes={offset}-"} if offset else {})}
    try:
        with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
            if resp.status_code == 416 and offset:
                if resp.headers.get("Content-Range", "") == f"bytes */{offset}":
                    return {}, True  # the part is whole already (a run killed while checking it)
                raise _AttemptFailed("the partial file is larger than the remote file", keep_part=False)
            if resp.status_code not in (200, 206):
                retry = resp.status_code in (408, 425, 429) or resp.status_code >= 500
                raise _AttemptFailed(f"HTTP {resp.status_code} {resp.reason}", keep_part=True, retry=retry)
            ctype = resp.headers.get("Content-Type", "")
            if ctype.split(";")[0].strip().lower() in ("text/html", "application/xhtml+xml"):
                raise _AttemptFailed(
                    f"the server sent an HTML page (Content-Type {ctype}) instead of the file: "
                    "a login or error page? Check the URL (data.base_url)",
                    keep_part=True,
                    retry=False,
                )
            resumed = resp.status_code == 206
            start = offset if resumed else 0  # a server that ignores Range sends the whole file: restart
            total = _expected_total(resp, start)
            published = _published_digests(resp)
            progress.resumed |= resumed
            _stream_to(resp, part, "ab" if resumed else "wb", start, total, progress)
    except (requests.RequestException, urllib3.exceptions.HTTPError) as err:
        raise _AttemptFailed(f"download interrupted ({err})", keep_part=True) from err
    size = part.stat().st_size
    if total is not None and size != total:
        raise _AttemptFailed(f"got {size} of {total} bytes", keep_part=size < total)
    return published, total is not None


def _content_problem(path: Path, name: str) -> tuple[str, bool] | None:
    """What is wrong with the bytes of `path` for a file called `name`: (reason, truncated), or None.
    A `.gz` must be gzip that decompresses to its end marker with good checksums; JSON (lines) inside
    must start like JSON."""
    with open(path, "rb") as fh:
        head = fh.read(64)
    if name.endswith(".gz"):
        if head[:2] != b"\x1f\x8b":
            what = "an HTML page" if head.lstrip()[:1] == b"<" else "not gzip data"
            return f"{what} where gzip was expected (starts with {head[:40]!r})", False
        try:
            with gzip.open(path, "rb") as fh:
                first = fh.read(4096)
                while fh.read(CHUNK):
                    pass
        except EOFError:
            return "the gzip stream ends before its end marker (the download was cut)", True
        except (gzip.BadGzipFile, zlib.error, OSError) as err:
            return f"corrupt gzip data ({err})", False
    else:
        first = head
    if name.removesuffix(".gz").endswith((".json", ".jsonl")):
        start = first.removeprefix(b"\xef\xbb\xbf").lstrip()[:1]
        if start not in (b"{", b"["):
            return f"not JSON lines (starts with {first[:40]!r})", False
    return None


def _digests(path: Path, algos: set[str]) -> dict[str, str]:
    hashes = {algo: hashlib.new(algo) for algo in algos | {"sha256"}}
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            for h in hashes.values():
                h.update(chunk)
    return {algo: h.hexdigest() for algo, h in hashes.items()}


def _check_download(part: Path, name: str, published: dict[str, str], size_confirmed: bool) -> str:
    """Raise _AttemptFailed unless `part` is a complete `name`; return its sha256."""
    problem = _content_problem(part, name)
    if problem:
        reason, truncated = problem
        if truncated and size_confirmed:
            raise _AttemptFailed(
                f"{reason}, although it has the size the server announced: the file on the server is damaged",
                keep_part=False,
                retry=False,
            )
        raise _AttemptFailed(reason, keep_part=truncated)
    digests = _digests(part, set(published))
    for algo, want in published.items():
        if digests[algo] != want:
            raise _AttemptFailed(f"{algo} {digests[algo]} differs from the published {want}", keep_part=False)
    return digests["sha256"]


def _manifest_path(final: Path) -> Path:
    return final.with_name(final.name + CACHE_MANIFEST_SUFFIX)


def _verified_cache(final: Path, url: str) -> str | None:
    """sha256 of the cached `final` when it matches its manifest (size, sha256); a file without one
    (cached before manifests existed) is checked like a fresh download. A bad file is removed: None."""
    if not final.is_file():
        return None
    try:
        manifest = read_json(_manifest_path(final))
        want_bytes, want_sha = int(manifest["bytes"]), str(manifest["sha256"])
    except (OSError, ValueError, KeyError, TypeError):
        problem = _content_problem(final, final.name)
        if problem is None:
            sha = _digests(final, set())["sha256"]
            with contextlib.suppress(OSError):  # a read-only cache is still usable
                write_json(_manifest_path(final), {"url": url, "bytes": final.stat().st_size, "sha256": sha})
            return sha
        reason = problem[0]
    else:
        size = final.stat().st_size
        sha = _digests(final, set())["sha256"] if size == want_bytes else None
        if sha == want_sha:
            return sha
        reason = (
            f"{size} bytes{f', sha256 {sha}' if sha else ''} where its manifest says {want_bytes} bytes, "
            f"sha256 {want_sha}"
        )
    log.warning("cached %s is unusable (%s); downloading it again", final, reason)
    final.unlink(missing_ok=True)
    _manifest_path(final).unlink(missing_ok=True)
    return None


def _download_checked(url: str, final: Path, part: Path, timeout: float, attempts: int, backoff_s: float) -> Fetched:
    """Download into `part` (resumed), check it, then manifest and rename onto `final`."""
    progress = _Progress()
    for attempt in range(1, attempts + 1):
        try:
            published, size_confirmed = _fetch_once(url, part, timeout, progress)
            sha = _check_download(part, final.name, published, size_confirmed)
            break
        except _AttemptFailed as err:
            if not err.keep_part:
                part.unlink(missing_ok=True)
            if attempt < attempts and err.retry:
                log.warning("%s: %s; attempt %d of %d, retrying", url, err.reason, attempt, attempts)
                time.sleep(backoff_s * 2 ** (attempt - 1))
                continue
            have = part.stat().st_size if err.keep_part and part.is_file() else 0
            kept = f"{have} bytes kept in {part}, run again to resume" if have else "nothing was cached"
            raise DownloadError(f"{url}: {err.reason}; {kept}") from err
    write_json(_manifest_path(final), {"url": url, "bytes": part.stat().st_size, "sha256": sha})
    os.replace(part, final)
    return Fetched(final, progress.received, progress.resumed, sha)


def http_download(
    url: str,
    cache_dir: Path,
    name: str | None = None,
    timeout: float = 60.0,
    attempts: int = 3,
    backoff_s: float = 1.0,
    link_to: Path | None = None,
) -> Fetched:
    """Download `url` into `cache_dir/name`, resuming `name.part` and retrying up to `attempts` times; a
    cached file is reused only when it still matches its manifest. Safe for runs sharing `cache_dir`.
    `link_to`: also hard-link (or copy) the checked file there before another run may touch it."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / (name or url.rsplit("/", 1)[-1])

    def note_wait() -> None:
        log.warning("waiting for another run downloading %s", final)

    with locked(final.with_name(f".{final.name}.lock"), on_wait=note_wait) as exclusive:
        sha = _verified_cache(final, url)
        if sha:
            fetched = Fetched(final, 0, False, sha)
        elif exclusive:
            fetched = _download_checked(url, final, final.with_name(final.name + ".part"), timeout, attempts, backoff_s)
        else:  # no locks on this filesystem: a partial file of this process's own (no resume)
            part = final.with_name(f"{final.name}.part-{socket.gethostname()}-{os.getpid()}")
            try:
                fetched = _download_checked(url, final, part, timeout, attempts, backoff_s)
            finally:
                part.unlink(missing_ok=True)
        if link_to is not None:
            _link_cached(final, link_to)
        return fetched


# ---------------------------------------------------------------- sources


def _cache_dir(data: DataConfig) -> Path:
    return Path(data.cache_dir).expanduser() if data.cache_dir else Path.home() / ".cache" / "sidreasoner" / "downloads"


def _link_cached(src: Path, dest: Path) -> None:
    """Hard-link (same filesystem) or copy the cached file `src` to `dest`."""
    try:
        os.link(src.resolve(), dest)
    except OSError:
        _copy(src, dest)


FICLONE = 0x40049409  # Linux ioctl: `dest` shares the blocks of `src`, copy-on-write (btrfs, XFS, bcachefs)


def _copy(src: Path, dest: Path) -> None:
    """Copy `src` to `dest`: a reflink where the filesystem has them, else the bytes."""
    with open(src, "rb") as fin, open(dest, "wb") as fout:
        try:
            fcntl.ioctl(fout.fileno(), FICLONE, fin.fileno())
            return
        except OSError:
            pass
    shutil.copyfile(src, dest)


def _inside(folder: Path, rel: str) -> Path:
    """`folder/rel`, unless it is (or goes through) a symbolic link that leads out of `folder`."""
    path = folder / rel
    real = path.resolve()
    if not real.is_relative_to(folder.resolve()):
        raise DownloadError(
            f"data.source: {path} is a symbolic link to {real}, outside {folder}; only files inside "
            "the folder are read (copy the file there)"
        )
    return path


def _amazon2018(data: DataConfig, raw: RawData, metrics: dict[str, float]) -> tuple[str, str]:
    check_category(data.category, AMAZON2018_CATEGORIES, "amazon2018")
    cat, base = data.category, data.base_url.rstrip("/")
    reviews = f"{cat}_5.json.gz" if data.five_core else f"{cat}.json.gz"
    folder = "categoryFilesSmall" if data.five_core else "categoryFiles"
    meta = f"meta_{cat}.json.gz"
    for url, fname in ((f"{base}/{folder}/{reviews}", reviews), (f"{base}/metaFiles2/{meta}", meta)):
        fetched = http_download(url, _cache_dir(data) / "amazon2018", link_to=raw.file(fname))
        metrics["bytes_downloaded"] += fetched.bytes_downloaded
        metrics["resumed"] = max(metrics["resumed"], float(fetched.resumed))
    return reviews, meta


def _amazon2023(data: DataConfig, raw: RawData, metrics: dict[str, float]) -> tuple[str, str]:
    check_category(data.category, AMAZON2023_CATEGORIES, "amazon2023")
    from huggingface_hub import hf_hub_download  # imported here: only this source needs it

    names = []
    for remote in (f"raw/review_categories/{data.category}.jsonl", f"raw/meta_categories/meta_{data.category}.jsonl"):
        try:
            path = Path(
                hf_hub_download(
                    AMAZON2023_REPO, remote, repo_type="dataset", cache_dir=str(_cache_dir(data) / "huggingface")
                )
            )
        except Exception as err:  # hub errors have many types; name the file and the repo
            raise DownloadError(f"hf://datasets/{AMAZON2023_REPO}/{remote}: {err}") from err
        fname = remote.rsplit("/", 1)[-1]
        _link_cached(path, raw.file(fname))
        metrics["bytes_downloaded"] += path.stat().st_size
        names.append(fname)
    return names[0], names[1]


def expected_names(fmt: str, category: str, five_core: bool) -> tuple[list[str], list[str]]:
    """Accepted review and meta file names for a raw folder, in order of preference."""
    if fmt == "amazon2023":
        return [f"{category}.jsonl.gz", f"{category}.jsonl"], [f"meta_{category}.jsonl.gz", f"meta_{category}.jsonl"]
    full, small = [f"{category}.json.gz", f"{category}.json"], [f"{category}_5.json.gz", f"{category}_5.json"]
    return (small + full if five_core else full + small), [f"meta_{category}.json.gz", f"meta_{category}.json"]


def _local_folder(source: str) -> Path:
    parsed = urlparse(source)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if parsed.scheme and len(parsed.scheme) > 1:  # len 1: a Windows drive letter
        raise DownloadError(
            f"data.source {source!r}: unsupported scheme {parsed.scheme}://; "
            "use demo, amazon2018, amazon2023, file://<folder>, a path, or s3://, minio://, "
            "gs://<bucket>/<folder>"
        )
    return Path(source)


def _from_bucket(data: DataConfig, raw: RawData, metrics: dict[str, float]) -> tuple[str, str]:
    """Raw files under their official names in a bucket folder (a user's folder: no completion marker)."""
    from sidreasoner import storage  # imported here: only this source needs the bucket clients

    source = data.source.rstrip("/")
    try:
        present = set(storage.list_files(source))
        found = []
        for candidates in expected_names(data.format, data.category, data.five_core):
            hit = next((n for n in candidates if n in present), None)
            if hit is None:
                raise DownloadError(
                    f"{source}: none of {candidates} found (data.format={data.format}, "
                    f"data.category={data.category}). Present: {sorted(present)[:50] or 'nothing'}"
                )
            storage.download_file(f"{source}/{hit}", raw.file(hit))
            metrics["bytes_downloaded"] += raw.file(hit).stat().st_size
            found.append(hit)
    except storage.StorageError as err:
        raise DownloadError(f"data.source: {err}") from err
    return found[0], found[1]


def _from_folder(data: DataConfig, raw: RawData, metrics: dict[str, float]) -> tuple[str, str]:
    if urlparse(data.source).scheme in ("s3", "minio", "gs"):
        return _from_bucket(data, raw, metrics)
    folder = _local_folder(data.source).expanduser()
    if not folder.is_dir():
        raise DownloadError(f"data.source: folder {folder} does not exist")
    found = []
    for candidates in expected_names(data.format, data.category, data.five_core):
        hit = next((n for n in candidates if (folder / n).is_file()), None)
        if hit is None:
            present = sorted(p.name for p in folder.iterdir())[:50]
            raise DownloadError(
                f"{folder}: none of {candidates} found (data.format={data.format}, "
                f"data.category={data.category}). Present: {present or 'nothing'}"
            )
        _copy(_inside(folder, hit), raw.file(hit))
        found.append(hit)
    return found[0], found[1]


def _export_tables(names: list[str], data: DataConfig, where: str) -> tuple[str, str, list[str]]:
    """A shop export's events and items among a folder's relative file names: (what the manifest's `reviews`
    and `meta` name: a file, or the folder of part files; every file to copy)."""
    if data.format == "recbole":
        stems = []
        for suffix in (RawData.RECBOLE_EVENTS, RawData.RECBOLE_ITEMS):
            found = [n for n in names if "/" not in n and n.endswith(suffix)]
            own = f"{data.category}{suffix}"
            if own not in found and len(found) != 1:
                raise DownloadError(
                    f"{where}: no {own} (data.category={data.category}) and not exactly one *{suffix} file "
                    f"(data.format=recbole). Present: {sorted(names)[:50] or 'nothing'}"
                )
            stems.append(own if own in found else found[0])
    else:
        stems = [RawData.EVENTS_TABLE, RawData.ITEMS_TABLE]
    picked = []
    for stem in stems:
        files = RawData.table_files(names, data.format, stem)
        if not files:
            wanted = ", ".join(stem + s for s in RawData.TABLE_SUFFIXES)
            raise DownloadError(
                f"{where}: no {stem} table (data.format={data.format}: {wanted}, or a folder {stem}/ of part "
                f"files). Present: {sorted(names)[:50] or 'nothing'}"
            )
        picked.append((files[0] if files == [stem] or "/" not in files[0] else stem, files))
    return picked[0][0], picked[1][0], picked[0][1] + picked[1][1]


def _hf_export(data: DataConfig, raw: RawData, metrics: dict[str, float]) -> tuple[str, str, list[str], dict]:
    """A shop export kept as a Hugging Face dataset (data.source=hf://...): its two tables written as Parquet into
    the raw folder, and what the manifest records of where they came from (revision, commit, configs)."""
    from sidreasoner.data.hf_source import HfSourceError, fetch_hf_tables, manifest_entry  # needs `datasets`

    try:
        fetched = fetch_hf_tables(data.source, data.revision, raw.path, _cache_dir(data) / "huggingface")
    except HfSourceError as err:
        raise DownloadError(str(err)) from None
    events, items = (fetched.files[t].name for t in (RawData.EVENTS_TABLE, RawData.ITEMS_TABLE))
    metrics["bytes_downloaded"] += sum(raw.file(n).stat().st_size for n in (events, items))
    return events, items, [events, items], {"hf": manifest_entry(data.source, data.revision, fetched)}


def _copy_from_source(source: str, pick: Callable[[list[str], str], list[str]], dest: Path) -> list[str]:
    """Copy the files `pick(every relative file name of the source, how errors name it)` chooses from a folder or
    bucket source to the same names under `dest`; return them."""
    if urlparse(source).scheme in ("s3", "minio", "gs"):
        from sidreasoner import storage  # imported here: only bucket sources need the bucket clients

        root = source.rstrip("/")
        try:
            names = pick(storage.list_files(root), root)
            for name in names:
                storage.download_file(f"{root}/{name}", dest / name)
        except storage.StorageError as err:
            raise DownloadError(f"data.source: {err}") from err
        return names
    folder = _local_folder(source).expanduser()
    if not folder.is_dir():
        raise DownloadError(f"data.source: folder {folder} does not exist")
    names = pick(sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()), str(folder))
    for name in names:
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        _copy(_inside(folder, name), dest / name)
    return names


def _shop_export(data: DataConfig, raw: RawData, metrics: dict[str, float]) -> tuple[str, str, list[str]]:
    """Copy a shop's export (data.format interactions or recbole) from a folder or bucket into the raw folder."""
    tables: list[str] = []  # what the manifest's `reviews` and `meta` name

    def pick(names: list[str], where: str) -> list[str]:
        reviews, meta, files = _export_tables(names, data, where)
        tables.extend((reviews, meta))
        return files

    names = _copy_from_source(data.source, pick, raw.path)
    metrics["bytes_downloaded"] += sum(raw.file(n).stat().st_size for n in names)
    return tables[0], tables[1], names


def _bundle_files(names: list[str], category: str) -> list[str]:
    """The files of `category` among a bundle folder's relative paths: splits, index, info, general data."""

    def wanted(name: str) -> bool:
        folder, _, base = name.partition("/")
        if folder in research_layout.SPLITS:
            return base.endswith(".csv") and (base == f"{category}.csv" or base.startswith(f"{category}_"))
        if folder == research_layout.INDEX_FOLDER:
            return base.startswith(f"{category}.")
        if folder == research_layout.INFO_FOLDER:
            return base.startswith(f"{category}_") and base.endswith(".txt")
        return name == research_layout.GENERAL_REASONING

    return [n for n in names if "/" in n and wanted(n)]


def _research_bundle(data: DataConfig, raw: RawData, metrics: dict[str, float]) -> list[str]:
    """A research data bundle (the research code's `data/Amazon` folder) under the raw folder's bundle folder."""
    from sidreasoner.data.research import ResearchDataError, find_bundle

    dest = raw.file(RawData.BUNDLE)
    names = _copy_from_source(data.source, lambda names, _: _bundle_files(names, data.category), dest)
    try:
        find_bundle(dest, data.category)
    except ResearchDataError as err:
        raise DownloadError(f"data.source {data.source} (data.format=research): {err}") from None
    metrics["bytes_downloaded"] += sum((dest / n).stat().st_size for n in names)
    return [f"{RawData.BUNDLE}/{n}" for n in names]


def _demo(cfg: Config, raw: RawData, metrics: dict[str, float]) -> tuple[str, str]:
    planted = generate_demo_raw(cfg.data.demo, cfg.data.category, raw.path, cfg.seed)
    metrics.update({f"demo_{k}": float(v) for k, v in planted.items()})
    return f"{cfg.data.category}.json.gz", f"meta_{cfg.data.category}.json.gz"


def _several_categories(
    data: DataConfig, raw: RawData, metrics: dict[str, float]
) -> tuple[str, str, list[str], dict[str, Any]]:
    """Each category's reviews and meta file, fetched as one category's would be; the manifest's
    `categories` lists them in the order of data.category (`reviews` and `meta` name the first's)."""
    fetch = {"amazon2018": _amazon2018, "amazon2023": _amazon2023}.get(data.source, _from_folder)
    parts = []
    for category in data.categories:
        reviews, meta = fetch(data.model_copy(update={"category": category}), raw, metrics)
        parts.append({"category": category, "reviews": reviews, "meta": meta})
    names = [name for part in parts for name in (part["reviews"], part["meta"])]
    return parts[0]["reviews"], parts[0]["meta"], names, {"categories": parts}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _source_format(data: DataConfig) -> str:
    return (
        data.source
        if data.source in ("amazon2018", "amazon2023")
        else "amazon2018"
        if data.source == "demo"
        else data.format
    )


def _file_records(raw: RawData, names: list[str]) -> dict[str, dict[str, int | str]]:
    """What the manifest records of each raw file: its size and sha256."""
    return {n: {"bytes": raw.file(n).stat().st_size, "sha256": _sha256(raw.file(n))} for n in names}


def download_data(cfg: Config, out_dir: RawData) -> dict[str, float]:
    """Fetch the raw files named by cfg.data into `out_dir` (atomically) with a manifest; return metrics."""
    data = cfg.data
    metrics: dict[str, float] = {"bytes_downloaded": 0.0, "resumed": 0.0}
    with RawData.writing(out_dir) as raw:
        if data.format == "research" and data.source not in ("demo", "amazon2018", "amazon2023"):
            files = _file_records(raw, _research_bundle(data, raw, metrics))
            raw.write_manifest(
                {
                    "source": data.source,
                    "format": "research",
                    "category": data.category,
                    "bundle": RawData.BUNDLE,
                    "files": files,
                    "demo": False,
                }
            )
            metrics.update(files=float(len(files)), bytes_total=float(sum(f["bytes"] for f in files.values())))
            return metrics
        names, extra = None, {}
        if data.source == "demo":
            reviews, meta = _demo(cfg, raw, metrics)
        elif len(data.categories) > 1:
            reviews, meta, names, extra = _several_categories(data, raw, metrics)
        elif data.source == "amazon2018":
            reviews, meta = _amazon2018(data, raw, metrics)
        elif data.source == "amazon2023":
            reviews, meta = _amazon2023(data, raw, metrics)
        elif is_hf_source(data.source):
            reviews, meta, names, extra = _hf_export(data, raw, metrics)
        elif data.format in ("interactions", "recbole"):
            reviews, meta, names = _shop_export(data, raw, metrics)
        else:
            reviews, meta = _from_folder(data, raw, metrics)
        files = _file_records(raw, names or [reviews, meta])
        raw.write_manifest(
            {
                "source": data.source,
                "format": _source_format(data),
                "category": data.category,
                "reviews": reviews,
                "meta": meta,
                "files": files,
                "demo": data.source == "demo",
                "five_core": data.five_core if data.source != "demo" else False,
                **extra,
            }
        )
    metrics.update(files=float(len(files)), bytes_total=float(sum(f["bytes"] for f in files.values())))
    return metrics
