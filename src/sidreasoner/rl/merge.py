"""The `merge-checkpoint` step: rl-stage3's raw checkpoint (`Stage3Checkpoint`) to a plain Hugging Face
model (`ModelFolder`) that `evaluate-stage3` (and anyone else) loads with `AutoModelForCausalLM`.

By the manifest's format:
  verl_fsdp  verl's own merger (`verl.model_merger`, FSDP backend) joins the per-rank shards; a LoRA
             adapter it finds among them (it writes `lora_adapter/`) is folded into the weights with peft.
             Config comes from the checkpoint's `huggingface/`; tokenizer and generation config too,
             or from the Stage 2 model where `huggingface/` lacks them.
  peft_lora  the Stage 2 model + the adapter, `merge_and_unload()`.
  hf         the saved model, loaded and saved again (proves it reloads; tied weights stay tied).

Output dtype: verl_fsdp gives bfloat16, because verl's merger casts every shard to bf16 (it is also
Qwen3's release dtype; up-casting afterwards would only double the size, the fp32 master bits are
gone). hf and peft_lora keep the dtype the source was saved in. The merge record keeps it.

Every output is checked before it appears: it reloads with no missing, unexpected or resized weight
(nothing newly initialised), has every parameter of the Stage 2 architecture with its shape, keeps tied
embeddings tied (and stores no lm_head that differs from embed_tokens), carries the Stage 2 tokenizer's
added (SID) tokens and chat template, and, where a reference exists (the in-memory model before
saving; verl's own `huggingface/` weights when the checkpoint saved them), gives the same logits on a
fixed prompt (`max_abs_diff`).
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GenerationConfig

from sidreasoner.artifacts import ModelFolder, Stage3Checkpoint
from sidreasoner.config import Config
from sidreasoner.model.loading import save_model

log = logging.getLogger(__name__)

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".index.json")
PROBE_TEXT = "The user bought these items in order. Recommend the next item:"
PROBE_ADDED_TOKENS = 8  # the probe also feeds the tokenizer's last added (SID) tokens
# max |logit difference| allowed against the reference, times max(1, max |reference logit|)
TOLERANCE = {torch.float32: 1e-3, torch.bfloat16: 3e-2, torch.float16: 1e-2}


class MergeError(RuntimeError):
    """The merged model is not what it must be; the message names the folder, file or weight."""


def merge_checkpoint(
    cfg: Config,
    stage3_checkpoint_dir: Stage3Checkpoint | Path,
    stage2_model_dir: ModelFolder | Path,
    out_model_dir: ModelFolder | Path,
) -> dict[str, float]:
    """The `merge-checkpoint` step. `cfg` is not read: the checkpoint's manifest says what to do."""
    start = time.time()
    ckpt, stage2 = Stage3Checkpoint.at(stage3_checkpoint_dir), Path(stage2_model_dir)
    manifest = ckpt.manifest()
    fmt = manifest["format"]
    source = ckpt.file(manifest["path"])
    out = Path(out_model_dir)
    with ModelFolder.writing(out) as model:
        merged = MERGERS[fmt](source, stage2, model.path)
        reference = merged.pop("reference")
        check = verify_model(model.path, stage2, reference)
        _carry_rl_extras(ckpt, model)
        model.write_merge_record({"format": fmt, "source": str(source), "manifest": manifest, **merged, **check})
    # format: its index in Stage3Checkpoint.FORMATS (hf 0, peft_lora 1, verl_fsdp 2); KFP metrics are numbers
    metrics = {
        "format": float(Stage3Checkpoint.FORMATS.index(fmt)),
        "parameters": float(check["parameters"]),
        "tied_embeddings": float(check["tied"]),
        "dtype_bits": float(check["dtype_bits"]),
        "wall_seconds": time.time() - start,
    }
    if check["max_abs_diff"] is not None:
        metrics["max_abs_diff"] = check["max_abs_diff"]
    log.info("merge-checkpoint: %s (%s) -> %s: %s", source, fmt, out, metrics)
    return metrics


# --- the three formats: each writes a saved model into `tmp` and returns what the merge record keeps,
# --- with "reference": logits of the model before saving (or None) under "reference".


