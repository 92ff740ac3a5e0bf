"""Research bundle reader (the MiniOneRec/SIDReasoner `data/Amazon` folder): exact values on a small bundle
with the released files' quirks, and each damaged variant's error or counted skip."""

from __future__ import annotations

import csv
import json
import random
import re

import pytest

from sidreasoner.data.research import (
    Item,
    NarrativeRow,
    ResearchDataError,
    Sample,
    check_item_ids,
    find_bundle,
    read_bundle,
    read_general_reasoning,
    read_info,
    read_integrated_narratives,
    read_item_narratives,
    read_items,
    read_sid_index,
    read_split,
    reasoning_text,
    research_description,
    sid_levels,
    strip_think,
)

from .helpers.bundle import SUFFIX, break_bundle, write_bundle

CAT = "Office_Products"
# SIDs the seed-0 bundle gives items 0, 1, 2 (random.Random(0), three levels of 256 codes).
SID0, SID1, SID2 = "<a_197><b_215><c_20>", "<a_132><b_248><c_207>", "<a_155><b_244><c_183>"
TITLE0 = 'Pendaflex Hanging Folder Tabs, 2", Clear, 25 Tabs'
TITLE1 = 'Scotch\'s "Magic" Tape, 3/4 x 1000 Inches'
TITLE2 = 'Acme Ruler, 12" / 30 cm, [Metal] \\ Steel'


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> dict:
    """The quirky seed-0 bundle (6 users, 12 items). Shared: read, never write."""
    return write_bundle(tmp_path_factory.mktemp("bundle"))


@pytest.fixture()
def fresh(tmp_path) -> dict:
    """The same bundle in tmp_path, for a test that damages it."""
    return write_bundle(tmp_path / "bundle")


def _as_dicts(rows) -> list[dict]:
    return [r._asdict() for r in rows]


def _write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


# ---------------------------------------------------------------- finding the files


def test_find_bundle_names_every_file(bundle):
    files = find_bundle(bundle["root"], CAT)
    assert files.splits == {s: bundle["root"] / s / f"{CAT}{SUFFIX}.csv" for s in ("train", "valid", "test")}
    assert files.index == bundle["root"] / "index" / f"{CAT}.index.json"
    assert files.items == bundle["root"] / "index" / f"{CAT}.item.json"
    assert files.info == bundle["root"] / "info" / f"{CAT}{SUFFIX}.txt"
    assert files.item_narratives == bundle["root"] / "index" / f"{CAT}.item_enhanced_v2.json"
    assert files.integrated_narratives == bundle["root"] / "index" / f"{CAT}.integrated_narrative.csv"
    assert files.general_reasoning == bundle["root"] / "general" / "sampled_data.arrow"
    assert files.describe().startswith(f"train: train/{CAT}{SUFFIX}.csv; valid: valid/")


def test_find_bundle_reports_absent_files_as_none(fresh):
    info = break_bundle(fresh, "missing_split")
    (fresh["paths"]["general_reasoning"]).unlink()
    files = find_bundle(fresh["root"], CAT)
    assert list(files.splits) == ["train", "test"] and files.valid is None and files.general_reasoning is None
    assert "valid: missing" in files.describe() and "general_reasoning: missing" in files.describe()
    with pytest.raises(ResearchDataError, match=re.escape(info["file"]) + ": no such file"):
        read_split(fresh["paths"]["valid"])


def test_find_bundle_accepts_the_plain_name_but_not_two_files(tmp_path):
    (tmp_path / "test").mkdir()
    _write_csv(tmp_path / "test" / f"{CAT}.csv", ["user_id"], [])
    assert find_bundle(tmp_path, CAT).test == tmp_path / "test" / f"{CAT}.csv"
    _write_csv(tmp_path / "test" / f"{CAT}_5_2014.csv", ["user_id"], [])
    with pytest.raises(ResearchDataError, match=rf"several files for category '{CAT}': {CAT}.csv, {CAT}_5_2014.csv"):
        find_bundle(tmp_path, CAT)


def test_no_split_csv_lists_what_the_folder_holds(fresh):
    break_bundle(fresh, "no_splits")
    with pytest.raises(ResearchDataError) as err:
        find_bundle(fresh["root"], CAT)
    msg = str(err.value)
    assert f"no split CSV for category '{CAT}'" in msg
    assert f"Categories present: {CAT}." in msg
    assert f"index/{CAT}.index.json" in msg and "general/sampled_data.arrow" in msg


