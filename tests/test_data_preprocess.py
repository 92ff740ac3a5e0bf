"""Preprocess: exact results on tiny hand-made raw files and on the unit functions."""

from __future__ import annotations

import csv
import datetime as dt
import json
import re

import numpy as np
import pytest

from sidreasoner.artifacts import SPLITS, ArtifactFileMissing, Dataset, RawData
from sidreasoner.config import load
from sidreasoner.data.preprocess import (
    PreprocessError,
    chronological_split,
    dedupe_mask,
    history_lists,
    k_core_mask,
    preprocess,
    sliding_windows,
    split_bounds,
    title_problem,
    window_seconds,
    write_research_csvs,
)
from sidreasoner.data.raw import RawDataError
from tests.helpers.raw_manifest import seal

DAY = 86_400
BASE = int(dt.datetime(2017, 1, 1, tzinfo=dt.UTC).timestamp())  # 1483228800


def _review(user, asin, ts, rating=5.0):
    return json.dumps({"reviewerID": user, "asin": asin, "overall": rating, "unixReviewTime": ts, "reviewText": "ok"})


def _meta(asin, title=..., **extra):
    rec = {"asin": asin, "description": [f"about {asin}"], "brand": "Acme", "category": ["Office"], **extra}
    if title is not ...:
        rec["title"] = title
    return json.dumps(rec)


