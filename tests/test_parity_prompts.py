"""Parity with the research code's prompts and training sequences: every task family's prompt and
sequence rendered exactly as the research code renders them (Qwen3's chat template, system messages
included), the <|im_end|> loss per stage, left truncation, the new SID rows' mean/covariance
initialisation, and the general-reasoning (messages) data reader."""

from __future__ import annotations

import copy
import importlib.resources
import json
import random
import shutil

import pytest
import torch
from transformers import AutoTokenizer

from sidreasoner import config
from sidreasoner.config import TinyModelConfig
from sidreasoner.eval.decoder import SidDecoder
from sidreasoner.eval.evaluate import _prompts
from sidreasoner.model import prompts, tiny
from sidreasoner.model.loading import load_model_and_tokenizer
from sidreasoner.rl import data as rl_data
from sidreasoner.train import data as data_mod
from sidreasoner.train import tasks
from sidreasoner.train.data import IGNORE, Example, encode
from sidreasoner.train.sft import _encoding, extend_tokenizer

# Qwen3's own chat template, as TRL ships it.
QWEN3_TEMPLATE = (importlib.resources.files("trl") / "chat_templates" / "qwen3.jinja").read_text()
PAPER = ("office", "industrial", "games")

HEAD = (
    "Below is an instruction that describes a task, paired with an input that provides further context. "
    "Write a response that appropriately completes the request."
)
S0, S1, S2 = "<a_0><b_1><c_2>", "<a_0><b_1><c_3>", "<a_0><b_2><c_0>"
T0, T1, T2 = "Acme Gel Pen Vol. 1", "Acme Gel Pen Vol. 2", "Acme Gel Pen Vol. 3"
REASONING = f"The latest item is {S1}; the series continues. Recommended item: {S2}"
NEXT_ITEM_SYSTEM = HEAD + "\nCan you recommend the next item for the user based on their interaction history?\n"
REASONING_USER = (
    f"The user has sequentially interacted with items {S0}, {S1}. Can you recommend the next item for "
    "him? Let's think step by step before making recommendation. Directly output the item SID after "
    "thinking."
)

# The research code's messages (system, user, assistant) of each task for train row 1 of the tiny
# artifacts (history items 0, 1; target item 2), category Office_Products, seed 42.
RESEARCH_STAGE1 = {
    "sid_history_to_sid": (
        HEAD + " Can you predict the next possible item that the user may expect?",
        f"The user has interacted with items {S0}, {S1} in chronological order. Can you predict the next possible "
        "item that the user may expect?",
        S2,
    ),
    "title_to_sid": (
        HEAD + " \nAnswer the question about item identification.\n",
        f"Which item has the title: {T2}?",
        S2,
    ),
    "sid_to_title": (
        HEAD + " \nAnswer the question about item identification.\n",
        f'What is the title of item "{S2}"?',
        T2,
    ),
    "sid_history_to_title": (
        NEXT_ITEM_SYSTEM,
        f"The user has sequentially interacted with items {S0}, {S1}. Can you recommend the next item for him? "
        "Tell me the title of the item?",
        T2,
    ),
    # random.Random(42).randint(0, 10) draws 10, 1, … : train row 1 gets instruction 1.
    "title_history_to_title": (
        HEAD + "\nConsidering the office products that has recently captured the user's interest, kindly create a "
        "compilation of other office products that the user might have played prior to this.\n \n",
        f'The user has palyed the following office productss before: "{T0}",\t"{T1}"',
        f'"{T2}"\n',
    ),
    "title_history_to_sid": (
        HEAD + " \nBased on the user's historical interaction with item titles, predict the semantic ID of the next "
        "item they may expect.\n",
        f'The user has interacted with the following office products items in chronological order: "{T0}", "{T1}". '
        "Can you predict the next item the user may expect?",
        S2,
    ),
}

