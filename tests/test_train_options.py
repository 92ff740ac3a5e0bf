"""Stage 1 options that the e2e test does not run: LoRA (`stage1.finetune=lora`, merged before save)
and the embeddings-only warm-up (`stage1.embedding_warmup_epochs`), on the 6-item fixtures."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from sidreasoner import config
from sidreasoner.model.loading import load_model_and_tokenizer
from sidreasoner.train import tasks
from sidreasoner.train.sft import _embedding_warmup, _encode_all, extend_tokenizer, sft_stage1

# ~45 examples an epoch on the fixtures, batches of 8: a few dozen optimizer steps in all.
RUN = [
    "stage1.per_device_batch_size=8",
    "stage1.global_batch_size=8",
    "stage1.logging_steps=1",
    "stage1.valid_samples=3",
    "stage1.hr_samples=2",
    "stage1.save_steps=1000",
    "stage1.warmup_ratio=0",
    "stage1.lr_scheduler=constant",
    "stage1.early_stopping_patience=0",
]
LORA_R = 4

pytestmark = pytest.mark.slow  # trains a model (seconds)


@pytest.fixture(scope="module")
def base(tiny_base_model):
    """The shared tiny artifacts and the tiny base model built on them (read only)."""
    return tiny_base_model


def _run(base, tmp_path, extra):
    cfg = config.load("demo", base["overrides"] + RUN + [f"stage1.checkpoint_dir={tmp_path / 'ckpt'}", *extra])
    out = tmp_path / "out"
    metrics = sft_stage1(cfg, base["model_dir"], base["dataset"], base["sid_index"], base["corpus"], out)
    return cfg, out, metrics


def _extended_base(base):
    """The base model with the SID tokens added exactly as sft_stage1 adds them (before any training)."""
    model, tok = load_model_and_tokenizer(base["model_dir"])
    codes = tasks.sid_code_tokens(base["sid_index"])
    n_old = len(tok)
    new_ids = extend_tokenizer(model, tok, codes)
    return model, tok, codes, new_ids, n_old


def test_lora_trains_merges_and_saves_a_plain_model(base, tmp_path, monkeypatch):
    from peft import LoraModel

    # Record the adapter model's logits just before the merge and the merged model's right after:
    # merging (LoRA deltas + the trainable SID token rows, tied to lm_head) must not change the function.
    probe = torch.tensor([[5, 17, 42, 3, 9]])
    seen = {}
    merge = LoraModel.merge_and_unload

    def recording_merge(self, *a, **k):
        self.eval()
        with torch.no_grad():
            seen["before"] = self(input_ids=probe).logits
        merged = merge(self, *a, **k)
        with torch.no_grad():
            seen["after"] = merged(input_ids=probe).logits
        seen["type"] = type(merged).__name__
        return merged

    monkeypatch.setattr(LoraModel, "merge_and_unload", recording_merge)
    _, out, m = _run(
        base,
        tmp_path,
        [
            "stage1.finetune=lora",
            f"stage1.lora_r={LORA_R}",
            "stage1.lora_alpha=8",
            "stage1.lora_dropout=0",
            "stage1.lr=1e-2",
            "stage1.epochs=4",
        ],
    )
    assert seen["type"] == "Qwen3ForCausalLM"
    assert torch.allclose(seen["before"], seen["after"], atol=1e-4), (seen["before"] - seen["after"]).abs().max()
    assert m["train_loss"] < m["train_loss_first"], m
    assert m["sid_tokens_added"] == 10 and 0.0 <= m["valid_sid_rate"] <= 1.0

    files = {p.name for p in out.iterdir()}
    assert "model.safetensors" in files and "tokenizer.json" in files
    assert not any(f.startswith("adapter_") for f in files), files
    # a plain transformers load: no peft involved, no adapter config in the saved config
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    tok = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "Qwen3ForCausalLM"
    assert not any("lora" in n or "token_adapter" in n or "base_layer" in n for n, _ in model.named_parameters())
    codes = tasks.sid_code_tokens(base["sid_index"])
    for code in codes:
        assert tok(code, add_special_tokens=False)["input_ids"] == [tok.convert_tokens_to_ids(code)]
    assert model.get_input_embeddings().weight.shape[0] == len(tok)

    # Same parameters as the base plus the resized embedding; linear weights moved by a rank <= r delta,
    # everything LoRA does not train (norms, old token rows) is bit-identical.
    ref, _, _, new_ids, n_old = _extended_base(base)
    got, want = dict(model.named_parameters()), dict(ref.named_parameters())
    assert got.keys() == want.keys()
    assert all(got[n].shape == want[n].shape for n in want)
    emb_name = next(n for n, p in ref.named_parameters() if p is ref.get_input_embeddings().weight)
    linears = [n for n, mod in ref.named_modules() if isinstance(mod, torch.nn.Linear) and n != "lm_head"]
    assert linears
    changed = 0
    for name in linears:
        delta = (got[name + ".weight"] - want[name + ".weight"]).detach()
        if delta.abs().max() > 0:
            changed += 1
        assert torch.linalg.matrix_rank(delta, atol=1e-5).item() <= LORA_R, name
    assert changed == len(linears)  # all-linear: every attention and MLP projection got a delta
    for name in want:
        if name == emb_name or name.removesuffix(".weight") in linears:
            continue
        assert torch.equal(got[name], want[name]), name
    e_got, e_want = got[emb_name].detach(), want[emb_name].detach()
    assert torch.equal(e_got[:n_old], e_want[:n_old])
    assert not torch.equal(e_got[new_ids], e_want[new_ids])
    assert model.get_output_embeddings().weight.data_ptr() == model.get_input_embeddings().weight.data_ptr()
    info = json.loads((out / "training.json").read_text())
    assert info["config"]["stage1"]["finetune"] == "lora"


def _section(base, extra=()):
    return config.load("demo", base["overrides"] + RUN + list(extra)).stage1


def test_embedding_warmup_changes_only_the_new_rows(base, tmp_path):
    model, tok, _, new_ids, _ = _extended_base(base)
    s = _section(base, ["stage1.lr=1e-2", "stage1.weight_decay=0.1"])
    examples, _ = tasks.stage1_examples(s, 0, base["dataset"], base["sid_index"], base["corpus"])
    rows = _encode_all(tok, examples, s.cutoff_len)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    ckpt = tmp_path / "ckpt"
    _embedding_warmup(model, tok, s, rows, ckpt, 2.0, 0, new_ids, 1)
    after = dict(model.named_parameters())
    assert {n: p.requires_grad for n, p in after.items()} == flags  # everything trainable again afterwards
    emb = model.get_input_embeddings().weight
    emb_name = next(n for n, p in after.items() if p is emb)
    for name, p in after.items():
        if name != emb_name:
            assert torch.equal(p, before[name]), name
    new = torch.zeros(emb.shape[0], dtype=torch.bool)
    new[new_ids] = True
    assert torch.equal(emb[~new], before[emb_name][~new])  # old rows (and, tied, their output rows) untouched
    assert (emb[new] != before[emb_name][new]).any(dim=1).all()  # every SID row moved
    saved = load_file(str(ckpt / "warmup" / "final.safetensors"))["embed"]
    assert torch.equal(saved, emb.detach())
    # a second call (a retried pod) loads the saved warm-up instead of training again
    model2, tok2, *_ = _extended_base(base)
    _embedding_warmup(model2, tok2, s, rows, ckpt, 2.0, 0, new_ids, 1)
    assert torch.equal(model2.get_input_embeddings().weight, emb)


def test_stage1_with_embedding_warmup_runs(base, tmp_path):
    _, out, m = _run(base, tmp_path, ["stage1.embedding_warmup_epochs=1", "stage1.epochs=2", "stage1.lr=5e-3"])
    assert m["train_loss"] < m["train_loss_first"], m
    ref, _, _, new_ids, n_old = _extended_base(base)
    warm = load_file(str(next((tmp_path / "ckpt").glob("stage1-*")) / "warmup" / "final.safetensors"))["embed"]
    start = ref.get_input_embeddings().weight.detach()
    assert torch.equal(warm[:n_old], start[:n_old]) and not torch.equal(warm[new_ids], start[new_ids])
    # then everything trained: the final model differs from the warm-up beyond the embedding
    model = AutoModelForCausalLM.from_pretrained(out, use_safetensors=True)
    assert not torch.equal(model.get_input_embeddings().weight[:n_old], start[:n_old])
    assert not torch.equal(
        dict(model.named_parameters())["model.norm.weight"], dict(ref.named_parameters())["model.norm.weight"]
    )
