import json

import numpy as np
import pandas as pd
import pytest

from sidreasoner import config
from sidreasoner.sid.embed import embed_items, item_text

ITEMS = pd.DataFrame(
    {
        "item_id": [2, 0, 1, 4, 3],  # shuffled on disk: output rows must follow item_id
        "asin": ["B2", "B0", "B1", "B4", "B3"],
        "title": ["Red stapler", "Chef knife", "Camping tent", "Gaming headset", "Ballpoint pens"],
        "description": ["Heavy-duty office stapler", "", "Two-person tent", "Wireless", "Blue ink"],
        "brand": ["Acme", "Nordic", "", "Vertex", "Acme"],
        "categories": [["Office"], ["Kitchen", "Knives"], [], ["Games"], ["Office"]],
    }
)


def test_item_text_format():
    row = {"title": "Chef knife", "description": "", "brand": "Nordic", "categories": ["Kitchen", "Knives"]}
    assert item_text(row, ["title", "description", "brand", "categories"]) == (
        "Title: Chef knife; Brand: Nordic; Categories: Kitchen, Knives"
    )
    assert item_text({"title": "X", "description": "Y"}, ["title", "description"]) == "Title: X; Description: Y"


def test_embed_items_builtin(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ITEMS.to_parquet(data / "items.parquet")
    cfg = config.load("demo", ["embed.batch_size=2", "embed.device=cpu"])
    metrics = embed_items(cfg, data, tmp_path / "emb")
    emb = np.load(tmp_path / "emb" / "embeddings.npy")
    assert emb.shape == (5, 384) and emb.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(emb, axis=1), 1.0, atol=1e-5)
    meta = json.loads((tmp_path / "emb" / "meta.json").read_text())
    assert meta["dim"] == 384 and meta["n_items"] == 5 and meta["pooling"] == "mean"
    assert meta["model"] == "builtin:all-minilm-l6-v2"
    assert metrics["n_items"] == 5 and metrics["dim"] == 384 and metrics["items_per_s"] > 0
    # row i is item_id i: re-embedding the items one by one in id order gives the same rows
    ordered = ITEMS.sort_values("item_id")
    one = tmp_path / "one"
    one.mkdir()
    ordered.iloc[[1]].assign(item_id=0).to_parquet(one / "items.parquet")
    embed_items(cfg, one, tmp_path / "emb1")
    np.testing.assert_allclose(np.load(tmp_path / "emb1" / "embeddings.npy")[0], emb[1], atol=1e-5)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp folders left


def test_embed_items_missing_items_file(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"dataset .*/data: items\.parquet \(the item table\) not found"):
        embed_items(config.load("demo"), tmp_path / "data", tmp_path / "emb")
    assert not (tmp_path / "emb").exists()


def test_embed_items_bad_item_ids(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    ITEMS.assign(item_id=[0, 1, 2, 3, 7]).to_parquet(data / "items.parquet")
    with pytest.raises(ValueError, match="contiguous"):
        embed_items(config.load("demo", ["embed.device=cpu"]), data, tmp_path / "emb")
    assert not (tmp_path / "emb").exists()