def test_other_category_names_the_ones_present(bundle):
    with pytest.raises(ResearchDataError, match=rf"category 'Toys_and_Games'.*Categories present: {CAT}\."):
        find_bundle(bundle["root"], "Toys_and_Games")


def test_missing_folder_and_the_folder_above_the_bundle(tmp_path, bundle):
    with pytest.raises(ResearchDataError, match="no such folder"):
        find_bundle(tmp_path / "nope", CAT)
    above = tmp_path / "repo"
    (above / "data").mkdir(parents=True)
    (above / "data" / "Amazon").symlink_to(bundle["root"], target_is_directory=True)
    with pytest.raises(ResearchDataError, match=r"data/Amazon exists: is that the bundle folder\?"):
        find_bundle(above, CAT)


# ---------------------------------------------------------------- split CSVs


def test_splits_keep_every_row_in_file_order(bundle):
    for split in ("train", "valid", "test"):
        rows = read_split(bundle["paths"][split])
        assert _as_dicts(rows.samples) == bundle["splits"][split]
        assert rows.row_numbers == list(range(1, len(bundle["splits"][split]) + 1))
        assert rows.skips.total == 0
    assert [len(read_split(bundle["paths"][s]).samples) for s in ("train", "valid", "test")] == [29, 6, 6]
    assert [s.user_id for s in read_split(bundle["paths"]["valid"]).samples] == ["A0", "A1", "A2", "A3", "A4", "A5"]


def test_quirky_rows_parse_exactly(bundle):
    train = read_split(bundle["paths"]["train"]).samples
    valid = read_split(bundle["paths"]["valid"]).samples
    test = read_split(bundle["paths"]["test"]).samples
    # a history of length 1
    assert train[0] == Sample("A0", [0], 1, [TITLE0], TITLE1, [SID0], SID1)
    # the target inside its own history
    assert valid[0] == Sample("A0", [0, 1], 0, [TITLE0, TITLE1], TITLE0, [SID0, SID1], SID0)
    # a repeated item in the history; titles with quotes, commas and a backslash
    assert test[0] == Sample("A0", [0, 1, 0], 2, [TITLE0, TITLE1, TITLE0], TITLE2, [SID0, SID1, SID0], SID2)
    # the longest histories are cut to 10 items
    assert max(len(s.history_item_ids) for s in test) == 10
    assert test[4].history_item_ids == [4, 7, 1, 9, 6, 5, 9, 3, 4, 2]


def test_repeated_history_items_and_targets_in_history_are_counted(bundle):
    m = read_split(bundle["paths"]["test"]).metrics("test")
    assert m == {
        "test_rows": 6,
        "test_rows_read": 6,
        "test_rows_repeated_history_items": 5,
        "test_rows_target_in_history": 3,
    }


def test_columns_in_any_order_blank_lines_and_extra_columns(tmp_path):
    header = [
        "item_sid",
        "item_id",
        "extra",
        "history_item_sid",
        "history_item_id",
        "item_title",
        "history_item_title",
        "user_id",
    ]
    path = _write_csv(
        tmp_path / "x.csv",
        header,
        [
            [
                "<a_1><b_2>",
                "7",
                "x",
                "['<a_0><b_0>', '<a_3><b_4>']",
                "[3, 4]",
                'Tape, 2" wide',
                str(["O'Brien", 'Say "hi"']),
                "U9",
            ],
            [],  # a blank line: not a row
            ["<a_0><b_0>", "3", "y", "['<a_3><b_4>']", "[4]", "Pen", "['Pad']", "U10"],
        ],
    )
    assert path.read_text().splitlines()[1] == (
        '<a_1><b_2>,7,x,"[\'<a_0><b_0>\', \'<a_3><b_4>\']","[3, 4]","Tape, 2"" wide",'
        '"[""O\'Brien"", \'Say ""hi""\']",U9'
    )
    rows = read_split(path, levels=2)
    assert rows.samples == [
        Sample("U9", [3, 4], 7, ["O'Brien", 'Say "hi"'], 'Tape, 2" wide', ["<a_0><b_0>", "<a_3><b_4>"], "<a_1><b_2>"),
        Sample("U10", [4], 3, ["Pad"], "Pen", ["<a_3><b_4>"], "<a_0><b_0>"),
    ]
    assert rows.row_numbers == [1, 2]


