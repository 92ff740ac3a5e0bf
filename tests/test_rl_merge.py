"""merge-checkpoint: a real 2-process FSDP2 checkpoint written by verl's FSDPCheckpointManager (gloo on
loopback, no Ray) merged through verl's own merger; a peft LoRA adapter folded into the Stage 2 model;
an hf round trip; and bad inputs that fail clearly and leave no output behind."""

from __future__ import annotations

import json
import os
import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from sidreasoner import config
from sidreasoner.artifacts import Stage3Checkpoint
from sidreasoner.model.loading import save_model
from sidreasoner.rl.merge import merge_checkpoint

PROMPT = "The user bought these items in order"
LORA = {"r": 4, "lora_alpha": 8, "target_modules": ["q_proj", "v_proj", "down_proj"]}


@pytest.fixture(scope="module")
def stage2(tiny_sid_model) -> Path:
    """A tiny Qwen3 with tied embeddings and SID added tokens: the Stage 2 model."""
    return tiny_sid_model["dir"]


@pytest.fixture(scope="module")
def policy(stage2, tmp_path_factory) -> Path:
    """The 'trained' policy: the Stage 2 model with seeded noise on every weight, so a merge that took
    weights from the Stage 2 model instead of the shards would show."""
    model = AutoModelForCausalLM.from_pretrained(stage2, dtype=torch.float32)
    g = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.02)
    out = tmp_path_factory.mktemp("policy") / "model"
    save_model(model, AutoTokenizer.from_pretrained(stage2), out)
    return out


def _cfg():
    return config.load("demo")


