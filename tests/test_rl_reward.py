"""Stage 3 reward: exact values on hand-made responses."""

from __future__ import annotations

import json

import pytest

from sidreasoner.artifacts import SidIndex
from sidreasoner.rl import reward as R

CAT = frozenset({"<a_1><b_2><c_3>", "<a_1><b_2><c_4>", "<a_1><b_5><c_0>", "<a_7><b_0><c_0>"})
GT = "<a_1><b_2><c_3>"


def score(text, gt=GT, kind="rule", cat=CAT):
    return R.compute_score("sidreasoner", text, gt, kind=kind, catalogue=cat)["score"]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("<think>\nthe user likes pens\n</think>\n\n<a_1><b_2><c_3>", 1.1),  # exact, in catalogue
        ("<think>x</think><a_1><b_2><c_4>", 0.6),  # 2 levels, in catalogue
        ("<think>x</think><a_1><b_5><c_0>", 0.35),  # 1 level, in catalogue
        ("<think>x</think><a_1><b_2><c_9>", 0.5),  # 2 levels, not in catalogue
        ("<think>x</think><a_1><b_9><c_9>", 0.25),  # 1 level, not in catalogue
        ("<think>x</think><a_7><b_0><c_0>", 0.1),  # valid SID, 0 levels
        ("<think>x</think><a_8><b_2><c_3>", 0.0),  # 0 levels, invalid SID
        ("<think>maybe <a_7><b_0><c_0></think>\n<a_1><b_2><c_3>\n", 1.1),  # SID inside thinking ignored
        ("<think>a</think> <think>b</think><a_1><b_2><c_3>", 1.1),  # after the LAST </think>
        ("<think>a</think><a_1><b_2><c_3></think>junk", 0.0),  # last </think> wins: junk
        ("<think>the answer is <a_1><b_2><c_3>", 0.0),  # reasoning never closed
        ("<think>x</think>The item is <a_1><b_2><c_3>", 0.0),  # words around the SID
        ("<think>x</think><a_1><b_2>", 0.0),  # partial SID (2 of 3 levels)
        ("<think>x</think><a_1><b_2><c_3><d_0>", 0.0),  # too many levels
        ("<think>x</think><a_1><b_2><c_3><a_1><b_2><c_4>", 0.0),  # several SIDs
        ("<think>x</think><a_1><b_2><c_3> <a_1><b_2><c_4>", 0.0),  # several SIDs, spaced
        ("<think>x</think><a_01><b_2><c_3>", 0.0),  # leading zero
        ("<think>x</think><b_2><a_1><c_3>", 0.0),  # levels out of order
        ("<think>x</think><a_1><b_2><c_3><|im_end|>", 1.1),  # end-of-turn marker kept
        ("<a_1><b_2><c_3>", 1.1),  # no think block: whole text
        ("", 0.0),
        ("</think>", 0.0),
        ("junk <<>> a_1 b_2", 0.0),
    ],
)
def test_rule_reward_exact(text, expected):
    assert score(text) == pytest.approx(expected, abs=1e-12)


def test_rule_components():
    out = R.compute_score("sidreasoner", "<think>x</think><a_1><b_2><c_9>", GT, catalogue=CAT)
    assert out == {"score": 0.5, "parsed": 1.0, "matched_levels": 2.0, "prefix": 0.5, "in_catalogue": 0.0, "exact": 0.0}


def test_prefix_generalises_to_L_levels():
    assert [R.prefix_score(m, 3) for m in range(4)] == [0.0, 0.25, 0.5, 1.0]
    assert [R.prefix_score(m, 4) for m in range(5)] == [0.0, 0.125, 0.25, 0.5, 1.0]
    gt4 = "<a_1><b_2><c_3><d_4>"
    assert score("<think></think><a_1><b_2><c_0><d_0>", gt4, cat=frozenset()) == 0.25
    assert score("<think></think><a_1><b_2><c_3>", gt4, cat=frozenset({"<a_1><b_2><c_3>"})) == 0.0  # 3 of 4 levels


