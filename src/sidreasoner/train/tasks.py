"""Stage 1 task mix and Stage 2 reasoning examples, built from the dataset, the SID index and the corpus
(handles of their artifact classes, or their folders)."""

from __future__ import annotations

import dataclasses
import os
import random
from collections import Counter

import numpy as np

from sidreasoner.artifacts import ArtifactFileMissing, Corpus, Dataset, SidIndex
from sidreasoner.config import Stage1Config, Stage2Config
from sidreasoner.config.stage1_data import file_ignored_message, no_data_message
from sidreasoner.model import prompts
from sidreasoner.model.text_safety import DataText
from sidreasoner.train.data import Example, read_instruction_file

Folder = str | os.PathLike  # a folder, or a handle of its artifact class

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


def sid_code_tokens(sid_index_dir: Folder) -> list[str]:
    """Every code token of the SID index and its catalogue, sorted by level then code."""
    return SidIndex.at(sid_index_dir).code_tokens()


def _titles(dataset: Dataset, safe: DataText) -> dict[int, str]:
    return {i: safe.plain(t) for i, t in dataset.titles().items()}


def _pick(rng: np.random.Generator, examples: list[Example], weight: float, cap: int) -> list[Example]:
    if cap and len(examples) > cap:
        examples = [examples[i] for i in sorted(rng.choice(len(examples), cap, replace=False))]
    whole, frac = int(weight), weight - int(weight)
    out = examples * whole
    k = round(frac * len(examples))
    if k:
        out += [examples[i] for i in sorted(rng.choice(len(examples), k, replace=False))]
    return out


def category_text(dataset_dir: Folder) -> str:
    """The dataset's category as its stats record it (empty without them), worded as the title-history
    prompts name it."""
    dataset = Dataset.at(dataset_dir)
    name = dataset.stats().get("category", "") if dataset.has_stats() else ""
    return prompts.category_phrase(str(name))


def general_reasoning_file(cfg: Stage1Config, dataset_dir: Folder) -> str:
    """stage1.instruction_file, else the general-reasoning chats kept from the research bundle the dataset was
    made from, else none."""
    if cfg.instruction_file:
        return cfg.instruction_file
    bundled = Dataset.at(dataset_dir).general_chats()
    return str(bundled) if bundled is not None else ""


def _no_general_data(dataset: Dataset) -> str:
    return (
        f"stage1.instruction_file is empty and the dataset {dataset.path} holds no general-reasoning chats "
        f"from a research bundle ({Dataset.BUNDLE_GENERAL})"
    )


def require_stage1_data(cfg: Stage1Config, dataset_dir: Folder, corpus_dir: Folder) -> None:
    """Before sft-stage1 loads anything: a ValueError naming the setting for each task with a weight whose
    data has no source in the step's folders (general-reasoning data, the corpus' narrative tables), and
    for an instruction file given to a task that is off."""
    dataset, corpus, w = Dataset.at(dataset_dir), Corpus.at(corpus_dir), cfg.tasks
    problems = []
    if w.instructions > 0 and not general_reasoning_file(cfg, dataset):
        problems.append(no_data_message("instructions", w.instructions, _no_general_data(dataset)))
    for task, present, name in (
        ("item_narratives", corpus.has_items, Corpus.ITEMS),
        ("history_narratives", corpus.has_samples, Corpus.SAMPLES),
    ):
        if getattr(w, task) > 0 and not present():
            problems.append(no_data_message(task, getattr(w, task), f"the corpus {corpus.path} has no {name}"))
    ignored = file_ignored_message(cfg)
    if problems or ignored:
        raise ValueError("stage1 lacks data:\n" + "\n".join(f"  {p}" for p in problems + [ignored] if p))


