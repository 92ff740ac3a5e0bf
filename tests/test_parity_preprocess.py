"""Preprocess under MiniOneRec's protocol (the paper presets): repeated interactions kept, its title rule,
its window (end at the first instant of the end month, start widened while too few items survive), ids
in order of first appearance. Exact results on hand-made Amazon 2018 raw files."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest

from sidreasoner.artifacts import Dataset, RawData
from sidreasoner.config import load
from sidreasoner.data.preprocess import (
    preprocess,
    title_problem,
    widest_start,
    window_seconds,
    write_research_csvs,
    year_back,
)
from sidreasoner.data.raw import FieldCounts, normalize_meta
from tests.helpers.raw_manifest import seal

DAY = 86_400
T0 = int(dt.datetime(2017, 10, 1, tzinfo=dt.UTC).timestamp())  # 1506816000
NOV1 = int(dt.datetime(2018, 11, 1, tzinfo=dt.UTC).timestamp())  # 1541030400


def T(days):
    return T0 + days * DAY


def _review(user, asin, ts, rating=5.0):
    return json.dumps({"reviewerID": user, "asin": asin, "overall": rating, "unixReviewTime": ts, "summary": "ok"})


def _meta(asin, title=..., description="about"):
    rec = {"asin": asin, "description": [description], "brand": "Acme", "category": ["Office"]}
    if title is not ...:
        rec["title"] = title
    return json.dumps(rec)


def write_raw(folder, reviews, meta, category="Tiny"):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{category}_5.json").write_text("\n".join(reviews) + "\n")
    (folder / f"meta_{category}.json").write_text("\n".join(meta) + "\n")
    (folder / RawData.MANIFEST).write_text(
        json.dumps(
            {
                "source": "test",
                "format": "amazon2018",
                "category": category,
                "reviews": f"{category}_5.json",
                "meta": f"meta_{category}.json",
            }
        )
    )
    return seal(folder)


LONG = " ".join(["w"] * 21)  # 21 words
DOUBLE_SPACED = " ".join(["v"] * 19).replace("v v", "v  v", 1)  # 19 words, but 20 pieces split on " "
META = [
    _meta("I1", "Pen &amp;  Ink"),  # inner spacing stays
    _meta("I2", "&quot;Blue&quot; Gel Pen"),  # -> 'Blue" Gel Pen': leading quote stripped, inner one stays
    _meta("I3", "Notebook &ndash; A5 &#39;dotted&#39;"),  # entities other than quot/amp stay as they are
    _meta("I4", " Stapler ", "first"),
    _meta("I5", 'Great <span id="x">Tape</span>'),  # scraped HTML: dropped
    _meta("I6"),  # no title
    _meta("I7", "X"),  # one character
    _meta("I8", LONG),
    _meta("I9", DOUBLE_SPACED + " v"),  # 20 words, 21 pieces split on single spaces
    _meta("I4", '<span id="dup">Stapler</span>', "second"),  # a later, unusable record of I4
    _meta("I10"),  # unusable first record of I10 ...
    _meta("I10", "Tape Roll"),  # ... and a usable later one
    _meta("I11", ' "" '),  # spaces, then quotes stripped: empty
    _meta("I12", '" Quoted "'),  # quotes stripped after the spaces: ' Quoted ' (never reviewed)
]
REVIEWS = [
    _review("U3", "I2", T(5)),
    _review("U1", "I1", T(1)),
    _review("U1", "I2", T(2)),
    _review("U1", "I1", T(3)),  # U1 buys I1 again
    _review("U1", "I3", T(4)),
    _review("U2", "I1", T(1)),
    _review("U2", "I3", T(1)),  # same instant as the line above: file order decides
    _review("U2", "I4", T(6)),
    _review("U3", "I4", T(5)),  # same instant as U3's first line
    _review("U3", "I10", T(7)),
    _review("U2", "I10", T(8)),
    _review("U4", "I5", T(2)),  # an item dropped for its title
    _review("U4", "I1", T(-1)),  # 2017-09-30: before the window
    _review("U4", "I2", T(9)),  # U4's only usable review: the 2-core drops U4
    _review("U1", "I4", NOV1),  # 2018-11-01 00:00:00: the window's last instant
    _review("U1", "I2", NOV1 + 1),  # a second later: out
    _review("U2", "I2", NOV1 + DAY),  # 2018-11-02: out
    _review("U3", "I2", T(10)),  # U3 buys I2 again
]


def paper_cfg(*extra):
    """The office preset on the tiny files: a 2-core, histories of 3, no widening (tested on its own)."""
    return load(
        "office",
        [
            "data.category=Tiny",
            "data.k_core=2",
            "data.max_history=3",
            "data.min_samples=1",
            "data.window_widen_below_items=0",
            *extra,
        ],
    )


def _samples(out, split):
    t = Dataset.at(out).split_table(split).to_pydict()
    return list(zip(t["user_id"], t["history_item_ids"], t["item_id"], t["timestamp"], strict=True))


# ---------------------------------------------------------------- settings


def test_paper_presets_carry_the_research_settings():
    for preset in ("office", "industrial", "games"):
        d = load(preset).data
        assert (d.five_core, d.k_core, d.max_history, d.max_title_words) == (True, 5, 10, 20)
        assert (d.time_window.start, d.time_window.end) == (dt.date(2017, 10, 1), dt.date(2018, 11, 1))
        assert (d.window_end_cut, d.window_widen_below_items, d.window_earliest_start_year) == ("day_start", 3000, 1996)
        assert (d.title_rule, d.duplicate_meta, d.repeats, d.id_order) == ("minionerec", "last", "keep", "first_seen")
        assert d.split == (0.8, 0.1, 0.1)
    demo = load("demo").data
    assert (demo.title_rule, demo.duplicate_meta, demo.repeats, demo.id_order) == (
        "unescape",
        "first",
        "earliest",
        "sorted",
    )
    assert demo.window_widen_below_items == 0 and demo.window_end_cut == "day_end"


def test_window_ends_at_the_first_instant_of_november():
    lo, hi = window_seconds(load("office").data)
    assert (lo, hi) == (T0, NOV1 + 1) == (1506816000, 1541030401)  # [2017-10-01 00:00, 2018-11-01 00:00]
    assert window_seconds(load("office", ["data.window_end_cut=day_end"]).data)[1] == NOV1 + DAY
    assert widest_start(load("office").data) == dt.date(1996, 10, 1)
    assert widest_start(load("office", ["data.window_widen_below_items=0"]).data) == dt.date(2017, 10, 1)
    assert year_back(dt.date(2016, 2, 29), 1) == dt.date(2015, 2, 28)


def test_title_rule_replaces_only_quot_and_amp_then_strips_spaces_then_quotes():
    def title(raw, rule):
        return normalize_meta({"asin": "A", "title": raw}, "amazon2018", FieldCounts(), rule).title

    assert title(" &quot;Pen &amp; Ink&quot; &ndash; &lt;b&gt; ", "minionerec") == 'Pen & Ink" &ndash; &lt;b&gt;'
    assert title(" &quot;Pen &amp; Ink&quot; &ndash; &lt;b&gt; ", "unescape") == '"Pen & Ink" – <b>'
    assert title('" Quoted "', "minionerec") == " Quoted "
    assert title("a \t b", "minionerec") == "a \t b"
    rule = "minionerec"
    assert [title_problem(t, 3, rule) for t in (None, "", "X", "ab", 'Big <span id="a">', "a b c", "a  b c")] == [
        "missing_title",
        "empty_title",
        "short_title",
        None,
        "html_title",
        None,
        "long_title",
    ]
    assert [title_problem(t, 3, "unescape") for t in ("X", 'Big <span id="a">', "a  b c")] == [None, None, None]


# ---------------------------------------------------------------- the whole step


def test_research_protocol_exact(tmp_path):
    raw = write_raw(tmp_path / "raw", REVIEWS, META)
    m = preprocess(paper_cfg(), raw, tmp_path / "out")
    m.pop("wall_seconds")
    assert m == {
        "raw_meta_lines": 14,
        "malformed_meta_lines": 0,
        "items_dropped_missing_title": 1,
        "items_dropped_html_title": 1,
        "items_dropped_empty_title": 1,
        "items_dropped_short_title": 1,
        "items_dropped_long_title": 2,
        "items_dropped_duplicate_asin": 2,
        "raw_review_lines": 18,
        "malformed_review_lines": 0,
        "reviews_read": 18,
        "reviews_dropped_out_of_window": 3,
        "reviews_dropped_unknown_item": 1,
        "reviews_dropped_duplicate": 0,
        "reviews_dropped_k_core": 1,
        "k_core_iterations": 1,
        "time_window_widenings": 0,
        "time_window_start_year": 2017,
        "interactions_repeated": 2,
        "users": 3,
        "items": 5,
        "interactions": 13,
        "items_dropped_k_core": 1,
        "samples_train": 8,
        "samples_valid": 1,
        "samples_test": 1,
    }
    out = tmp_path / "out"
    # users by their first kept line (U3, U1, U2); items by first use walking U3's, U1's, U2's sequences
    assert [u["raw_user_id"] for u in Dataset.at(out).read_table(Dataset.USERS).to_pylist()] == ["U3", "U1", "U2"]
    items = Dataset.at(out).items_table().to_pylist()
    assert [(i["asin"], i["title"]) for i in items] == [
        ("I2", 'Blue" Gel Pen'),
        ("I4", "Stapler"),
        ("I10", "Tape Roll"),
        ("I1", "Pen &  Ink"),
        ("I3", "Notebook &ndash; A5 &#39;dotted&#39;"),
    ]
    # the last record's fields, the last usable title; the description as MiniOneRec writes it (the
    # raw list's Python text, which its embedding text carries)
    assert items[1]["description"] == "['second']"
    inter = Dataset.at(out).read_table(Dataset.INTERACTIONS).to_pydict()
    assert list(zip(inter["user_id"], inter["item_id"], strict=True)) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (0, 0),
        (1, 3),
        (1, 0),
        (1, 3),
        (1, 4),
        (1, 1),
        (2, 3),
        (2, 4),
        (2, 1),
        (2, 2),
    ]
    assert _samples(out, "train") == [
        (2, [3], 4, T(1)),
        (1, [3], 0, T(2)),
        (1, [3, 0], 3, T(3)),
        (1, [3, 0, 3], 4, T(4)),
        (0, [0], 1, T(5)),
        (2, [3, 4], 1, T(6)),
        (0, [0, 1], 2, T(7)),
        (2, [3, 4, 1], 2, T(8)),
    ]
    assert _samples(out, "valid") == [(0, [0, 1, 2], 0, T(10))]  # the target is in its own history
    assert _samples(out, "test") == [(1, [0, 3, 4], 1, NOV1)]  # 2018-11-01 00:00:00 is inside the window
    write_research_csvs(out, {n: [f"<a_{n}>"] for n in range(5)}, tmp_path / "research", "Tiny")
    assert (tmp_path / "research/info/Tiny.txt").read_text().splitlines()[3] == "<a_3>\tPen &  Ink\t3"


def test_project_rules_on_the_same_files(tmp_path):
    """The demo's rules: repeats dropped, every entity unescaped, '<span id', '""' and one-letter titles kept."""
    raw = write_raw(tmp_path / "raw", REVIEWS, META)
    m = preprocess(
        paper_cfg(
            "data.title_rule=unescape", "data.duplicate_meta=first", "data.repeats=earliest", "data.id_order=sorted"
        ),
        raw,
        tmp_path / "out",
    )
    assert (m["items_dropped_html_title"], m["items_dropped_short_title"], m["items_dropped_long_title"]) == (0, 0, 1)
    assert (m["items_dropped_missing_title"], m["items_dropped_empty_title"]) == (2, 0)  # I6 and I10's first record
    # I10 is dropped (its first record has no title), I5 kept: it has one review, so the 2-core drops it, then U4
    assert (m["reviews_dropped_unknown_item"], m["reviews_dropped_duplicate"], m["interactions_repeated"]) == (2, 2, 0)
    assert (m["k_core_iterations"], m["reviews_dropped_k_core"], m["interactions"]) == (2, 2, 9)
    items = Dataset.at(tmp_path / "out").items_table().to_pylist()
    assert [(i["asin"], i["title"]) for i in items] == [
        ("I1", "Pen & Ink"),
        ("I2", '"Blue" Gel Pen'),
        ("I3", "Notebook – A5 'dotted'"),
        ("I4", "Stapler"),
    ]
    assert items[3]["description"] == "first"


