"""Stage 3 `trl` backend: a tiny end-to-end GRPO run into a raw checkpoint (full and LoRA) that
merge-checkpoint turns into a plain model, resume, and the verl backend's refusal on a CPU-only machine.

The Stage-2-like policy is hand-built so that its rollouts are answers: a one-layer model whose attention
and MLP outputs are zero, so the next token depends on the current one only, with tied embeddings chosen
to write `<a_?><b_?><c_?><|im_end|>` (each code uniform). Every training prompt's target is item 4, so
GRPO has a reward to climb."""

from __future__ import annotations

import itertools
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from sidreasoner import config
from sidreasoner.artifacts import Stage3Checkpoint
from sidreasoner.model import prompts
from sidreasoner.rl import reward as R
from sidreasoner.rl import stage3
from sidreasoner.rl.merge import merge_checkpoint

TARGET = "<a_1><b_0><c_2>"  # item 4


def _cfg(tmp_path, *extra):
    return config.load(
        "demo",
        [
            "stage3.backend=trl",
            "stage3.num_generations=8",
            "stage3.train_batch_size=4",
            "stage3.micro_batch_size=32",
            "stage3.max_steps=3",
            "stage3.max_response_length=8",
            "stage3.save_steps=3",
            "stage3.lr=1e-2",
            f"stage3.checkpoint_dir={tmp_path / 'ckpt'}",
            *extra,
        ],
    )


def _chain_policy(model, tok):
    """Tied embeddings E and final-norm signs w with E w E^T = a chain "\n" -> <a_*> -> <b_*> -> <c_*> ->
    <|im_end|> whose links grow along it (1, 3, 9, 27; -1 on the diagonal), so each token's best next
    class is the chain's next; every other token has a zero embedding."""
    ids = tok.convert_tokens_to_ids
    classes = [[ids("\u010a")]] + [[ids(f"<{lvl}_{i}>") for i in range(4)] for lvl in "abc"] + [[tok.eos_token_id]]
    m = np.diag([-1.0] * 5)
    for i, x in enumerate([1.0, 3.0, 9.0, 27.0]):
        m[i, i + 1] = m[i + 1, i] = x
    lam, q = np.linalg.eigh(m)
    emb = model.get_input_embeddings().weight
    with torch.no_grad():
        emb.zero_()
        for rows, vec in zip(classes, torch.tensor(q * np.sqrt(4 * np.abs(lam)), dtype=emb.dtype), strict=True):
            emb[rows, :5] = vec
        model.model.norm.weight.zero_()
        model.model.norm.weight[:5] = torch.tensor(np.sign(lam), dtype=emb.dtype)
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_artifacts, build_tiny_model):
    """The chain policy as the Stage 2 model, the tiny artifacts with every train target item 4, and a
    3-step GRPO run on them into `tmp / "out"`."""
    tmp = tmp_path_factory.mktemp("rl")
    model, tok = build_tiny_model(tmp / "stage2", np.array(tiny_artifacts["codes"]), 4, layers=1)
    _chain_policy(model, tok)
    model.save_pretrained(tmp / "stage2")
    shutil.copytree(tiny_artifacts["dataset"], tmp / "dataset")
    pd.DataFrame(
        {
            "user_id": [0, 1, 2, 3],
            "history_item_ids": [[0], [3], [1, 2], [5]],
            "item_id": [4, 4, 4, 4],
            "timestamp": [1, 2, 3, 4],
        }
    ).to_parquet(tmp / "dataset" / "train.parquet")
    art = {**tiny_artifacts, "stage2": tmp / "stage2", "dataset": tmp / "dataset"}
    cfg = _cfg(tmp)
    metrics = stage3.rl_stage3(cfg, art["stage2"], art["dataset"], art["sid_index"], art["corpus"], tmp / "out")
    return tmp, art, cfg, metrics


