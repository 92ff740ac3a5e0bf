"""sidreasoner.storage against gcp-storage-emulator on 127.0.0.1 through google-cloud-storage."""

from __future__ import annotations

import http.server
import json
import os
import threading
from pathlib import Path

import pytest

from sidreasoner import storage
from sidreasoner.storage.gcs import make_client


@pytest.fixture
def gcs(gcs_emulator, monkeypatch):
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", gcs_emulator)
    monkeypatch.setenv("SIDREASONER_STORAGE_RETRY_DELAY", "0.02")
    monkeypatch.setenv("SIDREASONER_STORAGE_RETRIES", "3")
    monkeypatch.setenv("SIDREASONER_GCS_CHUNK_SIZE", str(256 * 1024))
    client = make_client()
    if client.lookup_bucket("bkt") is None:
        client.create_bucket("bkt")
    return client


def _tree(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_file_round_trip_and_chunked_upload(gcs, tmp_path):
    big = tmp_path / "big.bin"
    big.write_bytes(os.urandom(3 * 1024 * 1024 + 7))  # resumable upload in 13 chunks of 256 KiB
    assert not storage.exists("gs://bkt/files/big.bin")
    assert storage.upload_file(big, "gs://bkt/files/big.bin")["size"] == big.stat().st_size
    blob = gcs.bucket("bkt").get_blob("files/big.bin")
    assert blob.size == big.stat().st_size and blob.crc32c and blob.md5_hash
    assert storage.exists("gs://bkt/files/big.bin") and storage.exists("gs://bkt/files")
    assert storage.list_files("gs://bkt/files") == ["big.bin"]
    got = storage.download_file("gs://bkt/files/big.bin", tmp_path / "out" / "big.bin")
    assert got.read_bytes() == big.read_bytes() and [p.name for p in got.parent.iterdir()] == ["big.bin"]


def test_folder_round_trip_and_incomplete(gcs, tmp_path):
    src = tmp_path / "model"
    (src / "sub").mkdir(parents=True)
    (src / "config.json").write_text("{}")
    (src / "sub" / "w.bin").write_bytes(os.urandom(100_000))
    manifest = storage.upload_dir(src, "gs://bkt/models/m1")
    assert sorted(manifest["files"]) == ["config.json", "sub/w.bin"]
    assert storage.download_dir("gs://bkt/models/m1", tmp_path / "out") == ["config.json", "sub/w.bin"]
    assert _tree(tmp_path / "out") == _tree(src)
    gcs.bucket("bkt").blob("models/m1/_SUCCESS").delete()  # as if the upload stopped before its marker
    with pytest.raises(storage.IncompleteUploadError, match=r"gs://bkt/models/m1: incomplete upload"):
        storage.download_dir("gs://bkt/models/m1", tmp_path / "out2")
    assert not (tmp_path / "out2").exists()


def test_changed_object_fails_manifest_check(gcs, tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "w.bin").write_bytes(b"a" * 1000)
    storage.upload_dir(src, "gs://bkt/models/m3")
    gcs.bucket("bkt").blob("models/m3/w.bin").upload_from_string(b"b" * 1000)  # same size, other bytes
    with pytest.raises(storage.ChecksumError, match=r"gs://bkt/models/m3/w.bin: MD5 \(manifest\) mismatch"):
        storage.download_dir("gs://bkt/models/m3", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_bucket_and_object(gcs, tmp_path):
    (tmp_path / "f").write_text("x")
    for call in (
        lambda: storage.download_file("gs://no-such-bkt/a/b", tmp_path / "o"),
        lambda: storage.upload_file(tmp_path / "f", "gs://no-such-bkt/a/b"),
        lambda: storage.list_files("gs://no-such-bkt/a"),
    ):
        with pytest.raises(storage.NotFoundError, match=r"gs://no-such-bkt/a.*bucket 'no-such-bkt' does not exist"):
            call()
    assert not storage.exists("gs://no-such-bkt/a")
    with pytest.raises(storage.NotFoundError, match=r"gs://bkt/none: no such object"):
        storage.download_file("gs://bkt/none", tmp_path / "o")


class _TokenServer:
    """An OAuth token endpoint on 127.0.0.1 that rejects every grant, as Google does for a revoked key."""

    def __init__(self) -> None:
        self.hits = 0
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_POST(self):
                outer.hits += 1
                self.rfile.read(int(self.headers.get("Content-Length", 0)))
                body = json.dumps({"error": "invalid_grant", "error_description": "Invalid JWT Signature."}).encode()
                self.send_response(400)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/token"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()


@pytest.mark.parametrize("key_env", ["GOOGLE_APPLICATION_CREDENTIALS", "SIDREASONER_GCS_KEY_FILE"])
def test_wrong_credentials_clear_error(tmp_path, monkeypatch, key_env):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    pem = (
        rsa.generate_private_key(public_exponent=65537, key_size=2048)
        .private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        .decode()
    )
    tokens = _TokenServer()
    key = {
        "type": "service_account",
        "project_id": "p",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "pipeline@p.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": tokens.url,
    }
    (tmp_path / "key.json").write_text(json.dumps(key))
    monkeypatch.delenv("STORAGE_EMULATOR_HOST", raising=False)
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv(key_env, str(tmp_path / "key.json"))
    monkeypatch.setenv("SIDREASONER_STORAGE_RETRIES", "1")
    try:
        with pytest.raises(storage.CredentialsError) as err:
            storage.download_file("gs://bkt/a/b", tmp_path / "o")
    finally:
        tokens.httpd.shutdown()
        tokens.httpd.server_close()
    msg = str(err.value)
    assert msg.startswith("gs://bkt/a/b: Google Cloud Storage refused the credentials") and "invalid_grant" in msg
    assert "PRIVATE KEY" not in msg and tokens.hits >= 1 and not (tmp_path / "o").exists()
    # A missing key file (the optional Secret absent): no credentials from it, a clear error.
    monkeypatch.setenv(key_env, str(tmp_path / "missing.json"))
    with pytest.raises(storage.CredentialsError, match="gs://: no Google credentials found"):
        storage.exists("gs://bkt/a")
