"""Presets: the tiny local demo, and the paper's settings for each Amazon category."""

from __future__ import annotations

from typing import Any

# MiniOneRec's data/amazon18_data_process.py as its README runs it (st 2017-10, ed 2018-11, 5-core): the
# <Cat>_5.json file, reviews from 2017-10-01 up to the first instant of 2018-11-01, the start moved back a
# year at a time while fewer than 3,000 items survive the 5-core (the released Office and Industrial
# files are named 2016-10-2018-11), repeated (user, item) reviews kept, its title rule, ids in order of
# first appearance.
_PAPER_DATA = {
    "source": "amazon2018",
    "five_core": True,
    "cache_dir": "/models/downloads",
    "k_core": 5,
    "max_history": 10,
    "time_window": {"start": "2017-10-01", "end": "2018-11-01"},
    "window_end_cut": "day_start",
    "window_widen_below_items": 3000,
    "window_earliest_start_year": 1996,
    "max_title_words": 20,
    "title_rule": "minionerec",
    "duplicate_meta": "last",
    "repeats": "keep",
    "id_order": "first_seen",
    "split": [0.8, 0.1, 0.1],
}
_PAPER = {
    # MiniOneRec's rq/text2emb: "<title>. <description>." through Qwen3-Embedding-4B in float16, masked mean
    # pooling, up to 2048 tokens, not normalised.
    "embed": {
        "model": "Qwen/Qwen3-Embedding-4B",
        "pooling": "mean",
        "fields": ["title", "description"],
        "text_template": "research",
        "max_length": 2048,
        "dtype": "float16",
        "normalize": False,
        "batch_size": 32,
    },
    # MiniOneRec's rq/rqvae.sh + rqvae.py (3 x 256 codes, encoder 2048-1024-512-256-128-64, latent 32, k-means
    # init, AdamW lr 1e-3 with 50 warm-up epochs, clip 1.0, batch 20,480, 10,000 epochs, the fewest-duplicate
    # checkpoint of every 50 epochs) and rq/generate_indices.py (Sinkhorn eps 0.003 on the last level, at most 20
    # rounds, remaining collisions kept). The project's collapse guards are off. Seed 2024, rqvae.py's.
    "sid": {
        "seed": 2024,
        "method": "rqvae",
        "levels": 3,
        "codebook_size": 256,
        "collision": "research_sinkhorn",
        "sinkhorn_epsilon": 0.003,
        "sinkhorn_iters": 50,
        "sinkhorn_rounds": 20,
        "collision_leftover": "keep",
        "nonfinite_embeddings": "zero",
        "rqvae": {
            "hidden_dims": [2048, 1024, 512, 256, 128, 64],
            "latent_dim": 32,
            "epochs": 10000,
            "lr": 1e-3,
            "lr_warmup_epochs": 50,
            "grad_clip": 1.0,
            "batch_size": 20480,
            "beta": 0.25,
            "quant_loss": "mean",
            "deep_commitment": False,
            "weight_init": "xavier_normal",
            "standardize": False,
            "kmeans_init": True,
            "kmeans_iters": 100,
            "warmup_epochs": 0,
            "reseed_every": 0,
            "balance": 0,
            "select_every": 50,
            "device": "auto",
        },
    },
    # The OpenAI-compatible teacher the Helm chart can deploy in the run's namespace (vLLM).
    "teacher": {
        "kind": "openai",
        "base_url": "http://sidreasoner-teacher:8000/v1",
        "model": "Qwen/Qwen3-32B",
        "concurrency": 64,
        "temperature": 0.7,
        "max_tokens": 1024,
        "cache_dir": "/models/teacher-cache",
    },
    "model": {"base": "Qwen/Qwen3-1.7B"},
    # The paper's Stage 1: full fine-tuning, lr 3e-4 with 20 warm-up steps then linear decay, 10 epochs, global
    # batch 1024 in random order, cutoff 1024, pure bf16 (weights loaded in bf16, bf16=True); the checkpoint with
    # the best next-SID loss on the whole valid split, stopping after 3 epochs without a better one. Seed 42 (its
    # script's --seed): the title-history instruction each row draws, the general-reasoning sample, the order.
    "stage1": {
        "seed": 42,
        "weights_dtype": "bfloat16",
        "lr": 3e-4,
        "epochs": 10,
        "global_batch_size": 1024,
        "per_device_batch_size": 8,
        "cutoff_len": 1024,
        "lr_scheduler": "linear",
        "warmup_steps": 20,
        "warmup_ratio": 0.0,
        "batching": "padded",
        "bf16": True,
        "finetune": "full",
        "save_steps": 100,
        "early_stopping_patience": 3,
        "valid_samples": 0,
        "logging_steps": 1,
        "gradient_checkpointing": True,
        "checkpoint_dir": "/models/checkpoints",
        # Its examples: cut from the left, <|im_end|> of non-thinking answers out of the loss, narratives
        # without an end token, SID tokens added in sorted-string order and their rows drawn around the
        # vocabulary's mean (transformers' mean_resizing),
        # and 60,000 sampled lines of general-reasoning data (instruction_file) up to 3,072 tokens each,
        # rendered in thinking mode.
        "truncation": "left",
        "loss_on_eos": "thinking",
        "narrative_end_token": False,
        "new_token_init": "mean_resizing",
        "sid_token_order": "lexicographic",
        "instruction_samples": 60000,
        "instruction_cutoff_len": 3072,
        "instruction_thinking": True,
    },
    # The paper's Stage 2: lr 1e-5 with 10 warm-up steps then linear decay, up to 5 epochs, global batch 1024,
    # cutoff 1024, on every reasoning path, pure bf16, seed 42 (its script's --seed); the checkpoint with the best
    # next-SID loss (no reasoning) on the whole valid split, patience 5.
    "stage2": {
        "seed": 42,
        "weights_dtype": "bfloat16",
        "lr": 1e-5,
        "epochs": 5,
        "global_batch_size": 1024,
        "per_device_batch_size": 8,
        "cutoff_len": 1024,
        "lr_scheduler": "linear",
        "warmup_steps": 10,
        "warmup_ratio": 0.0,
        "batching": "padded",
        "bf16": True,
        "finetune": "full",
        "save_steps": 100,
        "early_stopping_patience": 5,
        "valid_samples": 0,
        "select_on": "sid",
        "reasoning_holdout": 0,
        "logging_steps": 1,
        "gradient_checkpointing": True,
        "checkpoint_dir": "/models/checkpoints",
        # Cut from the left; <|im_end|> in the loss of the reasoning answers, out of it in the next-SID
        # validation examples.
        "truncation": "left",
        "loss_on_eos": "thinking",
    },
    # The paper's Stage 3 (verl GRPO) on 4 GPUs: rollout.n 16, lr 5e-7, KL loss 0.001 (low_var_kl), train batch
    # 256 prompts (micro-batches of 8 per GPU), max prompt/response 1024 tokens, 10 epochs over the narrated
    # samples, checkpoint every 100 steps, validation before training and every 50 steps; vLLM rollouts. Seed 1:
    # its verl shuffles the prompts with data.get("seed", 1), no seed being set.
    "stage3": {
        "seed": 1,
        "backend": "verl",
        "reward": "research",
        "num_generations": 16,
        "lr": 5e-7,
        "kl_beta": 0.001,
        "train_batch_size": 256,
        "micro_batch_size": 8,
        "max_prompt_length": 1024,
        "max_response_length": 1024,
        "temperature": 1.0,
        "epochs": 10,
        "save_steps": 100,
        "bf16": True,
        "gradient_checkpointing": True,
        "prompts": "narrated",
        "valid_samples": 0,
        "checkpoint_dir": "/models/checkpoints",
        "verl": {
            "n_gpus_per_node": 4,
            "gpu_memory_utilization": 0.8,
            "test_freq": 50,
            "val_before_train": True,
            "ref_param_offload": True,
        },
    },
    # On a cluster: pods, GPUs, and the chart's model-cache PVC (mounted at /models), which also
    # holds the checkpoints and caches that let a retried pod resume. Memory limits equal the requests
    # (a pod past them is killed, not its neighbours); a training pod's /dev/shm (RAM) counts against
    # its limit. Deadlines: the registry's per-step `timeout_s` (`timeout` here overrides it).
    "cluster": {
        "resources": {
            "download-data": {"cpu": "2", "memory": "8Gi", "memory_limit": "8Gi"},
            "preprocess": {"cpu": "2", "memory": "16Gi", "memory_limit": "16Gi"},
            "embed-items": {"cpu": "4", "memory": "32Gi", "memory_limit": "32Gi", "gpus": 1},
            "quantize-sids": {"cpu": "8", "memory": "16Gi", "memory_limit": "16Gi", "gpus": 1},
            "synthesize-corpus": {"cpu": "2", "memory": "8Gi", "memory_limit": "8Gi"},
            "evaluate-baselines": {"cpu": "2", "memory": "8Gi", "memory_limit": "8Gi"},
            "prepare-base-model": {"cpu": "4", "memory": "32Gi", "memory_limit": "32Gi"},
            "sft-stage1": {"cpu": "32", "memory": "256Gi", "memory_limit": "256Gi", "gpus": 8, "shm_size": "64Gi"},
            "evaluate-stage1": {"cpu": "8", "memory": "64Gi", "memory_limit": "64Gi", "gpus": 1},
            "sft-stage2": {"cpu": "32", "memory": "256Gi", "memory_limit": "256Gi", "gpus": 8, "shm_size": "64Gi"},
            "evaluate-stage2": {"cpu": "8", "memory": "64Gi", "memory_limit": "64Gi", "gpus": 1},
            "rl-stage3": {"cpu": "16", "memory": "128Gi", "memory_limit": "128Gi", "gpus": 4, "shm_size": "32Gi"},
            "merge-checkpoint": {"cpu": "8", "memory": "64Gi", "memory_limit": "64Gi"},
            "evaluate-stage3": {"cpu": "8", "memory": "64Gi", "memory_limit": "64Gi", "gpus": 1},
            "report": {"cpu": "1", "memory": "4Gi", "memory_limit": "4Gi"},
            # The evaluate pipeline (--pipeline evaluate): a model trained elsewhere on one GPU.
            "load-model": {"cpu": "4", "memory": "32Gi", "memory_limit": "32Gi"},
            "evaluate-model": {"cpu": "8", "memory": "64Gi", "memory_limit": "64Gi", "gpus": 1},
            "report-model": {"cpu": "1", "memory": "4Gi", "memory_limit": "4Gi"},
            "export-model": {"cpu": "2", "memory": "8Gi", "memory_limit": "8Gi"},
            # Talks to the Kubernetes API only; the model server runs in the predictor pod (cluster.serving).
            "deploy-model": {"cpu": "500m", "memory": "512Mi", "memory_limit": "512Mi"},
        }
    },
    # The paper's evaluation: 10 constrained beams, K in {1, 3, 5, 10} (none above the beam width), greedy
    # reasoning up to 1024 tokens closed as the research code closes it, beams ranked with the "\n" and
    # end-of-sequence after the SID scored. The non-thinking prompt keeps training's empty think block
    # (the research evaluation renders another one: eval.empty_think=research reproduces it).
    "eval": {
        "ks": [1, 3, 5, 10],
        "num_beams": 10,
        "ks_above_beams": "drop",
        "decoding": "beam",
        "score_suffix": True,
        "empty_think": "training",
        "modes": ["nonthink", "think"],
        "splits": ["test", "valid"],
        "batch_size": 16,
        "max_users": 0,
        "think_max_tokens": 1024,
        "think_sample": False,
        "think_close": "research",
    },
}