def _merge_hf(source: Path, stage2: Path, tmp: Path) -> dict:
    _require(source / ModelFolder.HF_CONFIG, "the 'hf' checkpoint holds no saved model")
    model = _load_model(source)
    generation_from = _fill_generation_config(model, source, stage2)
    tok_dir = source if (source / ModelFolder.HF_TOKENIZER_CONFIG).is_file() else stage2
    tok = AutoTokenizer.from_pretrained(tok_dir)
    reference = _logits(model, tok)
    save_model(model, tok, tmp)
    return {
        "reference": reference,
        "reference_kind": "the loaded checkpoint model",
        "tokenizer_from": str(tok_dir),
        "generation_config_from": generation_from,
    }


def _merge_peft_lora(source: Path, stage2: Path, tmp: Path) -> dict:
    from peft import PeftModel

    _require(source / "adapter_config.json", "the 'peft_lora' checkpoint holds no adapter")
    tok = AutoTokenizer.from_pretrained(stage2)
    adapted = PeftModel.from_pretrained(_load_model(stage2), str(source))
    reference = _logits(adapted, tok)
    model = adapted.merge_and_unload()
    save_model(model, tok, tmp)
    return {
        "reference": reference,
        "reference_kind": "the in-memory PeftModel (adapter not merged)",
        "tokenizer_from": str(stage2),
        "generation_config_from": str(stage2),
        "lora": _lora_summary(source / "adapter_config.json"),
    }


def _merge_verl_fsdp(source: Path, stage2: Path, tmp: Path) -> dict:
    from verl.model_merger.base_model_merger import ModelMergerConfig
    from verl.model_merger.fsdp_model_merger import FSDPModelMerger

    world_size = check_verl_shards(source)
    with tempfile.TemporaryDirectory(prefix=".merge-", dir=tmp.parent) as scratch:
        hf_config = Path(scratch) / "hf_config"
        taken = _verl_hf_config(source, stage2, hf_config)
        raw = Path(scratch) / "merged"
        raw.mkdir()
        merger = FSDPModelMerger(
            ModelMergerConfig(
                operation="merge",
                backend="fsdp",
                local_dir=str(source),
                target_dir=str(raw),
                hf_model_config_path=str(hf_config),
                trust_remote_code=False,
            )
        )
        merger.merge_and_save()
        merger.cleanup()
        lora = None
        if (raw / "lora_adapter").is_dir():
            lora = _fold_lora(raw, raw / "lora_adapter", tmp)
        else:
            for path in raw.iterdir():
                shutil.move(str(path), str(tmp / path.name))
    # verl's own full-model save (if any) holds the unfolded LoRA model: no reference then.
    reference, kind = (None, "none (LoRA folded in)") if lora else _verl_reference(source / "huggingface", tmp)
    return {
        "reference": reference,
        "reference_kind": kind,
        "world_size": world_size,
        "lora": lora,
        "tokenizer_from": taken["tokenizer"],
        "generation_config_from": taken["generation_config"],
    }


MERGERS = {"hf": _merge_hf, "peft_lora": _merge_peft_lora, "verl_fsdp": _merge_verl_fsdp}


# --- verl ---------------------------------------------------------------------------------------------