def _expected_reward(model_dir, history, catalogue) -> float:
    """The policy's exact expected rule reward on one training prompt: every 3-level SID followed by
    <|im_end|>, weighed by its probability (no other completion scores)."""
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    tok = AutoTokenizer.from_pretrained(model_dir)
    sids = [f"<a_{a}><b_{b}><c_{c}>" for a, b, c in itertools.product(range(4), repeat=3)]
    prompt = tok(
        prompts.render_chat_prompt(tok, prompts.rl_messages(history), thinking=True), add_special_tokens=False
    )["input_ids"]
    ids = torch.tensor([prompt + tok(s, add_special_tokens=False)["input_ids"] + [tok.eos_token_id] for s in sids])
    with torch.no_grad():
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)
    n = len(prompt)
    seq = sum(logp[:, n - 1 + j].gather(1, ids[:, n + j, None]).squeeze(1) for j in range(4))
    rewards = torch.tensor([R.compute_score("s", s, TARGET, kind="rule", catalogue=catalogue)["score"] for s in sids])
    return float((seq.exp() * rewards).sum())


def test_grpo_moves_the_policy_toward_the_reward(run):
    tmp, art, _, m = run
    info = json.loads((tmp / "out" / "training.json").read_text())
    assert [p["completion_length"] for p in info["per_step"]] == [4.0, 4.0, 4.0]  # answers, not cut off
    rewards = [p["reward"] for p in info["per_step"]]
    assert rewards[-1] > rewards[0] + 0.05, rewards
    before, after = (
        load_file(art["stage2"] / "model.safetensors"),
        load_file(tmp / "out" / "model" / "model.safetensors"),
    )
    assert any(not torch.equal(before[n], after[n]) for n in before)
    cat = R.load_catalogue(art["sid_index"])
    history = ["<a_0><b_1><c_2>"]
    assert _expected_reward(tmp / "out" / "model", history, cat) > _expected_reward(art["stage2"], history, cat) + 0.03


@pytest.mark.slow  # GRPO training
def test_grpo_runs_and_writes_a_raw_checkpoint(run):
    tmp, _, _, m = run
    out = tmp / "out"
    assert m["steps"] == 3 and m["resumed_from_step"] == 0
    for key in ("reward_first", "reward_last", "kl_mean", "completion_length_mean", "samples_per_s", "wall_seconds"):
        assert np.isfinite(m[key]), key
    info = json.loads((out / "training.json").read_text())
    assert [p["step"] for p in info["per_step"]] == [1, 2, 3]
    assert all(0.0 <= p["reward"] <= 1.1 and p["kl"] is not None for p in info["per_step"])
    assert info["config"]["stage3"]["num_generations"] == 8 and info["gradient_accumulation_steps"] == 1
    assert Stage3Checkpoint(out).manifest() == {"format": "hf", "path": "model", "backend": "trl", "global_step": 3}
    assert (out / "model" / "model.safetensors").exists() and (out / "rl_data" / "train.parquet").exists()
    html = (out / "reward_curve.html").read_text()
    assert "<svg" in html and "<script" not in html and "mean reward" in html
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.vocab_size >= 300
    assert list((tmp / "ckpt").glob("stage3-*/checkpoint-3"))


@pytest.mark.slow  # GRPO training
def test_merge_checkpoint_turns_it_into_a_plain_model(run):
    tmp, art, cfg, _ = run
    m = merge_checkpoint(cfg, tmp / "out", art["stage2"], tmp / "merged")
    assert m["format"] == 0 and m["max_abs_diff"] == 0.0 and m["tied_embeddings"] == 1
    merged = tmp / "merged"
    assert (merged / "model.safetensors").exists() and (merged / "training.json").exists()
    assert (merged / "reward_curve.html").exists() and (merged / "rl_data" / "valid.parquet").exists()
    assert json.loads((merged / "merge.json").read_text())["dtype"] == "float32"