def test_repeats_earliest_alone_changes_only_the_repeats(tmp_path):
    raw = write_raw(tmp_path / "raw", REVIEWS, META)
    m = preprocess(paper_cfg("data.repeats=earliest"), raw, tmp_path / "out")
    assert (m["reviews_dropped_duplicate"], m["interactions_repeated"], m["interactions"]) == (2, 0, 11)
    assert (m["samples_train"], m["samples_valid"], m["samples_test"]) == (6, 1, 1)


def test_day_end_keeps_the_whole_end_day(tmp_path):
    raw = write_raw(tmp_path / "raw", REVIEWS, META)
    m = preprocess(paper_cfg("data.window_end_cut=day_end"), raw, tmp_path / "out")
    assert m["reviews_dropped_out_of_window"] == 2  # only 2018-09-30 and 2018-11-02 now
    assert _samples(tmp_path / "out", "test")[-1] == (1, [3, 4, 1], 0, NOV1 + 1)


# ---------------------------------------------------------------- widening the window's start


def _widening_raw(folder):
    """Items by period: P1, P2 from 2017-10 (users A, B, E); P3 in 2017-03..04 (A, B); P4 and P1 on 2016-09-30
    (C, D)."""
    sep30 = int(dt.datetime(2016, 9, 30, tzinfo=dt.UTC).timestamp())
    mar = int(dt.datetime(2017, 3, 1, tzinfo=dt.UTC).timestamp())
    reviews = [
        _review("A", "P1", T(1)),
        _review("B", "P1", T(2)),
        _review("A", "P2", T(3)),
        _review("B", "P2", T(4)),
        _review("E", "P1", T(5)),
        _review("E", "P2", T(6)),
        _review("A", "P3", mar),
        _review("B", "P3", mar + 60 * DAY),
        _review("C", "Q9", mar),  # an unknown item: counted as unknown once the window reaches it
        _review("C", "P4", sep30),
        _review("D", "P4", sep30),
        _review("C", "P1", sep30),
        _review("D", "P1", sep30),
    ]
    return write_raw(folder, reviews, [_meta(f"P{n}", f"Part {n}") for n in range(1, 5)])