BAD_ROWS = [
    # (row fields in HEADER order, reason)
    (["A1", "['a']", "t", "[1]", "2", "['<a_1><b_1>']", "<a_2><b_2>"], None),
    (["A2", "['a'", "t", "[1]", "2", "['<a_1><b_1>']", "<a_2><b_2>"], "unparseable_history_item_title"),
    (["A3", "['a']", "t", "384", "2", "['<a_1><b_1>']", "<a_2><b_2>"], "not_list_history_item_id"),
    (["A4", "['a']", "t", "[1.5]", "2", "['<a_1><b_1>']", "<a_2><b_2>"], "not_int_history_item_id"),
    (["A5", "['a']", "t", "['1']", "2", "['<a_1><b_1>']", "<a_2><b_2>"], "not_int_history_item_id"),
    (["A6", "['a']", "t", "[1]", "2.0", "['<a_1><b_1>']", "<a_2><b_2>"], "not_int_item_id"),
    (["A7", "['a', 'b']", "t", "[1]", "2", "['<a_1><b_1>']", "<a_2><b_2>"], "length_mismatch"),
    (["A8", "['a']", "t", "[1]", "2", "['<a_1><b_1>', '<a_1><b_1>']", "<a_2><b_2>"], "length_mismatch"),
    (["A9", "['a']", "t", "[1]", "2", "['<b_1><a_1>']", "<a_2><b_2>"], "bad_sid_history_item_sid"),
    (["A10", "['a']", "t", "[1]", "2", "['<a_1><b_1>']", "<a_2><b_02>"], "bad_sid_item_sid"),
    (["A11", "[]", "t", "[]", "2", "[]", "<a_2><b_2>"], "empty_history"),
    (["", "['a']", "t", "[1]", "2", "['<a_1><b_1>']", "<a_2><b_2>"], "missing_user_id"),
    (["A13", "['a']", "t", "[1]", "2", "['<a_1><b_1>']"], "field_count"),
    (["A14", "[7]", "t", "[1]", "2", "['<a_1><b_1>']", "<a_2><b_2>"], "not_text_history_item_title"),
    (["A15", "['a']", "t", "[1]", "2", "['<a_1><b_1>']", "<a_2>"], None),  # fine without `levels`
    (["A16", "(1,)", "t", "[1]", "2", "['<a_1><b_1>']", "<a_2><b_2>"], "not_list_history_item_title"),
]
HEADER = ["user_id", "history_item_title", "item_title", "history_item_id", "item_id", "history_item_sid", "item_sid"]


def test_malformed_rows_are_counted_by_reason_and_skipped(tmp_path):
    path = _write_csv(tmp_path / "train.csv", HEADER, [r for r, _ in BAD_ROWS])
    rows = read_split(path, max_malformed_fraction=1.0)
    assert [s.user_id for s in rows.samples] == ["A1", "A15"]
    assert rows.row_numbers == [1, 15]
    want: dict[str, int] = {}
    for _, reason in BAD_ROWS:
        if reason:
            want[reason] = want.get(reason, 0) + 1
    assert dict(rows.skips.skipped) == want and rows.skips.read == 16
    assert rows.skips.first_bad.startswith("row 2 (line 3), field history_item_title: not a Python literal")
    # with `levels`, a SID of another depth is malformed too
    assert [s.user_id for s in read_split(path, max_malformed_fraction=1.0, levels=2).samples] == ["A1"]


def test_malformed_share_above_the_budget_names_file_row_and_field(tmp_path):
    path = _write_csv(tmp_path / "valid.csv", HEADER, [r for r, _ in BAD_ROWS[:4]])
    with pytest.raises(ResearchDataError) as err:
        read_split(path, max_malformed_fraction=0.5)
    msg = str(err.value)
    assert msg.startswith(f"{path}: 3 of 4 rows (75.0%) are malformed, above max_malformed_fraction=0.5")
    assert "not_int_history_item_id: 1, not_list_history_item_id: 1, unparseable_history_item_title: 1" in msg
    assert "first: row 2 (line 3), field history_item_title" in msg
    assert len(read_split(path, max_malformed_fraction=0.75).samples) == 1


def test_non_list_history_in_the_bundle_is_a_counted_skip(fresh):
    info = break_bundle(fresh, "non_list_history")
    rows = read_split(fresh["paths"]["test"], max_malformed_fraction=0.2)
    assert dict(rows.skips.skipped) == {info["reason"]: 1}
    assert rows.row_numbers == [2, 3, 4, 5, 6]
    with pytest.raises(ResearchDataError) as err:
        read_split(fresh["paths"]["test"], max_malformed_fraction=0.1)
    assert info["file"] in str(err.value)
    assert f"row {info['row']} (line 2), field {info['field']}: not a list: '384'" in str(err.value)


