"""Stage 3 RL data: verl's Parquet schema, one row's exact content."""

from __future__ import annotations

import pandas as pd
import pytest

from sidreasoner.rl import data as D


def test_schema_and_row(tiny_artifacts, tmp_path):
    art = tiny_artifacts
    paths = D.write_rl_data(art["dataset"], art["sid_index"], tmp_path / "rl")
    train = pd.read_parquet(paths["train"])
    assert list(train.columns) == ["data_source", "prompt", "ability", "reward_model", "extra_info"]
    assert len(train) == 5
    row = train.iloc[1]
    assert row.data_source == "sidreasoner" and row.ability == "recommendation"
    assert [dict(m) for m in row.prompt] == [
        {
            "role": "system",
            "content": (
                "Below is an instruction that describes a task, paired with an input that provides further context. "
                "Write a response that appropriately completes the request.\n"
                "Can you recommend the next item for the user based on their interaction history?\n"
            ),
        },
        {
            "role": "user",
            "content": (
                "The user has sequentially interacted with items <a_0><b_1><c_2>, <a_0><b_1><c_3>. Can you recommend "
                "the next item for him? Let's think step by step before making recommendation. Directly output the "
                "item SID after thinking."
            ),
        },
    ]
    assert dict(row.reward_model) == {"style": "rule", "ground_truth": "<a_0><b_2><c_0>"}
    assert dict(row.extra_info) == {"split": "train", "index": 1, "user_id": 0, "item_id": 2}
    valid = pd.read_parquet(paths["valid"])
    assert set(e["split"] for e in valid.extra_info) == {"valid"} and len(valid) == 3


def test_sampling_and_split_names(tiny_artifacts):
    art = tiny_artifacts
    rows = D.rl_rows(art["dataset"], art["sid_index"], "train", max_samples=3, seed=0)
    assert len(rows) == 3 and [r["extra_info"]["index"] for r in rows] == sorted(r["extra_info"]["index"] for r in rows)
    assert rows == D.rl_rows(art["dataset"], art["sid_index"], "train", max_samples=3, seed=0)
    # The test split only when stage3.valid_split=test asks for it (the research code validates RL on test).
    assert [r["extra_info"]["split"] for r in D.rl_rows(art["dataset"], art["sid_index"], "test")] == ["test"] * 3
    with pytest.raises(ValueError, match="train, valid or test"):
        D.rl_rows(art["dataset"], art["sid_index"], "holdout")
