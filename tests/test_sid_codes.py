import numpy as np
import pytest

from sidreasoner.sid.codes import code_usage, collision_stats, format_sid, parse_sid, sid_tokens


def test_format_and_tokens():
    assert format_sid([12, 200, 7]) == "<a_12><b_200><c_7>"
    assert sid_tokens([60, 159, 203]) == ["<a_60>", "<b_159>", "<c_203>"]
    assert format_sid(np.array([0, 1, 2, 3])) == "<a_0><b_1><c_2><d_3>"


def test_format_rejects_negative_code():
    with pytest.raises(ValueError, match="level 1"):
        format_sid([1, -2])


@pytest.mark.parametrize("codes", [[0], [12, 200, 7], [255, 0, 255], [1, 2, 3, 4, 5]])
def test_round_trip(codes):
    assert parse_sid(format_sid(codes)) == codes


@pytest.mark.parametrize(
    "text",
    [
        "",
        "<a_12><b_200>x",
        " <a_12>",
        "<a_12> <b_1>",
        "<b_1><a_2>",
        "<a_1><c_2>",
        "<a_01>",
        "<a_-1>",
        "<A_1>",
        "<a_1",
        "a_1",
        "<a_1><b_2><c_3><c_4>",
        "<a_1.5>",
        "<a_>",
        None,
    ],
)
def test_parse_rejects_malformed(text):
    assert parse_sid(text) is None


def test_parse_checks_levels_and_codebook():
    assert parse_sid("<a_1><b_2><c_3>", levels=3, codebook_size=4) == [1, 2, 3]
    assert parse_sid("<a_1><b_2>", levels=3) is None
    assert parse_sid("<a_1><b_2><c_4>", codebook_size=4) is None


def test_collision_stats_and_usage():
    codes = np.array([[0, 1], [0, 1], [0, 1], [1, 0], [1, 1]])
    stats = collision_stats(codes)
    assert stats["collision_rate"] == 3 / 5
    assert stats["duplicate_rate"] == pytest.approx(1 - 3 / 5)
    assert stats["n_unique_sids"] == 3
    usage = code_usage(codes, 4)
    assert usage == {
        "codes_used_level_0": 2.0,
        "code_usage_level_0": 0.5,
        "codes_used_level_1": 2.0,
        "code_usage_level_1": 0.5,
    }