# What Qwen3's template renders for those conversations: the research code's training sequences.
PINNED_STAGE1 = {
    "sid_history_to_sid": (
        "<|im_start|>system\n" + HEAD + " Can you predict the next possible item that the user may expect?"
        "<|im_end|>\n<|im_start|>user\nThe user has interacted with items <a_0><b_1><c_2>, <a_0><b_1><c_3> in "
        "chronological order. Can you predict the next possible item that the user may expect?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n<a_0><b_2><c_0><|im_end|>\n"
    ),
    "title_to_sid": (
        "<|im_start|>system\n" + HEAD + " \nAnswer the question about item identification.\n<|im_end|>\n"
        "<|im_start|>user\nWhich item has the title: Acme Gel Pen Vol. 3?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\n<a_0><b_2><c_0><|im_end|>\n"
    ),
    "sid_to_title": (
        "<|im_start|>system\n" + HEAD + " \nAnswer the question about item identification.\n<|im_end|>\n"
        '<|im_start|>user\nWhat is the title of item "<a_0><b_2><c_0>"?<|im_end|>\n'
        "<|im_start|>assistant\n<think>\n\n</think>\n\nAcme Gel Pen Vol. 3<|im_end|>\n"
    ),
    "sid_history_to_title": (
        "<|im_start|>system\n" + HEAD + "\nCan you recommend the next item for the user based on their interaction "
        "history?\n<|im_end|>\n<|im_start|>user\nThe user has sequentially interacted with items <a_0><b_1><c_2>, "
        "<a_0><b_1><c_3>. Can you recommend the next item for him? Tell me the title of the item?<|im_end|>\n"
        "<|im_start|>assistant\n<think>\n\n</think>\n\nAcme Gel Pen Vol. 3<|im_end|>\n"
    ),
    "title_history_to_title": (
        "<|im_start|>system\n" + HEAD + "\nConsidering the office products that has recently captured the user's "
        "interest, kindly create a compilation of other office products that the user might have played prior to "
        "this.\n \n<|im_end|>\n<|im_start|>user\nThe user has palyed the following office productss before: "
        '"Acme Gel Pen Vol. 1",\t"Acme Gel Pen Vol. 2"<|im_end|>\n'
        '<|im_start|>assistant\n<think>\n\n</think>\n\n"Acme Gel Pen Vol. 3"\n<|im_end|>\n'
    ),
    "title_history_to_sid": (
        "<|im_start|>system\n" + HEAD + " \nBased on the user's historical interaction with item titles, predict the "
        "semantic ID of the next item they may expect.\n<|im_end|>\n<|im_start|>user\nThe user has interacted with "
        'the following office products items in chronological order: "Acme Gel Pen Vol. 1", "Acme Gel Pen Vol. '
        '2". Can you predict the next item the user may expect?<|im_end|>\n'
        "<|im_start|>assistant\n<think>\n\n</think>\n\n<a_0><b_2><c_0><|im_end|>\n"
    ),
}
PINNED_STAGE2 = (
    "<|im_start|>system\n" + NEXT_ITEM_SYSTEM + "<|im_end|>\n<|im_start|>user\n" + REASONING_USER + "<|im_end|>\n"
    "<|im_start|>assistant\n<think>\n" + REASONING + "\n</think>\n\n<a_0><b_2><c_0><|im_end|>\n"
)
PINNED_THINK_PROMPT = (
    "<|im_start|>system\n"
    + NEXT_ITEM_SYSTEM
    + "<|im_end|>\n<|im_start|>user\n"
    + REASONING_USER
    + "<|im_end|>\n<|im_start|>assistant\n"
)
EVAL_SYSTEM = HEAD + " \nCan you predict the next possible item that the user may expect?\n"
EVAL_USER = (
    "Can you predict the next possible item the user may expect, given the following chronological "
    f"interaction history: {S0}, {S1}"
)
PINNED_NONTHINK_PROMPT = (
    "<|im_start|>system\n"
    + EVAL_SYSTEM
    + "<|im_end|>\n<|im_start|>user\n"
    + EVAL_USER
    + "<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
)


def _messages(system: str, user: str, answer: str | None = None) -> list[dict]:
    out = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    return out + ([{"role": "assistant", "content": answer}] if answer is not None else [])


def research_sequence(q3, messages: list[dict], mask_eos: bool) -> tuple[str, list[int], list[int]]:
    """The research code's training sequence: the whole conversation rendered by the chat template and
    tokenised; labels on the tokens of the assistant's answer (found by its last occurrence in the text)
    and, with mask_eos=False, on everything after it."""
    text = q3.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    answer = messages[-1]["content"]
    start = len(q3(text[: text.rfind(answer)], add_special_tokens=False)["input_ids"])
    n = len(q3(answer, add_special_tokens=False)["input_ids"])
    ids = q3(text, add_special_tokens=False)["input_ids"]
    labels = [IGNORE] * len(ids)
    end = start + n if mask_eos else len(ids)
    labels[start:end] = ids[start:end]
    return text, ids, labels