PRESETS: dict[str, dict[str, Any]] = {
    "demo": {
        # The demo's files plant dirt to be cleaned (exact-duplicate review lines, entity-laden titles), so it
        # keeps the earliest of repeated reviews, unescapes titles and orders ids by name, as its results had.
        "data": {
            "source": "demo",
            "category": "Demo",
            "k_core": 5,
            "max_history": 10,
            "title_rule": "unescape",
            "duplicate_meta": "first",
            "repeats": "earliest",
            "id_order": "sorted",
        },
        # One fit: about half the demo's items collide in every fit (a series' parts differ only by their
        # number), so restarts only pick among equally colliding fits, and the pick learned worse
        # (Stage 1 HR@10 0.534 against 0.654 for the first fit; benchmarks/README.md).
        "sid": {
            "method": "rkmeans",
            "levels": 3,
            "codebook_size": 32,
            "restarts": 1,
            "rqvae": {"hidden_dims": [256, 128], "latent_dim": 32, "epochs": 150},
        },
        "model": {
            "base": "tiny",
            "tiny": {
                "hidden_size": 64,
                "num_layers": 2,
                "num_heads": 4,
                "num_kv_heads": 2,
                "head_dim": 16,
                "intermediate_size": 192,
            },
        },
        # Sized for 2 CPU cores. The title-history-to-title task (long prompts, no SID) is off: the time goes to
        # Stage 2 and Stage 3, where the reasoning is learned.
        "stage1": {
            "lr": 5e-3,
            "epochs": 3,
            "global_batch_size": 32,
            "per_device_batch_size": 32,
            "cutoff_len": 256,
            "max_per_task": 1200,
            "valid_samples": 200,
            "hr_samples": 200,
            "save_steps": 100,
            "early_stopping_patience": 2,
            "warmup_ratio": 0.05,
            "tasks": {
                "sid_history_to_sid": 2.0,
                "item_narratives": 0.5,
                "history_narratives": 0.5,
                "title_history_to_title": 0.0,
                # No general-reasoning data comes with the demo: off explicitly (a weight without data is refused).
                "instructions": 0.0,
            },
        },
        # Enough reasoning paths for the tiny model to walk the teacher's deduction itself: with 400 thinking mode
        # wrote no reasoning; with 2,000 it named the user's latest installment a fifth of the time, and thinking
        # was below non-thinking; with 8,000 (two epochs, about 50 s) half the time, and thinking is ahead.
        "stage2": {
            "lr": 1e-3,
            "epochs": 2,
            "global_batch_size": 16,
            "per_device_batch_size": 16,
            "cutoff_len": 384,
            "max_samples": 8000,
            "valid_samples": 64,
            "reasoning_holdout": 64,
            "save_steps": 100,
            "early_stopping_patience": 1,
        },
        # Sized for 2 CPU cores: 150 GRPO steps on the tiny model, enough for the reward to rise clearly;
        # 8 completions of 2 prompts per step (groups of 4 at lr 1e-4 lowered thinking HR@10 on the valid
        # split); the teacher's reasoning and its SID fit in 96 tokens.
        "stage3": {
            "backend": "trl",
            "reward": "rule",
            "num_generations": 8,
            "lr": 5e-5,
            "kl_beta": 0.001,
            "train_batch_size": 2,
            "micro_batch_size": 16,
            "max_prompt_length": 384,
            "max_response_length": 96,
            "temperature": 1.0,
            "max_steps": 150,
            "max_samples": 300,
            "valid_samples": 32,
            "save_steps": 50,
        },
        # Sized for 2 CPU cores: 500 test users, short reasoning.
        # The non-thinking question is the one Stage 1 trains on: the tiny model learns from a few
        # thousand examples and does not carry a question it never saw over to the answer.
        "eval": {
            "prompt_wording": "training",
            "ks": [1, 3, 5, 10],
            "num_beams": 10,
            "modes": ["nonthink", "think"],
            "splits": ["test"],
            "batch_size": 32,
            "max_users": 500,
            "think_max_tokens": 96,
            "report_samples": 5,
        },
    },
    "office": {**_PAPER, "data": {**_PAPER_DATA, "category": "Office_Products"}},
    "industrial": {**_PAPER, "data": {**_PAPER_DATA, "category": "Industrial_and_Scientific"}},
    "games": {**_PAPER, "data": {**_PAPER_DATA, "category": "Video_Games"}},
}
# A paper preset's pods carry its name (cost attribution), besides the step and category labels.
for _name in ("office", "industrial", "games"):
    PRESETS[_name]["cluster"] = {**_PAPER["cluster"], "labels": {"sidreasoner.io/preset": _name}}
del _name

# With data.format=research the bundle's own SIDs and corpus are used (no embedding, no quantizer,
# no teacher), and its general-reasoning chats in Stage 1 (the demo's opt-out undone); a `--set` of any of
# these keys still wins.
RESEARCH_BUNDLE: dict[str, Any] = {
    "embed": {"model": "none"},
    "sid": {"method": "import"},
    "teacher": {"kind": "import"},
    "stage1": {"tasks": {"instructions": 1.0}},
}
