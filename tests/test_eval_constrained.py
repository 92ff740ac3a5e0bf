import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidreasoner.eval.decoder import SidDecoder
from sidreasoner.eval.search import beam_search_core, exact_core
from sidreasoner.eval.trie import CatalogueError, CatalogueTrie, TrieLogitsProcessor
from sidreasoner.model.prompts import next_sid_question, render_prompt
from sidreasoner.sid.codes import format_sid, parse_sid


@st.composite
def catalogues(draw):
    levels = draw(st.integers(1, 4))
    vocab = draw(st.integers(levels * 2, 40))
    n = draw(st.integers(1, 30))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    # each level draws from its own slice of the vocabulary, sometimes overlapping
    rows = {tuple(int(x) for x in rng.integers(0, vocab, levels)) for _ in range(n)}
    return np.array(sorted(rows)), vocab, seed


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(catalogues(), st.integers(1, 12), st.integers(1, 4))
def test_every_returned_sid_is_valid_random_logits(cat, beams, batch):
    tm, vocab, seed = cat
    trie = CatalogueTrie(tm)
    valid = {tuple(r) for r in tm.tolist()}
    g = torch.Generator().manual_seed(seed)

    def logits(rows):  # random logits, sometimes with -inf holes and huge values on invalid tokens
        x = torch.randn(rows, vocab, generator=g) * 10
        x[torch.rand(rows, vocab, generator=g) < 0.2] = float("-inf")
        return torch.log_softmax(x.clamp(min=-1e4) if torch.rand(1, generator=g) < 0.5 else x, -1)

    def step(row_user, paths):
        return logits(len(row_user))

    first = logits(batch)
    leaves, scores = beam_search_core(trie, first, step, beams)
    assert leaves.shape[1] == min(beams, max(1, leaves.shape[1]))
    for lrow, srow in zip(leaves.tolist(), scores.tolist(), strict=True):
        got = [leaf for leaf in lrow if leaf >= 0]
        assert len(set(got)) == len(got)
        for leaf in got:
            assert tuple(tm[leaf].tolist()) in valid
        assert all(s == float("-inf") for leaf, s in zip(lrow, srow, strict=True) if leaf < 0)
    leaves, scores = exact_core(trie, first, step, beams, max_rows=7)
    assert leaves.shape[1] == min(beams, len(tm))
    assert all(0 <= leaf < len(tm) for leaf in leaves.flatten().tolist())


@settings(max_examples=60, deadline=None)
@given(catalogues(), st.integers(0, 10**6))
def test_logits_processor_never_lets_a_free_token_through(cat, seed):
    tm, vocab, _ = cat
    trie = CatalogueTrie(tm)
    g = torch.Generator().manual_seed(seed)
    eos = vocab  # a token outside every level
    proc = TrieLogitsProcessor(trie, prompt_len=2, eos_token_id=eos)
    rows = 6
    for t in range(trie.levels + 1):
        # half the rows follow a valid SID prefix, half wander off
        prefix = tm[torch.randint(len(tm), (rows,), generator=g)][:, :t]
        prefix = torch.as_tensor(prefix).reshape(rows, t)
        if t:
            prefix[::2, -1] = torch.randint(vocab, (len(prefix[::2]),), generator=g)
        ids = torch.cat([torch.zeros(rows, 2, dtype=torch.long), prefix], 1)
        scores = proc(ids, torch.randn(rows, vocab + 1, generator=g))
        for r in range(rows):
            allowed = set(torch.isfinite(scores[r]).nonzero().flatten().tolist())
            if t == trie.levels:
                assert allowed == {eos}
                continue
            want = {int(s[t]) for s in tm if list(s[:t]) == prefix[r].tolist()}
            assert allowed == want  # empty for a row off the trie, never a free token


