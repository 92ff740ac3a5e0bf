"""Raw readers: gzip detection, malformed-line counting and errors, normalisers for both formats."""

from __future__ import annotations

import gzip
import json

import pytest

from sidreasoner.data.raw import (
    FieldCounts,
    ItemMeta,
    LineStats,
    RawDataError,
    Review,
    clean_text,
    iter_json_lines,
    iter_meta,
    iter_reviews,
    normalize_meta,
    normalize_review,
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
    got = list(iter_reviews(_write(tmp_path / "r.json", lines), "amazon2018", 1.0, stats, counts))
    assert got == [Review("U1", "A1", 5.0, 1500000000)]
    assert dict(counts.skipped) == {"missing_unixReviewTime": 1, "missing_reviewerID": 1, "invalid_overall": 1}


def test_amazon2023_review_timestamp_ms_to_seconds():
    rec = {"user_id": "AGX", "parent_asin": "B01", "asin": "B01-RED", "rating": 4.0, "timestamp": 1588687728923}
    assert normalize_review(rec, "amazon2023", FieldCounts()) == Review("AGX", "B01", 4.0, 1588687728)


def test_meta_normalisers_unescape_and_map_fields():
    counts = FieldCounts()
    rec18 = {
        "asin": "A1",
        "title": "  Pen &amp; Ink &quot;Pro&quot; ",
        "description": ["Nice &lt;b&gt;", " pen"],
        "brand": "Acme",
        "category": ["Office", "Pens"],
        "price": "$1",
    }
    assert normalize_meta(rec18, "amazon2018", counts) == ItemMeta(
        "A1", 'Pen & Ink "Pro"', "Nice <b> pen", "Acme", ["Office", "Pens"]
    )
    rec23 = {
        "parent_asin": "P1",
        "title": "T",
        "description": [],
        "features": ["f1", "f2"],
        "store": "S&amp;T",
        "categories": ["C"],
    }
    assert normalize_meta(rec23, "amazon2023", counts) == ItemMeta("P1", "T", "f1 f2", "S&T", ["C"])
    assert normalize_meta({"title": "x"}, "amazon2018", counts) is None
    assert normalize_meta({"asin": "A2"}, "amazon2018", counts).title is None  # missing title kept for counting
    assert dict(counts.skipped) == {"missing_asin": 1}


def test_clean_text():
    assert clean_text(None) == "" and clean_text(["a ", None, " b\n c"]) == "a b c" and clean_text(3) == "3"


def _review18(user="U1", asin="A1", rating=5.0, ts=1500000000):
    return json.dumps({"reviewerID": user, "asin": asin, "overall": rating, "unixReviewTime": ts})


def test_unusable_ratings_and_timestamps_are_counted_by_reason_and_skipped(tmp_path):
    lines = [
        _review18(ts="nan"),
        _review18(ts="inf"),
        _review18(ts=1e300),
        _review18(ts=10**20),
        _review18(ts=-5),
        _review18(ts="soon"),
        _review18(ts=True),
        _review18(ts=[1]),
        _review18(rating="five"),
        _review18(rating="NaN"),
        _review18(rating="-inf"),
        _review18(rating=False),
        _review18(rating=1e39),
        _review18(user="U2", rating="4", ts="1500000001"),
        _review18(user="U3", rating=3, ts=1500000002.7),
    ]
    stats, counts = LineStats(), FieldCounts()
    got = list(iter_reviews(_write(tmp_path / "r.json", lines), "amazon2018", 1.0, stats, counts))
    assert got == [Review("U2", "A1", 4.0, 1500000001), Review("U3", "A1", 3.0, 1500000002)]
    assert dict(counts.skipped) == {"invalid_unixReviewTime": 8, "invalid_overall": 5}
    assert (stats.lines, stats.valid, stats.malformed) == (15, 15, 0)


def test_amazon2023_timestamp_that_is_not_a_number_is_skipped():
    counts = FieldCounts()
    base = {"user_id": "U", "parent_asin": "P", "rating": 5}
    assert normalize_review({**base, "timestamp": "nan"}, "amazon2023", counts) is None
    assert normalize_review({**base, "timestamp": 2**63}, "amazon2023", counts) is None
    assert normalize_review({**base, "timestamp": "1588687728923"}, "amazon2023", counts) == Review(
        "U", "P", 5.0, 1588687728
    )
    assert dict(counts.skipped) == {"invalid_timestamp": 2}


def test_unusable_records_share_the_malformed_budget_and_the_error_names_file_line_and_reasons(tmp_path):
    lines = (
        [_review18(user=f"U{i}") for i in range(16)]
        + ["{oops"]
        + [_review18(ts="nan")] * 2
        + [_review18(rating="five")]
    )  # 4 of 20 bad = 20%
    path = _write(tmp_path / "Office.json", lines)
    with pytest.raises(RawDataError) as err:
        list(iter_reviews(path, "amazon2018", 0.15, LineStats(), FieldCounts()))
    assert str(err.value) == (
        f"{path}: 4 of 20 lines (20.0%) are malformed or unusable, above data.max_malformed_fraction=0.15 "
        "(invalid_unixReviewTime: 2, invalid_overall: 1, malformed_line: 1; first bad line 17: '{oops')"
    )
    lines[0] = _review18(user=True)  # now the first bad record comes before the bad line
    path.write_text("\n".join(lines))
    with pytest.raises(RawDataError, match=r"5 of 20 lines \(25\.0%\).*first bad line 1: invalid_reviewerID\)$"):
        list(iter_reviews(path, "amazon2018", 0.15, LineStats(), FieldCounts()))
    stats, counts = LineStats(), FieldCounts()
    assert len(list(iter_reviews(path, "amazon2018", 0.25, stats, counts))) == 15


def test_ids_must_be_strings_never_coerced():
    counts = FieldCounts()
    for user in (True, False, 7, 7.5, ["U1"], {"id": "U1"}):
        assert normalize_review(json.loads(_review18(user=user)), "amazon2018", counts) is None
    assert normalize_review(json.loads(_review18(user="  ")), "amazon2018", counts) is None
    assert normalize_review(json.loads(_review18(asin=123)), "amazon2018", counts) is None
    assert normalize_review(json.loads(_review18(user=" True ")), "amazon2018", counts) == Review(
        "True", "A1", 5.0, 1500000000
    )
    assert (
        normalize_review({"user_id": True, "parent_asin": "P", "rating": 5, "timestamp": 1}, "amazon2023", counts)
        is None
    )
    assert normalize_meta({"asin": True, "title": "Pen"}, "amazon2018", counts) is None
    assert normalize_meta({"parent_asin": 42, "title": "Pen"}, "amazon2023", counts) is None
    assert dict(counts.skipped) == {
        "invalid_reviewerID": 6,
        "missing_reviewerID": 1,
        "invalid_asin": 2,
        "invalid_user_id": 1,
        "invalid_parent_asin": 1,
    }


@pytest.mark.parametrize("gz", [False, True])
def test_byte_order_mark_and_crlf_line_endings_are_accepted(tmp_path, gz):
    data = b"\xef\xbb\xbf" + b"".join(line.encode() + b"\r\n" for line in (_review18("U1"), _review18("U2")))
    path = tmp_path / "r.json"
    path.write_bytes(gzip.compress(data) if gz else data)
    stats, counts = LineStats(), FieldCounts()
    got = list(iter_reviews(path, "amazon2018", 0.0, stats, counts))
    assert [r.user for r in got] == ["U1", "U2"] and (stats.lines, stats.malformed) == (2, 0)
    meta = b"\xef\xbb\xbf\r\n" + json.dumps({"asin": "A1", "title": "Pen"}).encode() + b"\r\n"  # a BOM on a blank line
    path.write_bytes(gzip.compress(meta) if gz else meta)
    stats = LineStats()
    assert [m.title for m in iter_meta(path, "amazon2018", 0.0, stats, FieldCounts())] == ["Pen"]
    assert (stats.lines, stats.malformed) == (1, 0)


def test_a_bad_line_is_shown_as_a_short_escaped_prefix(tmp_path):
    line = "\x1b[2J\x1b[31m" + "A" * 51 + "SECRET-PAST-THE-PREFIX" + "B" * 200  # terminal escapes, then 60 chars
    path = tmp_path / "r.json"
    path.write_text(line + "\n" + "not json\n" * 3)
    with pytest.raises(RawDataError) as err:
        list(iter_json_lines(path))
    msg = str(err.value)
    assert "\x1b" not in msg and "SECRET" not in msg
    assert f"(first bad line 1: {line[:60] + '...'!r})" in msg and "'\\x1b[2J\\x1b[31mAAA" in msg
