"""The `sft-stage1` and `sft-stage2` steps: HF `Trainer` SFT with resumable checkpoints,
per-epoch validation loss, early stopping, best-model selection, optional LoRA (merged on save)
and an embeddings-only warm-up for the new SID tokens."""

from __future__ import annotations

import logging
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import Trainer, TrainerCallback, TrainerState, TrainingArguments

from sidreasoner.artifacts import Corpus, Dataset, ModelFolder, SidIndex
from sidreasoner.config import Config
from sidreasoner.curves import loss_curve_html
from sidreasoner.io import atomic_file, read_json, write_json
from sidreasoner.model import prompts
from sidreasoner.model.checkpoints import (
    BEST,
    BEST_RECORD,
    BEST_WEIGHTS,
    INITIAL,
    TRAINER_STATE,
    WARMUP,
    WARMUP_FINAL,
    checkpoint_root,
    read_seal,
    remove_old_checkpoint_folders,
    resumable_checkpoint,
)
from sidreasoner.model.folder_lock import checkpoint_lock
from sidreasoner.model.loading import load_model_and_tokenizer, save_model
from sidreasoner.model.text_safety import DataText
from sidreasoner.train import data as data_mod
from sidreasoner.train import tasks
from sidreasoner.train.checkpointing import FiniteTraining, ResumedAt, SaveAfterEpochEvaluation, SealCheckpoints
from sidreasoner.train.decode import constrained_greedy_sid
from sidreasoner.train.distributed import is_rank0, maybe_launch_distributed

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- tokenizer extension


def extend_tokenizer(model, tokenizer, codes: list[str], init: str = "mean") -> list[int]:
    """Add SID code tokens as PLAIN added tokens (not special: verl/TRL decode with
    skip_special_tokens=True) and initialise their embedding (and untied output) rows.

    init="mean": the matrix grows only when the tokenizer outgrows it, and every new token's row is the
    mean of the existing vocabulary's rows. init="mean_resizing": as the research code does, the matrix is
    resized to the tokenizer's length by transformers' `resize_token_embeddings(mean_resizing=True)`: the
    rows it gains are drawn (torch's global RNG) from a normal with the old rows' mean and 1e-9 times
    their covariance (the mean when that is not positive definite); new tokens that fall on rows a padded
    matrix already had keep those rows, and a padded matrix larger than the tokenizer shrinks to it."""
    if init not in ("mean", "mean_resizing"):
        raise ValueError(f"stage1.new_token_init must be mean or mean_resizing, got {init!r}")
    new = [c for c in codes if c not in tokenizer.get_vocab()]
    first_new = len(tokenizer)
    if new:
        tokenizer.add_tokens(new, special_tokens=False)
    if init == "mean_resizing":
        if new:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=True)
        return tokenizer.convert_tokens_to_ids(codes)
    emb = model.get_input_embeddings()
    if len(tokenizer) > emb.num_embeddings:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    new_ids = tokenizer.convert_tokens_to_ids(new)
    with torch.no_grad():
        for layer in {
            id(model.get_input_embeddings()): model.get_input_embeddings(),
            id(model.get_output_embeddings()): model.get_output_embeddings(),
        }.values():
            if layer is None or not new_ids:
                continue
            weight = layer.weight
            weight[new_ids] = weight[:first_new].mean(dim=0, keepdim=True).to(weight.dtype)
    return tokenizer.convert_tokens_to_ids(codes)


# ---------------------------------------------------------------- checkpoints


def _trainable_state(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().cpu().contiguous().clone() for n, p in model.named_parameters() if p.requires_grad}


def _load_trainable(model, state: dict[str, torch.Tensor]) -> None:
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))


def valid_metric(name: str) -> str:
    """The Trainer's log key of validation set `name`'s loss (its eval_dataset is a dict of named sets)."""
    return f"eval_{name}_loss"


