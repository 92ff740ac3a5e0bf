"""Stage 1 task mix and Stage 2 reasoning examples, built from the artifact folders."""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path

import numpy as np
import pandas as pd

from sidreasoner.config import Stage1Config, Stage2Config
from sidreasoner.model import prompts
from sidreasoner.model.text_safety import DataText
from sidreasoner.sid.index import load_catalogue, load_sid_map
from sidreasoner.train.data import Example, read_instruction_file

STAGE1_TASKS = (
    "sid_history_to_sid",
    "title_to_sid",
    "sid_to_title",
    "sid_history_to_title",
    "title_history_to_title",
    "title_history_to_sid",
    "item_narratives",
    "history_narratives",
    "instructions",
)


def sid_code_tokens(sid_index_dir: Path) -> list[str]:
    """Every code token of the index (and catalogue), sorted by level then code."""
    index = json.loads((Path(sid_index_dir) / "index.json").read_text())
    tokens = {t for codes in index.values() for t in codes}
    cat = Path(sid_index_dir) / "catalogue.json"
    if cat.exists():
        import re

        for sid in json.loads(cat.read_text()):
            tokens.update(re.findall(r"<[a-z]_\d+>", sid))
    return sorted(tokens, key=lambda t: (t[1], int(t[3:-1])))


def _titles(dataset_dir: Path, safe: DataText) -> dict[int, str]:
    items = pd.read_parquet(Path(dataset_dir) / "items.parquet", columns=["item_id", "title"])
    return {int(i): safe.plain(t) for i, t in zip(items.item_id, items.title.astype(str), strict=True)}


def _pick(rng: np.random.Generator, examples: list[Example], weight: float, cap: int) -> list[Example]:
    if cap and len(examples) > cap:
        examples = [examples[i] for i in sorted(rng.choice(len(examples), cap, replace=False))]
    whole, frac = int(weight), weight - int(weight)
    out = examples * whole
    k = round(frac * len(examples))
    if k:
        out += [examples[i] for i in sorted(rng.choice(len(examples), k, replace=False))]
    return out


def category_text(dataset_dir: Path) -> str:
    """The dataset's category (stats.json, written by preprocess) as the title-history prompts name it."""
    stats = Path(dataset_dir) / "stats.json"
    name = json.loads(stats.read_text()).get("category", "") if stats.exists() else ""
    return prompts.category_phrase(str(name))


def general_reasoning_file(cfg: Stage1Config, dataset_dir: Path) -> str:
    """stage1.instruction_file, else the general-reasoning chats of the research bundle the dataset was
    made from (its bundle/general.jsonl), else none."""
    if cfg.instruction_file:
        return cfg.instruction_file
    bundled = Path(dataset_dir) / "bundle" / "general.jsonl"
    return str(bundled) if bundled.is_file() else ""


