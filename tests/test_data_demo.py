"""Demo generator: deterministic, dirty as promised, survives the demo preset, and is learnable."""

from __future__ import annotations

from collections import Counter, defaultdict

import pytest

from sidreasoner.artifacts import Dataset
from sidreasoner.config import DemoDataConfig, load
from sidreasoner.data.demo import generate_demo_raw
from sidreasoner.data.download import download_data
from sidreasoner.data.preprocess import preprocess
from sidreasoner.data.raw import LineStats, iter_json_lines


def test_deterministic_under_seed(tmp_path):
    cfg = DemoDataConfig(num_items=60, num_users=50)
    a = generate_demo_raw(cfg, "Demo", tmp_path / "a", seed=3)
    b = generate_demo_raw(cfg, "Demo", tmp_path / "b", seed=3)
    generate_demo_raw(cfg, "Demo", tmp_path / "c", seed=4)
    for name in ("Demo.json.gz", "meta_Demo.json.gz"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
        assert (tmp_path / "a" / name).read_bytes() != (tmp_path / "c" / name).read_bytes()
    assert a == b


def test_planted_dirt_counts_match_the_files(tmp_path):
    planted = generate_demo_raw(DemoDataConfig(), "Demo", tmp_path, seed=0)
    assert planted["items"] == 400 and planted["users"] == 2000 and planted["series"] == 66
    stats = LineStats()
    reviews = [obj for _, obj in iter_json_lines(tmp_path / "Demo.json.gz", 0.05, stats)]
    assert stats.malformed == planted["malformed_review_lines"] > 0
    keys = Counter((r["reviewerID"], r["asin"], r["unixReviewTime"]) for r in reviews)
    assert sum(n - 1 for n in keys.values()) == planted["duplicate_review_lines"] > 0
    mstats = LineStats()
    meta = [obj for _, obj in iter_json_lines(tmp_path / "meta_Demo.json.gz", 0.05, mstats)]
    assert mstats.malformed == planted["malformed_meta_lines"] > 0 and len(meta) == 400
    assert sum("title" not in m for m in meta) == planted["missing_titles"] == 4
    assert sum(m.get("title", "x").strip() == "" for m in meta) == planted["empty_titles"] == 4
    assert sum(len(m.get("title", "").split()) > 20 for m in meta) == planted["long_titles"] == 4
    assert sum("&amp;" in m.get("title", "") or "&quot;" in m.get("title", "") for m in meta) == 4
    per_user = Counter(r["reviewerID"] for r in reviews)
    assert len(per_user) == 2000 and min(per_user.values()) >= 6


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    cfg = load("demo")
    dl = download_data(cfg, root / "raw")
    metrics = preprocess(cfg, root / "raw", root / "data")
    return root / "data", dl, metrics


def test_demo_survives_preprocess_with_thousands_of_samples(demo_data):
    _, dl, m = demo_data
    assert dl["demo_reviews"] > 20_000 and dl["files"] == 2
    assert m["samples_train"] > 10_000 and m["samples_valid"] > 1_000 and m["samples_test"] > 1_000
    assert m["malformed_review_lines"] == dl["demo_malformed_review_lines"]
    assert m["items_dropped_long_title"] == m["items_dropped_empty_title"] == m["items_dropped_missing_title"] == 4
    assert 0 < m["reviews_dropped_duplicate"] <= dl["demo_duplicate_review_lines"]
    assert m["items"] == 388 and m["users"] == 2000


def test_series_order_beats_popularity(demo_data):
    data, _, _ = demo_data
    train = Dataset.at(data).split_table("train").to_pydict()
    test = Dataset.at(data).split_table("test").to_pydict()
    successors: dict[int, Counter] = defaultdict(Counter)
    for hist, item in zip(train["history_item_ids"], train["item_id"], strict=True):
        successors[hist[-1]][item] += 1
    top10 = {i for i, _ in Counter(train["item_id"]).most_common(10)}
    pop_hr10 = sum(i in top10 for i in test["item_id"]) / len(test["item_id"])
    next_hr1 = sum(
        successors[h[-1]].most_common(1)[0][0] == i
        for h, i in zip(test["history_item_ids"], test["item_id"], strict=True)
        if successors[h[-1]]
    ) / len(test["item_id"])
    assert next_hr1 > 0.5 and next_hr1 > 2 * pop_hr10