def test_history_length_mismatch_in_the_bundle(fresh):
    info = break_bundle(fresh, "length_mismatch")
    rows = read_split(fresh["paths"]["test"], max_malformed_fraction=0.2)
    assert dict(rows.skips.skipped) == {"length_mismatch": 1}
    assert rows.skips.first_bad == "row 1 (line 2), field history_item_title: 4 titles for 3 history item ids"
    assert info["row"] == 1


def test_missing_column_names_file_and_column(fresh):
    info = break_bundle(fresh, "missing_column")
    with pytest.raises(
        ResearchDataError,
        match=rf"{re.escape(info['file'])}: missing column\(s\) item_sid "
        r"\(the header has: user_id, .*history_item_sid\)",
    ):
        read_split(fresh["paths"]["test"])


def test_empty_file_and_duplicated_column(tmp_path):
    (tmp_path / "e.csv").write_text("")
    with pytest.raises(ResearchDataError, match=r"e\.csv: empty file"):
        read_split(tmp_path / "e.csv")
    _write_csv(tmp_path / "d.csv", HEADER + ["item_id"], [])
    with pytest.raises(ResearchDataError, match=r"d\.csv: column\(s\) item_id appear more than once"):
        read_split(tmp_path / "d.csv")


def test_header_only_split_has_no_rows(tmp_path):
    rows = read_split(_write_csv(tmp_path / "t.csv", HEADER, []))
    assert rows.samples == [] and rows.skips.read == 0


# ---------------------------------------------------------------- SID index


def test_sid_index_reports_colliding_items(bundle):
    index = read_sid_index(bundle["paths"]["index"])
    assert index.levels == 3 and len(index.codes) == 12
    assert index.codes[0] == ["<a_197>", "<b_215>", "<c_20>"] and index.sid(2) == SID2
    assert sorted(index.duplicates.values()) == [[4, 5], [7, 8, 9]]
    assert index.duplicates == bundle["duplicates"]
    assert index.colliding_items == 5
    assert index.metrics() == {"sid_items": 12, "sid_levels": 3, "sid_duplicate_sids": 2, "sid_colliding_items": 5}
    assert read_sid_index(bundle["paths"]["index"], levels=3).codes == index.codes


def test_sid_with_wrong_number_of_levels_names_file_and_item(fresh):
    info = break_bundle(fresh, "sid_wrong_levels")
    with pytest.raises(
        ResearchDataError,
        match=rf"{re.escape(info['file'])}: item 3 has 2 codes .*expected 3 "
        r"\(as the first item\)",
    ):
        read_sid_index(fresh["paths"]["index"])
    with pytest.raises(ResearchDataError, match=r"item 0 has 3 codes .*expected 4 \(levels=4\)"):
        read_sid_index(write_bundle(fresh["root"].parent / "other")["paths"]["index"], levels=4)


def test_sid_codes_out_of_level_order(fresh):
    info = break_bundle(fresh, "sid_bad_letter")
    with pytest.raises(
        ResearchDataError, match=rf"{re.escape(info['file'])}: item 3: code 2 <c_1> should be level 'b'"
    ):
        read_sid_index(fresh["paths"]["index"])


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ('{"01": ["<a_1>"]}', "item id '01' is not a non-negative integer"),
        ('{"0": ["<a_1>"], "0": ["<a_2>"]}', "key(s) '0' appear more than once"),
        ('{"0": ["<a_1>"], "1": ["a_2"]}', "item 1: code 1 'a_2' is not like <a_12>"),
        ('{"0": "<a_1><b_2>"}', "item 0: expected a non-empty list of codes"),
        ('["<a_1>"]', "expected a JSON object of item id -> SID codes, got list"),
        ('{"0": [', "not valid JSON"),
        ("{}", "the index is empty"),
    ],
)
def test_malformed_index_files(tmp_path, content, message):
    path = tmp_path / "Cat.index.json"
    path.write_text(content)
    with pytest.raises(ResearchDataError) as err:
        read_sid_index(path)
    assert str(err.value) == f"{path}: {message}" or str(err.value).startswith(f"{path}: {message}")


def test_sid_levels():
    assert [sid_levels(s) for s in ("<a_1><b_2><c_3>", "<a_0>", "<a_1><c_2>", "<a_01>", " <a_1>", "<a_1>x", "")] == [
        3,
        1,
        None,
        None,
        None,
        None,
        None,
    ]


# ---------------------------------------------------------------- item.json and info


