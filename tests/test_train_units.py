"""Training unit tests on tiny hand-made inputs: tokenizer extension, prompt/label masking of every
task (exact token spans), the think block, the tiny model, the instruction file."""

from __future__ import annotations

import json

import pytest
import torch

from sidreasoner import config
from sidreasoner.model import prompts
from sidreasoner.model.loading import load_model_and_tokenizer
from sidreasoner.train import data as data_mod
from sidreasoner.train import tasks
from sidreasoner.train.base import prepare_base_model
from sidreasoner.train.data import IGNORE, Example, encode
from sidreasoner.train.decode import constrained_greedy_sid
from sidreasoner.train.sft import extend_tokenizer


@pytest.fixture(scope="module")
def base(tiny_base_model):
    """The shared tiny artifacts and the tiny base model built on them (read only)."""
    return tiny_base_model


@pytest.fixture()
def extended(base):
    model, tok = load_model_and_tokenizer(base["model_dir"])
    codes = tasks.sid_code_tokens(base["sid_index"])
    n_before, rows_before = len(tok), model.get_input_embeddings().weight.detach().clone()
    ids = extend_tokenizer(model, tok, codes)
    return model, tok, codes, ids, n_before, rows_before


def test_tiny_model_saves_and_loads(base, tmp_path):
    files = {p.name for p in base["model_dir"].iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files and "config.json" in files
    assert not any(f.endswith(".bin") for f in files)
    model, tok = load_model_and_tokenizer(base["model_dir"])
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert model.config.hidden_size == 32 and model.config.num_hidden_layers == 1
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    assert base["metrics"]["parameters"] == sum(p.numel() for p in model.parameters())
    # deterministic: same seed, same weights
    again = tmp_path / "model2"
    prepare_base_model(base["cfg"], base["dataset"], base["corpus"], again)
    m2, _ = load_model_and_tokenizer(again)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), m2.state_dict().values()))


def test_sid_codes_are_single_plain_tokens_that_round_trip(extended, base):
    model, tok, codes, ids, n_before, rows_before = extended
    assert codes == ["<a_0>", "<a_1>", "<b_0>", "<b_1>", "<b_2>", "<b_3>", "<c_0>", "<c_1>", "<c_2>", "<c_3>"]
    assert len(tok) == n_before + len(codes)
    assert model.get_input_embeddings().weight.shape[0] == len(tok)
    for code, i in zip(codes, ids):
        assert tok(code, add_special_tokens=False)["input_ids"] == [i]
        assert tok.decode([i]) == code
        assert code not in tok.all_special_tokens
        assert tok.decode([i], skip_special_tokens=True) == code
    for sid in base["sids"]:
        enc = tok(sid, add_special_tokens=False)["input_ids"]
        assert len(enc) == 3 and tok.decode(enc, skip_special_tokens=True) == sid
    text = f"Bought {base['sids'][0]}, then {base['sids'][1]}."
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"], skip_special_tokens=True) == text
    # new rows start at the mean of the old ones; old rows are untouched
    w = model.get_input_embeddings().weight.detach()
    assert torch.equal(w[:n_before], rows_before[:n_before])
    assert torch.allclose(w[ids[0]], rows_before[:n_before].mean(0), atol=1e-6)
    # idempotent: extending again adds nothing
    assert extend_tokenizer(model, tok, codes) == ids and len(tok) == n_before + len(codes)


def test_think_block_identical_in_training_and_inference(extended):
    _, tok, *_ = extended
    q = prompts.next_sid_question(["<a_0><b_1><c_2>"])
    ex = Example("sid_history_to_sid", q, "<a_0><b_1><c_3>")
    assert ex.system == prompts.SYSTEM_SID_HISTORY_TO_SID
    plain = prompts.render_prompt(tok, q, system=ex.system)
    assert plain.endswith("<|im_start|>assistant\n" + prompts.EMPTY_THINK)
    assert plain.startswith("<|im_start|>system\n" + ex.system + "<|im_end|>\n<|im_start|>user\n" + q + "<|im_end|>\n")
    row = encode(tok, ex, 512)
    infer = tok(plain, add_special_tokens=False)["input_ids"]
    assert row["input_ids"][: len(infer)] == infer
    think = prompts.render_prompt(tok, prompts.next_sid_question(["<a_0><b_1><c_2>"], reasoning=True), thinking=True)
    assert think.endswith("<|im_start|>assistant\n") and "<think>" not in think
    assert "items <a_0><b_1><c_2>. Can you recommend the next item for him?" + prompts.REASONING_SUFFIX in think