@pytest.mark.parametrize(
    "extra, widenings, start_year, items, out_of_window, unknown",
    [
        (["data.window_widen_below_items=0"], 0, 2017, 2, 7, 0),  # off: 2017-10 on only
        (["data.window_widen_below_items=3"], 1, 2016, 3, 4, 1),  # 2 items < 3: back to 2016-10, then 3
        (["data.window_widen_below_items=4"], 2, 2015, 4, 0, 1),  # 3 < 4: back to 2015-10, reaching 2016-09-30
        (["data.window_widen_below_items=5"], 21, 1996, 4, 0, 1),  # never enough: down to 1996, as the research code
        (["data.window_widen_below_items=5", "data.window_earliest_start_year=2016"], 1, 2016, 3, 4, 1),
        (["data.window_widen_below_items=5", "data.window_earliest_start_year=2017"], 0, 2017, 2, 7, 0),
    ],
)
def test_start_widens_a_year_at_a_time(tmp_path, extra, widenings, start_year, items, out_of_window, unknown):
    m = preprocess(paper_cfg("data.split=[0.34,0.33,0.33]", *extra), _widening_raw(tmp_path / "raw"), tmp_path / "out")
    assert (m["time_window_widenings"], m["time_window_start_year"], m["items"]) == (widenings, start_year, items)
    assert (m["reviews_dropped_out_of_window"], m["reviews_dropped_unknown_item"]) == (out_of_window, unknown)
    assert (
        m["reviews_dropped_out_of_window"]
        + m["reviews_dropped_unknown_item"]
        + m["interactions"]
        + m["reviews_dropped_k_core"]
        == m["reviews_read"]
        == 13
    )


