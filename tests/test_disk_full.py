"""A step whose disk fills up fails with one line, "no space left on <folder>", naming the folder it was
writing: real `sidreasoner step` processes writing onto a small tmpfs (mounting one needs root)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SIDREASONER = Path(sys.executable).parent / "sidreasoner"
# A few optimizer steps on the tiny fixtures, a checkpoint after each.
SFT = [
    "stage1.per_device_batch_size=8",
    "stage1.global_batch_size=8",
    "stage1.valid_samples=3",
    "stage1.hr_samples=2",
    "stage1.epochs=1",
    "stage1.early_stopping_patience=0",
]
FREE = r"\d+(\.\d)? (bytes|KiB) free now"


@pytest.fixture()
def small_disk(tmp_path):
    """small_disk(size) -> an empty folder on a tmpfs of `size` ("60k"); unmounted after the test."""
    mounted = []

    def mount(size: str) -> Path:
        if os.geteuid() != 0:
            pytest.skip("mounting a tmpfs needs root")
        folder = tmp_path / f"disk{len(mounted)}"
        folder.mkdir()
        result = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True, text=True
        )
        if result.returncode:
            pytest.skip(f"cannot mount a tmpfs: {result.stderr.strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def _step(name: str, *args: str, overrides: list[str] = ()) -> subprocess.CompletedProcess:
    command = [str(SIDREASONER), "step", name, *args, *(a for item in overrides for a in ("--set", item))]
    return subprocess.run(command, capture_output=True, text=True, timeout=300)


def _error_lines(result: subprocess.CompletedProcess) -> list[str]:
    return [line for line in result.stderr.splitlines() if line.startswith("error:") or "Traceback" in line]


def _sft(base, model_out: Path, checkpoint_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    return _step(
        "sft-stage1",
        "--base-model",
        str(base["model_dir"]),
        "--dataset",
        str(base["dataset"]),
        "--sid-index",
        str(base["sid_index"]),
        "--corpus",
        str(base["corpus"]),
        "--model",
        str(model_out),
        overrides=[*base["overrides"], *SFT, f"stage1.checkpoint_dir={checkpoint_dir}", *overrides],
    )


@pytest.mark.slow
def test_a_full_checkpoint_disk_is_one_line(tiny_base_model, small_disk, tmp_path):
    """torch's checkpoint writer says only "[enforce fail at inline_container.cc] unexpected pos"."""
    disk = small_disk("200k")  # the first checkpoint does not fit
    result = _sft(tiny_base_model, tmp_path / "model", disk / "ckpt", "stage1.save_steps=1")
    assert result.returncode == 1
    (line,) = _error_lines(result)
    where = re.escape(str(disk / "ckpt"))
    assert re.fullmatch(rf"error: sft-stage1: no space left on {where} \({FREE}\)", line), line
    assert not (tmp_path / "model").exists()


@pytest.mark.slow
def test_a_full_output_disk_is_one_line(tiny_base_model, small_disk, tmp_path):
    """safetensors' SafetensorError ("I/O error: No space left on device (os error 28)") was a traceback."""
    disk = small_disk("60k")  # the trained model does not fit; the half-written copy is removed
    result = _sft(tiny_base_model, disk / "model", tmp_path / "ckpt", "stage1.save_steps=1000")
    assert result.returncode == 1
    (line,) = _error_lines(result)
    where = re.escape(str(disk / "model"))
    assert re.fullmatch(rf"error: sft-stage1: no space left on {where} \({FREE}\)", line), line
    assert os.listdir(disk) == []


def test_embed_items_on_a_full_disk_is_one_line(tiny_artifacts, small_disk):
    """numpy's short write ("2304 requested and 992 written") carries no errno."""
    disk = small_disk("4k")
    result = _step("embed-items", "--dataset", str(tiny_artifacts["dataset"]), "--embeddings", str(disk / "emb"))
    assert result.returncode == 1
    (line,) = _error_lines(result)
    where, on = re.escape(str(disk / "emb")), re.escape(str(disk))
    assert re.fullmatch(
        rf"error: embed-items: no space left on {where} \({FREE}\) writing {on}/[^/]+/embeddings\.npy", line
    ), line
    assert os.listdir(disk) == []
