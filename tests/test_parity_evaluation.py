"""The evaluation's research-code options: scoring the "\\n" + end-of-sequence after the SID, the research
evaluation's empty think block, its way of closing the reasoning, K up to the beam width, and the
paper presets' evaluation values."""

import json
import math

import numpy as np
import pandas as pd
import pytest
import torch

from sidreasoner import config
from sidreasoner.config import EvalConfig
from sidreasoner.eval.decoder import SidDecoder
from sidreasoner.eval.evaluate import _prompts, evaluate
from sidreasoner.eval.search import beam_search_core, exact_core
from sidreasoner.eval.trie import CatalogueTrie
from sidreasoner.model.prompts import EMPTY_THINK, RESEARCH_EMPTY_THINK, next_sid_question, render_prompt
from sidreasoner.sid.codes import format_sid

# ---------------------------------------------------------------- suffix scoring, hand-made model

NL, EOS, V = 4, 5, 6
A, B = (0, 2), (1, 2)  # two SIDs of two levels; 4 = "\n", 5 = end-of-sequence


def _dist(probs: dict[int, float]) -> torch.Tensor:
    """log-probabilities over V tokens: the given ones, the rest of the mass spread evenly."""
    rest = (1.0 - sum(probs.values())) / (V - len(probs))
    return torch.log(torch.tensor([probs.get(t, rest) for t in range(V)], dtype=torch.float64))


# user 0: A is the likelier SID, but the model would hardly end it with "\n" + end-of-sequence.
# user 1: the other way round on the SID tokens; its suffix probabilities agree with the SID order.
TABLES = [
    {
        (): {0: 0.5, 1: 0.3},
        (0,): {2: 0.8},
        (1,): {2: 0.8},
        A: {NL: 0.1},
        B: {NL: 0.9},
        A + (NL,): {EOS: 0.5},
        B + (NL,): {EOS: 0.9},
    },
    {
        (): {0: 0.2, 1: 0.6},
        (0,): {2: 0.5},
        (1,): {2: 0.5},
        A: {NL: 0.4},
        B: {NL: 0.6},
        A + (NL,): {EOS: 0.5},
        B + (NL,): {EOS: 0.5},
    },
]


def _step(row_user, paths):
    return torch.stack(
        [_dist(TABLES[int(u)][tuple(p)]) for u, p in zip(row_user.tolist(), paths.tolist(), strict=True)]
    )


def _first():
    return torch.stack([_dist(t[()]) for t in TABLES])


def test_suffix_scoring_changes_the_beam_ranking_exactly():
    trie = CatalogueTrie(np.array([A, B]))
    leaves, scores = beam_search_core(trie, _first(), _step, beams=2)
    assert leaves.tolist() == [[0, 1], [1, 0]]  # leaf ids: 0 = A, 1 = B
    assert scores[0].tolist() == pytest.approx([math.log(0.5 * 0.8), math.log(0.3 * 0.8)])
    leaves, scores = beam_search_core(trie, _first(), _step, beams=2, suffix=(NL, EOS))
    assert leaves.tolist() == [[1, 0], [1, 0]]  # user 0's ranking flips; user 1's stays
    assert scores[0].tolist() == pytest.approx([math.log(0.3 * 0.8 * 0.9 * 0.9), math.log(0.5 * 0.8 * 0.1 * 0.5)])
    assert scores[1].tolist() == pytest.approx([math.log(0.6 * 0.5 * 0.6 * 0.5), math.log(0.2 * 0.5 * 0.4 * 0.5)])
    # exact decoding scores the same totals for the whole catalogue
    leaves, exact = exact_core(trie, _first(), _step, 2, max_rows=1, suffix=(NL, EOS))
    assert leaves.tolist() == [[1, 0], [1, 0]]
    assert exact.flatten().tolist() == pytest.approx(scores.flatten().tolist())


def test_suffix_scoring_keeps_the_beam_set_of_the_sid_levels():
    """Like Hugging Face's beam search, the suffix only re-ranks the beams kept after the last SID
    level: a SID pruned there never comes back, however likely its suffix."""
    trie = CatalogueTrie(np.array([A, B]))
    leaves, scores = beam_search_core(trie, _first()[:1], _step, beams=1, suffix=(NL, EOS))
    assert leaves.tolist() == [[0]]
    assert scores.item() == pytest.approx(math.log(0.5 * 0.8 * 0.1 * 0.5))


# ---------------------------------------------------------------- suffix scoring, tiny model vs HF generate


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, random_codes, build_tiny_model):
    codes = random_codes(120, 3, 6, seed=3)
    model, tok = build_tiny_model(tmp_path_factory.mktemp("m"), codes, 6, seed=3)
    return model, tok, sorted({format_sid(c) for c in codes})