def check_verl_shards(actor: Path) -> int:
    """The world size of verl's FSDP checkpoint in `actor`, after checking every rank's model shard and
    the huggingface/ config are there (verl's merger would fail late, or on the first missing rank)."""
    fsdp_config = actor / "fsdp_config.json"
    _require(fsdp_config, "not a verl FSDP actor checkpoint")
    try:
        world_size = json.loads(fsdp_config.read_text())["world_size"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ValueError(f"{fsdp_config}: no integer 'world_size' ({e!r})") from None
    if not isinstance(world_size, int) or world_size < 1:
        raise ValueError(f"{fsdp_config}: 'world_size' is {world_size!r}, expected a positive integer")
    missing = [
        name
        for name in (f"model_world_size_{world_size}_rank_{r}.pt" for r in range(world_size))
        if not (actor / name).is_file()
    ]
    if missing:
        raise FileNotFoundError(f"{actor}: missing model shard(s) {', '.join(missing)} of world size {world_size}")
    _require(actor / "huggingface" / ModelFolder.HF_CONFIG, "verl's checkpoint has no model config")
    return world_size


def _verl_hf_config(actor: Path, stage2: Path, dest: Path) -> dict[str, str]:
    """The folder verl's merger reads config, tokenizer and generation config from: the checkpoint's
    huggingface/ (without any weights), completed from the Stage 2 model. Returns where each came from."""
    dest.mkdir(parents=True)
    hf = actor / "huggingface"
    for path in hf.iterdir():
        if path.is_file() and not path.name.endswith(WEIGHT_SUFFIXES):
            shutil.copy2(path, dest / path.name)
    taken = {"tokenizer": str(hf), "generation_config": str(hf)}
    if not (dest / ModelFolder.HF_TOKENIZER_CONFIG).is_file():
        AutoTokenizer.from_pretrained(stage2).save_pretrained(dest)
        taken["tokenizer"] = str(stage2)
    if not (dest / ModelFolder.HF_GENERATION_CONFIG).is_file():
        if (stage2 / ModelFolder.HF_GENERATION_CONFIG).is_file():
            shutil.copy2(stage2 / ModelFolder.HF_GENERATION_CONFIG, dest / ModelFolder.HF_GENERATION_CONFIG)
            taken["generation_config"] = str(stage2)
        else:
            taken["generation_config"] = "derived from the model config"
    return taken


def _fold_lora(raw: Path, adapter: Path, tmp: Path) -> dict:
    """verl's merger writes a LoRA run's base weights and its adapter separately: fold the adapter in."""
    from peft import PeftModel

    summary = _lora_summary(adapter / "adapter_config.json")
    if not summary.get("lora_alpha"):
        # verl's merger falls back to lora_alpha=0 without lora_train_meta.json: the adapter would vanish.
        raise MergeError(
            f"{adapter / 'adapter_config.json'}: 'lora_alpha' is 0 (the checkpoint lacks "
            "lora_train_meta.json), so folding the adapter in would drop it"
        )
    tok = AutoTokenizer.from_pretrained(raw)
    model = PeftModel.from_pretrained(_load_model(raw), str(adapter)).merge_and_unload()
    save_model(model, tok, tmp)
    return summary


def _verl_reference(hf: Path, tmp: Path):
    """Logits of the full model verl saved itself (checkpoint save_contents with hf_model), if it did."""
    if not any(p.name.endswith((".safetensors", ".bin")) for p in hf.iterdir()):
        return None, "none (the checkpoint holds only shards; checked by architecture, not logits)"
    return _logits(_load_model(hf), AutoTokenizer.from_pretrained(tmp)), f"verl's full-state-dict save in {hf}"


# --- checks -------------------------------------------------------------------------------------------


def verify_model(model_dir: Path, stage2: Path, reference: torch.Tensor | None) -> dict:
    """Reload `model_dir` as any user would and check it (see the module docstring); raise MergeError."""
    model, info = AutoModelForCausalLM.from_pretrained(
        model_dir, dtype="auto", use_safetensors=True, trust_remote_code=False, output_loading_info=True
    )
    bad = {k: sorted(map(str, v)) for k, v in info.items() if k != "error_msgs" and v}
    if bad or info.get("error_msgs"):
        raise MergeError(
            f"{model_dir}: reloading gives newly initialised or unused weights: {bad or info['error_msgs']}"
        )
    tok = AutoTokenizer.from_pretrained(model_dir)
    tied = _check_tied(model_dir, model)
    _check_architecture(model_dir, model, stage2)
    _check_tokenizer(model_dir, tok, stage2, model.config.vocab_size)
    max_abs_diff = None
    if reference is not None:
        logits = _logits(model, tok)
        max_abs_diff = float((logits - reference).abs().max())
        limit = TOLERANCE.get(model.dtype, 3e-2) * max(1.0, float(reference.abs().max()))
        if max_abs_diff > limit:
            raise MergeError(
                f"{model_dir}: reloaded logits differ from the source's by {max_abs_diff:.3g} (> {limit:.3g})"
            )
    return {
        "dtype": str(model.dtype).removeprefix("torch."),
        "dtype_bits": torch.finfo(model.dtype).bits,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tied": tied,
        "max_abs_diff": max_abs_diff,
    }


def _check_tied(model_dir: Path, model) -> bool:
    """True when the config ties word embeddings; then lm_head must be embed_tokens, and a stored lm_head
    (which transformers would not re-tie on reload) must equal it."""
    if not getattr(model.config.get_text_config(), "tie_word_embeddings", False):
        return False
    names = {id(m): n for n, m in model.named_modules()}
    in_name = names[id(model.get_input_embeddings())] + ".weight"
    out_name = names[id(model.get_output_embeddings())] + ".weight"
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    if head is not emb and not torch.equal(head, emb):
        raise MergeError(f"{model_dir}: tie_word_embeddings is set but {out_name} is not {in_name}")
    stored = _stored_tensors(model_dir, (in_name, out_name))
    if len(stored) == 2 and not torch.equal(stored[out_name], stored[in_name]):
        raise MergeError(f"{model_dir}: tie_word_embeddings is set but the stored {out_name} differs from {in_name}")
    return True


def _stored_tensors(model_dir: Path, names: tuple[str, ...]) -> dict[str, torch.Tensor]:
    from safetensors import safe_open

    found = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as f:
            found.update({n: f.get_tensor(n) for n in names if n in f.keys()})
    return found


def _check_architecture(model_dir: Path, model, stage2: Path) -> None:
    with torch.device("meta"):
        expected = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(stage2))
    want = {n: tuple(t.shape) for n, t in expected.state_dict().items()}
    have = {n: tuple(t.shape) for n, t in model.state_dict().items()}
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    resized = sorted(f"{n} {have[n]} (Stage 2: {want[n]})" for n in set(want) & set(have) if want[n] != have[n])
    if missing or extra or resized:
        raise MergeError(
            f"{model_dir}: not the Stage 2 architecture of {stage2}: missing {missing[:5]}, "
            f"extra {extra[:5]}, other shape {resized[:5]}"
        )


