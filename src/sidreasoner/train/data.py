"""Tokenised examples with response-only labels, and the batch collators (packed or padded)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset
from transformers import DataCollatorWithFlattening

from sidreasoner.model import prompts

IGNORE = -100


@dataclass
class Example:
    task: str
    prompt: str | None  # user text (chat tasks); None for plain LM text
    response: str  # assistant answer (chat tasks) or the whole text (LM tasks)
    thinking: bool = False


def encode(tokenizer, ex: Example, cutoff_len: int) -> dict:
    """input_ids + labels. Chat tasks: prompt rendered by `prompts.render_prompt` and tokenised on
    its own (so its tokens equal the inference prompt's), labels -100 on it; the response ends with
    the eos token (`<|im_end|>`) and carries the loss. LM text: loss on every token."""
    if ex.prompt is None:
        ids = tokenizer(ex.response, add_special_tokens=False)["input_ids"]
        end = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        ids = ids + [end]
        labels = list(ids)
    else:
        prompt_ids = tokenizer(prompts.render_prompt(tokenizer, ex.prompt, ex.thinking), add_special_tokens=False)["input_ids"]
        resp_ids = tokenizer(ex.response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = prompt_ids + resp_ids
        labels = [IGNORE] * len(prompt_ids) + resp_ids
    return {"input_ids": ids[:cutoff_len], "labels": labels[:cutoff_len]}


class ListDataset(Dataset):
    def __init__(self, rows: list[dict]):
        self.rows = rows

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict:
        return self.rows[i]


class PadCollator:
    def __init__(self, pad_id: int):
        self.pad_id = pad_id

    def __call__(self, features: list[dict]) -> dict:
        n = max(len(f["input_ids"]) for f in features)
        ids = torch.full((len(features), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(features), n), IGNORE, dtype=torch.long)
        mask = torch.zeros((len(features), n), dtype=torch.long)
        for i, f in enumerate(features):
            k = len(f["input_ids"])
            ids[i, :k] = torch.tensor(f["input_ids"])
            labels[i, :k] = torch.tensor(f["labels"])
            mask[i, :k] = 1
        return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def collator(batching: str, pad_id: int):
    """packed: one row per batch, position ids restarting per example (transformers builds a
    block-diagonal causal mask from them, so examples never attend to each other)."""
    if batching == "packed":
        return DataCollatorWithFlattening(return_position_ids=True, separator_id=IGNORE)
    return PadCollator(pad_id)


class InstructionFileError(ValueError):
    pass


def read_instruction_file(path: str | Path) -> list[Example]:
    """JSONL: {"instruction", "input"?, "output"} (Alpaca) or {"prompt", "response"} per line."""
    path = Path(path)
    if not path.is_file():
        raise InstructionFileError(f"stage1.instruction_file {path}: no such file")
    out: list[Example] = []
    with path.open(encoding="utf-8") as fh:
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise InstructionFileError(f"{path}:{lineno}: not valid JSON ({err.msg})") from None
            if not isinstance(obj, dict):
                raise InstructionFileError(f"{path}:{lineno}: expected a JSON object")
            if "prompt" in obj and "response" in obj:
                prompt, response = obj["prompt"], obj["response"]
            elif "instruction" in obj and "output" in obj:
                prompt = obj["instruction"] + (f"\n{obj['input']}" if obj.get("input") else "")
                response = obj["output"]
            else:
                raise InstructionFileError(
                    f"{path}:{lineno}: needs keys instruction+output (input optional) or prompt+response, got {sorted(obj)}"
                )
            if not (isinstance(prompt, str) and isinstance(response, str) and prompt and response):
                raise InstructionFileError(f"{path}:{lineno}: prompt and response must be non-empty strings")
            out.append(Example("instructions", prompt, response))
    if not out:
        raise InstructionFileError(f"{path}: no instructions in the file")
    return out