def stage1_examples(
    cfg: Stage1Config,
    seed: int,
    dataset_dir: Path,
    sid_index_dir: Path,
    corpus_dir: Path,
    data_text: DataText | None = None,
) -> tuple[list[Example], dict[str, int]]:
    """The Stage 1 task mix. Chat tasks carry the research code's system and user messages (the
    title-history-to-title task's system message draws one of 11 instructions per training sample with
    random.Random(seed)). The title/SID translation tasks have one example per distinct title and per
    distinct SID (the item listed last wins), as the research code's title/SID maps do.
    Text from data (titles, the corpus' narratives, the instruction file) goes through `data_text`
    (the tokenizer's; by default marker shapes), which breaks the markers in it and counts them."""
    safe = data_text or DataText()
    sid = load_sid_map(sid_index_dir)
    catalogue = frozenset(load_catalogue(sid_index_dir))
    title = _titles(dataset_dir, safe)
    instructions = general_reasoning_file(cfg, dataset_dir)
    train = pd.read_parquet(Path(dataset_dir) / "train.parquet")
    hist = [[int(x) for x in h] for h in train.history_item_ids]
    tgt = [int(x) for x in train.item_id]
    items = sorted(set(sid) & set(title))
    sid_title = {sid[i]: title[i] for i in items}
    title_sid = {title[i]: sid[i] for i in items}
    category = category_text(dataset_dir)
    w = cfg.tasks

    def title_history_to_title() -> list[Example]:
        draw, last = random.Random(seed), len(prompts.TITLE_HISTORY_INSTRUCTIONS) - 1
        out = []
        for h, t in zip(hist, tgt, strict=True):
            system = prompts.title_history_system(draw.randint(0, last), category)
            titles = prompts.title_history_tabbed([title[i] for i in h])
            out.append(
                Example(
                    "title_history_to_title",
                    prompts.TITLE_HISTORY_TO_TITLE.format(category=category, titles=titles),
                    f'"{title[t]}"\n',
                    system=system,
                )
            )
        return out

    builders = {
        "sid_history_to_sid": lambda: [
            Example("sid_history_to_sid", prompts.next_sid_question([sid[i] for i in h]), sid[t])
            for h, t in zip(hist, tgt, strict=True)
        ],
        "title_to_sid": lambda: [
            Example("title_to_sid", prompts.TITLE_TO_SID.format(title=name), code) for name, code in title_sid.items()
        ],
        "sid_to_title": lambda: [
            Example("sid_to_title", prompts.SID_TO_TITLE.format(sid=code), name) for code, name in sid_title.items()
        ],
        "sid_history_to_title": lambda: [
            Example(
                "sid_history_to_title",
                prompts.SID_HISTORY_TO_TITLE.format(history=prompts.sid_history([sid[i] for i in h])),
                sid_title.get(sid[t], sid[t]),
            )
            for h, t in zip(hist, tgt, strict=True)
        ],
        "title_history_to_title": title_history_to_title,
        "title_history_to_sid": lambda: [
            Example(
                "title_history_to_sid",
                prompts.TITLE_HISTORY_TO_SID.format(
                    category=category, titles=prompts.title_history([title[i] for i in h])
                ),
                sid[t],
            )
            for h, t in zip(hist, tgt, strict=True)
        ],
        "item_narratives": lambda: [
            _safe_teacher(e, safe, catalogue)
            for e in _corpus_texts(corpus_dir, "items.parquet", "narrative", "item_narratives")
        ],
        "history_narratives": lambda: [
            _safe_teacher(e, safe, catalogue)
            for e in _corpus_texts(corpus_dir, "samples.parquet", "history_narrative", "history_narratives")
        ],
        "instructions": lambda: (
            [
                _safe_instruction(e, safe)
                for e in read_instruction_file(
                    instructions,
                    samples=cfg.instruction_samples,
                    seed=seed,
                    max_len=cfg.instruction_cutoff_len,
                    thinking=cfg.instruction_thinking,
                )
            ]
            if instructions
            else []
        ),
    }
    rng = np.random.default_rng(seed)
    out: list[Example] = []
    counts: dict[str, int] = {}
    for name in STAGE1_TASKS:
        weight = getattr(w, name)
        if weight <= 0:
            continue
        picked = _pick(rng, builders[name](), weight, cfg.max_per_task)
        if not picked:
            continue
        counts[name] = len(picked)
        out.extend(picked)
    if cfg.max_samples and len(out) > cfg.max_samples:
        out = [out[i] for i in sorted(rng.choice(len(out), cfg.max_samples, replace=False))]
    if not out:
        raise ValueError("stage1: the task mix is empty (all weights 0 or no data)")
    return out, counts


def _safe_teacher(ex: Example, safe: DataText, catalogue: frozenset[str]) -> Example:
    return dataclasses.replace(ex, response=safe.teacher(ex.response, catalogue))


