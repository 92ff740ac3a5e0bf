"""Tokenised examples with response-only labels, the batch collators (packed or padded) and the
length-grouped sampler."""

from __future__ import annotations

import hashlib
import json
import random
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import Dataset, Sampler
from transformers import DataCollatorWithFlattening
from transformers.trainer_pt_utils import get_length_grouped_indices

from sidreasoner.data.literals import json_or_literal
from sidreasoner.model import prompts
from sidreasoner.storage import StorageError, download_file, parse_uri

IGNORE = -100


@dataclass
class Example:
    """One training example.

    Chat tasks: `prompt` is the user message and `system` the system message (by default the task's,
    `prompts.SYSTEM_BY_TASK`; "" = none); `response` is the assistant's answer; `thinking` renders the
    prompt in thinking mode. General instruction data: `messages` is the whole prompt conversation,
    rendered as it is (`prompt` then only names its last user message). LM text (the corpus'
    narratives): `prompt` None and `response` the whole text. `max_len` > 0: a token limit of its own
    instead of the stage's cutoff_len."""

    task: str
    prompt: str | None
    response: str
    thinking: bool = False
    system: str | None = None
    messages: list[dict] | None = None
    max_len: int = 0

    def __post_init__(self):
        if self.system is None and self.prompt is not None and self.messages is None:
            self.system = prompts.SYSTEM_BY_TASK.get(self.task)


TRUNCATIONS = ("left", "right")
EOS_LOSS = ("all", "thinking", "none")


def encode(
    tokenizer,
    ex: Example,
    cutoff_len: int,
    *,
    truncation: str = "left",
    loss_on_eos: str = "all",
    text_end: bool = True,
) -> dict:
    """input_ids + labels.

    Chat tasks: the prompt rendered by `prompts.render_prompt` (general instruction data:
    `prompts.render_messages`) and tokenised on its own, so its tokens equal the inference prompt's;
    labels -100 on it. Then the response, which carries the loss, and the end of the turn: the chat
    template's (`prompts.turn_end`, "<|im_end|>\\n" for Qwen3) after a chat task's answer, the eos token
    alone after general instruction data. The turn end carries the loss with loss_on_eos="all", with
    "thinking" only when the prompt is rendered in thinking mode, with "none" never.
    LM text: loss on every token, then an end-of-text token (with loss) when `text_end`.
    Longer than `ex.max_len` (or `cutoff_len`) tokens: truncation="left" keeps the last tokens (the
    answer), "right" the first."""
    if truncation not in TRUNCATIONS:
        raise ValueError(f"truncation must be one of {TRUNCATIONS}, got {truncation!r}")
    if loss_on_eos not in EOS_LOSS:
        raise ValueError(f"loss_on_eos must be one of {EOS_LOSS}, got {loss_on_eos!r}")
    if ex.prompt is None and ex.messages is None:
        ids = tokenizer(ex.response, add_special_tokens=False)["input_ids"]
        if text_end:
            ids = ids + [tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id]
        labels = list(ids)
    else:
        if ex.messages is not None:
            rendered = prompts.render_messages(tokenizer, ex.messages, ex.thinking)
            end_ids = [tokenizer.eos_token_id]
        else:
            rendered = prompts.render_prompt(tokenizer, ex.prompt, ex.thinking, system=ex.system)
            end_ids = tokenizer(prompts.turn_end(tokenizer), add_special_tokens=False)["input_ids"]
        prompt_ids = tokenizer(rendered, add_special_tokens=False)["input_ids"]
        resp_ids = tokenizer(ex.response, add_special_tokens=False)["input_ids"]
        end_loss = loss_on_eos == "all" or (loss_on_eos == "thinking" and ex.thinking)
        ids = prompt_ids + resp_ids + end_ids
        labels = [IGNORE] * len(prompt_ids) + resp_ids + (end_ids if end_loss else [IGNORE] * len(end_ids))
    limit = ex.max_len or cutoff_len
    if len(ids) > limit:
        ids, labels = (ids[-limit:], labels[-limit:]) if truncation == "left" else (ids[:limit], labels[:limit])
    return {"input_ids": ids, "labels": labels}


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


class LengthGroupedEpochSampler(Sampler):
    """transformers' length-grouped order (mega-batches of `batch_size` examples of similar lengths, the
    longest first), drawn from a generator of its own for each (seed, epoch): the order of an epoch is the
    same in a run resumed from a checkpoint as in one never interrupted (transformers' sampler draws from the
    global RNG, which a resume restores to the checkpoint's state). The generator's seed is a digest of
    (seed, epoch), not the seed itself, which also seeds the model's initialisation and the example draws.
    The Trainer's dataloader calls set_epoch."""

    def __init__(self, lengths: list[int], batch_size: int, seed: int):
        self.lengths, self.batch_size, self.seed = list(lengths), batch_size, seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self):
        digest = hashlib.sha256(f"length-grouped order {self.seed} {self.epoch}".encode()).digest()
        generator = torch.Generator().manual_seed(int.from_bytes(digest[:8], "little"))
        return iter(get_length_grouped_indices(self.lengths, self.batch_size, generator=generator))