def test_label_masking_of_every_task(extended, base):
    _, tok, *_ = extended
    cfg = config.load("demo", ["stage1.max_per_task=0", "stage1.tasks.sid_history_to_sid=1.0",
                               "stage1.tasks.item_narratives=1.0", "stage1.tasks.history_narratives=1.0",
                               "stage1.tasks.title_history_to_title=1.0"]).stage1
    exs, counts = tasks.stage1_examples(cfg, 0, base["dataset"], base["sid_index"], base["corpus"])
    assert counts == {"sid_history_to_sid": 5, "title_to_sid": 6, "sid_to_title": 6, "sid_history_to_title": 5,
                      "title_history_to_title": 5, "title_history_to_sid": 5, "item_narratives": 6,
                      "history_narratives": 5}
    seen = set()
    for ex in exs:
        row = encode(tok, ex, 10_000)
        ids, labels = row["input_ids"], row["labels"]
        assert len(ids) == len(labels)
        seen.add(ex.task)
        if ex.prompt is None:
            assert labels == ids and ids[-1] == tok.pad_token_id
            assert tok.decode(ids[:-1]) == ex.response
            continue
        assert ex.system  # every chat task has a system message
        p = tok(prompts.render_prompt(tok, ex.prompt, system=ex.system), add_special_tokens=False)["input_ids"]
        assert labels[: len(p)] == [IGNORE] * len(p)
        assert labels[len(p):] == ids[len(p):] and IGNORE not in labels[len(p):]
        assert tok.decode(ids[len(p):]) == ex.response + "<|im_end|>\n"
        assert ids[-2:] == [tok.eos_token_id, tok("\n", add_special_tokens=False)["input_ids"][0]]
    assert seen == set(counts)
    first = next(e for e in exs if e.task == "sid_history_to_sid")
    assert first.prompt == ("The user has interacted with items <a_0><b_1><c_2> in chronological order. "
                            "Can you predict the next possible item that the user may expect?")
    assert first.response == "<a_0><b_1><c_3>"


def test_stage2_examples_and_masking(extended, base):
    _, tok, *_ = extended
    cfg = config.load("demo", ["stage2.reasoning_holdout=1", "stage2.max_samples=0"]).stage2
    train, valid = tasks.stage2_examples(cfg, 0, base["sid_index"], base["corpus"])
    assert len(train) == 4 and len(valid) == 1
    ex = train[0]
    assert ex.prompt.endswith(prompts.REASONING_SUFFIX) and ex.thinking
    assert ex.response.startswith("<think>\n") and "\n</think>\n\n<" in ex.response
    row = encode(tok, ex, 10_000)
    assert ex.system == prompts.SYSTEM_NEXT_ITEM
    p = tok(prompts.render_prompt(tok, ex.prompt, thinking=True, system=ex.system), add_special_tokens=False)["input_ids"]
    assert row["labels"][: len(p)] == [IGNORE] * len(p)
    assert tok.decode(row["input_ids"][len(p):]) == ex.response + "<|im_end|>\n"


def test_task_weights_switch_and_scale(base):
    cfg = config.load("demo", ["stage1.max_per_task=0", "stage1.tasks.sid_history_to_sid=2.0",
                               "stage1.tasks.title_to_sid=0.5", "stage1.tasks.sid_to_title=0",
                               "stage1.tasks.item_narratives=0", "stage1.tasks.history_narratives=0"]).stage1
    _, counts = tasks.stage1_examples(cfg, 0, base["dataset"], base["sid_index"], base["corpus"])
    assert counts["sid_history_to_sid"] == 10 and counts["title_to_sid"] == 3
    assert "sid_to_title" not in counts and "item_narratives" not in counts


