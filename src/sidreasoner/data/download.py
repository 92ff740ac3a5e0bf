"""download-data: fetch raw reviews + item metadata into a folder with a `manifest.json`.

Sources: `demo` (built-in generator), `amazon2018` (HTTP from data.base_url), `amazon2023` (the
Hugging Face dataset repo), or a folder (`file://...`, a plain path, or a bucket folder `s3://`,
`minio://`, `gs://` read through sidreasoner.storage) holding raw files under their official names. HTTP downloads go through a cache folder, resume from `<name>.part` with a Range
request, and never pass a short file as complete.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import unquote, urlparse

import requests
import urllib3
from tqdm import tqdm

from sidreasoner.config import AMAZON2023_REPO, Config, DataConfig
from sidreasoner.data.demo import generate_demo_raw
from sidreasoner.io import atomic_dir, write_json

AMAZON2018_CATEGORIES: tuple[str, ...] = (
    "AMAZON_FASHION", "All_Beauty", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Books",
    "CDs_and_Vinyl", "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics",
    "Gift_Cards", "Grocery_and_Gourmet_Food", "Home_and_Kitchen", "Industrial_and_Scientific", "Kindle_Store",
    "Luxury_Beauty", "Magazine_Subscriptions", "Movies_and_TV", "Musical_Instruments", "Office_Products",
    "Patio_Lawn_and_Garden", "Pet_Supplies", "Prime_Pantry", "Software", "Sports_and_Outdoors",
    "Tools_and_Home_Improvement", "Toys_and_Games", "Video_Games",
)
AMAZON2023_CATEGORIES: tuple[str, ...] = (
    "All_Beauty", "Amazon_Fashion", "Appliances", "Arts_Crafts_and_Sewing", "Automotive", "Baby_Products",
    "Beauty_and_Personal_Care", "Books", "CDs_and_Vinyl", "Cell_Phones_and_Accessories",
    "Clothing_Shoes_and_Jewelry", "Digital_Music", "Electronics", "Gift_Cards", "Grocery_and_Gourmet_Food",
    "Handmade_Products", "Health_and_Household", "Health_and_Personal_Care", "Home_and_Kitchen",
    "Industrial_and_Scientific", "Kindle_Store", "Magazine_Subscriptions", "Movies_and_TV", "Musical_Instruments",
    "Office_Products", "Patio_Lawn_and_Garden", "Pet_Supplies", "Software", "Sports_and_Outdoors",
    "Subscription_Boxes", "Tools_and_Home_Improvement", "Toys_and_Games", "Video_Games", "Unknown",
)
CHUNK = 1 << 20


class DownloadError(RuntimeError):
    """A download or raw-folder lookup failed; the message names the URL/folder and what to do."""


def check_category(category: str, allowed: tuple[str, ...], source: str) -> None:
    if category not in allowed:
        raise DownloadError(
            f"unknown {source} category {category!r} (data.category). Allowed: {', '.join(allowed)}")


# ---------------------------------------------------------------- HTTP with resume


@dataclass
class Fetched:
    path: Path
    bytes_downloaded: int
    resumed: bool


def _expected_total(resp: requests.Response, offset: int) -> int | None:
    """Full file size from Content-Range (206) or Content-Length (200); None when not sent."""
    if resp.status_code == 206:
        crange = resp.headers.get("Content-Range", "")
        start = crange.split(" ", 1)[-1].split("-", 1)[0]
        if not start.isdigit() or int(start) != offset:
            raise DownloadError(f"{resp.url}: server answered Range bytes={offset}- with Content-Range {crange!r}")
        total = crange.rsplit("/", 1)[-1]
        if total.isdigit():
            return int(total)
    length = resp.headers.get("Content-Length")
    if length is None or not length.isdigit():
        return None
    return int(length) + (offset if resp.status_code == 206 else 0)


def _stream_to(resp: requests.Response, part: Path, mode: str, offset: int, total: int | None) -> int:
    written = 0
    with open(part, mode) as fh, tqdm(total=total, initial=offset, unit="B", unit_scale=True,
                                      desc=part.name.removesuffix(".part"), mininterval=2) as bar:
        for chunk in resp.raw.stream(CHUNK, decode_content=False):  # raw bytes: sizes match headers
            fh.write(chunk)
            written += len(chunk)
            bar.update(len(chunk))
    return written


def http_download(url: str, cache_dir: Path, name: str | None = None, timeout: float = 60.0) -> Fetched:
    """Download `url` into `cache_dir/name`, resuming `name.part`; a complete cached file is reused."""
    cache_dir = Path(cache_dir)
    cache_dir.mkdir(parents=True, exist_ok=True)
    final = cache_dir / (name or url.rsplit("/", 1)[-1])
    if final.is_file():
        return Fetched(final, 0, False)
    part = final.with_name(final.name + ".part")
    offset = part.stat().st_size if part.is_file() else 0
    headers = {"Range": f"bytes={offset}-", "Accept-Encoding": "identity"} if offset else {"Accept-Encoding": "identity"}
    try:
        with requests.get(url, headers=headers, stream=True, timeout=timeout) as resp:
            if resp.status_code == 416 and offset:  # stale .part (bigger than the file): start over
                part.unlink()
                return http_download(url, cache_dir, name, timeout)
            if resp.status_code not in (200, 206):
                raise DownloadError(f"{url}: HTTP {resp.status_code} {resp.reason}")
            resumed = resp.status_code == 206
            start = offset if resumed else 0  # a server that ignores Range sends the whole file: restart
            total = _expected_total(resp, start)
            written = _stream_to(resp, part, "ab" if resumed else "wb", start, total)
    except (requests.RequestException, urllib3.exceptions.HTTPError) as err:
        have = part.stat().st_size if part.is_file() else 0
        raise DownloadError(f"{url}: download interrupted ({err}); {have} bytes kept in {part}, "
                            "run again to resume") from err
    size = part.stat().st_size
    if total is not None and size != total:
        raise DownloadError(f"{url}: got {size} of {total} bytes; the partial file is kept at {part}, "
                            "run again to resume")
    os.replace(part, final)
    return Fetched(final, written, resumed)


# ---------------------------------------------------------------- sources


def _cache_dir(data: DataConfig) -> Path:
    return Path(data.cache_dir).expanduser() if data.cache_dir else Path.home() / ".cache" / "sidreasoner" / "downloads"


def _place(src: Path, dest: Path) -> None:
    """Hardlink (same filesystem) or copy `src` to `dest`."""
    try:
        os.link(src.resolve(), dest)
    except OSError:
        shutil.copyfile(src, dest)


def _amazon2018(data: DataConfig, out: Path, metrics: dict[str, float]) -> tuple[str, str]:
    check_category(data.category, AMAZON2018_CATEGORIES, "amazon2018")
    cat, base = data.category, data.base_url.rstrip("/")
    reviews = f"{cat}_5.json.gz" if data.five_core else f"{cat}.json.gz"
    folder = "categoryFilesSmall" if data.five_core else "categoryFiles"
    meta = f"meta_{cat}.json.gz"
    for url, fname in ((f"{base}/{folder}/{reviews}", reviews), (f"{base}/metaFiles2/{meta}", meta)):
        fetched = http_download(url, _cache_dir(data) / "amazon2018")
        metrics["bytes_downloaded"] += fetched.bytes_downloaded
        metrics["resumed"] = max(metrics["resumed"], float(fetched.resumed))
        _place(fetched.path, out / fname)
    return reviews, meta


def _amazon2023(data: DataConfig, out: Path, metrics: dict[str, float]) -> tuple[str, str]:
    check_category(data.category, AMAZON2023_CATEGORIES, "amazon2023")
    from huggingface_hub import hf_hub_download  # imported here: only this source needs it

    names = []
    for remote in (f"raw/review_categories/{data.category}.jsonl", f"raw/meta_categories/meta_{data.category}.jsonl"):
        try:
            path = Path(hf_hub_download(AMAZON2023_REPO, remote, repo_type="dataset",
                                        cache_dir=str(_cache_dir(data) / "huggingface")))
        except Exception as err:  # hub errors have many types; name the file and the repo
            raise DownloadError(f"hf://datasets/{AMAZON2023_REPO}/{remote}: {err}") from err
        fname = remote.rsplit("/", 1)[-1]
        _place(path, out / fname)
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
        raise DownloadError(f"data.source {source!r}: unsupported scheme {parsed.scheme}://; "
                            "use demo, amazon2018, amazon2023, file://<folder>, a path, or s3://, minio://, "
                            "gs://<bucket>/<folder>")
    return Path(source)


def _from_bucket(data: DataConfig, out: Path, metrics: dict[str, float]) -> tuple[str, str]:
    """Raw files under their official names in a bucket folder (a user's folder: no completion marker)."""
    from sidreasoner import storage  # imported here: only this source needs the bucket clients

    source = data.source.rstrip("/")
    try:
        present = set(storage.list_files(source))
        found = []
        for candidates in expected_names(data.format, data.category, data.five_core):
            hit = next((n for n in candidates if n in present), None)
            if hit is None:
                raise DownloadError(f"{source}: none of {candidates} found (data.format={data.format}, "
                                    f"data.category={data.category}). Present: {sorted(present)[:50] or 'nothing'}")
            storage.download_file(f"{source}/{hit}", out / hit)
            metrics["bytes_downloaded"] += (out / hit).stat().st_size
            found.append(hit)
    except storage.StorageError as err:
        raise DownloadError(f"data.source: {err}") from err
    return found[0], found[1]


def _from_folder(data: DataConfig, out: Path, metrics: dict[str, float]) -> tuple[str, str]:
    if urlparse(data.source).scheme in ("s3", "minio", "gs"):
        return _from_bucket(data, out, metrics)
    folder = _local_folder(data.source).expanduser()
    if not folder.is_dir():
        raise DownloadError(f"data.source: folder {folder} does not exist")
    found = []
    for candidates in expected_names(data.format, data.category, data.five_core):
        hit = next((n for n in candidates if (folder / n).is_file()), None)
        if hit is None:
            present = sorted(p.name for p in folder.iterdir())[:50]
            raise DownloadError(f"{folder}: none of {candidates} found (data.format={data.format}, "
                                f"data.category={data.category}). Present: {present or 'nothing'}")
        _place(folder / hit, out / hit)
        found.append(hit)
    return found[0], found[1]


BUNDLE = "bundle"  # where a research bundle's files lie inside the raw folder


def _bundle_files(names: list[str], category: str) -> list[str]:
    """The files of `category` among a bundle folder's relative paths: splits, index, info, general data."""
    def wanted(name: str) -> bool:
        folder, _, base = name.partition("/")
        if folder in ("train", "valid", "test"):
            return base.endswith(".csv") and (base == f"{category}.csv" or base.startswith(f"{category}_"))
        if folder == "index":
            return base.startswith(f"{category}.")
        if folder == "info":
            return base.startswith(f"{category}_") and base.endswith(".txt")
        return name == "general/sampled_data.arrow"

    return [n for n in names if "/" in n and wanted(n)]


def _research_bundle(data: DataConfig, out: Path, metrics: dict[str, float]) -> list[str]:
    """A research data bundle (the research code's `data/Amazon` folder) under out/bundle/."""
    from sidreasoner.data.research import ResearchDataError, find_bundle

    dest = out / BUNDLE
    if urlparse(data.source).scheme in ("s3", "minio", "gs"):
        from sidreasoner import storage  # imported here: only bucket sources need the bucket clients

        source = data.source.rstrip("/")
        try:
            names = _bundle_files(storage.list_files(source), data.category)
            for name in names:
                storage.download_file(f"{source}/{name}", dest / name)
        except storage.StorageError as err:
            raise DownloadError(f"data.source: {err}") from err
    else:
        folder = _local_folder(data.source).expanduser()
        if not folder.is_dir():
            raise DownloadError(f"data.source: folder {folder} does not exist")
        names = _bundle_files(sorted(str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file()),
                              data.category)
        for name in names:
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            _place(folder / name, dest / name)
    try:
        find_bundle(dest, data.category)
    except ResearchDataError as err:
        raise DownloadError(f"data.source {data.source} (data.format=research): {err}") from None
    metrics["bytes_downloaded"] += sum((dest / n).stat().st_size for n in names)
    return [f"{BUNDLE}/{n}" for n in names]


def _demo(cfg: Config, out: Path, metrics: dict[str, float]) -> tuple[str, str]:
    planted = generate_demo_raw(cfg.data.demo, cfg.data.category, out, cfg.seed)
    metrics.update({f"demo_{k}": float(v) for k, v in planted.items()})
    return f"{cfg.data.category}.json.gz", f"meta_{cfg.data.category}.json.gz"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _source_format(data: DataConfig) -> str:
    return data.source if data.source in ("amazon2018", "amazon2023") else "amazon2018" if data.source == "demo" else data.format


def download_data(cfg: Config, out_dir: Path) -> dict[str, float]:
    """Fetch the raw files named by cfg.data into `out_dir` (atomically) with a manifest; return metrics."""
    data = cfg.data
    metrics: dict[str, float] = {"bytes_downloaded": 0.0, "resumed": 0.0}
    with atomic_dir(out_dir) as out:
        if data.format == "research" and data.source not in ("demo", "amazon2018", "amazon2023"):
            names = _research_bundle(data, out, metrics)
            files = {n: {"bytes": (out / n).stat().st_size, "sha256": _sha256(out / n)} for n in names}
            write_json(out / "manifest.json", {"source": data.source, "format": "research", "category": data.category,
                                               "bundle": BUNDLE, "files": files, "demo": False})
            metrics.update(files=float(len(files)), bytes_total=float(sum(f["bytes"] for f in files.values())))
            return metrics
        if data.source == "demo":
            reviews, meta = _demo(cfg, out, metrics)
        elif data.source == "amazon2018":
            reviews, meta = _amazon2018(data, out, metrics)
        elif data.source == "amazon2023":
            reviews, meta = _amazon2023(data, out, metrics)
        else:
            reviews, meta = _from_folder(data, out, metrics)
        files = {n: {"bytes": (out / n).stat().st_size, "sha256": _sha256(out / n)} for n in (reviews, meta)}
        write_json(out / "manifest.json", {
            "source": data.source, "format": _source_format(data), "category": data.category,
            "reviews": reviews, "meta": meta, "files": files, "demo": data.source == "demo",
            "five_core": data.five_core if data.source != "demo" else False,
        })
    metrics.update(files=2.0, bytes_total=float(sum(f["bytes"] for f in files.values())))
    return metrics