class InstructionFileError(ValueError):
    pass


def _content_text(content) -> str:
    """A message's text: a string as it is, or the first part's "text" of a list of parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list) and content and isinstance(content[0], dict):
        return str(content[0].get("text") or "")
    return ""


def _messages_record(raw, where: str) -> tuple[list[dict], str]:
    """(prompt messages, answer) of a general-data record: the user and system messages in order
    (a system message whose content is a list of parts becomes a user message, as the research code
    reads them) and the last assistant message's text ("" when there is none)."""
    if isinstance(raw, str):
        try:
            raw = json_or_literal(raw)
        except ValueError:
            raise InstructionFileError(f"{where}: messages is neither JSON nor a Python literal") from None
    if not isinstance(raw, list) or not all(isinstance(m, dict) and isinstance(m.get("role"), str) for m in raw):
        raise InstructionFileError(f"{where}: messages must be a list of {{role, content}} objects")
    prompt: list[dict] = []
    answer = ""
    for m in raw:
        text = _content_text(m.get("content"))
        if m["role"] == "user":
            prompt.append({"role": "user", "content": text})
        elif m["role"] == "system":
            prompt.append({"role": "user" if isinstance(m.get("content"), list) else "system", "content": text})
        elif m["role"] == "assistant":
            answer = text
    return prompt, answer


def read_instruction_file(
    path: str | Path, samples: int = 0, seed: int = 0, max_len: int = 0, thinking: bool = False
) -> list[Example]:
    """General instruction data, JSON lines of one of three kinds:
    {"instruction", "input"?, "output"} (Alpaca), {"prompt", "response"}, or {"messages"} (the research
    code's general-reasoning data: a list of chat messages, or a string holding one as JSON or as a
    Python literal). Each line's prompt is its messages but the assistant's (Alpaca and prompt/response
    lines: one user message), its answer the last assistant message.

    samples > 0 keeps a seeded sample of that many lines (Python's random.Random(seed).sample over every
    line, as the research code samples), 0 or more than the file holds keeps all. Sampled lines without
    an answer or a prompt are then left out. Examples get `max_len` as their own token limit and are
    rendered in thinking mode when `thinking`. A bucket URI (s3://, minio://, gs://) is read from a
    downloaded copy (checked against the store's checksum), removed afterwards; errors name the URI."""
    try:
        where = parse_uri(path)
        if where.scheme == "file":
            return _read_instructions(Path(where.key), str(path), samples, seed, max_len, thinking)
        with tempfile.TemporaryDirectory(prefix="sidreasoner-instructions-") as tmp:
            local = download_file(path, Path(tmp) / "instructions.jsonl")
            return _read_instructions(local, str(path), samples, seed, max_len, thinking)
    except StorageError as err:
        raise InstructionFileError(f"stage1.instruction_file {path}: {err}") from None


def _read_instructions(path: Path, shown: str, samples: int, seed: int, max_len: int, thinking: bool) -> list[Example]:
    """read_instruction_file on a local file; `shown` is the name errors give it."""
    if not path.is_file():
        raise InstructionFileError(f"stage1.instruction_file {shown}: no such file")
    records: list[tuple[list[dict], str]] = []
    with path.open(encoding="utf-8-sig") as fh:  # a byte-order mark is not part of the first line
        for lineno, line in enumerate(fh, 1):
            if not line.strip():
                continue
            where = f"{shown}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as err:
                raise InstructionFileError(f"{where}: not valid JSON ({err.msg})") from None
            except RecursionError:
                raise InstructionFileError(f"{where}: its JSON is nested too deep to read") from None
            if not isinstance(obj, dict):
                raise InstructionFileError(f"{where}: expected a JSON object")
            if "messages" in obj:
                records.append(_messages_record(obj["messages"], where))
                continue
            if "prompt" in obj and "response" in obj:
                prompt, response = obj["prompt"], obj["response"]
            elif "instruction" in obj and "output" in obj:
                extra = obj.get("input") or ""
                if not isinstance(obj["instruction"], str) or not isinstance(extra, str):
                    raise InstructionFileError(f"{where}: instruction and input must be strings")
                prompt = obj["instruction"] + (f"\n{extra}" if extra else "")
                response = obj["output"]
            else:
                raise InstructionFileError(
                    f"{where}: needs keys messages, instruction+output (input optional) or prompt+response, "
                    f"got {sorted(obj)}"
                )
            if not (isinstance(prompt, str) and isinstance(response, str) and prompt and response):
                raise InstructionFileError(f"{where}: prompt and response must be non-empty strings")
            records.append(([{"role": "user", "content": prompt}], response))
    if 0 < samples < len(records):
        records = random.Random(seed).sample(records, samples)
    out = [
        Example(
            "instructions",
            next((m["content"] for m in reversed(msgs) if m["role"] == "user"), ""),
            answer,
            thinking=thinking,
            messages=msgs,
            max_len=max_len,
        )
        for msgs, answer in records
        if msgs and answer
    ]
    if not out:
        raise InstructionFileError(f"{shown}: no instructions in the file")
    return out