def test_instruction_file(tmp_path, extended, base):
    good = tmp_path / "ins.jsonl"
    good.write_text(json.dumps({"instruction": "Say hi", "output": "hi"}) + "\n\n" +
                    json.dumps({"prompt": "2+2?", "response": "4"}) + "\n")
    exs = data_mod.read_instruction_file(good)
    assert [(e.prompt, e.response) for e in exs] == [("Say hi", "hi"), ("2+2?", "4")]
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "response": "b"}) + "\n{oops\n")
    with pytest.raises(data_mod.InstructionFileError, match=r"bad.jsonl:2: not valid JSON"):
        data_mod.read_instruction_file(bad)
    bad.write_text(json.dumps({"question": "a"}) + "\n")
    with pytest.raises(data_mod.InstructionFileError, match=r"bad.jsonl:1: needs keys"):
        data_mod.read_instruction_file(bad)
    with pytest.raises(data_mod.InstructionFileError, match="no such file"):
        data_mod.read_instruction_file(tmp_path / "missing.jsonl")
    cfg = config.load("demo", [f"stage1.instruction_file={good}"]).stage1
    _, counts = tasks.stage1_examples(cfg, 0, base["dataset"], base["sid_index"], base["corpus"])
    assert counts["instructions"] == 2


def test_instruction_file_with_a_byte_order_mark_and_crlf_and_bad_field_types(tmp_path):
    path = tmp_path / "ins.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"instruction": "Say hi", "output": "hi"}).encode() + b"\r\n")
    assert [(e.prompt, e.response) for e in data_mod.read_instruction_file(path)] == [("Say hi", "hi")]
    path.write_text(json.dumps({"instruction": "Say hi", "input": 7, "output": "hi"}) + "\n")
    with pytest.raises(data_mod.InstructionFileError, match=r"ins.jsonl:1: instruction and input must be strings"):
        data_mod.read_instruction_file(path)


def test_collators(extended):
    _, tok, *_ = extended
    rows = [{"input_ids": [5, 6, 7], "labels": [IGNORE, 6, 7]}, {"input_ids": [8, 9], "labels": [IGNORE, 9]}]
    padded = data_mod.collator("length_grouped", tok.pad_token_id)(rows)
    assert padded["input_ids"].tolist() == [[5, 6, 7], [8, 9, tok.pad_token_id]]
    assert padded["labels"].tolist() == [[IGNORE, 6, 7], [IGNORE, 9, IGNORE]]
    assert padded["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    packed = data_mod.collator("packed", tok.pad_token_id)(rows)
    assert packed["input_ids"].tolist() == [[5, 6, 7, 8, 9]]
    assert packed["position_ids"].tolist() == [[0, 1, 2, 0, 1]]
    assert packed["labels"].tolist() == [[IGNORE, 6, 7, IGNORE, 9]]


def _hf_constrained_greedy(model, tok, texts, catalogue):
    """The research code's way: HF greedy `generate` with a prefix -> allowed-tokens dict."""
    allowed: dict[tuple, set] = {}
    for sid in catalogue:
        ids = tok(sid, add_special_tokens=False)["input_ids"]
        for i in range(len(ids)):
            allowed.setdefault(tuple(ids[:i]), set()).add(ids[i])
    out = []
    for text in texts:
        enc = tok([text], return_tensors="pt", add_special_tokens=False)
        plen = enc["input_ids"].shape[1]
        gen = model.generate(**enc, max_new_tokens=3, do_sample=False, pad_token_id=tok.pad_token_id,
                             prefix_allowed_tokens_fn=lambda _b, ids: sorted(allowed[tuple(ids[plen:].tolist())]))
        out.append(tok.decode(gen[0, plen:], skip_special_tokens=True).strip())
    return out


def test_constrained_greedy_is_hf_greedy_over_the_catalogue(extended, base):
    model, tok, *_ = extended
    catalogue = json.loads((base["sid_index"] / "catalogue.json").read_text())
    attn = model.config._attn_implementation
    qs = [prompts.render_prompt(tok, prompts.next_sid_question([s])) for s in base["sids"][:4]]
    out = constrained_greedy_sid(model, tok, qs, catalogue, batch_size=3)
    assert len(out) == 4 and all(s in catalogue for s in out)
    assert model.config._attn_implementation == attn  # the model is saved after this: left as it was
    with torch.no_grad():
        assert out == _hf_constrained_greedy(model, tok, qs, catalogue)