def _check_tokenizer(model_dir: Path, tok, stage2: Path, vocab_size: int) -> None:
    ref = AutoTokenizer.from_pretrained(stage2)
    vocab = tok.get_vocab()
    lost = [t for t in ref.get_added_vocab() if t not in vocab]
    if lost:
        raise MergeError(
            f"{model_dir}: the tokenizer lacks {len(lost)} added token(s) of the Stage 2 model's, e.g. {lost[:5]}"
        )
    if ref.chat_template and tok.chat_template != ref.chat_template:
        raise MergeError(f"{model_dir}: the tokenizer's chat template is not the Stage 2 model's")
    if len(tok) > vocab_size:
        raise MergeError(f"{model_dir}: tokenizer has {len(tok)} tokens, the model's embedding only {vocab_size}")


# --- small helpers ------------------------------------------------------------------------------------


def _load_model(path: Path):
    return AutoModelForCausalLM.from_pretrained(path, dtype="auto", use_safetensors=True, trust_remote_code=False)


def _logits(model, tok) -> torch.Tensor:
    """Logits on the fixed probe: a sentence and the tokenizer's last added (SID) tokens."""
    vocab = min(len(tok), model.config.get_text_config().vocab_size)
    ids = tok(PROBE_TEXT, add_special_tokens=False)["input_ids"]
    ids += list(range(max(0, vocab - PROBE_ADDED_TOKENS), vocab))
    model.eval()
    with torch.no_grad():
        return model(input_ids=torch.tensor([ids])).logits.float()


def _fill_generation_config(model, source: Path, stage2: Path) -> str:
    if (source / ModelFolder.HF_GENERATION_CONFIG).is_file():
        return str(source)
    if (stage2 / ModelFolder.HF_GENERATION_CONFIG).is_file():
        model.generation_config = GenerationConfig.from_pretrained(stage2)
        return str(stage2)
    return "derived from the model config"


def _lora_summary(adapter_config: Path) -> dict:
    conf = json.loads(adapter_config.read_text())
    return {k: conf.get(k) for k in ("r", "lora_alpha", "lora_dropout", "target_modules", "task_type")}


def _carry_rl_extras(ckpt: Stage3Checkpoint, model: ModelFolder) -> None:
    """What rl-stage3 keeps next to the weights, into the model folder for whoever reads it."""
    for name in Stage3Checkpoint.CARRIED:
        path = ckpt.file(name)
        if path.is_dir():
            shutil.copytree(path, model.file(name))
        elif path.is_file():
            shutil.copy2(path, model.file(name))


def _require(path: Path, why: str) -> None:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: {why}")