def test_trie_tables():
    tm = np.array([[1, 5, 9], [1, 5, 8], [2, 6, 9]])
    trie = CatalogueTrie(tm)
    assert trie.level_tokens[0].tolist() == [1, 2]
    assert trie.child[0].tolist() == [[0, 1]]
    assert trie.nodes_at(2) == 2 and trie.node_paths[2].tolist() == [[1, 5], [2, 6]]
    assert trie.walk(torch.tensor([[1, 5, 8], [2, 5, 9], [2, 6, 9]])).tolist() == [1, -1, 2]
    with pytest.raises(CatalogueError):
        CatalogueTrie(np.array([[1, 2], [1, 2]]))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory, random_codes, build_tiny_model):
    codes = random_codes(120, 3, 6, seed=3)
    model, tok = build_tiny_model(tmp_path_factory.mktemp("m"), codes, 6, seed=3)
    cat = sorted({format_sid(c) for c in codes})
    return model, tok, cat


def _prompts(tok, cat, n=5):
    return [render_prompt(tok, next_sid_question(cat[i : i + 4])) for i in range(n)]


def test_tiny_model_beam_matches_hf_generate_and_is_valid(tiny):
    model, tok, cat = tiny
    dec = SidDecoder(model, tok, cat)
    prompts = _prompts(tok, cat)
    ranked = dec.beam(dec.encode(prompts), 8)
    catset = set(cat)
    for r in ranked:
        assert len(r.sids) == 8 and set(r.sids) <= catset and r.scores == sorted(r.scores, reverse=True)
    # the same search through HF generate + our processor gives the same lists and scores
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
    plen = enc["input_ids"].shape[1]
    out = model.generate(
        **enc,
        num_beams=8,
        num_return_sequences=8,
        max_new_tokens=3,
        do_sample=False,
        logits_processor=[TrieLogitsProcessor(dec.trie, plen, tok.eos_token_id)],
        length_penalty=0.0,
        return_dict_in_generate=True,
        output_scores=True,
        pad_token_id=tok.pad_token_id,
    )
    for u, r in enumerate(ranked):
        hf = [tok.decode(s) for s in out.sequences[u * 8 : (u + 1) * 8, plen:]]
        assert hf == r.sids
        assert out.sequences_scores[u * 8 : (u + 1) * 8].tolist() == pytest.approx(r.scores, abs=1e-3)


def test_tiny_model_exact_ranks_whole_catalogue(tiny):
    model, tok, cat = tiny
    dec = SidDecoder(model, tok, cat, max_rows=16)
    ids = dec.encode(_prompts(tok, cat, 3))
    exact = dec.exact(ids, len(cat))
    beam = dec.beam(ids, 5)
    for e, b in zip(exact, beam, strict=True):
        assert sorted(e.sids) == cat  # every valid SID scored exactly once
        assert e.scores[0] == pytest.approx(b.scores[0], abs=1e-4) and e.scores[0] >= b.scores[-1] - 1e-4
        # beam's scores are exact totals of the SIDs it returns
        scored = dict(zip(e.sids, e.scores, strict=True))
        assert [scored[s] for s in b.sids] == pytest.approx(b.scores, abs=1e-3)


def test_tiny_model_thinking_mode_never_emits_invalid_sid(tiny):
    model, tok, cat = tiny
    dec = SidDecoder(model, tok, cat)
    prompts = [render_prompt(tok, next_sid_question(cat[i : i + 3], reasoning=True), thinking=True) for i in range(3)]
    sid_prompts, texts = dec.think(dec.encode(prompts), max_new_tokens=12)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    close = tok.convert_tokens_to_ids("</think>")
    assert all(close in p for p in sid_prompts)
    for r in dec.beam(sid_prompts, 10):
        assert r.sids and all(parse_sid(s, levels=3) is not None and s in set(cat) for s in r.sids)
    _, sampled = dec.think(dec.encode(prompts), max_new_tokens=6, sample=True, seed=1)
    assert len(sampled) == 3


def test_catalogue_errors(tiny):
    _, tok, cat = tiny
    with pytest.raises(CatalogueError, match="not in the tokenizer"):
        CatalogueTrie.from_catalogue(["<a_99><b_0><c_0>"], tok)
    with pytest.raises(CatalogueError, match="not a SID"):
        CatalogueTrie.from_catalogue(["hello"], tok)