def test_format_reward():
    assert score("<think>x</think>\n<a_9><b_9><c_9>", kind="format") == 1.0
    assert score("<a_1><b_2><c_3>", kind="format") == 0.0  # no think block
    assert score("<think>a</think><think>b</think><a_1><b_2><c_3>", kind="format") == 0.0
    assert score("<think><think>x</think><a_1><b_2><c_3>", kind="format") == 0.0
    assert score("<think>a <think>b</think><a_1><b_2><c_3>", kind="format") == 0.0
    assert score("<think>x</think>item <a_1><b_2><c_3>", kind="format") == 0.0


def test_catalogue_from_path_env_and_extra_info(tmp_path, monkeypatch):
    catalogue = tmp_path / SidIndex.CATALOGUE
    catalogue.write_text(json.dumps(sorted(CAT)))
    text = "<think>x</think><a_1><b_2><c_4>"
    assert R.compute_score("s", text, GT, extra_info={"catalogue_path": str(tmp_path)})["score"] == pytest.approx(0.6)
    assert R.compute_score("s", text, GT, catalogue=str(catalogue))["score"] == pytest.approx(0.6)
    assert R.load_catalogue(SidIndex(tmp_path)) == CAT
    monkeypatch.setenv(R.CATALOGUE_ENV, str(tmp_path))
    assert R.compute_score("s", text, GT)["score"] == pytest.approx(0.6)
    monkeypatch.delenv(R.CATALOGUE_ENV)
    with pytest.raises(ValueError, match="catalogue"):
        R.compute_score("s", text, GT)


def test_a_sid_index_without_a_catalogue_is_named(tmp_path):
    (tmp_path / "sid_index").mkdir()
    with pytest.raises(FileNotFoundError, match=rf"SID index .*sid_index: {SidIndex.CATALOGUE} .*quantize-sids"):
        R.load_catalogue(tmp_path / "sid_index")
    with pytest.raises(FileNotFoundError, match=r"SID catalogue not found: .*nowhere\.json"):
        R.load_catalogue(tmp_path / "nowhere.json")


def test_ranking_penalties_match_minionerec():
    # -(1/log2(i+2)) / sum_j 1/log2(j+2): weights 1, 0.6309, 0.5, 0.4307 (sum 2.5616)
    assert R.ranking_penalties(4) == pytest.approx([-0.390380, -0.246302, -0.195190, -0.168128], abs=1e-6)
    assert R.ranking_penalties(3) == pytest.approx([-0.469279, -0.296082, -0.234639], abs=1e-6)
    assert R.ranking_penalties(1) == [-1.0]


def test_trl_reward_plain_conversational_and_ranking():
    fn = R.make_trl_reward("rule", CAT)
    plain = ["<think>x</think><a_1><b_2><c_3>", "<think>x</think>nope"]
    assert fn(plain, [GT, GT]) == pytest.approx([1.1, 0.0])
    conv = [[{"role": "assistant", "content": t}] for t in plain]
    assert fn(conv, [GT, GT]) == pytest.approx([1.1, 0.0])
    logged = {}
    fn(plain, [GT, GT], log_metric=lambda k, v: logged.__setitem__(k, v))
    assert logged["sid/parsed"] == 0.5 and logged["sid/exact"] == 0.5
    rank = R.make_trl_reward("ranking")
    pen = [-0.469279, -0.296082, -0.234639]
    comps = [
        "<think></think><a_7><b_0><c_0>",
        "<think></think><a_1><b_2><c_3>",
        "junk",  # group with a hit
        "<think></think><a_7><b_0><c_0>",
        "junk",
        "junk",
    ]  # group without
    prompts = ["p1"] * 3 + ["p2"] * 3
    assert rank(comps, [GT] * 6, prompts=prompts) == pytest.approx([pen[0], 1.0, pen[2], 0.0, 0.0, 0.0], abs=1e-6)


def test_module_trl_reward_uses_env(tmp_path, monkeypatch):
    (tmp_path / "catalogue.json").write_text(json.dumps(sorted(CAT)))
    monkeypatch.setenv(R.CATALOGUE_ENV, str(tmp_path))
    assert R.trl_reward(["<think></think><a_1><b_2><c_4>"], [GT]) == pytest.approx([0.6])


def test_bad_inputs():
    with pytest.raises(ValueError, match="kind"):
        R.compute_score("s", "", GT, kind="nope", catalogue=CAT)
    with pytest.raises(ValueError, match="not a SID"):
        R.compute_score("s", "", "item 5", catalogue=CAT)
