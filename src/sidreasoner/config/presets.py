"""Presets: the tiny local demo, and the paper's settings for each Amazon category."""

from __future__ import annotations

from typing import Any

_PAPER_DATA = {
    "source": "amazon2018",
    "cache_dir": "/models/downloads",
    "k_core": 5,
    "max_history": 10,
    "time_window": {"start": "2016-10-01", "end": "2018-11-30"},
}
_PAPER = {
    "embed": {"model": "Qwen/Qwen3-Embedding-4B", "pooling": "mean", "batch_size": 32, "max_length": 512},
    "sid": {"method": "rqvae", "levels": 3, "codebook_size": 256},
    # The OpenAI-compatible teacher the Helm chart can deploy in the run's namespace (vLLM).
    "teacher": {"kind": "openai", "base_url": "http://sidreasoner-teacher:8000/v1", "model": "Qwen/Qwen3-32B",
                "concurrency": 64, "temperature": 0.7, "max_tokens": 1024, "cache_dir": "/models/teacher-cache"},
    "model": {"base": "Qwen/Qwen3-1.7B"},
    # The paper's Stage 1: full fine-tuning, lr 3e-4, 10 epochs, global batch 1024, cutoff 1024, bf16.
    "stage1": {"lr": 3e-4, "epochs": 10, "global_batch_size": 1024, "per_device_batch_size": 8, "cutoff_len": 1024,
               "bf16": True, "finetune": "full", "save_steps": 100, "early_stopping_patience": 2, "logging_steps": 10,
               "gradient_checkpointing": True, "checkpoint_dir": "/models/checkpoints"},
    # The paper's Stage 2: lr 1e-5, up to 5 epochs (early stopping on held-out reasoning paths).
    "stage2": {"lr": 1e-5, "epochs": 5, "global_batch_size": 128, "per_device_batch_size": 4, "cutoff_len": 2048,
               "bf16": True, "finetune": "full", "save_steps": 100, "early_stopping_patience": 1, "logging_steps": 10,
               "gradient_checkpointing": True, "checkpoint_dir": "/models/checkpoints"},
    # The paper's Stage 3 (verl GRPO): rollout.n 16, lr 5e-7, KL loss 0.001 (low_var_kl), train batch 256
    # prompts, max prompt/response 1024 tokens, checkpoint every 100 steps; vLLM rollouts on the step's GPU.
    "stage3": {"backend": "verl", "reward": "rule", "num_generations": 16, "lr": 5e-7, "kl_beta": 0.001,
               "train_batch_size": 256, "micro_batch_size": 16, "max_prompt_length": 1024, "max_response_length": 1024,
               "temperature": 1.0, "epochs": 1, "save_steps": 100, "bf16": True, "gradient_checkpointing": True,
               "checkpoint_dir": "/models/checkpoints"},
    # On a cluster: pods, GPUs, and the chart's model-cache PVC (mounted at /models), which also
    # holds the checkpoints and caches that let a retried pod resume.
    "cluster": {"resources": {
        "download-data": {"cpu": "2", "memory": "8Gi"},
        "preprocess": {"cpu": "2", "memory": "16Gi"},
        "embed-items": {"cpu": "4", "memory": "32Gi", "gpus": 1},
        "quantize-sids": {"cpu": "8", "memory": "16Gi"},
        "synthesize-corpus": {"cpu": "2", "memory": "8Gi"},
        "evaluate-baselines": {"cpu": "2", "memory": "8Gi"},
        "prepare-base-model": {"cpu": "4", "memory": "32Gi"},
        "sft-stage1": {"cpu": "32", "memory": "256Gi", "gpus": 8},
        "evaluate-stage1": {"cpu": "8", "memory": "64Gi", "gpus": 1},
        "sft-stage2": {"cpu": "32", "memory": "256Gi", "gpus": 8},
        "evaluate-stage2": {"cpu": "8", "memory": "64Gi", "gpus": 1},
        "rl-stage3": {"cpu": "16", "memory": "128Gi", "gpus": 1},
        "merge-checkpoint": {"cpu": "8", "memory": "64Gi"},
        "evaluate-stage3": {"cpu": "8", "memory": "64Gi", "gpus": 1},
        "report": {"cpu": "1", "memory": "4Gi"},
        "export-model": {"cpu": "2", "memory": "8Gi"},
    }},
    # The paper's evaluation: 10 constrained beams, K in {1, 3, 5, 10}, reasoning up to 1024 tokens.
    "eval": {"ks": [1, 3, 5, 10], "num_beams": 10, "decoding": "beam", "modes": ["nonthink", "think"],
             "splits": ["test", "valid"], "batch_size": 16, "think_max_tokens": 1024},
}

PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        "data": {"source": "demo", "category": "Demo", "k_core": 5, "max_history": 10},
        # One fit: about half the demo's items collide in every fit (a series' parts differ only by their
        # number), so restarts only pick among equally colliding fits, and the pick learned worse
        # (Stage 1 HR@10 0.534 against 0.654 for the first fit; benchmarks/README.md).
        "sid": {"method": "rkmeans", "levels": 3, "codebook_size": 32, "restarts": 1,
                "rqvae": {"hidden_dims": [256, 128], "latent_dim": 32, "epochs": 150}},
        "model": {"base": "tiny", "tiny": {"hidden_size": 64, "num_layers": 2, "num_heads": 4, "num_kv_heads": 2,
                                            "head_dim": 16, "intermediate_size": 192}},
        # Sized so both stages train on 2 CPU cores in about a minute each.
        "stage1": {"lr": 5e-3, "epochs": 3, "global_batch_size": 32, "per_device_batch_size": 32, "cutoff_len": 256,
                   "max_per_task": 1200, "valid_samples": 200, "hr_samples": 200, "save_steps": 100,
                   "early_stopping_patience": 2, "warmup_ratio": 0.05,
                   "tasks": {"sid_history_to_sid": 2.0, "item_narratives": 0.5, "history_narratives": 0.5}},
        "stage2": {"lr": 1e-3, "epochs": 2, "global_batch_size": 16, "per_device_batch_size": 16, "cutoff_len": 384,
                   "max_samples": 400, "valid_samples": 64, "save_steps": 100, "early_stopping_patience": 1},
        # Sized for 2 CPU cores: about a minute of GRPO on the tiny model.
        "stage3": {"backend": "trl", "reward": "rule", "num_generations": 4, "lr": 1e-4, "kl_beta": 0.001,
                   "train_batch_size": 4, "micro_batch_size": 16, "max_prompt_length": 384, "max_response_length": 64,
                   "temperature": 1.0, "max_steps": 12, "max_samples": 48, "valid_samples": 32, "save_steps": 6},
        # Sized for 2 CPU cores: 500 test users, short reasoning.
        "eval": {"ks": [1, 3, 5, 10], "num_beams": 10, "modes": ["nonthink", "think"], "splits": ["test"],
                 "batch_size": 32, "max_users": 500, "think_max_tokens": 96, "report_samples": 5},
    },
    "office": {**_PAPER, "data": {**_PAPER_DATA, "category": "Office_Products"}},
    "industrial": {**_PAPER, "data": {**_PAPER_DATA, "category": "Industrial_and_Scientific"}},
    "games": {**_PAPER, "data": {**_PAPER_DATA, "category": "Video_Games"}},
}
