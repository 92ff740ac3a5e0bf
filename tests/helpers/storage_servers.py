"""Real storage servers on 127.0.0.1 for the storage tests: moto (S3) and gcp-storage-emulator (GCS)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(proc: subprocess.Popen, url: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except urllib.error.HTTPError:
            return  # it answers
        except OSError:
            time.sleep(0.05)
    proc.kill()
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _exe(name: str, module: str) -> list[str]:
    path = BIN / name
    return (
        [str(path)]
        if path.exists()
        else ([shutil.which(name)] if shutil.which(name) else [sys.executable, "-m", module])
    )


def start_moto(auth_after: int | None = None) -> tuple[subprocess.Popen, str]:
    """moto_server on a free loopback port; with auth_after=N, IAM auth is enforced after N requests."""
    port = free_port()
    env = dict(os.environ)
    if auth_after is not None:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = str(auth_after)
    proc = subprocess.Popen(
        _exe("moto_server", "moto.server") + ["-H", "127.0.0.1", "-p", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    _wait(proc, f"{url}/moto-api/data.json")
    return proc, url


def moto_iam_user(url: str) -> tuple[str, str]:
    """Create an IAM user allowed everything and return its (access key id, secret) (3 requests)."""
    import boto3

    iam = boto3.client(
        "iam",
        endpoint_url=url,
        region_name="us-east-1",
        aws_access_key_id="bootstrap",
        aws_secret_access_key="bootstrap",
    )
    iam.create_user(UserName="pipeline")
    iam.put_user_policy(
        UserName="pipeline",
        PolicyName="all",
        PolicyDocument=json.dumps(
            {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "*", "Resource": "*"}]}
        ),
    )
    key = iam.create_access_key(UserName="pipeline")["AccessKey"]
    return key["AccessKeyId"], key["SecretAccessKey"]


def start_gcs_emulator() -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen(
        _exe("gcp-storage-emulator", "gcp_storage_emulator")
        + ["start", "--host=127.0.0.1", f"--port={port}", "--in-memory"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    url = f"http://127.0.0.1:{port}"
    _wait(proc, f"{url}/storage/v1/b")
    return proc, url