@pytest.fixture(scope="module")
def toks(tiny_base_model):
    """The tiny model's tokenizer (its Qwen3-style template) with the SID codes, and a twin with Qwen3's template."""
    tok = AutoTokenizer.from_pretrained(tiny_base_model["model_dir"])
    tok.add_tokens(tasks.sid_code_tokens(tiny_base_model["sid_index"]))
    q3 = copy.deepcopy(tok)
    q3.chat_template = QWEN3_TEMPLATE
    return tok, q3


@pytest.fixture(scope="module")
def office(tmp_path_factory, tiny_artifacts):
    """The tiny artifacts with an Office_Products dataset (stats.json names the category)."""
    dataset = tmp_path_factory.mktemp("office") / "dataset"
    shutil.copytree(tiny_artifacts["dataset"], dataset)
    (dataset / "stats.json").write_text(json.dumps({"category": "Office_Products"}))
    return {**tiny_artifacts, "dataset": dataset}


def _find(examples, task: str, needle: str) -> Example:
    found = [e for e in examples if e.task == task and needle in e.prompt]
    assert len(found) == 1, (task, needle, len(found))
    return found[0]


def test_stage1_sequences_are_the_research_codes(toks, office):
    tok, q3 = toks
    s = config.load("office", ["stage1.tasks.instructions=0"]).stage1
    examples, counts = tasks.stage1_examples(s, 42, office["dataset"], office["sid_index"], office["corpus"])
    needles = {
        "sid_history_to_sid": f"{S0}, {S1} in",
        "title_to_sid": T2,
        "sid_to_title": S2,
        "sid_history_to_title": f"{S0}, {S1}.",
        "title_history_to_title": f'"{T0}",\t"{T1}"',
        "title_history_to_sid": f'"{T0}", "{T1}"',
    }
    for task, (system, user, answer) in RESEARCH_STAGE1.items():
        ex = _find(examples, task, needles[task])
        assert (ex.system, ex.prompt, ex.response) == (system, user, answer), task
        text, ids, labels = research_sequence(q3, _messages(system, user, answer), mask_eos=True)
        assert text == PINNED_STAGE1[task], task
        row = encode(tok, ex, s.cutoff_len, **_encoding(s))
        assert row["input_ids"] == ids and row["labels"] == labels, task
        assert tok.decode(row["input_ids"]) == text
        # Stage 1 (paper): the answer carries the loss, "<|im_end|>\n" after it does not.
        assert tok.decode([t for t in row["labels"] if t != IGNORE]) == answer
    # One translation example per distinct title and per distinct SID.
    assert counts["title_to_sid"] == counts["sid_to_title"] == 6


def test_title_history_instructions_are_drawn_per_sample_with_pythons_random(office, tiny_artifacts):
    s = config.load("office", ["stage1.tasks.instructions=0"]).stage1
    examples, _ = tasks.stage1_examples(s, 42, office["dataset"], office["sid_index"], office["corpus"])
    systems = [e.system for e in examples if e.task == "title_history_to_title"]
    want = [prompts.title_history_system(i, "office products") for i in (10, 1, 0, 4, 3)]
    assert systems == want
    assert want[0] == (
        HEAD + "\nIn relation to the user's recent entertainment with a given office products, it would "
        "be appreciated if you could curate a list of office products that might form part of the "
        "user's previous gaming history.\n \n"
    )
    # A dataset without a category the research code names: "items" (so "itemss" in this task).
    plain, _ = tasks.stage1_examples(s, 42, tiny_artifacts["dataset"], office["sid_index"], office["corpus"])
    first = next(e for e in plain if e.task == "title_history_to_title")
    assert first.prompt == f'The user has palyed the following itemss before: "{T0}"'
    assert first.system == prompts.title_history_system(10, "items")
    assert _find(plain, "title_history_to_sid", f'"{T0}", "{T1}"').prompt.startswith(
        "The user has interacted with the following items items in chronological order:"
    )


