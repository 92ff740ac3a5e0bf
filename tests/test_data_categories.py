"""Several categories in one run (data.category a list): one dataset, one catalogue and one SID space over
all of them, each item's category kept, and the evaluation metrics per category next to the overall ones."""

import gzip
import json

import pytest
from pydantic import ValidationError

from sidreasoner import config
from sidreasoner.artifacts import Dataset
from sidreasoner.artifacts.raw import RawData
from sidreasoner.eval.catalogue import Catalogue
from sidreasoner.eval.predictions import rows_metrics
from sidreasoner.runner import run_step

T0, DAY = 1_600_000_000, 86_400
# category -> (reviews as (user, asin, day), meta as (asin, title)); S is sold in both categories.
RAW = {
    "Office_Products": (
        [("u1", "O1", 1), ("u1", "O2", 2), ("u1", "S", 3), ("u2", "O1", 1), ("u2", "O2", 2)],
        [("O1", "Stapler"), ("O2", "Paper"), ("S", "Shared desk lamp")],
    ),
    "Video_Games": (
        [("u1", "V1", 4), ("u1", "V2", 5), ("u2", "V1", 3), ("u2", "V2", 4), ("u2", "S", 5), ("u3", "V1", 1)]
        + [("u3", "V2", 2)],
        [("V1", "Racing game"), ("V2", "Puzzle game"), ("S", "Shared gaming lamp")],
    ),
}
CATEGORIES = ["Office_Products", "Video_Games"]
SETTINGS = ["data.k_core=2", "data.min_samples=5", "data.title_rule=unescape", "data.repeats=keep"]


def _amazon_folder(root):
    root.mkdir()
    for category, (reviews, meta) in RAW.items():
        with gzip.open(root / f"{category}.json.gz", "wt") as fh:
            for user, asin, day in reviews:
                rec = {"reviewerID": user, "asin": asin, "overall": 5.0, "unixReviewTime": T0 + DAY * day}
                fh.write(json.dumps(rec) + "\n")
        with gzip.open(root / f"meta_{category}.json.gz", "wt") as fh:
            for asin, title in meta:
                fh.write(json.dumps({"asin": asin, "title": title, "category": [category]}) + "\n")
    return root


def _dataset(tmp_path, *sets):
    category = json.dumps(CATEGORIES)
    source = _amazon_folder(tmp_path / "amazon")
    cfg = config.load("demo", [f"data.source={source}", f"data.category={category}", *SETTINGS, *sets])
    paths = {"raw": tmp_path / "raw", "dataset": tmp_path / "dataset"}
    metrics = run_step("download-data", cfg, paths)
    metrics |= run_step("preprocess", cfg, paths)
    return RawData.at(paths["raw"]), Dataset.at(paths["dataset"]), metrics


def test_a_list_of_categories_is_one_name_for_files():
    data = config.load("demo", ["data.source=amazon2018", 'data.category=["Office_Products", "Video_Games"]']).data
    assert data.category == "Office_Products__Video_Games"
    assert data.categories == ["Office_Products", "Video_Games"]
    one = config.load("demo", ["data.source=amazon2018", 'data.category=["Office_Products"]']).data
    assert (one.category, one.categories) == ("Office_Products", ["Office_Products"])


@pytest.mark.parametrize(
    "sets, message",
    [
        (['data.category=["Office_Products", "Video_Games"]'], "Amazon raw files only"),  # the demo source
        (["data.source=/bundle", "data.format=research", 'data.category=["A", "B"]'], "Amazon raw files only"),
        (["data.source=amazon2018", 'data.category=["A", "A"]'], "distinct names"),
        (["data.source=amazon2018", 'data.category=["A__B", "C"]'], "distinct names"),
        (["data.source=amazon2018", 'data.category=["A", "../B"]'], "the category '../B' names files"),
    ],
)
def test_a_list_of_categories_outside_amazon_files_is_a_config_error(sets, message):
    with pytest.raises((ValidationError, ValueError), match=message):
        config.load("demo", sets)