def test_items_descriptions_are_normalised(bundle):
    items = read_items(bundle["paths"]["items"])
    assert len(items.items) == 12
    assert items.items[1] == Item(TITLE1, [], "Globex", [])
    assert items.items[2].description == []  # a list literal of blank strings
    assert items.items[3].description == ["['It's a notebook, dotted']"]  # does not parse: kept whole
    assert items.items[4].description == ["A plain description, not a list."]
    assert items.items[0].description == [
        f"The {TITLE0} is built for daily office use.",
        "Item 0: comes with a one-year warranty.",
    ]
    assert items.items[0].categories == ["Office Products", "Paper"]
    for i, it in bundle["items"].items():
        assert items.items[i].title == it["title"] and items.items[i].description == it["texts"]
    assert dict(items.counts) == {"description_empty": 2, "description_unparsed_list": 1}


def test_research_description_is_the_longest_text_else_the_title(bundle):
    items = read_items(bundle["paths"]["items"]).items
    assert research_description(items[0]) == f"The {TITLE0} is built for daily office use."
    assert research_description(items[1]) == TITLE1  # empty description
    assert research_description(items[2]) == TITLE2  # only blank texts
    assert research_description(items[3]) == "['It's a notebook, dotted']"
    assert research_description(Item("T", ["abc", "xyz", "ab"], "", [])) == "abc"  # the first of equal length


def test_items_without_title_name_the_item(tmp_path):
    path = tmp_path / "Cat.item.json"
    path.write_text(json.dumps({"0": {"title": "A", "description": ""}, "1": {"description": "x"}}))
    with pytest.raises(ResearchDataError, match=r"Cat\.item\.json: item 1: field title is missing"):
        read_items(path)
    path.write_text(json.dumps({"0": {"title": 5}}))
    with pytest.raises(ResearchDataError, match=r"item 0: field title is not a string: '5'"):
        read_items(path)


def test_info_lines(bundle, tmp_path):
    info = read_info(bundle["paths"]["info"])
    assert info[:3] == [(SID0, TITLE0, 0), (SID1, TITLE1, 1), (SID2, TITLE2, 2)]
    assert len(info) == 12
    bad = tmp_path / "Cat.txt"
    bad.write_text(f"{SID0}\t{TITLE0}\t0\n{SID1} {TITLE1} 1\n")
    with pytest.raises(ResearchDataError, match=r"Cat\.txt: line 2: expected SID<TAB>title<TAB>item id"):
        read_info(bad)


# ---------------------------------------------------------------- SIDReasoner extras


def test_item_narratives_keep_the_text_after_think(bundle):
    got = read_item_narratives(bundle["paths"]["item_narratives"])
    assert got.texts[0] == "Item 0 keeps your tabs in order."
    # no </think>: the text is kept unchanged, leading spaces included
    assert got.texts[3] == f"  {bundle['items'][3]['sid']} is the Café Notebook – A5, Dotted, a fine item."
    assert 1 not in got.texts and 2 not in got.texts
    assert got.texts == bundle["item_narratives"]
    assert list(got.texts) == [0] + list(range(3, 12))
    assert dict(got.counts) == {"missing_llm_stage2": 1, "empty": 1, "think_stripped": 2}


def test_think_rules():
    assert strip_think("<think>a</think> b </think>  c ") == "c"
    assert strip_think("  no think  ") == "  no think  "
    assert reasoning_text("<think>a</think>\n b ") == "b"
    assert reasoning_text("  <think>never closed") is None
    assert reasoning_text(" \n") is None
    assert reasoning_text("plain </think> kept") == "plain </think> kept"  # only a leading <think> is cut


def test_integrated_narratives_per_row(bundle):
    got = read_integrated_narratives(bundle["paths"]["integrated_narratives"])
    train = bundle["splits"]["train"]
    assert len(got.rows) == 29 and got.row_numbers == list(range(1, 30))
    assert [(r.history_narrative, r.reasoning_path) for r in got.rows] == bundle["narratives"]
    first = train[0]
    assert got.rows[0][:5] == ("A0", [0], 1, [SID0], SID1)
    assert got.rows[1].history_narrative is None  # empty cell
    assert got.rows[2].reasoning_path is None  # <think> never closed
    assert got.rows[3].reasoning_path == "Final reasoning for row 4."
    assert got.rows[4].reasoning_path is None  # empty
    assert got.rows[5].history_narrative is None  # NaN, as pandas reads it
    assert got.rows[7].reasoning_path == ""  # nothing after </think>: kept, as the research code does
    assert isinstance(got.rows[0], NarrativeRow) and first["item_id"] == got.rows[0].item_id
    assert dict(got.texts) == {
        "history_narrative_missing": 2,
        "reasoning_path_missing": 1,
        "reasoning_path_unclosed_think": 1,
        "reasoning_path_empty_after_think": 1,
    }