def _safe_instruction(ex: Example, safe: DataText) -> Example:
    """An instruction-file example with the markers in its messages and answer broken (an opening think
    block of the answer keeps its tags)."""
    if ex.messages is None:
        return dataclasses.replace(ex, prompt=safe.plain(ex.prompt), response=safe.reply(ex.response))
    messages = [{**m, "content": safe.plain(m["content"])} for m in ex.messages]
    prompt = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    return dataclasses.replace(ex, prompt=prompt, messages=messages, response=safe.reply(ex.response))


def _corpus_texts(corpus_dir: Path, name: str, column: str, task: str) -> list[Example]:
    path = Path(corpus_dir) / name
    if not path.exists():
        return []
    texts = pd.read_parquet(path, columns=[column])[column].tolist()
    # A narrative that kept its think block trains on what follows it, as in the research code.
    texts = [t.split("</think>")[-1].strip() if isinstance(t, str) and "</think>" in t else t for t in texts]
    return [Example(task, None, t) for t in texts if isinstance(t, str) and t.strip()]


def next_sid_valid(
    dataset_dir: Path, sid_index_dir: Path, n: int, seed: int, split: str = "valid"
) -> tuple[list[Example], list[list[str]]]:
    """Held-out next-SID examples from valid.parquet (a seeded sample of n, in file order; n = 0: every
    row) and their history SIDs."""
    sid = load_sid_map(sid_index_dir)
    frame = pd.read_parquet(Path(dataset_dir) / f"{split}.parquet")
    if n <= 0:
        rows = range(len(frame))
    else:
        rng = np.random.default_rng(seed + 1)
        rows = sorted(rng.choice(len(frame), min(n, len(frame)), replace=False))
    exs, hists = [], []
    for r in rows:
        h = [sid[int(i)] for i in frame.history_item_ids.iloc[r]]
        exs.append(Example("sid_history_to_sid", prompts.next_sid_question(h), sid[int(frame.item_id.iloc[r])]))
        hists.append(h)
    return exs, hists


def stage2_examples(
    cfg: Stage2Config, seed: int, sid_index_dir: Path, corpus_dir: Path, data_text: DataText | None = None
) -> tuple[list[Example], list[Example]]:
    """(train, held out): reasoning examples from the corpus samples; `reasoning_holdout` of them (at most a
    tenth, at least one when > 0) are held out of training for the reasoning validation loss. The paths
    go through `data_text` as stage1_examples' teacher texts do."""
    safe = data_text or DataText()
    sid = load_sid_map(sid_index_dir)
    catalogue = frozenset(load_catalogue(sid_index_dir))
    path = Path(corpus_dir) / "samples.parquet"
    if not path.exists():
        raise FileNotFoundError(
            f"stage2 needs the corpus' samples.parquet (reasoning paths), not found in {corpus_dir}"
        )
    frame = pd.read_parquet(path, columns=["history_item_ids", "item_id", "reasoning_path"])
    frame = frame[frame.reasoning_path.map(lambda x: isinstance(x, str) and bool(x.strip()))]
    if len(frame) < (2 if cfg.reasoning_holdout else 1):
        raise ValueError(
            f"stage2: {len(frame)} reasoning paths in {path}, too few to train on"
            + (" and hold some out (stage2.reasoning_holdout)" if cfg.reasoning_holdout else "")
        )
    exs = [
        Example(
            "reasoning",
            prompts.next_sid_question([sid[int(i)] for i in h], reasoning=True),
            prompts.reasoning_response(safe.teacher(r, catalogue), sid[int(t)]),
            thinking=True,
        )
        for h, t, r in zip(frame.history_item_ids, frame.item_id, frame.reasoning_path, strict=True)
    ]
    rng = np.random.default_rng(seed + 2)
    order = rng.permutation(len(exs))
    n_valid = min(cfg.reasoning_holdout, max(1, len(exs) // 10))
    valid = [exs[i] for i in order[:n_valid]]
    train = [exs[i] for i in order[n_valid:]]
    if cfg.max_samples and len(train) > cfg.max_samples:
        train = train[: cfg.max_samples]
    return train, valid
