"""Stage 3 RL data in verl's Parquet schema: training prompts from the train split (all of it, or only the
samples the teacher narrated: stage3.prompts), validation prompts from the valid split (the test split only
when stage3.valid_split asks for it, as the research code does).

One row per (history, target) sample:
  data_source   "sidreasoner/<category or 'sid'>"
  prompt        [{"role": "system", "content": <its system message>},
                 {"role": "user", "content": <the Stage 2 question (reasoning wording)>}]
  ability       "recommendation"
  reward_model  {"style": "rule", "ground_truth": <target SID>}
  extra_info    {"split", "index", "user_id", "item_id"}
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from sidreasoner.artifacts import ArtifactFileMissing, Corpus, Dataset, SidIndex, Stage3Checkpoint
from sidreasoner.model import prompts

DATA_SOURCE = "sidreasoner"
ABILITY = "recommendation"
COLUMNS = ["data_source", "prompt", "ability", "reward_model", "extra_info"]


def narrated_samples(dataset_dir: Dataset | Path, corpus_dir: Corpus | Path) -> list[int]:
    """Rows of the dataset's train split that the teacher narrated (the `sample` column of the corpus' samples),
    sorted; refuses a corpus whose samples are not those rows of this dataset."""
    dataset, corpus = Dataset.at(dataset_dir), Corpus.at(corpus_dir)
    if not corpus.has_samples():
        raise ArtifactFileMissing(
            f"stage3.prompts=narrated needs the corpus' {Corpus.SAMPLES}, not found in {corpus.path}; "
            f"the {Corpus.writer} step writes it"
        )
    narrated = corpus.samples(["sample", "user_id", "item_id"]).sort_values("sample")
    train = dataset.split("train", ["user_id", "item_id"])
    rows = narrated["sample"].astype(int).to_numpy()
    if len(rows) and (rows.min() < 0 or rows.max() >= len(train) or len(set(rows)) != len(rows)):
        raise corpus.problem(
            Corpus.SAMPLES, f"sample numbers are not distinct rows of the {len(train)}-row train split"
        )
    same = (train.user_id.to_numpy()[rows] == narrated.user_id.to_numpy()) & (
        train.item_id.to_numpy()[rows] == narrated.item_id.to_numpy()
    )
    if not same.all():
        bad = int(rows[~same][0])
        raise corpus.problem(
            Corpus.SAMPLES, f"sample {bad} is not train row {bad} of {dataset.path} (another dataset's corpus?)"
        )
    return rows.tolist()


def rl_rows(
    dataset_dir: Dataset | Path,
    sid_index_dir: SidIndex | Path,
    split: str = "train",
    max_samples: int = 0,
    seed: int = 0,
    samples: list[int] | None = None,
) -> list[dict]:
    """verl rows for `split` ('train', 'valid' or 'test'): every row, or only the rows `samples` (e.g. the
    narrated ones); `max_samples` > 0 takes a seeded sample of those (kept in file order)."""
    if split not in ("train", "valid", "test"):
        raise ValueError(f"RL data comes from the train, valid or test split, not {split!r}")
    sid = SidIndex.at(sid_index_dir).sid_map()
    frame = Dataset.at(dataset_dir).split(split)
    idx = np.arange(len(frame)) if samples is None else np.asarray(sorted(samples), dtype=int)
    if max_samples and max_samples < len(idx):
        rng = np.random.default_rng(seed + (0 if split == "train" else 1))
        idx = np.sort(idx[rng.choice(len(idx), max_samples, replace=False)])
    rows = []
    for i in idx:
        r = frame.iloc[int(i)]
        history = [sid[int(h)] for h in r.history_item_ids]
        rows.append(
            {
                "data_source": DATA_SOURCE,
                "prompt": prompts.rl_messages(history),
                "ability": ABILITY,
                "reward_model": {"style": "rule", "ground_truth": sid[int(r.item_id)]},
                "extra_info": {"split": split, "index": int(i), "user_id": int(r.user_id), "item_id": int(r.item_id)},
            }
        )
    return rows


def write_parquet(rows: list[dict], path: Path) -> Path:
    """`rows` as a Parquet file at `path` (its caller names it: a raw checkpoint's or verl's staged prompts)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=COLUMNS).to_parquet(path, index=False)
    return path


def stage3_rows(
    s, seed: int, dataset_dir: Dataset | Path, sid_index_dir: SidIndex | Path, corpus_dir: Corpus | Path | None
) -> tuple[list[dict], list[dict]]:
    """(train, validation) rows as the stage3 section `s` selects them: training prompts from the whole train
    split or only its narrated samples (s.prompts), capped by s.max_samples; validation prompts from
    s.valid_split, s.valid_samples of them (0 = all)."""
    if s.prompts == "narrated" and corpus_dir is None:
        raise ValueError("stage3.prompts=narrated needs the corpus folder")
    samples = narrated_samples(dataset_dir, corpus_dir) if s.prompts == "narrated" else None
    return (
        rl_rows(dataset_dir, sid_index_dir, "train", s.max_samples, seed, samples),
        rl_rows(dataset_dir, sid_index_dir, s.valid_split, s.valid_samples, seed),
    )


def write_rl_data(
    dataset_dir: Dataset | Path,
    sid_index_dir: SidIndex | Path,
    out_dir: Stage3Checkpoint | Path,
    max_samples: int = 0,
    valid_samples: int = 0,
    seed: int = 0,
    samples: list[int] | None = None,
    valid_split: str = "valid",
) -> dict[str, Path]:
    """The train and valid RL files in `out_dir`, laid out as in a raw Stage 3 checkpoint (what verl's
    data.train_files/val_files read); returns their paths."""
    out = Stage3Checkpoint.at(out_dir)
    train = rl_rows(dataset_dir, sid_index_dir, "train", max_samples, seed, samples)
    valid = rl_rows(dataset_dir, sid_index_dir, valid_split, valid_samples, seed)
    return {
        "train": write_parquet(train, out.file(out.rl_data_file("train"))),
        "valid": write_parquet(valid, out.file(out.rl_data_file("valid"))),
    }


def check_sid_tokens(tok, sid_index_dir: SidIndex | Path, model_dir: Path) -> None:
    """Refuse a model whose tokenizer lacks the run's SID codes (RL must start from the Stage 2 model)."""
    vocab = tok.get_vocab()
    missing = [
        sid
        for sid in SidIndex.at(sid_index_dir).sid_map().values()
        if not all(code in vocab for code in re.findall(r"<[a-z]_\d+>", sid))
    ]
    if missing:
        raise ValueError(
            f"stage3: the model in {model_dir} lacks SID tokens (e.g. {missing[:3]}); give it the sft-stage2 model"
        )


def fitting_rows(tok, rows: list[dict], max_prompt_length: int) -> tuple[list[dict], int]:
    """Rows whose prompt, rendered in thinking mode as the rollouts render it, has at most
    `max_prompt_length` tokens; and how many did not fit."""
    kept = [
        r
        for r in rows
        if len(tok(prompts.render_chat_prompt(tok, r["prompt"], thinking=True), add_special_tokens=False)["input_ids"])
        <= max_prompt_length
    ]
    return kept, len(rows) - len(kept)