def test_integrated_narratives_need_one_text_column(tmp_path):
    path = _write_csv(tmp_path / "n.csv", HEADER, [])
    with pytest.raises(ResearchDataError, match=r"n\.csv: missing column integrated_narrative and reasoning_path"):
        read_integrated_narratives(path)
    path = _write_csv(
        tmp_path / "r.csv",
        ["user_id", "history_item_id", "item_id", "history_item_sid", "item_sid", "reasoning_path"],
        [["U", "[1]", "2", "['<a_1>']", "<a_2>", "why"]],
    )
    assert read_integrated_narratives(path).rows == [NarrativeRow("U", [1], 2, ["<a_1>"], "<a_2>", None, "why")]


FOUR_COLUMNS = ["history_item_sid", "item_sid", "reasoning_path", "integrated_narrative"]


def test_integrated_narratives_with_the_research_columns_only(tmp_path):
    """The four columns the research code reads: rows known by their SIDs, ids None."""
    path = _write_csv(
        tmp_path / "n.csv",
        FOUR_COLUMNS,
        [
            ["['<a_1><b_2>', '<a_3><b_4>']", "<a_5><b_6>", "<think>x</think> Because.", "Bought two."],
            ["[]", "<a_5><b_6>", "why", "story"],  # malformed: skipped
            ["['<a_1><b_2>']", "<a_3><b_4>", "", "NaN"],
        ],
    )
    got = read_integrated_narratives(path, max_malformed_fraction=0.5, levels=2)
    assert got.has_ids is False
    assert got.rows == [
        NarrativeRow(None, None, None, ["<a_1><b_2>", "<a_3><b_4>"], "<a_5><b_6>", "Bought two.", "Because."),
        NarrativeRow(None, None, None, ["<a_1><b_2>"], "<a_3><b_4>", None, None),
    ]
    assert got.row_numbers == [1, 3] and dict(got.skips.skipped) == {"empty_history": 1}
    assert dict(got.texts) == {"history_narrative_missing": 1, "reasoning_path_missing": 1}
    with_ids = _write_csv(tmp_path / "i.csv", ["user_id", "history_item_id", "item_id", *FOUR_COLUMNS], [])
    assert read_integrated_narratives(with_ids).has_ids is True


def test_integrated_narratives_with_some_id_columns_name_the_missing_ones(tmp_path):
    path = _write_csv(tmp_path / "n.csv", ["user_id", *FOUR_COLUMNS], [])
    with pytest.raises(ResearchDataError) as err:
        read_integrated_narratives(path)
    assert str(err.value) == (
        f"{path}: missing column(s) history_item_id, item_id (the header has: user_id, history_item_sid, "
        "item_sid, reasoning_path, integrated_narrative); a narrative file has all of user_id, history_item_id, "
        "item_id or none of them (then its rows are known by history_item_sid and item_sid, as the research "
        "code reads them)"
    )
    no_sid = _write_csv(tmp_path / "s.csv", ["history_item_sid", "reasoning_path"], [])
    with pytest.raises(ResearchDataError, match=r"s\.csv: missing column\(s\) item_sid \(the header has"):
        read_integrated_narratives(no_sid)


def test_a_bundle_whose_narratives_have_no_ids_reads_the_same_texts(tmp_path):
    with_ids = read_bundle(write_bundle(tmp_path / "ids")["root"], CAT)
    four = write_bundle(tmp_path / "four", narrative_ids=False)
    assert four["paths"]["integrated_narratives"].read_text().splitlines()[0] == ",".join(FOUR_COLUMNS)
    got = read_bundle(four["root"], CAT)
    assert got.narratives.has_ids is False and got.metrics == with_ids.metrics
    assert [(r.history_narrative, r.reasoning_path) for r in got.narratives.rows] == four["narratives"]
    assert [(r.history_sids, r.item_sid) for r in got.narratives.rows] == [
        (s["history_sids"], s["item_sid"]) for s in four["splits"]["train"]
    ]
    assert {r[:3] for r in got.narratives.rows} == {(None, None, None)}