def write_raw(folder, reviews, meta, fmt="amazon2018", category="Tiny"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{category}.json").write_text("\n".join(reviews) + "\n")
    (folder / f"meta_{category}.json").write_text("\n".join(meta) + "\n")
    (folder / RawData.MANIFEST).write_text(
        json.dumps(
            {
                "source": "test",
                "format": fmt,
                "category": category,
                "reviews": f"{category}.json",
                "meta": f"meta_{category}.json",
            }
        )
    )
    return seal(folder)


def tiny_raw(folder):
    """4 users x 4 items (B001..B004) at BASE + (u + 10k) days, plus one of each kind of dirt."""
    meta = [
        _meta("B001", "Pen &amp; Ink"),
        _meta("B002", "Blue &quot;Gel&quot; Pen"),
        _meta("B003", "Notebook"),
        _meta("B004", " Pencil "),
        _meta("B005"),
        _meta("B006", "  "),
        _meta("B007", " ".join(["w"] * 21)),
        _meta("B003", "Duplicate Notebook"),
        '{"asin": "B008", "tit',
    ]
    reviews = [_review(f"U{u}", f"B00{k + 1}", BASE + (u + 10 * k) * DAY) for u in (4, 2, 3, 1) for k in range(4)]
    reviews += [
        _review("U1", "B001", BASE + 100 * DAY, 1.0),  # duplicate (user, item): the earliest is kept
        _review("U5", "B001", BASE + 3 * DAY),  # only review of U5: removed by the 2-core
        _review("U1", "B005", BASE + 5 * DAY),  # item without a title
        _review("U2", "B002", BASE - 1),  # 2016-12-31 23:59:59: before the window
        '{"reviewerID": "U9", "asin": "B0',  # truncated line
    ]
    return write_raw(folder, reviews, meta)


def tiny_cfg(*extra):
    return load(
        "demo",
        [
            "data.k_core=2",
            "data.max_history=2",
            "data.min_samples=1",
            "data.category=Tiny",
            "data.max_malformed_fraction=0.2",
            "data.time_window.start=2017-01-01",
            *extra,
        ],
    )


# ---------------------------------------------------------------- unit functions


def test_iterative_k_core_needs_two_passes():
    # users 0,1 review items A(0),B(1); user 2 reviews A and C(2). With k=2, pass 1 drops C (1 review),
    # which leaves user 2 with one review, dropped in pass 2.
    user = np.array([0, 0, 1, 1, 2, 2])
    item = np.array([0, 1, 0, 1, 0, 2])
    mask, rounds = k_core_mask(user, item, 2)
    assert mask.tolist() == [True, True, True, True, False, False] and rounds == 2
    mask, rounds = k_core_mask(user, item, 3)
    assert not mask.any() and rounds == 1
    assert k_core_mask(user, item, 1) == (pytest.approx(np.ones(6, bool)), 0)


def test_dedupe_keeps_earliest_and_file_order_on_ties():
    user = np.array([0, 0, 1, 0, 0])
    item = np.array([5, 5, 5, 6, 6])
    ts = np.array([30, 10, 10, 7, 7])
    assert dedupe_mask(user, item, ts).tolist() == [False, True, True, True, False]


def test_sliding_windows_truncate_history():
    user = np.array([0, 0, 0, 0, 1, 1])
    item = np.array([10, 11, 12, 13, 20, 21])
    s = sliding_windows(user, max_history=2)
    assert s.row.tolist() == [1, 2, 3, 5] and s.pos.tolist() == [1, 2, 3, 1]
    assert history_lists(item, s.hist_start, s.row).to_pylist() == [[10], [10, 11], [11, 12], [20]]


def test_chronological_split_exact_membership():
    ts = np.array([5, 1, 2, 3, 4, 9, 6, 7, 8, 9])  # samples 5 and 9 tie at t=9
    user = np.array([0, 0, 0, 0, 0, 3, 1, 1, 1, 2])
    pos = np.array([5, 1, 2, 3, 4, 1, 1, 2, 3, 1])
    parts = chronological_split(ts, user, pos, (0.8, 0.1, 0.1))
    assert parts["train"].tolist() == [1, 2, 3, 4, 0, 6, 7, 8]
    assert parts["valid"].tolist() == [9]  # tie broken by user id: user 2 before user 3
    assert parts["test"].tolist() == [5]
    assert split_bounds(10, (0.8, 0.1, 0.1)) == (8, 9) and split_bounds(7, (0.7, 0.2, 0.1)) == (4, 6)


def test_title_problem():
    assert [title_problem(t, 3) for t in (None, "", "a b c", "a b c d")] == [
        "missing_title",
        "empty_title",
        None,
        "long_title",
    ]


def test_time_window_is_inclusive_utc_days():
    cfg = load("demo", ["data.time_window.start=2017-01-01", "data.time_window.end=2017-01-02"])
    assert window_seconds(cfg.data) == (1483228800, 1483401600)  # [Jan 1 00:00, Jan 3 00:00)
    lo, hi = window_seconds(load("demo").data)
    assert lo < -1e18 and hi > 1e18


# ---------------------------------------------------------------- the whole step


def test_preprocess_tiny_exact(tmp_path):
    raw = tiny_raw(tmp_path / "raw")
    m = preprocess(tiny_cfg(), raw, tmp_path / "out")
    m.pop("wall_seconds")
    assert m == {
        "raw_meta_lines": 9,
        "malformed_meta_lines": 1,
        "items_dropped_missing_title": 1,
        "items_dropped_empty_title": 1,
        "items_dropped_long_title": 1,
        "items_dropped_duplicate_asin": 1,
        "raw_review_lines": 21,
        "malformed_review_lines": 1,
        "reviews_read": 20,
        "reviews_dropped_out_of_window": 1,
        "reviews_dropped_unknown_item": 1,
        "reviews_dropped_duplicate": 1,
        "reviews_dropped_k_core": 1,
        "k_core_iterations": 1,
        "users": 4,
        "items": 4,
        "interactions": 16,
        "items_dropped_k_core": 0,
        "samples_train": 9,
        "samples_valid": 1,
        "samples_test": 2,
        "items_dropped_html_title": 0,
        "items_dropped_short_title": 0,
        "interactions_repeated": 0,
        "time_window_start_year": 2017,
        "time_window_widenings": 0,
    }
    out = tmp_path / "out"
    items = Dataset.at(out).items_table().to_pylist()
    assert [(i["item_id"], i["asin"], i["title"]) for i in items] == [
        (0, "B001", "Pen & Ink"),
        (1, "B002", 'Blue "Gel" Pen'),
        (2, "B003", "Notebook"),
        (3, "B004", "Pencil"),
    ]
    assert items[0]["description"] == "about B001" and items[0]["categories"] == ["Office"]
    assert Dataset.at(out).read_table(Dataset.USERS).to_pylist() == [
        {"user_id": i, "raw_user_id": f"U{i + 1}"} for i in range(4)
    ]
    inter = Dataset.at(out).read_table(Dataset.INTERACTIONS).to_pydict()
    assert inter["user_id"] == [u for u in range(4) for _ in range(4)]
    assert inter["item_id"] == [0, 1, 2, 3] * 4
    assert inter["timestamp"][:4] == [BASE + (1 + 10 * k) * DAY for k in range(4)]
    assert inter["rating"][0] == 5.0  # the earliest duplicate, not the later 1-star one
    train = Dataset.at(out).split_table("train").to_pydict()
    assert list(zip(train["user_id"], train["history_item_ids"], train["item_id"], strict=True)) == [
        (0, [0], 1),
        (1, [0], 1),
        (2, [0], 1),
        (3, [0], 1),
        (0, [0, 1], 2),
        (1, [0, 1], 2),
        (2, [0, 1], 2),
        (3, [0, 1], 2),
        (0, [1, 2], 3),
    ]
    valid = Dataset.at(out).split_table("valid").to_pydict()
    test = Dataset.at(out).split_table("test").to_pydict()
    assert (valid["user_id"], valid["history_item_ids"], valid["item_id"]) == ([1], [[1, 2]], [3])
    assert (test["user_id"], test["history_item_ids"], test["item_id"]) == ([2, 3], [[1, 2], [1, 2]], [3, 3])
    assert test["timestamp"] == [BASE + 33 * DAY, BASE + 34 * DAY]
    index = Dataset.at(out).read_json(Dataset.research_item_file("Tiny"))
    assert index["1"] == {"title": 'Blue "Gel" Pen', "description": "about B002"}
    stats = Dataset.at(out).stats()
    assert stats["category"] == "Tiny" and stats["metrics"]["samples_test"] == 2


def test_time_window_end_drops_late_reviews(tmp_path):
    raw = tiny_raw(tmp_path / "raw")
    m = preprocess(tiny_cfg("data.time_window.end=2017-02-01"), raw, tmp_path / "out")
    # the window ends Feb 1 23:59:59: U1's last review (day 31 = Feb 1 00:00) stays, days 32-34 go,
    # as do the 2016 review and U1's duplicate on day 100
    assert m["reviews_dropped_out_of_window"] == 1 + 3 + 1
    assert m["reviews_dropped_duplicate"] == 0
    # B004 is left with U1's review only, so the 2-core drops it together with U5's lone review
    assert (m["interactions"], m["items"], m["items_dropped_k_core"], m["reviews_dropped_k_core"]) == (12, 3, 1, 2)


def test_empty_after_k_core_is_a_clear_error_and_leaves_no_folder(tmp_path):
    raw = tiny_raw(tmp_path / "raw")
    with pytest.raises(PreprocessError, match=r"iterative 5-core.*lower data\.k_core"):
        preprocess(tiny_cfg("data.k_core=5"), raw, tmp_path / "out")
    assert not (tmp_path / "out").exists() and list(tmp_path.iterdir()) == [tmp_path / "raw"]


def test_too_few_samples_and_empty_split_errors(tmp_path):
    raw = tiny_raw(tmp_path / "raw")
    with pytest.raises(PreprocessError, match=r"only 12 samples.*data\.min_samples=13"):
        preprocess(tiny_cfg("data.min_samples=13"), raw, tmp_path / "out")
    with pytest.raises(PreprocessError, match=r"the valid split is empty"):
        preprocess(tiny_cfg("data.split=[0.95,0.0,0.05]"), raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_not_json_reviews_fail_with_file_and_line(tmp_path):
    raw = tiny_raw(tmp_path / "raw")
    (raw / "Tiny.json").write_text("reviewerID,asin\n" + "U1,B001\n" * 60)
    seal(raw)
    with pytest.raises(RawDataError, match=r"Tiny\.json: .*first bad line 1"):
        preprocess(tiny_cfg(), raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_missing_manifest_key(tmp_path):
    raw = tiny_raw(tmp_path / "raw")
    (raw / RawData.MANIFEST).write_text(
        json.dumps({"format": "amazon2018", "category": "Tiny", "reviews": "Tiny.json"})
    )
    with pytest.raises(PreprocessError, match=r"manifest\.json: key 'meta' is missing"):
        preprocess(tiny_cfg(), raw, tmp_path / "out")


def test_a_missing_manifest_or_split_names_the_artifact_and_the_file(tmp_path):
    raw = tiny_raw(tmp_path / "raw")
    (raw / RawData.MANIFEST).unlink()
    with pytest.raises(ArtifactFileMissing) as err:
        preprocess(tiny_cfg(), raw, tmp_path / "out")
    assert str(err.value).startswith(f"raw data {raw}: {RawData.MANIFEST} (") and "download-data step" in str(err.value)
    preprocess(tiny_cfg(), tiny_raw(tmp_path / "raw2"), tmp_path / "data")
    (tmp_path / "data" / Dataset.split_file("valid")).unlink()
    valid = re.escape(Dataset.split_file("valid"))
    with pytest.raises(ArtifactFileMissing, match=rf"dataset .*data: {valid} \(the valid samples\) not found"):
        write_research_csvs(tmp_path / "data", {i: [f"<a_{i}>"] for i in range(4)}, tmp_path / "research", "Tiny")


def test_write_research_csvs(tmp_path):
    preprocess(tiny_cfg(), tiny_raw(tmp_path / "raw"), tmp_path / "data")
    sids = {i: [f"<a_{i}>", f"<b_{i % 2}>", f"<c_{i + 1}>"] for i in range(4)}
    write_research_csvs(tmp_path / "data", sids, tmp_path / "research", "Tiny")
    with open(tmp_path / "research/test/Tiny.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert rows[0] == {
        "user_id": "2",
        "history_item_title": "['Blue \"Gel\" Pen', 'Notebook']",
        "item_title": "Pencil",
        "history_item_id": "[1, 2]",
        "item_id": "3",
        "history_item_sid": "['<a_1><b_1><c_2>', '<a_2><b_0><c_3>']",
        "item_sid": "<a_3><b_1><c_4>",
    }
    assert len(rows) == 2
    assert (tmp_path / "research/info/Tiny.txt").read_text().splitlines()[0] == "<a_0><b_0><c_1>\tPen & Ink\t0"
    assert json.loads((tmp_path / "research/index/Tiny.index.json").read_text())["3"] == ["<a_3>", "<b_1>", "<c_4>"]
    with pytest.raises(PreprocessError, match="no entry for item_id 3"):
        write_research_csvs(tmp_path / "data", {i: sids[i] for i in range(3)}, tmp_path / "r2", "Tiny")


# ---------------------------------------------------------------- unusable fields, names and skip reports


def test_unusable_timestamps_and_ratings_are_counted_skips_within_the_budget(tmp_path):
    raw = tiny_raw(tmp_path / "raw")
    with open(raw / "Tiny.json", "a") as fh:
        for ts in ('"nan"', '"inf"', "1e300"):
            fh.write(f'{{"reviewerID": "U1", "asin": "B001", "overall": 5.0, "unixReviewTime": {ts}}}\n')
        fh.write(_review("U2", "B002", BASE, rating="five") + "\n")
    seal(raw)
    m = preprocess(tiny_cfg(), raw, tmp_path / "out")  # 1 bad line + 4 unusable records of 25 = 20%
    assert (m["raw_review_lines"], m["malformed_review_lines"], m["reviews_read"]) == (25, 1, 20)
    assert (m["review_records_skipped_invalid_unixReviewTime"], m["review_records_skipped_invalid_overall"]) == (3, 1)
    assert (m["users"], m["items"], m["interactions"], m["samples_train"]) == (4, 4, 16, 9)
    with pytest.raises(RawDataError) as err:
        preprocess(tiny_cfg("data.max_malformed_fraction=0.15"), raw, tmp_path / "out2")
    assert str(err.value) == (
        f"{raw / 'Tiny.json'}: 5 of 25 lines (20.0%) are malformed or unusable, above data.max_malformed_fraction=0.15 "
        "(invalid_unixReviewTime: 3, invalid_overall: 1, malformed_line: 1; first bad line 21: "
        '\'{"reviewerID": "U9", "asin": "B0\')'
    )
    assert not (tmp_path / "out2").exists()


def test_a_boolean_user_id_is_skipped_not_merged_into_the_user_True(tmp_path):
    raw = tiny_raw(tmp_path / "raw")
    with open(raw / "Tiny.json", "a") as fh:
        for asin in ("B001", "B002"):
            fh.write(json.dumps({"reviewerID": True, "asin": asin, "overall": 5.0, "unixReviewTime": BASE}) + "\n")
    seal(raw)
    m = preprocess(tiny_cfg(), raw, tmp_path / "out")
    assert m["review_records_skipped_invalid_reviewerID"] == 2 and m["users"] == 4
    assert Dataset.at(tmp_path / "out").read_table(Dataset.USERS)["raw_user_id"].to_pylist() == ["U1", "U2", "U3", "U4"]


def _small_raw(folder, reviews, fmt="amazon2018"):
    return write_raw(folder, reviews, [_meta("B001", "Pen"), _meta("B002", "Ink")], fmt)


def test_no_reviews_left_reports_every_skip_reason_top_first(tmp_path):
    nan_ts = '{"reviewerID": "U1", "asin": "B001", "overall": 5.0, "unixReviewTime": "nan"}'
    raw = _small_raw(
        tmp_path / "raw",
        [nan_ts] * 3
        + [_review("U2", "B002", BASE, rating="five"), _review("U3", "B001", BASE - 1), _review("U3", "B009", BASE)],
    )
    with pytest.raises(PreprocessError) as err:
        preprocess(tiny_cfg("data.max_malformed_fraction=1.0"), raw, tmp_path / "out")
    assert str(err.value) == (
        f"no reviews left of the 6 lines of {raw / 'Tiny.json'}; skipped or dropped by reason: "
        "invalid_unixReviewTime: 3, invalid_overall: 1, out_of_window: 1, unknown_or_dropped_item: 1 "
        "(invalid_unixReviewTime: ids must be strings, ratings and timestamps finite numbers in range)"
    )


def test_no_reviews_left_for_the_window_says_so(tmp_path):
    raw = _small_raw(tmp_path / "raw", [_review("U1", "B001", BASE - DAY), _review("U2", "B002", BASE - 1)])
    with pytest.raises(
        PreprocessError, match=r"by reason: out_of_window: 2 \(out_of_window: check data\.time_window\)"
    ):
        preprocess(tiny_cfg(), raw, tmp_path / "out")


def test_amazon2018_files_read_as_amazon2023_name_the_missing_fields(tmp_path):
    raw = tiny_raw(tmp_path / "raw")
    manifest = RawData.at(raw).manifest()
    (raw / RawData.MANIFEST).write_text(json.dumps({**manifest, "format": "amazon2023"}))
    with pytest.raises(PreprocessError) as err:
        preprocess(tiny_cfg("data.max_malformed_fraction=1.0"), raw, tmp_path / "out")
    assert str(err.value) == (
        f"no items left of the 9 lines of {raw / 'meta_Tiny.json'}; skipped or dropped by reason: "
        "missing_parent_asin: 8, malformed_line: 1 (missing_parent_asin: is data.format right? amazon2018 names the "
        "fields reviewerID/asin/overall/unixReviewTime, amazon2023 user_id/parent_asin/rating/timestamp)"
    )
    with pytest.raises(
        RawDataError,
        match=r"meta_Tiny\.json: 9 of 9 lines \(100\.0%\) are malformed or unusable.*"
        r"\(missing_parent_asin: 8, malformed_line: 1; first bad line 1: "
        r"missing_parent_asin\)",
    ):
        preprocess(tiny_cfg(), raw, tmp_path / "out")


@pytest.mark.parametrize(
    "key, value",
    [
        ("category", "../../../x"),
        ("category", "a/b"),
        ("reviews", "../Tiny.json"),
        ("meta", "/etc/passwd"),
        ("bundle", "../elsewhere"),
    ],
)
def test_manifest_names_that_lead_out_of_the_folder_are_refused(tmp_path, key, value):
    raw = tiny_raw(tmp_path / "raw")
    manifest = RawData.at(raw).manifest()
    if key == "bundle":
        manifest = {"format": "research", "category": "Tiny", "bundle": "bundle"}
    (raw / RawData.MANIFEST).write_text(json.dumps({**manifest, key: value}))
    with pytest.raises(PreprocessError) as err:
        preprocess(tiny_cfg(), raw, tmp_path / "out")
    assert str(err.value) == (
        f"{raw / RawData.MANIFEST}: key '{key}': {value!r} cannot be part of a file name "
        "(allowed: 1-100 letters, digits, '_', '-' or '.', starting with a letter or digit)"
    )
    assert sorted(p.name for p in tmp_path.rglob("*")) == sorted(
        ["Tiny.json", RawData.MANIFEST, "meta_Tiny.json", "raw"]
    )


def test_research_csvs_refuse_a_category_that_is_a_path(tmp_path):
    preprocess(tiny_cfg(), tiny_raw(tmp_path / "raw"), tmp_path / "data")
    sids = {i: [f"<a_{i}>", f"<b_{i}>"] for i in range(4)}
    with pytest.raises(PreprocessError, match=r"category '\.\./\.\./x' cannot be part of a file name"):
        write_research_csvs(tmp_path / "data", sids, tmp_path / "a" / "research", "../../x")
    assert not (tmp_path / "a").exists() and not (tmp_path / "x.csv").exists()


def test_byte_order_marks_and_crlf_line_endings_give_the_same_dataset(tmp_path):
    plain = preprocess(tiny_cfg(), tiny_raw(tmp_path / "plain"), tmp_path / "out_plain")
    raw = tiny_raw(tmp_path / "raw")
    for name in ("Tiny.json", "meta_Tiny.json"):
        text = (raw / name).read_bytes()
        (raw / name).write_bytes(b"\xef\xbb\xbf" + text.replace(b"\n", b"\r\n"))
    seal(raw)
    marked = preprocess(tiny_cfg(), raw, tmp_path / "out")
    plain.pop("wall_seconds"), marked.pop("wall_seconds")
    assert marked == plain and marked["malformed_meta_lines"] == 1 and marked["malformed_review_lines"] == 1
    for name in (Dataset.ITEMS, Dataset.USERS, *map(Dataset.split_file, SPLITS)):
        assert Dataset.at(tmp_path / "out").read_table(name) == Dataset.at(tmp_path / "out_plain").read_table(name)


def test_a_raw_file_changed_after_download_is_refused_before_it_is_read(tmp_path):
    raw = tiny_raw(tmp_path / "raw")
    size = (raw / "Tiny.json").stat().st_size
    with open(raw / "Tiny.json", "a") as fh:
        fh.write(_review("U9", "B001", BASE) + "\n")
    with pytest.raises(PreprocessError) as err:
        preprocess(tiny_cfg(), raw, tmp_path / "out")
    grown = (raw / "Tiny.json").stat().st_size
    assert str(err.value) == (
        f"{raw / 'Tiny.json'}: {grown} bytes where {RawData.MANIFEST} says {size}; the raw file "
        "changed after download-data; run download-data again"
    )
    seal(raw)
    text = (raw / "meta_Tiny.json").read_bytes()
    (raw / "meta_Tiny.json").write_bytes(text.replace(b"Notebook", b"Notebooc"))  # same size
    with pytest.raises(
        PreprocessError,
        match=r"meta_Tiny\.json: sha256 [0-9a-f]{64} where manifest\.json says "
        r"[0-9a-f]{64}; the raw file changed after download-data",
    ):
        preprocess(tiny_cfg(), raw, tmp_path / "out")
    manifest = RawData.at(raw).manifest()
    del manifest["files"]
    (raw / RawData.MANIFEST).write_text(json.dumps(manifest))
    with pytest.raises(
        PreprocessError,
        match=r"manifest\.json: key 'files' \(each raw file's bytes and sha256\) is "
        r"missing or empty; the raw folder must come from download-data",
    ):
        preprocess(tiny_cfg(), raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()