def test_first_seen_ids_follow_the_file_not_the_names(tmp_path):
    # Z's line comes first, so Z is user 0; its items, walked in time order (ties in file order), come first.
    reviews = [
        _review("Z", "B2", T(3)),
        _review("Z", "B3", T(3)),
        _review("A", "B1", T(1)),
        _review("A", "B3", T(2)),
        _review("Z", "B1", T(9)),
        _review("A", "B2", T(9)),
    ]
    raw = write_raw(tmp_path / "raw", reviews, [_meta(f"B{n}", f"Box {n}") for n in (1, 2, 3)])
    split = "data.split=[0.5,0.25,0.25]"
    preprocess(paper_cfg("data.k_core=1", split), raw, tmp_path / "first")
    preprocess(paper_cfg("data.k_core=1", split, "data.id_order=sorted"), raw, tmp_path / "sorted")
    first = Dataset.at(tmp_path / "first").read_table(Dataset.INTERACTIONS).to_pydict()
    assert [u["raw_user_id"] for u in Dataset.at(tmp_path / "first").read_table(Dataset.USERS).to_pylist()] == [
        "Z",
        "A",
    ]
    assert [i["asin"] for i in Dataset.at(tmp_path / "first").items_table().to_pylist()] == ["B2", "B3", "B1"]
    assert list(zip(first["user_id"], first["item_id"], strict=True)) == [
        (0, 0),
        (0, 1),
        (0, 2),
        (1, 2),
        (1, 1),
        (1, 0),
    ]
    srt = Dataset.at(tmp_path / "sorted").read_table(Dataset.INTERACTIONS).to_pydict()
    assert list(zip(srt["user_id"], srt["item_id"], strict=True)) == [(0, 0), (0, 2), (0, 1), (1, 1), (1, 2), (1, 0)]
    # the two samples at T(9) go by user id: Z's (valid) before A's (test) under first_seen, A's first when sorted
    assert (_samples(tmp_path / "first", "valid"), _samples(tmp_path / "first", "test")) == (
        [(0, [0, 1], 2, T(9))],
        [(1, [2, 1], 0, T(9))],
    )
    assert (_samples(tmp_path / "sorted", "valid"), _samples(tmp_path / "sorted", "test")) == (
        [(0, [0, 2], 1, T(9))],
        [(1, [1, 2], 0, T(9))],
    )
    assert np.array_equal(first["timestamp"], [T(3), T(3), T(9), T(1), T(2), T(9)])