def test_category_phrases():
    assert [
        prompts.category_phrase(c)
        for c in ("Office_Products", "Industrial_and_Scientific", "Video_Games", "Toys_and_Games", "Demo")
    ] == ["office products", "industrial and scientific items", "video games", "toys and games", "items"]


def test_stage2_sequence_and_its_sid_validation(toks, office):
    tok, q3 = toks
    s2 = config.load("office").stage2
    train, held = tasks.stage2_examples(s2, 42, office["sid_index"], office["corpus"])
    assert held == []
    ex = _find(train, "reasoning", f"{S0}, {S1}.")
    answer = f"<think>\n{REASONING}\n</think>\n\n{S2}"
    assert (ex.system, ex.prompt, ex.response, ex.thinking) == (NEXT_ITEM_SYSTEM, REASONING_USER, answer, True)
    text, ids, labels = research_sequence(q3, _messages(NEXT_ITEM_SYSTEM, REASONING_USER, answer), mask_eos=False)
    assert text == PINNED_STAGE2
    row = encode(tok, ex, s2.cutoff_len, **_encoding(s2))
    assert row["input_ids"] == ids and row["labels"] == labels
    # Stage 2 (paper): the answer and "<|im_end|>\n" carry the loss.
    assert tok.decode([t for t in row["labels"] if t != IGNORE]) == answer + "<|im_end|>\n"
    # Its next-SID validation examples are Stage 1's, <|im_end|> out of the loss.
    sid_ex, _ = tasks.next_sid_valid(office["dataset"], office["sid_index"], 0, 42)
    system, user, _ = RESEARCH_STAGE1["sid_history_to_sid"]
    first = sid_ex[1]  # valid row 1: history items 3, 4, target 5
    target = first.response
    want_user = user.replace(f"{S0}, {S1}", "<a_1><b_0><c_1>, <a_1><b_0><c_2>")
    assert (first.system, first.prompt) == (system, want_user)
    _, ids, labels = research_sequence(q3, _messages(system, want_user, target), mask_eos=True)
    assert encode(tok, first, s2.cutoff_len, **_encoding(s2)) == {"input_ids": ids, "labels": labels}


def test_rl_prompt_is_the_research_codes(toks, office):
    tok, q3 = toks
    row = rl_data.rl_rows(office["dataset"], office["sid_index"], "train")[1]
    assert row["prompt"] == _messages(NEXT_ITEM_SYSTEM, REASONING_USER)
    # verl renders the messages with the chat template's generation prompt (thinking: no empty block).
    research = q3.apply_chat_template(row["prompt"], tokenize=False, add_generation_prompt=True)
    assert research == PINNED_THINK_PROMPT == prompts.render_chat_prompt(tok, row["prompt"], thinking=True)


def test_evaluation_prompts_are_the_research_codes(tiny_sid_model):
    tok = tiny_sid_model["tok"]
    q3 = copy.deepcopy(tok)
    q3.chat_template = QWEN3_TEMPLATE
    model, _ = load_model_and_tokenizer(tiny_sid_model["dir"])
    decoder = SidDecoder(model, tok, [S0, S1, S2], shared=False)
    # Non-thinking: the research evaluation's own wording, its generation prompt, then its empty think block.
    research = q3.apply_chat_template(_messages(EVAL_SYSTEM, EVAL_USER), tokenize=False, add_generation_prompt=True)
    assert research + prompts.EMPTY_THINK == PINNED_NONTHINK_PROMPT
    assert _prompts(decoder, [[S0, S1]], False, "research") == [
        tok(research, add_special_tokens=False)["input_ids"]
        + tok("<think>\n</think>\n\n", add_special_tokens=False)["input_ids"]
    ]
    # The project's rendering (the default) ends with the empty think block the training renders.
    assert _prompts(decoder, [[S0, S1]], False) == [tok(PINNED_NONTHINK_PROMPT, add_special_tokens=False)["input_ids"]]
    # Thinking: the Stage 2 question, the generation prompt in thinking mode.
    research = q3.apply_chat_template(
        _messages(NEXT_ITEM_SYSTEM, REASONING_USER), tokenize=False, add_generation_prompt=True
    )
    assert research == PINNED_THINK_PROMPT
    assert _prompts(decoder, [[S0, S1]], True) == [tok(PINNED_THINK_PROMPT, add_special_tokens=False)["input_ids"]]


