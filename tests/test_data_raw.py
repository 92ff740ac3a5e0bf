"""Raw readers: gzip detection, malformed-line counting and errors, normalisers for both formats."""

from __future__ import annotations

import gzip
import json

import pytest

from sidreasoner.data.raw import (
    FieldCounts, ItemMeta, LineStats, RawDataError, Review, clean_text, iter_json_lines, iter_reviews,
    normalize_meta, normalize_review,
)


def _write(path, lines, gz=False):
    data = ("\n".join(lines) + "\n").encode()
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def test_malformed_lines_are_counted_and_skipped(tmp_path):
    lines = [json.dumps({"n": i}) for i in range(30)]
    lines[4] = '{"n": 4, "trunc'
    lines[9] = "[1, 2]"  # valid JSON but not an object
    lines.insert(12, "   ")  # blank lines are ignored
    stats = LineStats()
    got = list(iter_json_lines(_write(tmp_path / "a.json", lines), 0.1, stats))
    assert [obj["n"] for _, obj in got] == [i for i in range(30) if i not in (4, 9)]
    assert got[4] == (6, {"n": 5}) and got[-1] == (31, {"n": 29})  # 1-based, blank line 13 counted
    assert (stats.lines, stats.valid, stats.malformed, stats.first_bad_line) == (30, 28, 2, 5)


def test_gzip_detected_by_magic_bytes_not_name(tmp_path):
    path = _write(tmp_path / "plain_name.json", [json.dumps({"a": 1})], gz=True)
    assert list(iter_json_lines(path)) == [(1, {"a": 1})]


def test_not_json_lines_names_file_and_first_bad_line(tmp_path):
    path = _write(tmp_path / "reviews.csv", ["", "user,asin,rating"] + [f"u{i},a{i},5" for i in range(60)])
    with pytest.raises(RawDataError) as err:
        list(iter_json_lines(path))
    msg = str(err.value)
    assert "reviews.csv" in msg and "first bad line 2" in msg and "user,asin,rating" in msg


def test_malformed_share_above_budget_fails_at_end(tmp_path):
    lines = [json.dumps({"n": i}) for i in range(10)] + ["{oops"] * 2  # 2/12 = 16.7%
    path = _write(tmp_path / "m.json.gz", lines, gz=True)
    with pytest.raises(RawDataError, match=r"m\.json\.gz: 2 of 12 lines \(16\.7%\).*first bad line 11"):
        list(iter_json_lines(path, 0.1))
    assert len(list(iter_json_lines(path, 0.2))) == 10


def test_empty_file_and_missing_file(tmp_path):
    with pytest.raises(RawDataError, match="empty.json: file is empty"):
        list(iter_json_lines(_write(tmp_path / "empty.json", [""])))
    with pytest.raises(RawDataError, match="nope.json: no such file"):
        list(iter_json_lines(tmp_path / "nope.json"))


def test_amazon2018_review_and_missing_fields_counted_per_field(tmp_path):
    lines = [
        json.dumps({"reviewerID": "U1", "asin": "A1", "overall": 5.0, "unixReviewTime": 1500000000}),
        json.dumps({"reviewerID": "U2", "asin": "A1", "overall": 4.0}),
        json.dumps({"asin": "A1", "overall": 4.0, "unixReviewTime": 1}),
        json.dumps({"reviewerID": "U3", "asin": "A2", "overall": "five", "unixReviewTime": 1}),
    ]
    stats, counts = LineStats(), FieldCounts()
    got = list(iter_reviews(_write(tmp_path / "r.json", lines), "amazon2018", 0.05, stats, counts))
    assert got == [Review("U1", "A1", 5.0, 1500000000)]
    assert dict(counts.skipped) == {"missing_unixReviewTime": 1, "missing_reviewerID": 1, "invalid_overall": 1}


def test_amazon2023_review_timestamp_ms_to_seconds():
    rec = {"user_id": "AGX", "parent_asin": "B01", "asin": "B01-RED", "rating": 4.0, "timestamp": 1588687728923}
    assert normalize_review(rec, "amazon2023", FieldCounts()) == Review("AGX", "B01", 4.0, 1588687728)


def test_meta_normalisers_unescape_and_map_fields():
    counts = FieldCounts()
    rec18 = {"asin": "A1", "title": "  Pen &amp; Ink &quot;Pro&quot; ", "description": ["Nice &lt;b&gt;", " pen"],
             "brand": "Acme", "category": ["Office", "Pens"], "price": "$1"}
    assert normalize_meta(rec18, "amazon2018", counts) == ItemMeta("A1", 'Pen & Ink "Pro"', "Nice <b> pen", "Acme", ["Office", "Pens"])
    rec23 = {"parent_asin": "P1", "title": "T", "description": [], "features": ["f1", "f2"], "store": "S&amp;T",
             "categories": ["C"]}
    assert normalize_meta(rec23, "amazon2023", counts) == ItemMeta("P1", "T", "f1 f2", "S&T", ["C"])
    assert normalize_meta({"title": "x"}, "amazon2018", counts) is None
    assert normalize_meta({"asin": "A2"}, "amazon2018", counts).title is None  # missing title kept for counting
    assert dict(counts.skipped) == {"missing_asin": 1}


def test_clean_text():
    assert clean_text(None) == "" and clean_text(["a ", None, " b\n c"]) == "a b c" and clean_text(3) == "3"