def _write_fsdp_checkpoint(rank: int, world: int, port: int, policy_dir: str, actors: dict[str, str]) -> None:
    """One rank of a verl-style FSDP2 actor: the model sharded with fully_shard the way verl's FSDP
    engine does (verl's apply_fsdp2, bf16 compute / fp32 params), AdamW, a scheduler, and
    FSDPCheckpointManager.save_checkpoint. `actors`: "full" (also saves verl's hf_model) and "lora"
    (a peft LoRA model, as verl's LoRA actor)."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        GLOO_SOCKET_IFNAME="lo",
    )
    torch.set_num_threads(1)
    import torch.distributed as dist
    from peft import LoraConfig, get_peft_model
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy
    from verl.utils.checkpoint.fsdp_checkpoint_manager import FSDPCheckpointManager
    from verl.utils.fsdp_utils import apply_fsdp2

    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        mesh = init_device_mesh("cpu", (world,), mesh_dim_names=["fsdp"])
        tok = AutoTokenizer.from_pretrained(policy_dir)
        for kind, actor_dir in actors.items():
            model = AutoModelForCausalLM.from_pretrained(policy_dir, dtype=torch.float32)
            if kind == "lora":
                torch.manual_seed(3)  # same adapter on every rank; random B so the adapter matters
                model = get_peft_model(model, LoraConfig(**LORA, init_lora_weights=False, task_type="CAUSAL_LM"))
            mp_policy = MixedPrecisionPolicy(
                param_dtype=torch.bfloat16, reduce_dtype=torch.float32, cast_forward_inputs=True
            )
            apply_fsdp2(
                model, {"mesh": mesh, "mp_policy": mp_policy, "offload_policy": None, "reshard_after_forward": True}, {}
            )
            optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
            scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
            contents = ["model", "optimizer", "extra"] + (["hf_model"] if kind == "full" else [])
            manager = FSDPCheckpointManager(
                model=model,
                optimizer=optimizer,
                lr_scheduler=scheduler,
                processing_class=tok,
                checkpoint_config={"save_contents": contents, "load_contents": contents},
            )
            manager.save_checkpoint(local_path=actor_dir, global_step=1)
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def verl_checkpoints(policy, tmp_path_factory) -> dict[str, Path]:
    """rl-stage3 verl output folders (manifest + actor/ + the RL extras), written by 2 gloo processes
    (about 10 s: the tests that use it are marked slow)."""
    import torch.multiprocessing as mp

    root = tmp_path_factory.mktemp("verl")
    folders = {kind: root / kind for kind in ("full", "lora")}
    mp.spawn(
        _write_fsdp_checkpoint,
        nprocs=2,
        join=True,
        args=(2, _free_port(), str(policy), {k: str(f / "actor") for k, f in folders.items()}),
    )
    for folder in folders.values():
        (folder / "training.json").write_text(json.dumps({"stage": "stage3", "backend": "verl"}))
        (folder / "reward_curve.html").write_text("<svg></svg>")
        (folder / "rl_data").mkdir()
        (folder / "rl_data" / "train.parquet").write_bytes(b"PAR1")
        Stage3Checkpoint(folder).write_manifest("verl_fsdp", "actor", backend="verl", global_step=1)
    return folders


def _greedy(model, tok, n: int = 8) -> list[int]:
    ids = tok(PROMPT, return_tensors="pt", add_special_tokens=False)
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=n, min_new_tokens=n, do_sample=False)
    return out[0].tolist()


def _no_temp_folders(parent: Path) -> None:
    assert not [p.name for p in parent.iterdir() if p.name.startswith(".")], "temporary folders left behind"


# --- (a) verl FSDP --------------------------------------------------------------------------------------


@pytest.mark.slow  # 2-process FSDP checkpoint (verl_checkpoints)
def test_verl_fsdp_checkpoint_merges_to_the_unsharded_weights(verl_checkpoints, policy, stage2, tmp_path):
    ckpt = verl_checkpoints["full"]
    assert sorted(p.name for p in (ckpt / "actor").glob("model_world_size_*")) == [
        "model_world_size_2_rank_0.pt",
        "model_world_size_2_rank_1.pt",
    ]
    metrics = merge_checkpoint(_cfg(), ckpt, stage2, tmp_path / "out")
    out = tmp_path / "out"

    # Tensor for tensor: the unsharded policy cast to bf16 (the merger's dtype), exactly.
    original = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    want = {k: v.to(torch.bfloat16) for k, v in original.state_dict().items()}
    stored = load_file(out / "model.safetensors")
    assert "lm_head.weight" not in stored  # tied: one copy, under embed_tokens
    assert set(stored) == set(want) - {"lm_head.weight"}
    for key, tensor in stored.items():
        assert tensor.dtype == torch.bfloat16 and torch.equal(tensor, want[key]), key

    # Reloads with nothing newly initialised, lm_head tied, and generates like the original in bf16.
    merged, info = AutoModelForCausalLM.from_pretrained(out, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert merged.lm_head.weight is merged.model.embed_tokens.weight
    tok = AutoTokenizer.from_pretrained(out)
    assert _greedy(merged, tok) == _greedy(original.to(torch.bfloat16), tok)

    # The SID tokens and chat template survive; the RL extras are carried over.
    stage2_tok = AutoTokenizer.from_pretrained(stage2)
    assert tok.get_added_vocab() == stage2_tok.get_added_vocab() and tok.chat_template == stage2_tok.chat_template
    assert (out / "training.json").exists() and (out / "reward_curve.html").exists()
    assert (out / "rl_data" / "train.parquet").exists()
    record = json.loads((out / "merge.json").read_text())
    assert record["format"] == "verl_fsdp" and record["dtype"] == "bfloat16" and record["tied"] is True
    assert record["world_size"] == 2 and record["tokenizer_from"].endswith("huggingface")
    # verl also saved a full model (save_contents hf_model): the merge reproduces its logits exactly.
    assert metrics["max_abs_diff"] == 0.0 and metrics["format"] == 2 and metrics["dtype_bits"] == 16
    assert metrics["parameters"] == sum(p.numel() for p in original.parameters())
    _no_temp_folders(tmp_path)


@pytest.mark.slow  # 2-process FSDP checkpoint (verl_checkpoints)
def test_verl_tokenizer_and_generation_config_come_from_stage2_when_missing(verl_checkpoints, stage2, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(verl_checkpoints["full"], ckpt)
    hf = ckpt / "actor" / "huggingface"
    for path in hf.iterdir():
        if path.name != "config.json":
            path.unlink()  # weights, tokenizer, chat template, generation config
    merge_checkpoint(_cfg(), ckpt, stage2, tmp_path / "out")
    record = json.loads((tmp_path / "out" / "merge.json").read_text())
    assert record["tokenizer_from"] == str(stage2) and record["generation_config_from"] == str(stage2)
    assert record["max_abs_diff"] is None  # no full-model save to compare with
    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    assert tok.get_added_vocab() == AutoTokenizer.from_pretrained(stage2).get_added_vocab()
    assert tok.chat_template and "<think>" in tok.chat_template
    gen = json.loads((tmp_path / "out" / "generation_config.json").read_text())
    assert gen["eos_token_id"] == json.loads((stage2 / "generation_config.json").read_text())["eos_token_id"]


@pytest.mark.slow  # 2-process FSDP checkpoint (verl_checkpoints)
def test_verl_lora_checkpoint_is_folded_into_the_weights(verl_checkpoints, policy, stage2, tmp_path):
    from peft import LoraConfig, get_peft_model

    merge_checkpoint(_cfg(), verl_checkpoints["lora"], stage2, tmp_path / "out")
    record = json.loads((tmp_path / "out" / "merge.json").read_text())
    assert record["lora"]["r"] == 4 and record["lora"]["lora_alpha"] == 8
    assert not (tmp_path / "out" / "lora_adapter").exists()
    torch.manual_seed(3)
    base = AutoModelForCausalLM.from_pretrained(policy, dtype=torch.float32)
    adapted = get_peft_model(base, LoraConfig(**LORA, init_lora_weights=False, task_type="CAUSAL_LM"))
    want = adapted.merge_and_unload().to(torch.bfloat16).state_dict()
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    got = merged.state_dict()
    assert set(got) == set(want)
    q = "model.layers.0.self_attn.q_proj.weight"
    assert not torch.equal(got[q], AutoModelForCausalLM.from_pretrained(policy).state_dict()[q].to(torch.bfloat16))
    for key in want:  # bf16 base + bf16 adapter (verl) vs fp32 merge then bf16: one bf16 step apart at most
        torch.testing.assert_close(got[key], want[key], atol=2e-2, rtol=1e-2, msg=key)


# --- (b) peft LoRA --------------------------------------------------------------------------------------


def test_peft_lora_adapter_merges_onto_stage2(stage2, tmp_path):
    from peft import LoraConfig, PeftModel, get_peft_model

    ckpt = tmp_path / "ckpt"
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_pretrained(stage2, dtype=torch.float32)
    adapted = get_peft_model(
        base,
        LoraConfig(r=4, lora_alpha=16, target_modules="all-linear", init_lora_weights=False, task_type="CAUSAL_LM"),
    )
    adapted.save_pretrained(ckpt / "adapter")
    Stage3Checkpoint(ckpt).write_manifest("peft_lora", "adapter", backend="trl")
    metrics = merge_checkpoint(_cfg(), ckpt, stage2, tmp_path / "out")
    assert metrics["format"] == 1 and metrics["max_abs_diff"] < 1e-3 and metrics["dtype_bits"] == 32

    tok = AutoTokenizer.from_pretrained(tmp_path / "out")
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert type(merged).__name__ == "Qwen3ForCausalLM" and merged.lm_head.weight is merged.model.embed_tokens.weight
    reference = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(stage2), ckpt / "adapter").eval()
    ids = tok(PROMPT, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids).logits, reference(input_ids=ids).logits, atol=1e-3, rtol=1e-4)
        plain = AutoModelForCausalLM.from_pretrained(stage2)(input_ids=ids).logits
    assert (merged(input_ids=ids).logits - plain).abs().max() > 1e-2  # the adapter changed the model
    assert _greedy(merged, tok) == _greedy(reference, tok)
    assert json.loads((tmp_path / "out" / "merge.json").read_text())["lora"]["r"] == 4


# --- (c) hf ---------------------------------------------------------------------------------------------


def test_hf_checkpoint_round_trips(policy, stage2, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(policy, ckpt / "model")
    (ckpt / "training.json").write_text("{}")
    Stage3Checkpoint(ckpt).write_manifest("hf", "model", backend="trl", global_step=3)
    metrics = merge_checkpoint(_cfg(), ckpt, stage2, tmp_path / "out")
    assert metrics["max_abs_diff"] == 0.0 and metrics["tied_embeddings"] == 1 and metrics["format"] == 0
    assert (
        load_file(ckpt / "model" / "model.safetensors").keys()
        == load_file(tmp_path / "out" / "model.safetensors").keys()
    )
    a, b = load_file(ckpt / "model" / "model.safetensors"), load_file(tmp_path / "out" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert (tmp_path / "out" / "training.json").exists()
    assert json.loads((tmp_path / "out" / "merge.json").read_text())["manifest"]["global_step"] == 3


# --- (d) bad input --------------------------------------------------------------------------------------


def _fails(ckpt: Path, stage2: Path, tmp_path: Path, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        merge_checkpoint(_cfg(), ckpt, stage2, tmp_path / "out")
    assert not (tmp_path / "out").exists()
    _no_temp_folders(tmp_path)


def test_missing_manifest(stage2, tmp_path):
    (tmp_path / "ckpt").mkdir()
    missing = rf"Stage 3 checkpoint .*ckpt: {Stage3Checkpoint.MANIFEST} .* not found; the rl-stage3 step writes it"
    _fails(tmp_path / "ckpt", stage2, tmp_path, FileNotFoundError, missing)


def test_unknown_format(stage2, tmp_path):
    (tmp_path / "ckpt" / "model").mkdir(parents=True)
    (tmp_path / "ckpt" / Stage3Checkpoint.MANIFEST).write_text(json.dumps({"format": "deepspeed", "path": "model"}))
    _fails(tmp_path / "ckpt", stage2, tmp_path, ValueError, "'format' is 'deepspeed'")


def test_manifest_pointing_at_a_missing_folder(stage2, tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / Stage3Checkpoint.MANIFEST).write_text(json.dumps({"format": "hf", "path": "model"}))
    _fails(tmp_path / "ckpt", stage2, tmp_path, FileNotFoundError, "'path' 'model' does not exist")


@pytest.mark.slow  # 2-process FSDP checkpoint (verl_checkpoints)
def test_verl_checkpoint_missing_a_rank_shard(verl_checkpoints, stage2, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(verl_checkpoints["full"], ckpt)
    (ckpt / "actor" / "model_world_size_2_rank_1.pt").unlink()
    _fails(ckpt, stage2, tmp_path, FileNotFoundError, "model_world_size_2_rank_1.pt")


@pytest.mark.slow  # 2-process FSDP checkpoint (verl_checkpoints)
def test_verl_checkpoint_without_fsdp_config(verl_checkpoints, stage2, tmp_path):
    ckpt = tmp_path / "ckpt"
    shutil.copytree(verl_checkpoints["full"], ckpt)
    (ckpt / "actor" / "fsdp_config.json").unlink()
    _fails(ckpt, stage2, tmp_path, FileNotFoundError, "fsdp_config.json")


def test_a_model_of_another_architecture_is_refused(stage2, tmp_path, tiny_artifacts, build_tiny_model):
    ckpt = tmp_path / "ckpt"
    other, _ = build_tiny_model(tmp_path / "other", np.array(tiny_artifacts["codes"]), codebook=4, hidden=32)
    shutil.copytree(tmp_path / "other", ckpt / "model")
    Stage3Checkpoint(ckpt).write_manifest("hf", "model")
    shutil.rmtree(tmp_path / "other")
    _fails(ckpt, stage2, tmp_path, RuntimeError, "not the Stage 2 architecture")


def _edit_weights(src: Path, dst: Path, edit) -> Path:
    from safetensors.torch import save_file

    shutil.copytree(src, dst)
    tensors = load_file(dst / "model.safetensors")
    edit(tensors)
    save_file(tensors, dst / "model.safetensors", metadata={"format": "pt"})
    return dst


def test_verify_refuses_a_stored_lm_head_that_is_not_the_tied_embedding(policy, stage2, tmp_path):
    from sidreasoner.rl.merge import MergeError, verify_model

    def untie(t):
        t["lm_head.weight"] = t["model.embed_tokens.weight"] + 1.0

    folder = _edit_weights(policy, tmp_path / "untied", untie)
    with pytest.raises(MergeError, match="lm_head.weight"):
        verify_model(folder, stage2, None)


def test_verify_refuses_newly_initialised_weights(policy, stage2, tmp_path):
    from sidreasoner.rl.merge import MergeError, verify_model

    folder = _edit_weights(policy, tmp_path / "partial", lambda t: t.pop("model.norm.weight"))
    with pytest.raises(MergeError, match="newly initialised.*model.norm.weight"):
        verify_model(folder, stage2, None)