def test_general_reasoning_content_is_normalised(bundle):
    got = read_general_reasoning(bundle["paths"]["general_reasoning"])
    assert got.conversations == [c for c in bundle["general"] if c is not None]
    assert got.conversations[1][1] == {"role": "user", "content": "Part one.\nPart two."}
    assert got.conversations[3][1]["content"] == 'He said "it\'s fine",\nthen left.'
    assert got.conversations[0] == [
        {"role": "system", "content": "You are a careful assistant."},
        {"role": "user", "content": "Question 0: what is 0 + 0?"},
        {"role": "assistant", "content": "<think>add</think>\n0"},
    ]
    assert got.metrics() == {
        "general_conversations": 5,
        "general_lines_read": 6,
        "general_sampled": 6,
        "general_multi_part_content": 1,
        "general_no_assistant": 1,
    }


def test_general_reasoning_sample_draws_like_the_research_code(bundle):
    got = read_general_reasoning(bundle["paths"]["general_reasoning"], sample=3, seed=0)
    # random.seed(0); random.sample(six conversations, 3) -> 3, 5, 0; 3 has no assistant message
    random.seed(0)
    assert random.sample(range(6), 3) == [3, 5, 0]
    assert got.conversations == [bundle["general"][5], bundle["general"][0]]
    assert got.sampled == 3 and got.counts["no_assistant"] == 1
    assert len(read_general_reasoning(bundle["paths"]["general_reasoning"], sample=100).conversations) == 5


def test_messages_that_are_not_a_list(fresh):
    info = break_bundle(fresh, "messages_not_list")
    got = read_general_reasoning(fresh["paths"]["general_reasoning"], max_malformed_fraction=0.2)
    assert dict(got.skips.skipped) == {info["reason"]: 1} and len(got.conversations) == 4
    with pytest.raises(ResearchDataError) as err:
        read_general_reasoning(fresh["paths"]["general_reasoning"], max_malformed_fraction=0.1)
    assert str(err.value).startswith(f"{fresh['paths']['general_reasoning']}: 1 of 6 lines (16.7%) are malformed")
    assert f"first: line {info['line']}: not a list of messages: 'hello'" in str(err.value)


def test_general_reasoning_bad_lines(tmp_path):
    path = tmp_path / "g.arrow"
    good = json.dumps({"messages": str([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])})
    path.write_text(
        "\n".join(
            [
                good,
                "{not json",
                json.dumps({"other": 1}),
                json.dumps({"messages": "[{'role': 'user'}]"}),
                json.dumps({"messages": "[{'role': 'user', 'content': 5}]"}),
                "",
                good,
            ]
        )
        + "\n"
    )
    got = read_general_reasoning(path, max_malformed_fraction=1.0)
    assert len(got.conversations) == 2 and got.skips.read == 6
    assert dict(got.skips.skipped) == {"not_json": 1, "missing_messages": 1, "bad_message": 1, "bad_content": 1}
    assert got.skips.first_bad.startswith("line 2: not a JSON line")