@pytest.mark.parametrize("shared", [True, False])
def test_suffix_scoring_matches_hf_beam_search_constrained_to_sid_newline_eos(tiny, shared):
    """The research code's search: HF beam search (length_penalty 0) whose allowed tokens are the
    catalogue's SID tokens, then "\\n", then end-of-sequence; ranked by the sum over all five tokens."""
    model, tok, cat = tiny
    dec = SidDecoder(model, tok, cat, shared=shared)
    newline = tok("\n", add_special_tokens=False)["input_ids"]
    assert dec.research_suffix == newline + [tok.eos_token_id]
    prompts = [render_prompt(tok, next_sid_question(cat[i : i + 4]), empty_think="research") for i in range(6)]
    with_suffix = dec.beam(dec.encode(prompts), 8, score_suffix=True)
    without = dec.beam(dec.encode(prompts), 8)
    assert any(a.sids != b.sids for a, b in zip(with_suffix, without, strict=True))  # the suffix re-ranks some users
    for a, b in zip(with_suffix, without, strict=True):
        assert sorted(a.sids) == sorted(b.sids)

    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    plen = enc["input_ids"].shape[1]

    def allowed(_batch_id, ids):
        gen = ids[plen:]
        if len(gen) < dec.trie.levels:
            node = dec.trie.walk(gen.unsqueeze(0))[0] if len(gen) else torch.tensor(0)
            nxt = dec.trie.child[len(gen)][int(node)]
            return dec.trie.level_tokens[len(gen)][nxt >= 0].tolist()
        return dec.research_suffix[len(gen) - dec.trie.levels :][:1] or [tok.eos_token_id]

    out = model.generate(
        **enc,
        num_beams=8,
        num_return_sequences=8,
        max_new_tokens=dec.trie.levels + 2,
        do_sample=False,
        prefix_allowed_tokens_fn=allowed,
        length_penalty=0.0,
        early_stopping=True,
        return_dict_in_generate=True,
        output_scores=True,
        pad_token_id=tok.pad_token_id,
    )
    for u, r in enumerate(with_suffix):
        seqs = out.sequences[u * 8 : (u + 1) * 8, plen:]
        assert all(s[dec.trie.levels :].tolist() == dec.research_suffix for s in seqs)
        assert [tok.decode(s[: dec.trie.levels]) for s in seqs] == r.sids
        assert out.sequences_scores[u * 8 : (u + 1) * 8].tolist() == pytest.approx(r.scores, abs=1e-3)
    # exact decoding with the suffix gives the beams' totals for the same SIDs
    exact = dec.exact(dec.encode(prompts), len(cat), score_suffix=True)
    for e, r in zip(exact, with_suffix, strict=True):
        totals = dict(zip(e.sids, e.scores, strict=True))
        assert [totals[s] for s in r.sids] == pytest.approx(r.scores, abs=1e-3)


# ---------------------------------------------------------------- rendering


def test_research_empty_think_rendering_string(tiny):
    _, tok, _ = tiny
    research = render_prompt(tok, "Which item next?", empty_think="research")
    assert research == "<|im_start|>user\nWhich item next?<|im_end|>\n<|im_start|>assistant\n<think>\n</think>\n\n"
    training = render_prompt(tok, "Which item next?")
    assert training == research[: -len(RESEARCH_EMPTY_THINK)] + EMPTY_THINK
    # the research code tokenizes the template and the block apart; one pass over the text gives the same ids
    template = tok.apply_chat_template(
        [{"role": "user", "content": "Which item next?"}], tokenize=False, add_generation_prompt=True
    )
    assert tok(research, add_special_tokens=False)["input_ids"] == (
        tok(template, add_special_tokens=False)["input_ids"]
        + tok(RESEARCH_EMPTY_THINK, add_special_tokens=False)["input_ids"]
    )
    # thinking mode has no empty block to render either way
    assert render_prompt(tok, "q", thinking=True, empty_think="research") == render_prompt(tok, "q", thinking=True)
    with pytest.raises(ValueError, match="empty_think"):
        render_prompt(tok, "q", empty_think="paper")


def test_evaluation_prompts_follow_eval_empty_think(tiny):
    model, tok, cat = tiny
    dec = SidDecoder(model, tok, cat, shared=False)
    hist = [["<a_0><b_1><c_2>", "<a_3><b_4><c_0>"]]
    # evaluate_Qwen3.py's prompt (data_Qwen3.py EvalSidDataset): its system and user messages, the
    # generation prompt, then "<think>\n</think>\n\n"
    research = (
        "<|im_start|>system\nBelow is an instruction that describes a task, paired with an input that provides "
        "further context. Write a response that appropriately completes the request. \nCan you predict the next "
        "possible item that the user may expect?\n<|im_end|>\n<|im_start|>user\nCan you predict the next possible "
        "item the user may expect, given the following chronological interaction history: <a_0><b_1><c_2>, "
        "<a_3><b_4><c_0><|im_end|>\n<|im_start|>assistant\n<think>\n</think>\n\n"
    )
    assert tok.decode(_prompts(dec, hist, False, "research")[0]) == research
    assert tok.decode(_prompts(dec, hist, False)[0]) == research[: -len(RESEARCH_EMPTY_THINK)] + EMPTY_THINK


