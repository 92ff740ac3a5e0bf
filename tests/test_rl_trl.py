"""Stage 3 `trl` backend: a tiny end-to-end GRPO run into a raw checkpoint (full and LoRA) that
merge-checkpoint turns into a plain model, resume, and the verl backend's refusal on a CPU-only machine."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from sidreasoner import config
from sidreasoner.rl import stage3
from sidreasoner.rl.checkpoint import read_manifest
from sidreasoner.rl.merge import merge_checkpoint


def _cfg(tmp_path, *extra):
    return config.load("demo", [
        "stage3.backend=trl", "stage3.num_generations=2", "stage3.train_batch_size=2", "stage3.micro_batch_size=4",
        "stage3.max_steps=2", "stage3.max_response_length=12", "stage3.save_steps=1", "stage3.lr=1e-3",
        f"stage3.checkpoint_dir={tmp_path / 'ckpt'}", *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_artifacts, tiny_sid_model):
    """The shared tiny artifacts and Stage-2-like model (read only); this run's outputs go to `tmp`."""
    tmp = tmp_path_factory.mktemp("rl")
    art = {**tiny_artifacts, "stage2": tiny_sid_model["dir"]}
    cfg = _cfg(tmp)
    metrics = stage3.rl_stage3(cfg, art["stage2"], art["dataset"], art["sid_index"], art["corpus"], tmp / "out")
    return tmp, art, cfg, metrics


@pytest.mark.slow  # GRPO training
def test_grpo_runs_and_writes_a_raw_checkpoint(run):
    tmp, _, _, m = run
    out = tmp / "out"
    assert m["steps"] == 2 and m["resumed_from_step"] == 0
    for key in ("reward_first", "reward_last", "kl_mean", "completion_length_mean", "samples_per_s", "wall_seconds"):
        assert np.isfinite(m[key]), key
    info = json.loads((out / "training.json").read_text())
    assert [p["step"] for p in info["per_step"]] == [1, 2]
    assert all(0.0 <= p["reward"] <= 1.1 and p["kl"] is not None for p in info["per_step"])
    assert info["config"]["stage3"]["num_generations"] == 2 and info["gradient_accumulation_steps"] == 1
    assert read_manifest(out) == {"format": "hf", "path": "model", "backend": "trl", "global_step": 2}
    assert (out / "model" / "model.safetensors").exists() and (out / "rl_data" / "train.parquet").exists()
    html = (out / "reward_curve.html").read_text()
    assert "<svg" in html and "<script" not in html and "mean reward" in html
    model = AutoModelForCausalLM.from_pretrained(out / "model")
    assert model.config.vocab_size >= 300
    assert list((tmp / "ckpt").glob("stage3-*/checkpoint-2"))


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
    assert read_manifest(tmp_path / "out")["format"] == "peft_lora"
    adapter = tmp_path / "out" / "adapter"
    assert (adapter / "adapter_config.json").exists() and not (tmp_path / "out" / "model").exists()
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 4
    merged = merge_checkpoint(cfg, tmp_path / "out", art["stage2"], tmp_path / "merged")
    assert merged["format"] == 1 and merged["max_abs_diff"] < 1e-3
    assert not list((tmp_path / "merged").glob("adapter*"))


@pytest.mark.slow  # GRPO training
def test_retry_resumes_from_checkpoint(run):
    tmp, art, cfg, _ = run
    m = stage3.rl_stage3(cfg, art["stage2"], art["dataset"], art["sid_index"], art["corpus"], tmp / "out2")
    assert m["resumed_from_step"] == 2 and m["steps"] == 2
    assert (tmp / "out2" / "model" / "model.safetensors").exists()


@pytest.mark.slow  # GRPO training
def test_a_new_generation_trains_afresh(run):
    """A re-execution (`--rerun-from rl-stage3`: a new generation) with the same inputs and settings
    does not resume the finished checkpoint of the earlier one."""
    tmp, art, _, _ = run
    cfg = _cfg(tmp, "generations.rl-stage3=1")
    m = stage3.rl_stage3(cfg, art["stage2"], art["dataset"], art["sid_index"], art["corpus"], tmp / "out3")
    assert m["resumed_from_step"] == 0 and m["steps"] == 2


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
    assert (paper.num_generations, paper.lr, paper.kl_beta, paper.train_batch_size, paper.max_prompt_length,
            paper.max_response_length, paper.save_steps, paper.epochs, paper.micro_batch_size) == (
        16, 5e-7, 0.001, 256, 1024, 1024, 100, 10, 8)
    with pytest.raises(config.ConfigError, match="micro_batch_size"):
        config.load("demo", ["stage3.micro_batch_size=3"])
    assert demo.finetune == "full" and config.load("demo", ["stage3.finetune=lora"]).stage3.finetune == "lora"
    with pytest.raises(config.ConfigError, match="stage3.finetune"):
        config.load("demo", ["stage3.finetune=qlora"])