@pytest.mark.slow  # GRPO training
def test_lora_writes_an_adapter_that_merges_onto_stage2(run, tmp_path):
    tmp, art, _, _ = run
    cfg = _cfg(tmp_path, "stage3.finetune=lora", "stage3.lora_r=4", "stage3.lora_alpha=8", "stage3.max_steps=1")
    m = stage3.rl_stage3(cfg, art["stage2"], art["dataset"], art["sid_index"], art["corpus"], tmp_path / "out")
    assert m["steps"] == 1
    assert Stage3Checkpoint(tmp_path / "out").manifest()["format"] == "peft_lora"
    adapter = tmp_path / "out" / "adapter"
    assert (adapter / "adapter_config.json").exists() and not (tmp_path / "out" / "model").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    lora_b = [t for n, t in load_file(adapter / "adapter_model.safetensors").items() if "lora_B" in n]
    assert lora_b and max(t.abs().max().item() for t in lora_b) > 1e-3  # trained, not the zero init
    merged = merge_checkpoint(cfg, tmp_path / "out", art["stage2"], tmp_path / "merged")
    assert merged["format"] == 1 and merged["max_abs_diff"] < 1e-3
    before, after = load_file(art["stage2"] / "model.safetensors"), load_file(tmp_path / "merged" / "model.safetensors")
    moved = [n for n in before if n.endswith("o_proj.weight") and not torch.equal(before[n], after[n])]
    assert moved  # the adapter is in the merged weights
    assert not list((tmp_path / "merged").glob("adapter*"))


@pytest.mark.slow  # GRPO training
def test_retry_resumes_from_checkpoint(run):
    tmp, art, cfg, _ = run
    m = stage3.rl_stage3(cfg, art["stage2"], art["dataset"], art["sid_index"], art["corpus"], tmp / "out2")
    assert m["resumed_from_step"] == 3 and m["steps"] == 3
    assert (tmp / "out2" / "model" / "model.safetensors").exists()


@pytest.mark.slow  # GRPO training
def test_a_new_generation_trains_afresh(run):
    """A re-execution (`--rerun-from rl-stage3`: a new generation) with the same inputs and settings
    does not resume the finished checkpoint of the earlier one."""
    tmp, art, _, _ = run
    cfg = _cfg(tmp, "generations.rl-stage3=1")
    m = stage3.rl_stage3(cfg, art["stage2"], art["dataset"], art["sid_index"], art["corpus"], tmp / "out3")
    assert m["resumed_from_step"] == 0 and m["steps"] == 3


def test_verl_backend_refuses_without_gpu(tmp_path):
    """backend=verl dispatches to the verl backend, which on a CPU-only machine stops before writing anything."""
    import torch

    from sidreasoner.rl.verl_backend import GPURequiredError

    if torch.cuda.is_available():
        pytest.skip("a CUDA GPU is visible: verl would train here")
    cfg = _cfg(tmp_path, "stage3.backend=verl")
    with pytest.raises(GPURequiredError, match="cannot run on CPU.*stage3.backend=trl"):
        stage3.rl_stage3(cfg, tmp_path, tmp_path, tmp_path, tmp_path, tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_config_presets():
    demo = config.load("demo").stage3
    assert demo.backend == "trl" and demo.reward == "rule"
    paper = config.load("office").stage3
    assert (
        paper.num_generations,
        paper.lr,
        paper.kl_beta,
        paper.train_batch_size,
        paper.max_prompt_length,
        paper.max_response_length,
        paper.save_steps,
        paper.epochs,
        paper.micro_batch_size,
    ) == (16, 5e-7, 0.001, 256, 1024, 1024, 100, 10, 8)
    with pytest.raises(config.ConfigError, match="micro_batch_size"):
        config.load("demo", ["stage3.micro_batch_size=3"])
    assert demo.finetune == "full" and config.load("demo", ["stage3.finetune=lora"]).stage3.finetune == "lora"
    with pytest.raises(config.ConfigError, match="stage3.finetune"):
        config.load("demo", ["stage3.finetune=qlora"])