def test_general_reasoning_from_an_arrow_ipc_file(tmp_path):
    import pyarrow as pa

    msgs = str([{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}])
    path = tmp_path / "sampled_data.arrow"
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_stream(sink, pa.schema([("messages", pa.string())])) as w:
        w.write_table(pa.table({"messages": [msgs, msgs]}))
    got = read_general_reasoning(path)
    assert got.conversations == [[{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]] * 2


# ---------------------------------------------------------------- across files


@pytest.mark.parametrize("kind", ["item_not_in_index", "item_not_in_items"])
def test_item_missing_from_index_or_items_names_file_row_and_id(fresh, kind):
    info = break_bundle(fresh, kind)
    with pytest.raises(ResearchDataError) as err:
        read_bundle(fresh["root"], CAT)
    assert str(err.value) == (
        f"{fresh['paths'][info['split']]}: row {info['row']}, field {info['field']}: "
        f"item 2 is not in {fresh['root'] / 'index' / info['source']}"
    )
    assert (info["split"], info["row"], info["field"]) == ("train", 6, "history_item_id")


def test_sids_and_titles_that_disagree_with_the_index_are_counted(fresh):
    path = fresh["paths"]["valid"]
    with open(path, newline="", encoding="utf-8") as fh:
        table = list(csv.reader(fh))
    table[2][6] = SID0  # row 2's target SID
    table[3][2] = "Another title"  # row 3's target title
    _write_csv(path, table[0], table[1:])
    got = check_item_ids(
        {"valid": read_split(path)}, read_sid_index(fresh["paths"]["index"]), read_items(fresh["paths"]["items"])
    )
    assert (got.sid_mismatch_rows, got.title_mismatch_rows) == (1, 1)
    assert (
        got.first_sid_mismatch == f"{path}: row 2: item 9 has SID {SID0} here, {fresh['items'][9]['sid']} in "
        f"{fresh['paths']['index']}"
    )
    assert got.first_title_mismatch.startswith(f"{path}: row 3: item 5 has title 'Another title' here")


def test_read_bundle_metrics(bundle):
    got = read_bundle(bundle["root"], CAT, general_sample=4, seed=0)
    assert got.metrics == {
        "train_rows": 29,
        "train_rows_read": 29,
        "train_rows_repeated_history_items": 12,
        "train_rows_target_in_history": 9,
        "valid_rows": 6,
        "valid_rows_read": 6,
        "valid_rows_repeated_history_items": 4,
        "valid_rows_target_in_history": 1,
        "test_rows": 6,
        "test_rows_read": 6,
        "test_rows_repeated_history_items": 5,
        "test_rows_target_in_history": 3,
        "sid_items": 12,
        "sid_levels": 3,
        "sid_duplicate_sids": 2,
        "sid_colliding_items": 5,
        "items": 12,
        "items_description_empty": 2,
        "items_description_unparsed_list": 1,
        "item_narratives": 10,
        "item_narratives_empty": 1,
        "item_narratives_missing_llm_stage2": 1,
        "item_narratives_think_stripped": 2,
        "narrative_rows": 29,
        "narrative_rows_read": 29,
        "narrative_history_narratives": 27,
        "narrative_reasoning_paths": 27,
        "narrative_history_narrative_missing": 2,
        "narrative_reasoning_path_missing": 1,
        "narrative_reasoning_path_unclosed_think": 1,
        "narrative_reasoning_path_empty_after_think": 1,
        "general_conversations": 3,
        "general_lines_read": 6,
        "general_sampled": 4,
        "general_multi_part_content": 1,
        "general_no_assistant": 1,
        "info_lines": 12,
        "consistency_sid_mismatch_rows": 0,
        "consistency_title_mismatch_rows": 0,
        "consistency_index_items_without_meta": 0,
        "consistency_info_mismatch_lines": 0,
    }


def test_read_bundle_checks_split_sids_against_the_index_depth(fresh):
    """The index fixes the number of levels: a two-level SID in a split is a malformed row."""
    _write_csv(fresh["paths"]["test"], HEADER, [["A0", f"['{TITLE0}']", TITLE1, "[0]", "1", "['<a_1><b_2>']", SID1]])
    with pytest.raises(
        ResearchDataError,
        match=r"1 of 1 rows .*bad_sid_history_item_sid: 1.*<a_1><b_2> has 2 "
        r"levels, expected 3",
    ):
        read_bundle(fresh["root"], CAT)


def test_byte_order_mark_and_crlf_line_endings_read_like_the_plain_files(bundle, tmp_path):
    import shutil

    copy = tmp_path / "bom_crlf"
    shutil.copytree(bundle["root"], copy)
    for path in copy.rglob("*"):
        if path.is_file():  # the CSVs' line breaks inside quoted fields stay as they are
            data = path.read_bytes()
            lines = _csv_records(data) if path.suffix == ".csv" else data.split(b"\n")
            path.write_bytes(b"\xef\xbb\xbf" + b"\r\n".join(lines))
    plain, marked = read_bundle(bundle["root"], CAT), read_bundle(copy, CAT)
    assert marked.metrics == plain.metrics
    assert marked.splits["train"].samples == plain.splits["train"].samples
    assert marked.info == plain.info and marked.general.conversations == plain.general.conversations
    assert marked.index.codes == plain.index.codes and marked.item_narratives.texts == plain.item_narratives.texts
    assert read_info(copy / "info" / f"{CAT}{SUFFIX}.txt")[0] == (SID0, TITLE0, 0)


def _csv_records(data: bytes) -> list[bytes]:
    """The file's records (a record ends at a newline outside quotes), without their line breaks."""
    records, start, quoted = [], 0, False
    for pos, byte in enumerate(data):
        if byte == ord('"'):
            quoted = not quoted
        elif byte == ord("\n") and not quoted:
            records.append(data[start:pos])
            start = pos + 1
    return records + ([data[start:]] if data[start:] else [])


def test_a_category_that_is_a_path_is_refused(bundle):
    for bad in ("../x", "Office/Products", ".hidden", "Office*", ""):
        with pytest.raises(ResearchDataError, match=re.escape(f"category {bad!r} cannot be part of a file name")):
            find_bundle(bundle["root"], bad)