def test_research_close_of_the_reasoning(tiny):
    model, tok, cat = tiny
    dec = SidDecoder(model, tok, cat, shared=False)
    prompt = dec.encode(["<|im_start|>assistant\n"])[0]
    reasoning = dec.encode(["<think>\nabc  \n"])[0]
    closed = dec._research_close(prompt, reasoning, closed=True)
    assert tok.decode(closed) == "<|im_start|>assistant\n<think>\nabc\n</think>\n\n"
    # never closed (budget or end-of-sequence): the research cut also drops the last character
    assert (
        tok.decode(dec._research_close(prompt, reasoning, closed=False))
        == "<|im_start|>assistant\n<think>\nab\n</think>\n\n"
    )
    # through the decoder: every SID-phase prompt ends as the research code's does
    prompts = [render_prompt(tok, next_sid_question(cat[i : i + 3], reasoning=True), thinking=True) for i in range(3)]
    sid_prompts, _ = dec.think(dec.encode(prompts), max_new_tokens=6, close="research")
    generated, _ = dec.think(dec.encode(prompts), max_new_tokens=6)
    for p, s, g in zip(prompts, sid_prompts, generated, strict=True):
        text = tok.decode(s)
        assert text.startswith(p.rstrip()) and text.endswith("\n</think>\n\n") and "\n\n</think>" not in text
        assert tok.decode(g).endswith("</think>\n\n")


# ---------------------------------------------------------------- K up to the beam width


def test_ks_above_the_beam_width():
    drop = EvalConfig(ks=[1, 3, 5, 10, 20, 50], num_beams=10, ks_above_beams="drop")
    assert (drop.beams, drop.reported_ks) == (10, [1, 3, 5, 10])
    raise_ = EvalConfig(ks=[1, 3, 5, 10, 20, 50], num_beams=10)
    assert (raise_.beams, raise_.reported_ks) == (50, [1, 3, 5, 10, 20, 50])
    exact = EvalConfig(ks=[1, 20], num_beams=10, ks_above_beams="drop", decoding="exact")
    assert exact.reported_ks == [1, 20]
    with pytest.raises(config.ConfigError, match="ks_above_beams=drop with num_beams=2 leaves none"):
        config.load("office", ["eval.num_beams=2", "eval.ks=[5,10]"])


def test_evaluate_reports_k_up_to_the_beam_width(
    tmp_path, random_codes, write_sid_index, write_dataset, build_tiny_model
):
    codes = random_codes(40, 3, 5, seed=4)
    write_sid_index(tmp_path / "sid_index", np.arange(40), codes)
    write_dataset(tmp_path / "dataset", 40, 8)
    build_tiny_model(tmp_path / "model", codes, 5, seed=4)
    cfg = config.load(
        "demo",
        [
            'eval.modes=["nonthink"]',
            "eval.ks=[1,5,10,20]",
            "eval.num_beams=5",
            "eval.ks_above_beams=drop",
            "eval.max_users=4",
            "eval.score_suffix=true",
            "eval.empty_think=research",
        ],
    )
    m = evaluate(cfg, tmp_path / "model", tmp_path / "dataset", tmp_path / "sid_index", tmp_path / "out")
    assert {k for k in m if k.startswith("test_nonthink_hr@")} == {"test_nonthink_hr@1", "test_nonthink_hr@5"}
    info = json.loads((tmp_path / "out" / "eval.json").read_text())
    assert (info["num_beams"], info["ks"], info["score_suffix"], info["empty_think"]) == (5, [1, 5], True, "research")
    preds = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    assert all(len(s) == 5 for s in preds["pred_sids"])


# ---------------------------------------------------------------- presets


@pytest.mark.parametrize("preset", ["office", "industrial", "games"])
def test_paper_presets_evaluate_as_the_research_scripts(preset):
    ec = config.load(preset).eval
    # evaluate_Qwen3.sh / evaluate_Qwen3_think.sh: 10 beams, length_penalty 0, K in {1,3,5,10} <= beams,
    # greedy reasoning up to 1024 tokens; every test user
    assert (ec.num_beams, ec.ks, ec.ks_above_beams, ec.beams, ec.reported_ks) == (
        10,
        [1, 3, 5, 10],
        "drop",
        10,
        [1, 3, 5, 10],
    )
    assert (ec.decoding, ec.score_suffix, ec.think_close) == ("beam", True, "research")
    assert (ec.think_max_tokens, ec.think_sample, ec.max_users) == (1024, False, 0)
    assert ec.modes == ["nonthink", "think"] and "test" in ec.splits
    # the empty think block keeps training's rendering; this override restores the research evaluation's
    assert ec.empty_think == "training"
    assert config.load(preset, ["eval.empty_think=research"]).eval.empty_think == "research"


def test_demo_keeps_the_project_defaults():
    ec = config.load("demo").eval
    assert (ec.score_suffix, ec.empty_think, ec.think_close, ec.ks_above_beams) == (
        False,
        "training",
        "generated",
        "raise",
    )