class BestModelCallback(TrainerCallback):
    """After each evaluation of the selection set (`metric`, a key such as eval_sid_loss; the other sets'
    evaluations are ignored): keep the best weights (in `best_dir`) and stop after `patience` evaluations
    without a strictly lower loss. A tie keeps the earlier weights, as transformers' load_best_model_at_end
    and EarlyStoppingCallback do. Decisions read the checkpointed log history, so they survive a resume; an
    early stop saves a checkpoint, so that a retry finds the training finished. `paused`: evaluations are
    not looked at (the one before training)."""

    def __init__(self, best_dir: Path, patience: int, metric: str = "eval_loss"):
        self.best_dir = best_dir
        self.patience = patience
        self.metric = metric
        self.paused = False

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        if self.paused or metrics is None or self.metric not in metrics:
            return
        evals = [h[self.metric] for h in state.log_history if self.metric in h]
        if not evals:
            return
        current, earlier = metrics[self.metric], evals[:-1]
        if (not earlier or current < min(earlier)) and state.is_world_process_zero:
            self.best_dir.mkdir(parents=True, exist_ok=True)
            with atomic_file(self.best_dir / BEST_WEIGHTS) as tmp:
                save_file(_trainable_state(model), str(tmp))
            write_json(
                self.best_dir / BEST_RECORD,
                {"metric": self.metric, "eval_loss": current, "step": state.global_step, "epoch": state.epoch},
            )
        best_idx = min(range(len(evals)), key=evals.__getitem__)  # the first of equal losses
        if self.patience and len(evals) - 1 - best_idx >= self.patience:
            log.info("early stopping: %d evaluations without a better %s", len(evals) - 1 - best_idx, self.metric)
            control.should_training_stop = control.should_save = True


def _args(section, out: Path, epochs: float, seed: int, evaluate: bool, world: int) -> TrainingArguments:
    cuda = torch.cuda.is_available()
    accum = max(1, math.ceil(section.global_batch_size / (section.per_device_batch_size * world)))
    return TrainingArguments(
        output_dir=str(out),
        per_device_train_batch_size=section.per_device_batch_size,
        per_device_eval_batch_size=section.per_device_batch_size,
        gradient_accumulation_steps=accum,
        num_train_epochs=epochs,
        learning_rate=section.lr,
        lr_scheduler_type=section.lr_scheduler,
        # An int >= 1 is a number of steps, a float < 1 a share of the total steps.
        warmup_steps=section.warmup_steps or section.warmup_ratio,
        weight_decay=section.weight_decay,
        logging_steps=section.logging_steps,
        logging_first_step=True,
        save_strategy="steps",
        save_steps=section.save_steps,
        save_total_limit=section.save_total_limit,
        eval_strategy="epoch" if evaluate else "no",
        bf16=bool(section.bf16 and cuda and torch.cuda.is_bf16_supported()),
        use_cpu=not cuda,
        report_to="none",
        disable_tqdm=False,
        remove_unused_columns=False,
        seed=seed,
        data_seed=seed,
        train_sampling_strategy="group_by_length" if section.batching == "length_grouped" else "random",
        gradient_checkpointing=section.gradient_checkpointing,
        prediction_loss_only=True,
        dataloader_num_workers=0,
    )


class _SFTTrainer(FiniteTraining, Trainer):
    """transformers' Trainer stopping at the first non-finite value (`FiniteTraining`), whose length-grouped
    order is a function of the seed and the epoch alone (`data.LengthGroupedEpochSampler`)."""

    def _get_train_sampler(self, train_dataset=None):
        dataset = self.train_dataset if train_dataset is None else train_dataset
        if self.args.train_sampling_strategy != "group_by_length":
            return super()._get_train_sampler(dataset)
        seed = self.args.seed if self.args.data_seed is None else self.args.data_seed
        batch = self.args.train_batch_size * self.args.gradient_accumulation_steps
        return data_mod.LengthGroupedEpochSampler([len(row["input_ids"]) for row in dataset], batch, seed)


