"""Stage 3 RL data in verl's Parquet schema, from the train split (the valid split for validation —
never test; the research code validates on test).

One row per (history, target) sample:
  data_source   "sidreasoner/<category or 'sid'>"
  prompt        [{"role": "user", "content": <the Stage 2 question (reasoning wording)>}]
  ability       "recommendation"
  reward_model  {"style": "rule", "ground_truth": <target SID>}
  extra_info    {"split", "index", "user_id", "item_id"}
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pandas as pd

from sidreasoner.model import prompts
from sidreasoner.sid.index import load_sid_map

DATA_SOURCE = "sidreasoner"
ABILITY = "recommendation"
COLUMNS = ["data_source", "prompt", "ability", "reward_model", "extra_info"]


def rl_rows(dataset_dir: Path, sid_index_dir: Path, split: str = "train", max_samples: int = 0,
            seed: int = 0) -> list[dict]:
    """verl rows for `split` ('train' or 'valid'); `max_samples` > 0 takes a seeded sample (kept in
    file order)."""
    if split not in ("train", "valid"):
        raise ValueError(f"RL data comes from the train or valid split, not {split!r}")
    sid = load_sid_map(sid_index_dir)
    frame = pd.read_parquet(Path(dataset_dir) / f"{split}.parquet")
    idx = np.arange(len(frame))
    if max_samples and max_samples < len(frame):
        idx = np.sort(np.random.default_rng(seed + (0 if split == "train" else 1)).choice(len(frame), max_samples, replace=False))
    rows = []
    for i in idx:
        r = frame.iloc[int(i)]
        history = [sid[int(h)] for h in r.history_item_ids]
        rows.append({
            "data_source": DATA_SOURCE,
            "prompt": [{"role": "user", "content": prompts.next_sid_question(history, reasoning=True)}],
            "ability": ABILITY,
            "reward_model": {"style": "rule", "ground_truth": sid[int(r.item_id)]},
            "extra_info": {"split": split, "index": int(i), "user_id": int(r.user_id), "item_id": int(r.item_id)},
        })
    return rows


def write_parquet(rows: list[dict], path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    pd.DataFrame(rows, columns=COLUMNS).to_parquet(path, index=False)
    return path


def write_rl_data(dataset_dir: Path, sid_index_dir: Path, out_dir: Path, max_samples: int = 0,
                  valid_samples: int = 0, seed: int = 0) -> dict[str, Path]:
    """train.parquet and valid.parquet in `out_dir` (what verl's data.train_files/val_files read)."""
    out_dir = Path(out_dir)
    return {
        "train": write_parquet(rl_rows(dataset_dir, sid_index_dir, "train", max_samples, seed), out_dir / "train.parquet"),
        "valid": write_parquet(rl_rows(dataset_dir, sid_index_dir, "valid", valid_samples, seed), out_dir / "valid.parquet"),
    }


def check_sid_tokens(tok, sid_index_dir: Path, model_dir: Path) -> None:
    """Refuse a model whose tokenizer lacks the run's SID codes (RL must start from the Stage 2 model)."""
    vocab = tok.get_vocab()
    missing = [sid for sid in load_sid_map(sid_index_dir).values()
               if not all(code in vocab for code in re.findall(r"<[a-z]_\d+>", sid))]
    if missing:
        raise ValueError(f"stage3: the model in {model_dir} lacks SID tokens (e.g. {missing[:3]}); "
                         "give it the sft-stage2 model")


def fitting_rows(tok, rows: list[dict], max_prompt_length: int) -> tuple[list[dict], int]:
    """Rows whose prompt, rendered in thinking mode as the rollouts render it, has at most
    `max_prompt_length` tokens; and how many did not fit."""
    kept = [r for r in rows if len(tok(prompts.render_prompt(tok, r["prompt"][0]["content"], thinking=True),
                                       add_special_tokens=False)["input_ids"]) <= max_prompt_length]
    return kept, len(rows) - len(kept)
