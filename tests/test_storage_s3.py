"""sidreasoner.storage against a real S3 server (moto_server on 127.0.0.1, IAM auth enforced) through minio."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import signal
from pathlib import Path

import pytest

from sidreasoner import storage
from sidreasoner.config import load
from sidreasoner.data.demo import generate_demo_raw
from sidreasoner.data.download import DownloadError, download_data
from sidreasoner.storage.s3 import make_client

MIB = 1 << 20


@pytest.fixture
def s3(moto_server, monkeypatch):
    monkeypatch.setenv("SIDREASONER_S3_ENDPOINT", moto_server["url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_server["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_server["secret"])
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    monkeypatch.setenv("SIDREASONER_STORAGE_RETRY_DELAY", "0.02")
    monkeypatch.setenv("SIDREASONER_STORAGE_RETRIES", "3")
    monkeypatch.setenv("SIDREASONER_S3_PART_SIZE", str(5 * MIB))  # the minio client's minimum
    client = make_client("s3")
    if not client.bucket_exists("bkt"):
        client.make_bucket("bkt")
    return client


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _model_dir(root: Path) -> Path:
    (root / "tok").mkdir(parents=True)
    (root / "config.json").write_text('{"a": 1}')
    (root / "tok" / "vocab.txt").write_text("x\ny\n")
    (root / "empty.bin").write_bytes(b"")
    (root / "weights.bin").write_bytes(os.urandom(300_000))
    return root


@pytest.mark.parametrize("scheme", ["s3", "minio"])
def test_file_round_trip_exists_list(s3, tmp_path, scheme):
    src = tmp_path / "a.txt"
    src.write_bytes(b"hello storage\n")
    uri = f"{scheme}://bkt/{scheme}/one/a.txt"
    assert not storage.exists(uri)
    assert storage.upload_file(src, uri) == {"size": 14, "md5": hashlib.md5(b"hello storage\n").hexdigest()}
    assert storage.exists(uri) and storage.exists(f"{scheme}://bkt/{scheme}/one") and storage.exists(f"{scheme}://bkt")
    assert storage.list_files(f"{scheme}://bkt/{scheme}") == ["one/a.txt"]
    out = storage.download_file(uri, tmp_path / "dl" / "a.txt")
    assert out.read_bytes() == b"hello storage\n"
    assert sorted(p.name for p in out.parent.iterdir()) == ["a.txt"]  # no temp files left


def test_multipart_object_round_trip_and_etag(s3, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(11 * MIB + 12345))  # 3 parts of 5 MiB
    info = storage.upload_file(big, "s3://bkt/models/big.bin")
    assert info["size"] == big.stat().st_size
    stat = s3.stat_object("bkt", "models/big.bin")
    assert stat.etag.strip('"').endswith("-3")  # a multipart ETag, not an MD5
    got = storage.download_file("s3://bkt/models/big.bin", tmp_path / "big.out")
    assert got.read_bytes() == big.read_bytes()


def test_foreign_multipart_object_is_checked_by_part_etags(s3, tmp_path):
    """An object uploaded by another tool (no MD5 metadata): the multipart ETag is recomputed locally."""
    data = os.urandom(6 * MIB)
    s3.put_object("bkt", "foreign/blob.bin", io.BytesIO(data), len(data), part_size=5 * MIB)
    assert s3.stat_object("bkt", "foreign/blob.bin").etag.strip('"').endswith("-2")
    assert storage.download_file("s3://bkt/foreign/blob.bin", tmp_path / "b").read_bytes() == data


def test_folder_round_trip_with_marker(s3, tmp_path):
    src = _model_dir(tmp_path / "model")
    manifest = storage.upload_dir(src, "s3://bkt/models/m1/")
    assert sorted(manifest["files"]) == ["config.json", "empty.bin", "tok/vocab.txt", "weights.bin"]
    assert storage.list_files("s3://bkt/models/m1") == sorted(manifest["files"])
    marker = json.loads(s3.get_object("bkt", "models/m1/_SUCCESS").read())
    assert marker["files"]["weights.bin"]["size"] == 300_000
    got = storage.download_dir("s3://bkt/models/m1", tmp_path / "out")
    assert got == sorted(manifest["files"]) and _tree(tmp_path / "out") == _tree(src)
    assert storage.read_marker("s3://bkt/models/m1")["total_bytes"] == sum(len(v) for v in _tree(src).values())


def test_upload_failing_before_marker_is_refused(s3, tmp_path):
    src = _model_dir(tmp_path / "model")
    storage.upload_dir(src, "s3://bkt/models/m2")  # a complete upload ...
    (src / "zz_lost.bin").symlink_to(tmp_path / "gone")  # ... then a re-upload that dies midway (a file vanished)
    with pytest.raises(storage.NotFoundError, match="zz_lost.bin"):
        storage.upload_dir(src, "s3://bkt/models/m2")
    assert "weights.bin" in storage.list_files("s3://bkt/models/m2")  # files went up, the marker did not
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "keep.txt").write_text("old")
    with pytest.raises(storage.IncompleteUploadError, match=r"s3://bkt/models/m2: incomplete upload.*_SUCCESS"):
        storage.download_dir("s3://bkt/models/m2", tmp_path / "out")
    assert _tree(tmp_path / "out") == {"keep.txt": b"old"}  # destination untouched, nothing partial
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model", "out"]
    got = storage.download_dir("s3://bkt/models/m2", tmp_path / "raw", require_marker=False)
    assert "weights.bin" in got


def test_missing_bucket_and_object(s3, tmp_path):
    (tmp_path / "f").write_text("x")
    for call in (
        lambda: storage.download_file("s3://no-such-bkt/a/b", tmp_path / "o"),
        lambda: storage.upload_file(tmp_path / "f", "s3://no-such-bkt/a/b"),
        lambda: storage.download_dir("s3://no-such-bkt/a", tmp_path / "o"),
        lambda: storage.list_files("s3://no-such-bkt/a"),
    ):
        with pytest.raises(storage.NotFoundError, match=r"s3://no-such-bkt/a.*bucket 'no-such-bkt' does not exist"):
            call()
    assert not storage.exists("s3://no-such-bkt/a") and not storage.exists("s3://no-such-bkt")
    with pytest.raises(storage.NotFoundError, match=r"s3://bkt/nothing/here: no such object"):
        storage.download_file("s3://bkt/nothing/here", tmp_path / "o")
    with pytest.raises(storage.NotFoundError, match=r"s3://bkt/nothing: no such folder"):
        storage.download_dir("s3://bkt/nothing", tmp_path / "o", require_marker=False)
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "var, value", [("AWS_SECRET_ACCESS_KEY", "Wr0ngSecretValue/xyz"), ("AWS_ACCESS_KEY_ID", "AKIAUNKNOWNKEY000000")]
)
def test_wrong_credentials_clear_error_without_secret(s3, tmp_path, monkeypatch, var, value):
    (tmp_path / "f").write_text("x")
    storage.upload_file(tmp_path / "f", "s3://bkt/creds/f")
    monkeypatch.setenv(var, value)
    secret = os.environ["AWS_SECRET_ACCESS_KEY"]
    for call in (
        lambda: storage.download_file("s3://bkt/creds/f", tmp_path / "o"),
        lambda: storage.upload_file(tmp_path / "f", "s3://bkt/creds/g"),
        lambda: storage.list_files("s3://bkt/creds"),
    ):
        with pytest.raises(storage.CredentialsError) as err:
            call()
        msg = str(err.value)
        assert "s3://bkt/creds" in msg and "AWS_SECRET_ACCESS_KEY" in msg and secret not in msg
    assert not (tmp_path / "o").exists()


def test_half_credentials_rejected(s3, monkeypatch, tmp_path):
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(storage.CredentialsError, match="AWS_SECRET_ACCESS_KEY is not set"):
        storage.download_file("s3://bkt/x", tmp_path / "o")


def test_server_killed_during_download(fresh_moto, monkeypatch, tmp_path):
    proc, url = fresh_moto
    monkeypatch.setenv("SIDREASONER_S3_ENDPOINT", url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "test")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "test-secret")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("SIDREASONER_STORAGE_RETRY_DELAY", "0.02")
    monkeypatch.setenv("SIDREASONER_STORAGE_RETRIES", "3")
    monkeypatch.setenv("SIDREASONER_S3_PART_SIZE", str(32 * MIB))
    make_client("s3").make_bucket("bkt")
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(32 * MIB))
    storage.upload_file(big, "s3://bkt/big.bin")
    seen = []

    def kill_on_first_chunk(done: int) -> None:
        if not seen:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
        seen.append(done)

    (tmp_path / "dl").mkdir()
    with pytest.raises(storage.TransientError, match=r"s3://bkt/big.bin: download failed after 3 attempts"):
        storage.download_file("s3://bkt/big.bin", tmp_path / "dl" / "big.bin", progress=kill_on_first_chunk)
    assert 0 < seen[-1] < 32 * MIB
    assert list((tmp_path / "dl").iterdir()) == []  # no partial file, no temp file


def _upload_demo(tmp_path: Path, prefix: str) -> Path:
    raw = tmp_path / "demo_raw"
    cfg = load("demo")
    generate_demo_raw(cfg.data.demo, cfg.data.category, raw, cfg.seed)
    for f in raw.iterdir():
        storage.upload_file(f, f"{prefix}/{f.name}")
    return raw


def test_download_data_from_s3_folder(s3, tmp_path):
    raw = _upload_demo(tmp_path, "s3://bkt/raw/demo")
    storage.upload_file(raw / "Demo.json.gz", "s3://bkt/raw/demo/sub/ignored.json.gz")
    cfg = load("demo", ["data.source=s3://bkt/raw/demo/", "data.category=Demo"])
    m = download_data(cfg, tmp_path / "artifact")
    manifest = json.loads((tmp_path / "artifact/manifest.json").read_text())
    assert (manifest["reviews"], manifest["meta"]) == ("Demo.json.gz", "meta_Demo.json.gz")
    assert sorted(p.name for p in (tmp_path / "artifact").iterdir()) == [
        "Demo.json.gz",
        "manifest.json",
        "meta_Demo.json.gz",
    ]
    for name in ("Demo.json.gz", "meta_Demo.json.gz"):
        assert (tmp_path / "artifact" / name).read_bytes() == (raw / name).read_bytes()
    assert m["bytes_downloaded"] == m["bytes_total"] > 0
    assert gzip.decompress((tmp_path / "artifact/Demo.json.gz").read_bytes()).count(b"\n") > 100


def test_download_data_bucket_errors(s3, tmp_path):
    _upload_demo(tmp_path, "s3://bkt/raw/partial")
    s3.remove_object("bkt", "raw/partial/meta_Demo.json.gz")
    cfg = load("demo", ["data.source=minio://bkt/raw/partial", "data.category=Demo"])
    with pytest.raises(
        DownloadError,
        match=r"minio://bkt/raw/partial: none of \['meta_Demo.json.gz'.*"
        r"Present: \['Demo.json.gz'\]",
    ):
        download_data(cfg, tmp_path / "artifact")
    with pytest.raises(DownloadError, match=r"s3://nope-bkt/raw.*bucket 'nope-bkt' does not exist"):
        download_data(load("demo", ["data.source=s3://nope-bkt/raw"]), tmp_path / "artifact")
    assert not (tmp_path / "artifact").exists()


def test_prepare_base_model_from_an_s3_mirror(s3, tmp_path, monkeypatch):
    import torch

    from sidreasoner.model import tiny
    from sidreasoner.model.loading import ModelSourceError, load_model_and_tokenizer, save_model
    from sidreasoner.train.base import prepare_base_model

    cfg = load("demo")
    tok = tiny.train_tokenizer(["a small corpus of words about pens and paper"] * 40, 300)
    save_model(tiny.build_model(cfg.model.tiny, tok, 0), tok, tmp_path / "src")
    storage.upload_dir(tmp_path / "src", "s3://bkt/models/tiny")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    m = prepare_base_model(load("demo", ["model.base=s3://bkt/models/tiny"]), tmp_path, tmp_path, tmp_path / "out")
    assert m["parameters"] > 0
    original, _ = load_model_and_tokenizer(tmp_path / "src")
    mirrored, mirrored_tok = load_model_and_tokenizer(tmp_path / "out")
    assert all(
        torch.equal(a, b) for a, b in zip(original.state_dict().values(), mirrored.state_dict().values(), strict=True)
    )
    assert len(mirrored_tok) == len(tok)
    assert list((tmp_path / "hf" / "sidreasoner-buckets").iterdir())  # mirrored once, beside the HF cache

    storage.upload_file(tmp_path / "src" / "tokenizer.json", "s3://bkt/models/broken/tokenizer.json")
    with pytest.raises(ModelSourceError, match="no config.json"):
        prepare_base_model(load("demo", ["model.base=s3://bkt/models/broken"]), tmp_path, tmp_path, tmp_path / "o2")
    assert not (tmp_path / "o2").exists()


def _catalogue(root: Path) -> tuple[Path, Path]:
    """The SID index and dataset folders export-model puts beside the model (3 files in the export)."""
    sid_index, dataset = root / "sid_index", root / "dataset"
    for folder, name, text in (
        (sid_index, "index.json", '{"0": ["<a_1>"]}'),
        (dataset, "items.parquet", "PAR1"),
        (dataset, "stats.json", "{}"),
    ):
        folder.mkdir(exist_ok=True)
        (folder / name).write_text(text)
    return sid_index, dataset


def test_export_model_to_s3_round_trip_idempotent_and_guarded(s3, tmp_path, monkeypatch):
    import torch

    from sidreasoner.export import export_model
    from sidreasoner.model import tiny
    from sidreasoner.model.loading import load_model_and_tokenizer, save_model
    from sidreasoner.train.base import prepare_base_model

    cfg = load("demo")
    tok = tiny.train_tokenizer(["a small corpus of words about pens and paper"] * 40, 300)
    save_model(tiny.build_model(cfg.model.tiny, tok, 0), tok, tmp_path / "model")
    catalogue = _catalogue(tmp_path)
    m = export_model(
        load("demo", ["export.uri=s3://bkt/exports/run-1"]), tmp_path / "model", *catalogue, tmp_path / "e1"
    )
    assert m["uploaded"] == 1.0 and m["files"] == len(list((tmp_path / "model").iterdir())) + 3  # + the catalogue
    record = json.loads((tmp_path / "e1/export.json").read_text())
    assert record["uri"] == "s3://bkt/exports/run-1" and record["total_bytes"] == m["bytes"]
    assert storage.read_marker("s3://bkt/exports/run-1")["files"] == record["files"]

    # What was exported is a model prepare-base-model can start from.
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    prepare_base_model(load("demo", ["model.base=s3://bkt/exports/run-1"]), tmp_path, tmp_path, tmp_path / "back")
    original, _ = load_model_and_tokenizer(tmp_path / "model")
    back, _ = load_model_and_tokenizer(tmp_path / "back")
    assert all(
        torch.equal(a, b) for a, b in zip(original.state_dict().values(), back.state_dict().values(), strict=True)
    )

    # A retried pod finds the same model there and uploads nothing.
    again = export_model(
        load("demo", ["export.uri=s3://bkt/exports/run-1"]), tmp_path / "model", *catalogue, tmp_path / "e2"
    )
    assert again["uploaded"] == 0.0 and again["files"] == m["files"]

    # A different model is not written over a complete one unless asked.
    save_model(tiny.build_model(cfg.model.tiny, tok, 1), tok, tmp_path / "other")
    with pytest.raises(FileExistsError, match=r"s3://bkt/exports/run-1 already holds a different.*export.overwrite"):
        export_model(
            load("demo", ["export.uri=s3://bkt/exports/run-1"]), tmp_path / "other", *catalogue, tmp_path / "e3"
        )
    assert not (tmp_path / "e3").exists()
    replaced = export_model(
        load("demo", ["export.uri=s3://bkt/exports/run-1", "export.overwrite=true"]),
        tmp_path / "other",
        *catalogue,
        tmp_path / "e4",
    )
    assert replaced["uploaded"] == 1.0
    assert (
        storage.read_marker("s3://bkt/exports/run-1")["files"]
        == json.loads((tmp_path / "e4/export.json").read_text())["files"]
    )


def test_export_model_errors(s3, tmp_path):
    from sidreasoner.config import ConfigError
    from sidreasoner.export import export_model

    (tmp_path / "not_a_model").mkdir()
    (tmp_path / "not_a_model" / "config.json").write_text("{}")
    with pytest.raises(
        FileNotFoundError,
        match=r"not_a_model is not a saved Hugging Face model "
        r"\(missing: tokenizer_config.json, \*.safetensors\)",
    ):
        export_model(
            load("demo", ["export.uri=s3://bkt/x"]), tmp_path / "not_a_model", *_catalogue(tmp_path), tmp_path / "e"
        )
    with pytest.raises(ConfigError, match="export.uri is empty"):
        export_model(load("demo"), tmp_path / "not_a_model", *_catalogue(tmp_path), tmp_path / "e")
    assert not (tmp_path / "e").exists()
