"""Tiny hand-made artifact folders (dataset, sid_index, corpus): 6 items, 5 training samples."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from sidreasoner.sid.codes import format_sid, sid_tokens

TITLES = [
    "Acme Gel Pen Vol. 1",
    "Acme Gel Pen Vol. 2",
    "Acme Gel Pen Vol. 3",
    "Globex Studio Headphones Mk 1",
    "Globex Studio Headphones Mk 2",
    "Globex Studio Headphones Mk 3",
]
CODES = [[0, 1, 2], [0, 1, 3], [0, 2, 0], [1, 0, 1], [1, 0, 2], [1, 3, 3]]


def make_artifacts(root: Path) -> dict[str, Path]:
    root = Path(root)
    d, s, c = root / "dataset", root / "sid_index", root / "corpus"
    for p in (d, s, c):
        p.mkdir(parents=True)
    pd.DataFrame(
        {
            "item_id": range(6),
            "asin": [f"B{i:09d}" for i in range(6)],
            "title": TITLES,
            "description": [f"Part of a series: {t}." for t in TITLES],
            "brand": [t.split()[0] for t in TITLES],
            "categories": [["Tiny", "Office" if i < 3 else "Audio"] for i in range(6)],
        }
    ).to_parquet(d / "items.parquet")
    train = pd.DataFrame(
        {
            "user_id": [0, 0, 1, 1, 2],
            "history_item_ids": [[0], [0, 1], [3], [3, 4], [1]],
            "item_id": [1, 2, 4, 5, 2],
            "timestamp": [1, 2, 3, 4, 5],
        }
    )
    train.to_parquet(d / "train.parquet")
    valid = pd.DataFrame(
        {"user_id": [0, 1, 2], "history_item_ids": [[0, 1], [3, 4], [0]], "item_id": [2, 5, 1], "timestamp": [6, 7, 8]}
    )
    valid.to_parquet(d / "valid.parquet")
    valid.to_parquet(d / "test.parquet")
    sids = [format_sid(x) for x in CODES]
    (s / "index.json").write_text(json.dumps({str(i): sid_tokens(x) for i, x in enumerate(CODES)}))
    (s / "catalogue.json").write_text(json.dumps(sorted(sids)))
    pd.DataFrame(
        {"item_id": range(6), "sid": sids, "narrative": [f'{sids[i]} is "{TITLES[i]}", a fine item.' for i in range(6)]}
    ).to_parquet(c / "items.parquet")
    pd.DataFrame(
        {
            "sample": range(5),
            "user_id": train.user_id,
            "history_item_ids": train.history_item_ids,
            "item_id": train.item_id,
            "history_narrative": [f"The user bought {', '.join(sids[i] for i in h)}." for h in train.history_item_ids],
            "reasoning_path": [
                f"The latest item is {sids[h[-1]]}; the series continues. Recommended item: {sids[t]}"
                for h, t in zip(train.history_item_ids, train.item_id, strict=True)
            ],
        }
    ).to_parquet(c / "samples.parquet")
    return {"dataset": d, "sid_index": s, "corpus": c, "sids": sids}