def test_the_tiny_template_renders_what_qwen3s_renders(toks):
    tok, q3 = toks
    for system in (None, NEXT_ITEM_SYSTEM, EVAL_SYSTEM):
        for thinking in (False, True):
            msgs = prompts.chat_messages(REASONING_USER, system)
            assert tok.apply_chat_template(
                msgs, tokenize=False, add_generation_prompt=True, enable_thinking=thinking
            ) == q3.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True, enable_thinking=thinking)
    assert prompts.turn_end(tok) == prompts.turn_end(q3) == "<|im_end|>\n"


# ---------------------------------------------------------------- <|im_end|> loss, truncation


def test_im_end_loss_per_stage(toks):
    tok, _ = toks
    end = tok("<|im_end|>\n", add_special_tokens=False)["input_ids"]
    sid = tok(S2, add_special_tokens=False)["input_ids"]
    plain = Example("sid_history_to_sid", prompts.next_sid_question([S0]), S2)
    think = Example("reasoning", prompts.next_sid_question([S0], reasoning=True), S2, thinking=True)

    def tail(ex, mode):
        labels = encode(tok, ex, 10_000, loss_on_eos=mode)["labels"]
        return labels[-len(sid) - len(end) :]

    assert tail(plain, "all") == sid + end and tail(think, "all") == sid + end
    assert tail(plain, "thinking") == sid + [IGNORE] * 2 and tail(think, "thinking") == sid + end
    assert tail(plain, "none") == sid + [IGNORE] * 2 and tail(think, "none") == sid + [IGNORE] * 2
    for preset in PAPER:
        c = config.load(preset)
        assert (c.stage1.loss_on_eos, c.stage2.loss_on_eos) == ("thinking", "thinking")
        assert _encoding(c.stage1) == {"truncation": "left", "loss_on_eos": "thinking", "text_end": False}
        assert _encoding(c.stage2) == {"truncation": "left", "loss_on_eos": "thinking", "text_end": True}
    demo = config.load("demo")
    assert (demo.stage1.loss_on_eos, demo.stage2.loss_on_eos) == ("all", "all")
    with pytest.raises(ValueError, match="loss_on_eos"):
        encode(tok, plain, 100, loss_on_eos="some")


def test_left_truncation_keeps_the_answer(toks):
    tok, _ = toks
    ex = Example(
        "title_history_to_sid",
        prompts.TITLE_HISTORY_TO_SID.format(category="items", titles=prompts.title_history([T0, T1] * 10)),
        S2,
    )
    whole = encode(tok, ex, 10_000)
    sid = tok(S2, add_special_tokens=False)["input_ids"]
    n = len(whole["input_ids"])
    assert n > 40
    left = encode(tok, ex, 20, truncation="left")
    assert left == {"input_ids": whole["input_ids"][-20:], "labels": whole["labels"][-20:]}
    assert tok.decode(left["input_ids"][-5:]) == S2 + "<|im_end|>\n" and left["labels"][-5:-2] == sid
    right = encode(tok, ex, 20, truncation="right")
    assert right == {"input_ids": whole["input_ids"][:20], "labels": whole["labels"][:20]}
    assert set(right["labels"]) == {IGNORE}  # the answer is gone
    # A narrative too: its last tokens stay; the research code adds no end token.
    text = Example("item_narratives", None, " ".join([T0, T1, T2] * 5))
    full = encode(tok, text, 10_000, text_end=False)
    assert encode(tok, text, 7, text_end=False)["input_ids"] == full["input_ids"][-7:]
    assert full["input_ids"] == tok(text.response, add_special_tokens=False)["input_ids"] == full["labels"]
    assert encode(tok, text, 10_000)["input_ids"] == full["input_ids"] + [tok.pad_token_id]
    assert config.load("demo").stage1.truncation == config.load("office").stage1.truncation == "left"


# ---------------------------------------------------------------- new SID rows