def test_several_categories_make_one_dataset_over_their_union(tmp_path):
    raw, dataset, metrics = _dataset(tmp_path, "data.duplicate_meta=first")
    assert raw.manifest()["categories"] == [
        {"category": c, "reviews": f"{c}.json.gz", "meta": f"meta_{c}.json.gz"} for c in CATEGORIES
    ]
    assert sorted(raw.manifest()["files"]) == sorted(f"{p}{c}.json.gz" for c in CATEGORIES for p in ("", "meta_"))
    items = dataset.items_table().to_pydict()
    assert items["asin"] == ["O1", "O2", "S", "V1", "V2"]  # one item table: S once
    assert items["title"][2] == "Shared desk lamp"  # its first record (data.duplicate_meta=first)
    assert items["category"] == ["Office_Products"] * 3 + ["Video_Games"] * 2
    assert dataset.item_categories() == dict(enumerate(items["category"]))
    assert dataset.category() == "Office_Products__Video_Games"
    assert dataset.has(Dataset.research_item_file("Office_Products__Video_Games"))
    # one stream of reviews, one k-core: S counts its reviews of both categories
    assert (metrics["raw_review_lines"], metrics["raw_meta_lines"]) == (12, 6)
    assert (metrics["users"], metrics["items"], metrics["interactions"]) == (3, 5, 12)
    assert metrics["items_in_several_categories"] == 1
    assert metrics["items_dropped_duplicate_asin"] == 1
    assert (metrics["items_Office_Products"], metrics["items_Video_Games"]) == (3, 2)
    assert [metrics[f"samples_{s}"] for s in ("train", "valid", "test")] == [7, 1, 1]
    users = dataset.read_table(Dataset.USERS)["raw_user_id"].to_pylist()
    u2 = dataset.interactions().query(f"user_id == {users.index('u2')}")
    assert u2["item_id"].tolist() == [0, 1, 3, 4, 2]  # u2's sequence crosses the categories in time order


def test_the_last_record_of_an_item_in_two_categories_names_its_category(tmp_path):
    _, dataset, metrics = _dataset(tmp_path, "data.duplicate_meta=last")
    items = dataset.items_table().to_pydict()
    assert (items["title"][2], items["category"][2]) == ("Shared gaming lamp", "Video_Games")
    assert (metrics["items_Office_Products"], metrics["items_Video_Games"]) == (2, 3)


def test_one_category_writes_no_category_column(tmp_path):
    root = _amazon_folder(tmp_path / "amazon")
    sets = [*SETTINGS, "data.k_core=1", "data.min_samples=3", "data.split=leave_last_out"]  # 4 samples
    cfg = config.load("demo", [f"data.source={root}", "data.category=Video_Games", *sets])
    paths = {"raw": tmp_path / "raw", "dataset": tmp_path / "dataset"}
    run_step("download-data", cfg, paths)
    metrics = run_step("preprocess", cfg, paths)
    assert "category" not in Dataset.at(paths["dataset"]).items_table().column_names
    assert Dataset.at(paths["dataset"]).item_categories() == {}
    assert "items_in_several_categories" not in metrics
    assert "categories" not in RawData.at(paths["raw"]).manifest()


def _row(target_item, target_sid, pred_sids):
    return {"target_item_id": target_item, "target_sid": target_sid, "pred_sids": pred_sids}


def test_evaluation_metrics_per_category_of_the_target():
    sid = {0: "<a_0>", 1: "<a_1>", 2: "<a_2>"}
    cat = Catalogue(
        sid_of_item=sid,
        sid_items={s: [i] for i, s in sid.items()},
        catalogue=sorted(sid.values()),
        titles={},
        categories={0: "Office_Products", 1: "Office_Products", 2: "Video_Games"},
    )
    rows = [
        _row(0, "<a_0>", ["<a_0>", "<a_1>"]),  # Office, hit at rank 0
        _row(1, "<a_1>", ["<a_0>", "<a_1>"]),  # Office, hit at rank 1
        _row(2, "<a_2>", ["<a_0>", "<a_1>"]),  # Games, miss
    ]
    m = rows_metrics("test_think", rows, cat, [1, 2])
    assert m["test_think_hr@1"] == pytest.approx(1 / 3)
    assert m["test_think_hr@2"] == pytest.approx(2 / 3)
    assert m["test_think_hr@1_Office_Products"] == 0.5
    assert m["test_think_hr@2_Office_Products"] == 1.0
    assert m["test_think_ndcg@2_Office_Products"] == pytest.approx((1 + 1 / 1.584962500721156) / 2)
    assert m["test_think_item_hr@2_Office_Products"] == 1.0
    assert m["test_think_hr@2_Video_Games"] == 0.0
    assert (m["test_think_users_Office_Products"], m["test_think_users_Video_Games"]) == (2.0, 1.0)
    assert len(m) == 8 + 2 * 9


def test_evaluation_of_one_category_has_only_the_overall_metrics():
    cat = Catalogue({0: "<a_0>"}, {"<a_0>": [0]}, ["<a_0>"], {})
    assert sorted(rows_metrics("test_think", [_row(0, "<a_0>", ["<a_0>"])], cat, [1])) == [
        "test_think_hr@1",
        "test_think_item_hr@1",
        "test_think_item_ndcg@1",
        "test_think_ndcg@1",
    ]