def stage1_examples(
    cfg: Stage1Config,
    seed: int,
    dataset_dir: Folder,
    sid_index_dir: Folder,
    corpus_dir: Folder,
    data_text: DataText | None = None,
) -> tuple[list[Example], dict[str, int]]:
    """The Stage 1 task mix. Chat tasks carry the research code's system and user messages (the
    title-history-to-title task's system message draws one of 11 instructions per training sample with
    random.Random(seed)). The title/SID translation tasks have one example per distinct title and per
    distinct SID (the item listed last wins), as the research code's title/SID maps do.
    Text from data (titles, the corpus' narratives, the instruction file) goes through `data_text`
    (the tokenizer's; by default marker shapes), which breaks the markers in it and counts them.
    A task with a weight whose data gives no example is an error naming its setting, never left out.
    The counts are the examples of each task in the mix."""
    dataset, sid_index, corpus = Dataset.at(dataset_dir), SidIndex.at(sid_index_dir), Corpus.at(corpus_dir)
    require_stage1_data(cfg, dataset, corpus)
    safe = data_text or DataText()
    sid = sid_index.sid_map()
    catalogue = frozenset(sid_index.catalogue())
    title = _titles(dataset, safe)
    instructions = general_reasoning_file(cfg, dataset)
    train = dataset.split("train")
    hist = [[int(x) for x in h] for h in train.history_item_ids]
    tgt = [int(x) for x in train.item_id]
    items = sorted(set(sid) & set(title))
    sid_title = {sid[i]: title[i] for i in items}
    title_sid = {title[i]: sid[i] for i in items}
    category = category_text(dataset)
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
            for e in _corpus_texts(corpus.has_items, corpus.items, "narrative", "item_narratives")
        ],
        "history_narratives": lambda: [
            _safe_teacher(e, safe, catalogue)
            for e in _corpus_texts(corpus.has_samples, corpus.samples, "history_narrative", "history_narratives")
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
    sources = {
        "item_narratives": corpus.file(Corpus.ITEMS),
        "history_narratives": corpus.file(Corpus.SAMPLES),
        "instructions": instructions,
    }
    rng = np.random.default_rng(seed)
    out: list[Example] = []
    for name in STAGE1_TASKS:
        weight = getattr(w, name)
        if weight <= 0:
            continue
        built = builders[name]()
        if not built:
            why = f"{sources.get(name, dataset.path)} gave it no examples"
            if name == "instructions" and not instructions:
                why = _no_general_data(dataset)
            raise ValueError(f"stage1: {no_data_message(name, weight, why)}")
        out.extend(_pick(rng, built, weight, cfg.max_per_task))
    if cfg.max_samples and len(out) > cfg.max_samples:
        out = [out[i] for i in sorted(rng.choice(len(out), cfg.max_samples, replace=False))]
    if not out:
        raise ValueError("stage1: the task mix is empty (every weight 0, or too small to pick an example)")
    return out, dict(Counter(ex.task for ex in out))


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


def _corpus_texts(present, read, column: str, task: str) -> list[Example]:
    """The texts of `column` of a corpus table (`read(columns)`), none when the corpus lacks it (`present()`)."""
    if not present():
        return []
    texts = read([column])[column].tolist()
    # A narrative that kept its think block trains on what follows it, as in the research code.
    texts = [t.split("</think>")[-1].strip() if isinstance(t, str) and "</think>" in t else t for t in texts]
    return [Example(task, None, t) for t in texts if isinstance(t, str) and t.strip()]


def next_sid_valid(
    dataset_dir: Folder, sid_index_dir: Folder, n: int, seed: int, split: str = "valid"
) -> tuple[list[Example], list[list[str]]]:
    """Held-out next-SID examples from the dataset's `split` samples (a seeded sample of n, in file order;
    n = 0: every row) and their history SIDs."""
    sid = SidIndex.at(sid_index_dir).sid_map()
    frame = Dataset.at(dataset_dir).split(split)
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
    cfg: Stage2Config, seed: int, sid_index_dir: Folder, corpus_dir: Folder, data_text: DataText | None = None
) -> tuple[list[Example], list[Example]]:
    """(train, held out): reasoning examples from the corpus samples; `reasoning_holdout` of them (at most a
    tenth, at least one when > 0) are held out of training for the reasoning validation loss. The paths
    go through `data_text` as stage1_examples' teacher texts do."""
    sid_index, corpus = SidIndex.at(sid_index_dir), Corpus.at(corpus_dir)
    safe = data_text or DataText()
    sid = sid_index.sid_map()
    catalogue = frozenset(sid_index.catalogue())
    try:
        frame = corpus.samples(["history_item_ids", "item_id", "reasoning_path"])
    except ArtifactFileMissing as e:
        raise ArtifactFileMissing(f"stage2 needs the corpus' reasoning paths: {e}") from None
    frame = frame[frame.reasoning_path.map(lambda x: isinstance(x, str) and bool(x.strip()))]
    if len(frame) < (2 if cfg.reasoning_holdout else 1):
        raise ValueError(
            f"stage2: {len(frame)} reasoning paths in {corpus.file(Corpus.SAMPLES)}, too few to train on"
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
