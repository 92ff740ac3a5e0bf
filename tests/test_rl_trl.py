"""Stage 3 `trl` backend: a tiny end-to-end GRPO run, resume, and the not-built verl backend."""

from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import AutoModelForCausalLM

from sidreasoner import config
from sidreasoner.rl import trl_backend
from train_helpers import CODES, make_artifacts
from eval_helpers import build_tiny_model


def _cfg(tmp_path, *extra):
    return config.load("demo", [
        "stage3.backend=trl", "stage3.num_generations=2", "stage3.train_batch_size=2", "stage3.micro_batch_size=4",
        "stage3.max_steps=2", "stage3.max_response_length=12", "stage3.save_steps=1", "stage3.lr=1e-3",
        f"stage3.checkpoint_dir={tmp_path / 'ckpt'}", *extra])


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rl")
    art = make_artifacts(tmp)
    build_tiny_model(tmp / "stage2", np.array(CODES), codebook=4)
    cfg = _cfg(tmp)
    metrics = trl_backend.rl_stage3(cfg, tmp / "stage2", art["dataset"], art["sid_index"], tmp / "out")
    return tmp, art, cfg, metrics


def test_grpo_runs_and_writes_a_plain_model(run):
    tmp, _, _, m = run
    out = tmp / "out"
    assert m["steps"] == 2 and m["resumed_from_step"] == 0
    for key in ("reward_first", "reward_last", "kl_mean", "completion_length_mean", "samples_per_s", "wall_seconds"):
        assert np.isfinite(m[key]), key
    info = json.loads((out / "training.json").read_text())
    assert [p["step"] for p in info["per_step"]] == [1, 2]
    assert all(0.0 <= p["reward"] <= 1.1 and p["kl"] is not None for p in info["per_step"])
    assert info["config"]["stage3"]["num_generations"] == 2 and info["gradient_accumulation_steps"] == 1
    assert (out / "model.safetensors").exists() and (out / "rl_data" / "train.parquet").exists()
    html = (out / "reward_curve.html").read_text()
    assert "<svg" in html and "<script" not in html and "mean reward" in html
    model = AutoModelForCausalLM.from_pretrained(out)
    assert model.config.vocab_size >= 300
    assert list((tmp / "ckpt").glob("stage3-*/checkpoint-2"))


def test_retry_resumes_from_checkpoint(run):
    tmp, art, cfg, _ = run
    m = trl_backend.rl_stage3(cfg, tmp / "stage2", art["dataset"], art["sid_index"], tmp / "out2")
    assert m["resumed_from_step"] == 2 and m["steps"] == 2
    assert (tmp / "out2" / "model.safetensors").exists()


def test_verl_backend_not_built(tmp_path):
    cfg = _cfg(tmp_path, "stage3.backend=verl")
    with pytest.raises(trl_backend.BackendNotBuiltError, match="not built yet"):
        trl_backend.rl_stage3(cfg, tmp_path, tmp_path, tmp_path, tmp_path / "out")


def test_config_presets():
    demo = config.load("demo").stage3
    assert demo.backend == "trl" and demo.reward == "rule"
    paper = config.load("office").stage3
    assert (paper.num_generations, paper.lr, paper.kl_beta, paper.train_batch_size, paper.max_prompt_length,
            paper.max_response_length, paper.save_steps) == (16, 5e-7, 0.001, 256, 1024, 1024, 100)
    with pytest.raises(config.ConfigError, match="micro_batch_size"):
        config.load("demo", ["stage3.micro_batch_size=3"])
