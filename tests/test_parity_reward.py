"""The `research` Stage 3 reward (the research code's reward as it ran): exact values on hand-made
replies, the agreement of its verl and TRL signatures, and its wiring into the presets, the config
checks and verl's custom reward function."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidreasoner import config
from sidreasoner.rl import reward as R

CAT = frozenset({"<a_1><b_2><c_3>", "<a_1><b_2><c_4>", "<a_1><b_5><c_0>", "<a_7><b_0><c_0>"})
GT = "<a_1><b_2><c_3>"
SID = "<a_1><b_2><c_3>"
REASONING = "<think>\nThe user bought pens and paper; a notebook fits next.\n</think>\n\n"


def research(text, gt=GT, cat=CAT):
    return R.compute_score("sidreasoner", text, gt, kind="research", catalogue=cat)["score"]


def rule(text, gt=GT, cat=CAT):
    return R.compute_score("sidreasoner", text, gt, kind="rule", catalogue=cat)["score"]


def from_end(text: str, part: str) -> int:
    """How many characters from the end of `text` its last `part` starts."""
    return len(text) - text.rindex(part)


# ---------------------------------------------------------------- exact values


@pytest.mark.parametrize(
    "text, expected",
    [
        # the prefix rule on the first three codes after </think>, plus 0.1 for a catalogue SID
        (REASONING + "<a_1><b_2><c_3>", 1.1),  # exact, in the catalogue
        (REASONING + "<a_1><b_2><c_4>", 0.6),  # 2 levels, in the catalogue
        (REASONING + "<a_1><b_2><c_9>", 0.5),  # 2 levels, not in the catalogue
        (REASONING + "<a_1><b_5><c_0>", 0.35),  # 1 level, in the catalogue
        (REASONING + "<a_1><b_9><c_9>", 0.25),  # 1 level, not in the catalogue
        (REASONING + "<a_7><b_0><c_0>", 0.1),  # 0 levels, in the catalogue
        (REASONING + "<a_9><b_2><c_3>", 0.0),  # level 1 wrong: later matches do not count
        (REASONING + "<a_1><b_9><c_3>", 0.25),  # level 2 wrong: level 3 does not count
        # no </think>: 0, however good the SID
        (SID, 0.0),  # a plain answer (the rule kind scores it 1.1)
        ("<think>\nThe answer is " + SID, 0.0),  # reasoning never closed
        ("", 0.0),
        # text around the SID is tolerated
        (REASONING + SID + " is my pick.", 1.1),
        (REASONING + "The next item: " + SID, 1.1),
        (REASONING + "<a_1> <b_2> <c_3>", 1.1),  # spaces between the codes
        (REASONING + "<a_1>, then <b_2>, then <c_3>.", 1.1),  # words between the codes
        # several SIDs: the first three codes count
        (REASONING + "<a_1><b_2><c_4> or <a_1><b_2><c_3>", 0.6),
        (REASONING + "<a_1><b_2><c_3> or <a_1><b_2><c_4>", 1.1),
        (REASONING + "<a_1><b_2><c_3><d_4>", 1.1),  # a fourth code is ignored
        # a SID in the think block only
        ("<think>Maybe " + SID + "</think>", 0.0),
        ("<think>Maybe " + SID + "</think>\nnone of them", 0.0),
        ("<think>Maybe <a_7><b_0><c_0></think>" + SID, 1.1),  # the one after </think> counts
        # fewer than three codes
        (REASONING + "<a_1><b_2>", 0.0),
        (REASONING + "<a_1><b_2> and c_3", 0.0),
        # malformed codes: any `<…>` is a code, compared as a string
        (REASONING + "<a_01><b_2><c_3>", 0.0),  # leading zero: not "<a_1>", not in the catalogue
        (REASONING + "<b_2><a_1><c_3>", 0.0),  # levels out of order
        (REASONING + "<a_1><x><b_2><c_3>", 0.25),  # "<x>" takes level 2's place
        (REASONING + "<a_1><b_2><c_3", 0.0),  # unclosed: two codes
        (REASONING + "<a_1 <b_2><c_3>", 0.0),  # "<a_1 <b_2>" is one code: two codes
        # the opening <think> is not required; end-of-turn markers are dropped as decoding drops them
        ("</think>" + SID, 1.1),
        (REASONING + SID + "<|im_end|>", 1.1),
    ],
)
def test_research_reward_exact(text, expected):
    assert research(text) == pytest.approx(expected, abs=1e-12)


def test_differs_from_the_rule_kind_where_the_parse_differs():
    assert (rule(SID), research(SID)) == (1.1, 0.0)  # no think block
    assert (rule(REASONING + SID + " is my pick."), research(REASONING + SID + " is my pick.")) == (0.0, 1.1)
    two = REASONING + "<a_1><b_2><c_4> or <a_1><b_2><c_3>"
    assert (rule(two), research(two)) == (0.0, pytest.approx(0.6))
    assert rule(REASONING + SID) == research(REASONING + SID) == 1.1  # the clean format


def test_components():
    out = R.compute_score("s", REASONING + "<a_1><b_2><c_9> maybe", GT, kind="research", catalogue=CAT)
    assert out == {"score": 0.5, "parsed": 1.0, "matched_levels": 2.0, "prefix": 0.5, "in_catalogue": 0.0, "exact": 0.0}
    out = R.compute_score("s", SID, GT, kind="research", catalogue=CAT)
    assert out == {"score": 0.0, "parsed": 0.0, "matched_levels": 0.0, "prefix": 0.0, "in_catalogue": 0.0, "exact": 0.0}


# ---------------------------------------------------------------- the 50-character window


def test_window_the_answer_49_50_and_51_characters_from_the_end():
    base = "<think>" + "r" * 100 + "</think>" + SID
    inside49, inside50, outside51 = base + "x" * 26, base + "x" * 27, base + "x" * 28
    assert [from_end(t, "</think>") for t in (inside49, inside50, outside51)] == [49, 50, 51]
    assert [research(t) for t in (inside49, inside50, outside51)] == [1.1, 1.1, 0.0]
    assert [rule(t) for t in (inside49, inside50, outside51)] == [0.0, 0.0, 0.0]  # the strict parse: words after


def test_window_needs_the_think_close_not_only_the_sid():
    sid_at_49 = "<think>" + "r" * 100 + "</think>" + SID + "x" * 34
    assert from_end(sid_at_49, SID) == 49 and from_end(sid_at_49, "</think>") == 57
    assert research(sid_at_49) == 0.0
    # a long reply is fine as long as its end holds </think> and the SID
    assert research("<think>" + "r" * 5000 + "</think>\n\n" + SID) == 1.1


def test_window_first_close_inside_it_wins():
    # two </think> inside the window: the text after the first holds the second as a "code"
    both_inside = "<think>a</think>b</think>" + SID
    assert len(both_inside) <= R.RESEARCH_WINDOW
    out = R.compute_score("s", both_inside, GT, kind="research", catalogue=CAT)
    assert (out["score"], out["parsed"], out["matched_levels"]) == (0.0, 1.0, 0.0)
    # the first </think> outside the window: the one inside is used
    first_outside = "<think>a</think>" + "b" * 60 + "</think>" + SID
    assert research(first_outside) == 1.1


def test_window_ignores_end_markers():
    text = "<think>" + "r" * 100 + "</think>" + SID + "x" * 26 + "<|im_end|><|endoftext|>"
    assert from_end(text, "</think>") == 49 + len("<|im_end|><|endoftext|>")
    assert research(text) == 1.1


def test_levels_follow_the_target():
    gt4 = "<a_1><b_2><c_3><d_4>"
    cat4 = frozenset({gt4})
    assert research("</think><a_1><b_2><c_3><d_4>", gt4, cat4) == pytest.approx(1.1)
    assert research("</think><a_1><b_2><c_0><d_4>", gt4, cat4) == pytest.approx(0.25)
    assert research("</think><a_1><b_2><c_3>", gt4, cat4) == 0.0  # three codes for four levels


# ---------------------------------------------------------------- the verl and TRL signatures

TEXTS = [
    REASONING + SID,
    SID,
    REASONING + "<a_1><b_2><c_4> or " + SID,
    "<think>" + SID + "</think>",
    REASONING + "<a_1><x><b_2><c_3>",
    "<think>" + "r" * 100 + "</think>" + SID + "x" * 28,
]
EXPECTED = [1.1, 0.0, 0.6, 0.0, 0.25, 0.0]


def test_trl_and_verl_signatures_agree(tmp_path, monkeypatch):
    (tmp_path / "catalogue.json").write_text(json.dumps(sorted(CAT)))
    monkeypatch.delenv(R.CATALOGUE_ENV, raising=False)
    trl = R.make_trl_reward("research", CAT)
    assert trl.__name__ == "sid_research_reward"
    assert trl(TEXTS, [GT] * len(TEXTS)) == pytest.approx(EXPECTED, abs=1e-12)
    conversational = [[{"role": "assistant", "content": t}] for t in TEXTS]
    assert trl(conversational, [GT] * len(TEXTS)) == pytest.approx(EXPECTED, abs=1e-12)
    assert R.make_trl_reward("research", str(tmp_path))(TEXTS, [GT] * len(TEXTS)) == pytest.approx(EXPECTED, abs=1e-12)
    # verl: keyword call, kind and catalogue path from reward_kwargs, or both from extra_info
    verl_kw = [
        R.compute_score(
            data_source="sidreasoner",
            solution_str=t,
            ground_truth=GT,
            extra_info={},
            kind="research",
            catalogue=str(tmp_path / "catalogue.json"),
        )["score"]
        for t in TEXTS
    ]
    verl_extra = [
        R.compute_score("sidreasoner", t, GT, {"reward_kind": "research", "catalogue_path": str(tmp_path)})["score"]
        for t in TEXTS
    ]
    assert verl_kw == verl_extra == trl(TEXTS, [GT] * len(TEXTS))


def test_research_reward_needs_the_catalogue(monkeypatch):
    monkeypatch.delenv(R.CATALOGUE_ENV, raising=False)
    with pytest.raises(ValueError, match="research reward needs the SID catalogue"):
        R.compute_score("s", REASONING + SID, GT, kind="research")
    with pytest.raises(ValueError, match="research reward needs the SID catalogue"):
        R.make_trl_reward("research")([REASONING + SID], [GT])


def test_through_verls_custom_reward_function_loader(tmp_path):
    pytest.importorskip("verl")
    import verl
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf
    from verl.trainer.ppo.reward import get_custom_reward_fn

    from sidreasoner.rl.verl_backend import VerlPaths, verl_overrides

    (tmp_path / "catalogue.json").write_text(json.dumps(sorted(CAT)))
    paths = VerlPaths(
        model=tmp_path / "stage2",
        train_files=tmp_path / "train.parquet",
        val_files=tmp_path / "valid.parquet",
        catalogue=tmp_path / "catalogue.json",
        checkpoint_dir=tmp_path / "ckpt",
        train_prompts=1000,
    )
    overrides = verl_overrides(config.load("office"), paths)
    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        composed = compose(config_name="ppo_trainer", overrides=overrides)
    OmegaConf.resolve(composed)
    assert OmegaConf.to_container(composed.reward.custom_reward_function.reward_kwargs) == {
        "kind": "research",
        "catalogue": str(tmp_path / "catalogue.json"),
    }
    fn = get_custom_reward_fn(composed)  # what verl's reward manager calls, reward_kwargs merged in
    scores = [
        fn(data_source="sidreasoner", solution_str=t, ground_truth=GT, extra_info={"split": "train"})["score"]
        for t in TEXTS
    ]
    assert scores == pytest.approx(EXPECTED, abs=1e-12)
    assert scores == R.make_trl_reward("research", CAT)(TEXTS, [GT] * len(TEXTS))


# ---------------------------------------------------------------- presets and config checks


@pytest.mark.parametrize("preset", ["office", "industrial", "games"])
def test_paper_presets_use_the_research_reward(preset):
    s = config.load(preset).stage3
    assert (s.backend, s.reward) == ("verl", "research")


def test_demo_keeps_the_strict_rule_and_any_kind_is_selectable():
    assert config.load("demo").stage3.reward == "rule"
    assert config.load("demo", ["stage3.reward=research"]).stage3.reward == "research"
    assert config.load("demo", ["stage3.backend=verl", "stage3.reward=research"]).stage3.reward == "research"
    assert config.load("office", ["stage3.reward=rule"]).stage3.reward == "rule"
    with pytest.raises(config.ConfigError, match="stage3.reward"):
        config.load("office", ["stage3.reward=nope"])
    with pytest.raises(config.ConfigError, match="reward=research or rule"):
        config.load("office", ["stage3.reward=ranking"])