def _model(vocab: int, padded: int = 0, seed: int = 0):
    words = [f"w{i} x{i % 7} y{i % 5}" for i in range(400)]
    tok = tiny.train_tokenizer(words, vocab)
    cfg = TinyModelConfig(
        hidden_size=16,
        num_layers=1,
        num_heads=2,
        num_kv_heads=1,
        head_dim=8,
        intermediate_size=32,
        vocab_size=vocab,
        max_positions=64,
    )
    model = tiny.build_model(cfg, tok, seed)
    # Anisotropic rows (scales 0.1 … 1.6, correlated dimensions), so a covariance is there to be matched.
    g = torch.Generator().manual_seed(seed)
    mix = torch.linalg.qr(torch.randn(16, 16, generator=g))[0] * torch.linspace(0.1, 1.6, 16)
    rows = len(tok) + padded
    if padded:
        model.resize_token_embeddings(rows, mean_resizing=False)
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(torch.randn(rows, 16, generator=g) @ mix.T + 3.0)
    return model, tok


def test_mean_resizing_draws_new_rows_from_the_old_rows_mean_and_covariance():
    model, tok = _model(300)
    old = model.get_input_embeddings().weight.detach().clone().double()
    codes = [f"<a_{i}>" for i in range(4000)]
    torch.manual_seed(7)
    ids = extend_tokenizer(model, tok, codes, init="mean_resizing")
    w = model.get_input_embeddings().weight.detach().double()
    assert w.shape[0] == len(tok) == old.shape[0] + len(codes) and ids == list(range(old.shape[0], w.shape[0]))
    assert torch.equal(w[: old.shape[0]], old)
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    new = w[ids]
    mean, cov = old.mean(0), torch.cov(old.T, correction=0)
    # transformers' mean_resizing: a normal with the old rows' mean and 1e-9 times their covariance.
    assert torch.allclose(new.mean(0), mean, atol=1e-5)
    cov_new = torch.cov(new.T) / 1e-9
    assert (cov_new - cov).norm() / cov.norm() < 0.12
    assert torch.allclose(cov_new.diagonal(), cov.diagonal(), rtol=0.15)
    # Seeded: the same torch seed draws the same rows.
    again, tok2 = _model(300)
    torch.manual_seed(7)
    extend_tokenizer(again, tok2, codes, init="mean_resizing")
    assert torch.equal(again.get_input_embeddings().weight, model.get_input_embeddings().weight)
    # The project's default: every new row is exactly the mean.
    plain, tok3 = _model(300)
    ids = extend_tokenizer(plain, tok3, codes[:10])
    w3 = plain.get_input_embeddings().weight.detach()
    assert torch.allclose(w3[ids], w3[: ids[0]].mean(0).expand(10, -1))


def test_mean_resizing_keeps_a_padded_matrixs_rows_and_sizes_it_to_the_tokenizer():
    model, tok = _model(300, padded=5)
    n_tok = len(tok)
    old = model.get_input_embeddings().weight.detach().clone()
    assert old.shape[0] == n_tok + 5
    ids = extend_tokenizer(model, tok, [f"<a_{i}>" for i in range(8)], init="mean_resizing")
    w = model.get_input_embeddings().weight.detach()
    assert w.shape[0] == n_tok + 8 == len(tok)
    assert torch.equal(w[: n_tok + 5], old)  # the first 5 new tokens keep the padded rows
    assert not torch.equal(w[ids[5:]], old.mean(0).expand(3, -1))
    assert torch.allclose(w[ids[5:]], old.mean(0).expand(3, -1), atol=1e-3)
    small, tok2 = _model(300, padded=5)
    extend_tokenizer(small, tok2, ["<a_0>", "<a_1>"], init="mean_resizing")
    assert small.get_input_embeddings().weight.shape[0] == len(tok2)  # shrunk to the tokenizer, as the research code
    for preset in PAPER:
        assert config.load(preset).stage1.new_token_init == "mean_resizing"
    assert config.load("demo").stage1.new_token_init == "mean"


# ---------------------------------------------------------------- general-reasoning data


GENERAL_LINES = [
    # "messages" as a JSON string, system + user + assistant (the research data's layout)
    {
        "messages": json.dumps(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
            ]
        )
    },
    # a Python literal, content parts; a system message of parts becomes a user message
    {
        "messages": str(
            [
                {"role": "system", "content": [{"type": "text", "text": "Sys parts"}]},
                {"role": "user", "content": [{"type": "text", "text": "Name a colour"}]},
                {"role": "assistant", "content": [{"type": "text", "text": "red"}]},
            ]
        )
    },
    # no answer: left out after sampling
    {"messages": json.dumps([{"role": "user", "content": "silent?"}])},
    # a list, several turns: the prompt keeps the user turns, the answer is the last assistant message
    {
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "bye"},
            {"role": "assistant", "content": "ciao"},
        ]
    },
    {"prompt": "Say yes", "response": "yes"},
]


