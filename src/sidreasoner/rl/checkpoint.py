"""The raw Stage 3 checkpoint: what `rl-stage3` writes and `merge-checkpoint` turns into a plain
Hugging Face model.

The folder holds `checkpoint.json` (this module's manifest) next to the backend's own files:
  {"format": "hf",        "path": "model"}    a saved Hugging Face model (TRL, full fine-tuning)
  {"format": "peft_lora", "path": "adapter"}  a peft LoRA adapter over the Stage 2 model (TRL, LoRA)
  {"format": "verl_fsdp", "path": "actor"}    verl's sharded FSDP actor checkpoint (its
                                               model_world_size_*_rank_*.pt, fsdp_config.json and
                                               huggingface/ folder)
plus any other keys the backend records (backend, global_step, ...).
"""

from __future__ import annotations

import json
from pathlib import Path

from sidreasoner.io import write_json

MANIFEST = "checkpoint.json"
FORMATS = ("hf", "peft_lora", "verl_fsdp")


def write_manifest(out_dir: Path, fmt: str, path: str, **extra) -> Path:
    """Write `checkpoint.json` into `out_dir` (the checkpoint folder being built)."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown checkpoint format {fmt!r}; allowed: {', '.join(FORMATS)}")
    if not (Path(out_dir) / path).exists():
        raise FileNotFoundError(f"checkpoint {out_dir}: '{path}' (the {fmt} files) does not exist")
    manifest = Path(out_dir) / MANIFEST
    write_json(manifest, {"format": fmt, "path": path, **extra})
    return manifest


def read_manifest(ckpt_dir: Path) -> dict:
    """The manifest of a raw Stage 3 checkpoint, checked: a clear error names the file and the key."""
    manifest = Path(ckpt_dir) / MANIFEST
    if not manifest.exists():
        raise FileNotFoundError(f"{manifest} not found: {ckpt_dir} is not an rl-stage3 checkpoint")
    try:
        info = json.loads(manifest.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{manifest}: not JSON ({e})") from None
    if not isinstance(info, dict):
        raise ValueError(f"{manifest}: expected a JSON object")
    for key in ("format", "path"):
        if key not in info:
            raise ValueError(f"{manifest}: missing key '{key}'")
    if info["format"] not in FORMATS:
        raise ValueError(f"{manifest}: 'format' is {info['format']!r}; allowed: {', '.join(FORMATS)}")
    if not (Path(ckpt_dir) / info["path"]).exists():
        raise FileNotFoundError(f"{manifest}: 'path' {info['path']!r} does not exist in {ckpt_dir}")
    return info