def _trainer(
    stage: str, section, model, args, rows, pad_id: int, valid_sets=None, callbacks=(), label: str = ""
) -> _SFTTrainer:
    """A Trainer on `rows` whose checkpoints are sealed and hold the evaluation of the epoch they end."""
    return _SFTTrainer(
        model=model,
        args=args,
        train_dataset=data_mod.ListDataset(rows),
        eval_dataset={name: data_mod.ListDataset(r) for name, r in (valid_sets or {}).items()} or None,
        data_collator=data_mod.collator(section.batching, pad_id),
        callbacks=[SealCheckpoints(), SaveAfterEpochEvaluation(), *callbacks],
        stage=label or stage,
        lr_setting=f"{stage}.lr={section.lr:g}",
    )


def _embedding_warmup(
    model,
    tok,
    section,
    rows,
    ckpt: Path,
    epochs: float,
    seed: int,
    new_ids: list[int],
    world: int,
    stage: str = "stage1",
):
    """Train only the new SID embedding rows (others frozen, their gradients zeroed, no weight decay)."""
    done = ckpt / WARMUP / WARMUP_FINAL
    if _load_warmup(model, done):
        return
    flags = {n: p.requires_grad for n, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    emb = model.get_input_embeddings().weight
    emb.requires_grad_(True)
    mask = torch.zeros(emb.shape[0], 1, dtype=emb.dtype, device=emb.device)
    mask[new_ids] = 1
    handle = emb.register_hook(lambda g: g * mask)
    try:
        # No weight decay here: AdamW's decoupled decay would shrink every row of the embedding
        # (and, tied, lm_head), not only the SID rows whose gradients the mask lets through.
        section = section.model_copy(update={"weight_decay": 0.0})
        args = _args(section, ckpt / WARMUP, epochs, seed, evaluate=False, world=world)
        trainer = _trainer(stage, section, model, args, rows, tok.pad_token_id, label=f"{stage} embedding warm-up")
        resume = resumable_checkpoint(ckpt / WARMUP, move_aside=is_rank0())
        trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    finally:
        handle.remove()
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
    if is_rank0():
        with atomic_file(done) as tmp:
            save_file({"embed": emb.detach().cpu().contiguous()}, str(tmp))


def _load_warmup(model, done: Path) -> bool:
    """Load a finished warm-up's embeddings; False when there is none, or it is damaged (logged and removed:
    the warm-up then resumes from its last checkpoint)."""
    if not done.exists():
        return False
    try:
        _load_trainable_all(model, load_file(str(done)))
    except (OSError, KeyError, RuntimeError, SafetensorError) as e:
        log.warning("%s: damaged (%s); the warm-up runs again from its last checkpoint", done, e)
        if is_rank0():
            done.unlink(missing_ok=True)
        return False
    return True


def _load_trainable_all(model, state):
    with torch.no_grad():
        model.get_input_embeddings().weight.copy_(state["embed"])


def _read_initial(ckpt: Path) -> dict | None:
    """The validation losses before training, as the checkpoint folder keeps them; None when they are absent
    or damaged (logged)."""
    path = ckpt / INITIAL
    try:
        initial = read_json(path)
        if (
            isinstance(initial, dict)
            and "initial_valid_loss" in initial
            and isinstance(initial.get("initial_valid_losses"), dict)
        ):
            return initial
        why = "not an object with initial_valid_loss and initial_valid_losses"
    except FileNotFoundError:
        why = "absent"
    except (OSError, ValueError) as e:
        why = f"unreadable ({e})"
    log.warning("%s: %s; the validation losses before training are evaluated again", path, why)
    return None


def _initial_losses(trainer, best: BestModelCallback, valid_sets: dict, select: str) -> dict:
    """The validation losses of the model before training (not an evaluation the best-model callback sees)."""
    losses = {}
    if valid_sets:
        best.paused = True
        try:
            first = trainer.evaluate()
        finally:
            best.paused = False
        trainer.state.log_history.clear()
        losses = {name: float(first[valid_metric(name)]) for name in valid_sets}
    return {"initial_valid_loss": losses.get(select), "initial_valid_losses": losses}


def _train(trainer, resume: Path | None, started: ResumedAt) -> tuple[dict, int]:
    """Train from `resume` (None: from the start); returns the Trainer's run metrics and the global step it
    started at. A checkpoint sealed as finished (its last step, or an early stop) is loaded, not trained on:
    the Trainer would train on past an early stop."""
    if resume is not None and read_seal(resume).get("finished"):
        trainer._load_from_checkpoint(str(resume))
        trainer.state = TrainerState.load_from_json(str(resume / TRAINER_STATE))
        return {}, trainer.state.global_step
    result = trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    return result.metrics, started.step


def _load_best(model, best_dir: Path, best_loss: float | None) -> bool:
    """Load the kept best weights when they are those of `best_loss`; False when there are none such."""
    if best_loss is None or not (best_dir / BEST_RECORD).exists():
        return False
    try:
        if abs(read_json(best_dir / BEST_RECORD)["eval_loss"] - best_loss) >= 1e-9:
            return False
        _load_trainable(model, load_file(str(best_dir / BEST_WEIGHTS)))
    except (OSError, ValueError, KeyError, TypeError, SafetensorError) as e:
        raise ValueError(
            f"{best_dir}: the kept best weights are damaged ({e}); remove {best_dir.parent} to train afresh"
        ) from None
    return True


def _with_lora(model, section, new_ids):
    if section.finetune != "lora":
        return model
    from peft import LoraConfig, get_peft_model

    lora = LoraConfig(
        r=section.lora_r,
        lora_alpha=section.lora_alpha,
        lora_dropout=section.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
        trainable_token_indices={"embed_tokens": list(new_ids)} if new_ids else None,
    )
    return get_peft_model(model, lora)


def train_sft(
    stage: str,
    cfg: Config,
    section,
    model,
    tok,
    train_rows: list[dict],
    valid_sets: dict[str, list[dict]],
    ckpt: Path,
    new_ids: list[int] | None = None,
    warmup_epochs: float = 0.0,
    select: str = "sid",
):
    """Train; returns (trained model with the best weights, LoRA merged; info dict). Every epoch the loss of
    each non-empty validation set in `valid_sets` is logged (as eval_<name>_loss); set `select` picks the
    checkpoint and drives early stopping. Resumes from the newest whole checkpoint in `ckpt`."""
    recipe = SFTRecipe(stage, cfg, section, train_rows, _validation_sets(stage, valid_sets, select), select, ckpt)
    recipe.setup(model, tok, new_ids, warmup_epochs)
    recipe.train()
    model = recipe.restore_best()
    return model, recipe.summary()


def _validation_sets(stage: str, valid_sets: dict[str, list[dict]], select: str) -> dict[str, list[dict]]:
    """The non-empty validation sets, the selection set `select` (which must be one of them) first."""
    valid_sets = {name: rows for name, rows in valid_sets.items() if rows}
    if valid_sets and select not in valid_sets:
        raise ValueError(f"{stage}: the validation set {select!r} that chooses the checkpoint is empty")
    return {select: valid_sets[select], **valid_sets} if valid_sets else {}


class SFTRecipe:
    """One SFT training in phases, run in this order as torchtune's recipes are: `setup` (the checkpoint to
    resume from, the embedding warm-up, LoRA, the Trainer, the validation losses before training), `train`,
    `restore_best` (the best weights back into the model, LoRA merged) and `summary` (the training's record)."""

    def __init__(self, stage: str, cfg: Config, section, train_rows, valid_sets, select: str, ckpt: Path):
        self.stage, self.cfg, self.section = stage, cfg, section
        self.train_rows, self.valid_sets, self.select = train_rows, valid_sets, select
        self.ckpt, self.best_dir = ckpt, ckpt / BEST
        self.world = int(os.environ.get("WORLD_SIZE", "1"))

    def setup(self, model, tok, new_ids: list[int] | None, warmup_epochs: float) -> None:
        """The checkpoint to resume from, the embedding warm-up (not on a resume that has the losses before
        training: the checkpoint's weights replace the warmed-up ones), LoRA, the Trainer, and the validation
        losses before training."""
        self.ckpt.mkdir(parents=True, exist_ok=True)
        self.resume = resumable_checkpoint(self.ckpt, move_aside=is_rank0())
        initial = _read_initial(self.ckpt) if self.resume else None
        warm_up = warmup_epochs > 0 and new_ids and self.section.finetune == "full"
        if warm_up and (self.resume is None or initial is None):
            s, seed = self.section, self.cfg.seed_for(self.stage)
            _embedding_warmup(
                model, tok, s, self.train_rows, self.ckpt, warmup_epochs, seed, new_ids, self.world, self.stage
            )
        self.model = _with_lora(model, self.section, new_ids)
        if self.section.gradient_checkpointing:
            self.model.config.use_cache = False
        self.trainer = self._trainer(tok.pad_token_id)
        # Best weights without a checkpoint to resume from are a dead attempt's, from before its first checkpoint.
        if self.resume is None and self.best_dir.exists():
            shutil.rmtree(self.best_dir)
        self.initial = initial if initial is not None else self._first_evaluation()

    def _trainer(self, pad_id: int) -> _SFTTrainer:
        s = self.section
        seed = self.cfg.seed_for(self.stage)
        self.args = _args(s, self.ckpt, s.epochs, seed, evaluate=bool(self.valid_sets), world=self.world)
        self.best = BestModelCallback(self.best_dir, s.early_stopping_patience, valid_metric(self.select))
        self.started = ResumedAt()
        callbacks = [self.best, self.started]
        return _trainer(self.stage, s, self.model, self.args, self.train_rows, pad_id, self.valid_sets, callbacks)

    def _first_evaluation(self) -> dict:
        """The validation losses before training, kept in the checkpoint folder for a resumed run."""
        initial = _initial_losses(self.trainer, self.best, self.valid_sets, self.select)
        if is_rank0():
            write_json(self.ckpt / INITIAL, initial)
        return initial

    def train(self) -> None:
        if self.resume:
            log.info("%s: resuming from %s", self.stage, self.resume)
        t0 = time.time()
        runtime, resumed_from = _train(self.trainer, self.resume, self.started)
        self.run = _Run(self.trainer.state, self.args, resumed_from, time.time() - t0, runtime)
        # Per set, its loss at each evaluation (every evaluation evaluates every set, so the lists align).
        history = self.run.state.log_history
        self.losses = {
            name: [h[valid_metric(name)] for h in history if valid_metric(name) in h] for name in self.valid_sets
        }

    def restore_best(self):
        """The trained model, with the kept best weights when they are those of the lowest selection loss."""
        self.best_loss = min(self.losses[self.select], default=None) if self.valid_sets else None
        self.used_best = _load_best(self.model, self.best_dir, self.best_loss)
        return self.model.merge_and_unload() if self.section.finetune == "lora" else self.model

    def summary(self) -> dict:
        valid = _valid_info(self.select, self.losses, self.best_loss, self.used_best, self.initial)
        return {"stage": self.stage, **valid, **_run_info(self.run, self.section, self.train_rows, self.ckpt)}


@dataclass
class _Run:
    """What a training left: the Trainer's state and arguments, the global step it started at, its wall time
    and the Trainer's run metrics."""

    state: TrainerState
    args: TrainingArguments
    resumed_from: int
    wall: float
    runtime: dict


def _valid_info(select: str, losses: dict, best_loss: float | None, used_best: bool, initial: dict) -> dict:
    best_at = losses[select].index(best_loss) if best_loss is not None else 0
    return {
        "select_metric": valid_metric(select),
        "valid_losses": losses,
        "valid_losses_at_best": {name: values[best_at] for name, values in losses.items() if best_at < len(values)},
        "initial_valid_loss": initial["initial_valid_loss"],
        "initial_valid_losses": initial["initial_valid_losses"],
        "best_valid_loss": best_loss,
        "used_best_checkpoint": used_best,
    }


def _run_info(run: _Run, section, train_rows: list[dict], ckpt: Path) -> dict:
    state = run.state
    history = list(state.log_history)
    steps_run = state.global_step - run.resumed_from
    tokens_per_step = sum(len(r["input_ids"]) for r in train_rows) / max(1, state.max_steps / max(section.epochs, 1e-9))
    train_losses = [(h["step"], h["loss"]) for h in history if "loss" in h]
    return {
        "history": history,
        "resumed_from_step": run.resumed_from,
        "global_step": state.global_step,
        "max_steps": state.max_steps,
        "epochs_run": float(state.epoch or 0.0),
        "train_wall_seconds": run.wall,
        "tokens_per_s": steps_run * tokens_per_step / run.wall if run.wall > 0 else 0.0,
        "train_loss_first": train_losses[0][1] if train_losses else None,
        "train_loss_last": train_losses[-1][1] if train_losses else None,
        "train_runtime_metrics": run.runtime,
        "checkpoint_dir": str(ckpt),
        "gradient_accumulation_steps": run.args.gradient_accumulation_steps,
        "world_size": int(os.environ.get("WORLD_SIZE", "1")),
        "bf16": run.args.bf16,
    }


# ---------------------------------------------------------------- outputs


def _last_epoch_train_loss(history: list[dict]) -> float | None:
    losses = [h for h in history if "loss" in h and "epoch" in h]
    if not losses:
        return None
    last_epoch = math.ceil(losses[-1]["epoch"] - 1e-9)
    tail = [h["loss"] for h in losses if math.ceil(h["epoch"] - 1e-9) == last_epoch] or [losses[-1]["loss"]]
    return sum(tail) / len(tail)


def _write(out_dir: str | os.PathLike, stage: str, model, tok, info: dict, metrics: dict, config_used: dict) -> None:
    """The output model folder: the model's files, the training's record and its loss curve."""
    history = info["history"]
    train_pts = [(h["step"], h["loss"]) for h in history if "loss" in h]
    metric = info["select_metric"]
    valid_pts = [(h["step"], h[metric]) for h in history if metric in h]
    if info.get("initial_valid_loss") is not None:
        valid_pts = [(0, info["initial_valid_loss"])] + valid_pts
    with ModelFolder.writing(out_dir) as out:
        save_model(model, tok, out)
        out.write_training({**info, "metrics": metrics, "config": config_used})
        out.write_loss_curve(loss_curve_html(f"{stage}: loss", train_pts, valid_pts, metrics))


def _metrics(info: dict, n_samples: int, wall: float) -> dict[str, float]:
    out = {
        "train_loss": _last_epoch_train_loss(info["history"]) or float("nan"),
        "train_loss_first": info["train_loss_first"] if info["train_loss_first"] is not None else float("nan"),
        "valid_loss": info["best_valid_loss"] if info["best_valid_loss"] is not None else float("nan"),
        "valid_loss_initial": info["initial_valid_loss"] if info["initial_valid_loss"] is not None else float("nan"),
        **{f"valid_{name}_loss": value for name, value in info["valid_losses_at_best"].items()},
        "tokens_per_s": info["tokens_per_s"],
        "samples": float(n_samples),
        "steps": float(info["global_step"]),
        "resumed_from_step": float(info["resumed_from_step"]),
        "epochs_run": info["epochs_run"],
        "wall_seconds": wall,
    }
    return out


# ---------------------------------------------------------------- steps


def _encoding(section) -> dict:
    """`data.encode`'s options from an SFT section."""
    return {
        "truncation": section.truncation,
        "loss_on_eos": section.loss_on_eos,
        "text_end": getattr(section, "narrative_end_token", True),
    }


def _encode_all(tok, examples, cutoff, **options):
    return [data_mod.encode(tok, ex, cutoff, **options) for ex in examples]


def _sft_step(stage: str, step_fn, train_fn, cfg: Config, folders) -> dict[str, float]:
    """What both SFT steps do around their training: the checkpoint folder's lock, the torchrun relaunch,
    and, after a successful training, the removal of the stage's old checkpoint folders."""
    dirs = SFTFolders.of(folders)
    section = getattr(cfg, stage)
    ckpt = checkpoint_root(stage, cfg, section, dirs.inputs())
    if "LOCAL_RANK" in os.environ:  # a torchrun rank: the process that launched the ranks holds the lock
        return _sft_train(stage, train_fn, cfg, dirs, ckpt)
    with checkpoint_lock(ckpt):
        launched = maybe_launch_distributed(step_fn, cfg, [d.path for d in dirs])
        metrics = launched if launched is not None else _sft_train(stage, train_fn, cfg, dirs, ckpt)
        remove_old_checkpoint_folders(ckpt, section.checkpoint_folders_kept)
    return metrics


def _sft_train(stage: str, train_fn, cfg: Config, dirs: SFTFolders, ckpt: Path) -> dict[str, float]:
    """Seeding, loading the input model, timing, and writing the output model (rank 0) around
    `train_fn(cfg, section, model, tok, dirs, ckpt)`, which returns the trained model, the training
    record and the metrics."""
    start = time.time()
    section, seed = getattr(cfg, stage), cfg.seed_for(stage)
    torch.manual_seed(seed)
    model, tok = load_model_and_tokenizer(dirs.model, dtype=getattr(torch, section.weights_dtype))
    model, info, metrics = train_fn(cfg, section, model, tok, dirs, ckpt)
    metrics["wall_seconds"] = time.time() - start
    if is_rank0():
        _write(dirs.out, stage, model, tok, info, metrics, {"seed": seed, stage: section.model_dump(mode="json")})
    return metrics


class SFTFolders(NamedTuple):
    """An SFT step's folders as handles: the model it starts from, its data, and the model it writes."""

    model: ModelFolder
    dataset: Dataset
    sid_index: SidIndex
    corpus: Corpus
    out: ModelFolder

    @classmethod
    def of(cls, folders) -> SFTFolders:
        model, dataset, sid_index, corpus, out = folders
        return cls(
            ModelFolder.at(model), Dataset.at(dataset), SidIndex.at(sid_index), Corpus.at(corpus), ModelFolder.at(out)
        )

    def inputs(self) -> list[Path]:
        """The folders the step reads, which its checkpoint key covers."""
        return [self.model.path, self.dataset.path, self.sid_index.path, self.corpus.path]


def _train_stage1(cfg: Config, s, model, tok, dirs: SFTFolders, ckpt: Path):
    dataset, sid_index, corpus = dirs.dataset, dirs.sid_index, dirs.corpus
    codes = sid_index.code_tokens(s.sid_token_order)
    base_vocab = len(tok)
    new_ids = extend_tokenizer(model, tok, codes, init=s.new_token_init)
    data_text = DataText(tok)  # after the SID codes are added: they are markers too
    seed = cfg.seed_for("stage1")
    examples, counts = tasks.stage1_examples(s, seed, dataset, sid_index, corpus, data_text)
    if s.valid_samples:  # one seeded sample: its first valid_samples for the loss, first hr_samples for HR@1
        valid_ex, valid_hist = tasks.next_sid_valid(dataset, sid_index, max(s.valid_samples, s.hr_samples), seed)
        loss_ex, hr_ex, hr_hist = valid_ex[: s.valid_samples], valid_ex[: s.hr_samples], valid_hist[: s.hr_samples]
    else:  # the loss on the whole split, HR@1 on a seeded sample of it
        loss_ex, _ = tasks.next_sid_valid(dataset, sid_index, 0, seed)
        hr_ex, hr_hist = tasks.next_sid_valid(dataset, sid_index, s.hr_samples, seed) if s.hr_samples else ([], [])
    train_rows = _encode_all(tok, examples, s.cutoff_len, **_encoding(s))
    valid_rows = _encode_all(tok, loss_ex, s.cutoff_len, **_encoding(s))
    model, info = train_sft(
        "stage1",
        cfg,
        s,
        model,
        tok,
        train_rows,
        {"sid": valid_rows},
        ckpt,
        new_ids,
        s.embedding_warmup_epochs,
        select="sid",
    )
    metrics = _metrics(info, len(train_rows), 0.0)
    if hr_ex and is_rank0():
        catalogue = sid_index.catalogue()
        n = len(hr_ex)
        rendered = [prompts.render_prompt(tok, ex.prompt, system=ex.system) for ex in hr_ex]
        preds = constrained_greedy_sid(model, tok, rendered, catalogue)
        valid_set = set(catalogue)
        metrics["valid_sid_rate"] = sum(p in valid_set for p in preds) / n
        metrics["hr_at_1"] = sum(p == ex.response for p, ex in zip(preds, hr_ex, strict=True)) / n
        metrics["hr_chance"] = 1.0 / len(valid_set)
        info["sample_predictions"] = [
            {"history": h, "target": ex.response, "predicted": p}
            for h, ex, p in list(zip(hr_hist, hr_ex, preds, strict=True))[:20]
        ]
    metrics["sid_tokens_added"] = float(len(tok) - base_vocab)
    metrics["data_markers_neutralised"] = float(data_text.count)
    info["task_counts"] = counts
    metrics.update({f"examples_{task}": float(counts.get(task, 0)) for task in tasks.STAGE1_TASKS})
    metrics["general_data_opted_out"] = float(s.tasks.instructions == 0)
    return model, info, metrics


def _train_stage2(cfg: Config, s, model, tok, dirs: SFTFolders, ckpt: Path):
    dataset, sid_index, corpus = dirs.dataset, dirs.sid_index, dirs.corpus
    missing = [c for c in sid_index.code_tokens() if c not in tok.get_vocab()]
    if missing:
        raise ValueError(
            f"stage2: the model in {dirs.model} lacks {len(missing)} SID tokens (e.g. {missing[:3]}); "
            "give it the sft-stage1 model"
        )
    data_text = DataText(tok)
    seed = cfg.seed_for("stage2")
    train_ex, reasoning_ex = tasks.stage2_examples(s, seed, sid_index, corpus, data_text)
    sid_ex, _ = tasks.next_sid_valid(dataset, sid_index, s.valid_samples, seed)
    train_rows = _encode_all(tok, train_ex, s.cutoff_len, **_encoding(s))
    valid_sets = {
        "sid": _encode_all(tok, sid_ex, s.cutoff_len, **_encoding(s)),
        "reasoning": _encode_all(tok, reasoning_ex, s.cutoff_len, **_encoding(s)),
    }
    model, info = train_sft("stage2", cfg, s, model, tok, train_rows, valid_sets, ckpt, select=s.select_on)
    metrics = _metrics(info, len(train_rows), 0.0)
    metrics["reasoning_holdout"] = float(len(reasoning_ex))
    metrics["data_markers_neutralised"] = float(data_text.count)
    return model, info, metrics


def sft_stage1(
    cfg: Config,
    model_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    sid_index_dir: str | os.PathLike,
    corpus_dir: str | os.PathLike,
    out_model_dir: str | os.PathLike,
) -> dict[str, float]:
    """The `sft-stage1` step: add the SID tokens, then the multi-task SID-language alignment SFT."""
    tasks.require_stage1_data(cfg.stage1, dataset_dir, corpus_dir)  # before any model loads or rank starts
    return _sft_step(
        "stage1", sft_stage1, _train_stage1, cfg, (model_dir, dataset_dir, sid_index_dir, corpus_dir, out_model_dir)
    )


def sft_stage2(
    cfg: Config,
    model_dir: str | os.PathLike,
    dataset_dir: str | os.PathLike,
    sid_index_dir: str | os.PathLike,
    corpus_dir: str | os.PathLike,
    out_model_dir: str | os.PathLike,
) -> dict[str, float]:
    """The `sft-stage2` step: reasoning-activation SFT on the teacher's reasoning paths."""
    return _sft_step(
        "stage2", sft_stage2, _train_stage2, cfg, (model_dir, dataset_dir, sid_index_dir, corpus_dir, out_model_dir)
    )