def test_general_reasoning_messages_reader(tmp_path, toks):
    tok, q3 = toks
    path = tmp_path / "sampled_data.arrow"
    path.write_text("\n".join(json.dumps(x) for x in GENERAL_LINES) + "\n")
    exs = data_mod.read_instruction_file(path, thinking=True, max_len=3072)
    assert [(e.messages, e.response) for e in exs] == [
        (
            [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"}],
            "<think>\nadd\n</think>\n\n4",
        ),
        ([{"role": "user", "content": "Sys parts"}, {"role": "user", "content": "Name a colour"}], "red"),
        ([{"role": "user", "content": "hi"}, {"role": "user", "content": "bye"}], "ciao"),
        ([{"role": "user", "content": "Say yes"}], "yes"),
    ]
    assert all(e.task == "instructions" and e.thinking and e.max_len == 3072 for e in exs)
    assert [e.prompt for e in exs] == ["2+2?", "Name a colour", "bye", "Say yes"]
    # The research code's encoding: generation prompt (thinking), the answer and the eos token, all in the loss.
    ex = exs[0]
    prompt = q3.apply_chat_template(ex.messages, tokenize=False, add_generation_prompt=True)
    assert (
        prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\n2+2?<|im_end|>\n<|im_start|>assistant\n"
    )
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    a = tok(ex.response, add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
    for mode in ("thinking", "all"):
        assert encode(tok, ex, 16, loss_on_eos=mode) == {"input_ids": p + a, "labels": [IGNORE] * len(p) + a}
    # Its own token limit (left truncation), not the stage's cutoff.
    short = Example("instructions", "2+2?", ex.response, thinking=True, messages=ex.messages, max_len=6)
    assert encode(tok, short, 10_000)["input_ids"] == (p + a)[-6:]
    # A seeded sample of the lines (Python's random.sample over every line), then lines without an answer go.
    assert random.Random(42).sample(range(5), 3) == [0, 4, 2]
    sampled = data_mod.read_instruction_file(path, samples=3, seed=42)
    assert [e.response for e in sampled] == ["<think>\nadd\n</think>\n\n4", "yes"]  # line 3 has no answer
    assert len(data_mod.read_instruction_file(path, samples=9, seed=42)) == 4  # more than the file: all
    bad = tmp_path / "bad.arrow"
    bad.write_text(json.dumps({"messages": "[{'role': 'user', 'content': 'x'"}) + "\n")
    with pytest.raises(
        data_mod.InstructionFileError, match=r"bad.arrow:1: messages is neither JSON nor a Python literal"
    ):
        data_mod.read_instruction_file(bad)
    bad.write_text(json.dumps({"messages": json.dumps([{"content": "no role"}])}) + "\n")
    with pytest.raises(data_mod.InstructionFileError, match=r"bad.arrow:1: messages must be a list"):
        data_mod.read_instruction_file(bad)


def test_general_data_in_the_stage1_mix(tmp_path, office):
    path = tmp_path / "sampled_data.arrow"
    path.write_text("\n".join(json.dumps(x) for x in GENERAL_LINES) + "\n")
    s = config.load("office", [f"stage1.instruction_file={path}", "stage1.instruction_samples=4"]).stage1
    assert (s.instruction_samples, s.instruction_cutoff_len, s.instruction_thinking) == (4, 3072, True)
    for preset in PAPER:
        p = config.load(preset).stage1
        assert (p.instruction_samples, p.instruction_cutoff_len, p.instruction_thinking) == (60000, 3072, True)
    demo = config.load("demo").stage1
    assert (demo.instruction_samples, demo.instruction_cutoff_len, demo.instruction_thinking) == (0, 0, False)
    exs, counts = tasks.stage1_examples(s, 42, office["dataset"], office["sid_index"], office["corpus"])
    general = [e for e in exs if e.task == "instructions"]
    picked = random.Random(42).sample(range(5), 4)
    assert counts["instructions"] == len(general) == len([i for i in picked if i != 2])
    assert all(e.thinking and e.max_len == 3072 and e.system is None for e in general)
