"""The `rl-stage3` step and its `trl` backend: TRL's GRPOTrainer (single process, CPU or one GPU)
on the Stage 2 model, with the shared SID reward (`sidreasoner.rl.reward`) and RL data
(`sidreasoner.rl.data`), resumable checkpoints, and a raw checkpoint (`Stage3Checkpoint`) as output:
the saved model (format hf) or, with stage3.finetune=lora, only the LoRA adapter (format peft_lora);
`merge-checkpoint` turns either into a plain Hugging Face model.

Settings map onto TRL as follows: stage3.num_generations -> num_generations (group size);
kl_beta -> beta (TRL's per-token KL is the k3 estimator, verl's `low_var_kl` without its clamp);
train_batch_size prompts per optimizer step -> per_device_train_batch_size = micro_batch_size
completions and gradient_accumulation_steps = train_batch_size * num_generations / micro_batch_size;
max_response_length -> max_completion_length. TRL 1.16 has no prompt-length cap, so prompts longer
than max_prompt_length are left out before training.
"""

from __future__ import annotations

import functools
import logging
import time
from pathlib import Path

import torch

from sidreasoner.artifacts import Corpus, Dataset, ModelFolder, SidIndex, Stage3Checkpoint
from sidreasoner.config import Config
from sidreasoner.model import prompts
from sidreasoner.model.checkpoints import checkpoint_root, remove_old_checkpoint_folders, resumable_checkpoint
from sidreasoner.model.folder_lock import checkpoint_lock
from sidreasoner.model.loading import load_model_and_tokenizer, save_model
from sidreasoner.rl import data as rl_data
from sidreasoner.rl import reward as rl_reward
from sidreasoner.rl.checkpoint import write_run
from sidreasoner.rl.metrics import summary_metrics
from sidreasoner.train.checkpointing import FiniteTraining, ResumedAt, SealCheckpoints

log = logging.getLogger(__name__)


def _dataset(tok, rows: list[dict], max_prompt_length: int):
    from datasets import Dataset

    kept, skipped = rl_data.fitting_rows(tok, rows, max_prompt_length)
    if not kept:
        raise ValueError(f"stage3: every prompt is longer than max_prompt_length={max_prompt_length}")
    return Dataset.from_list(
        [
            {
                "prompt": prompts.render_chat_prompt(tok, r["prompt"], thinking=True),
                "ground_truth": r["reward_model"]["ground_truth"],
            }
            for r in kept
        ]
    ), skipped


def _grpo_config(cfg: Config, ckpt: Path):
    from trl import GRPOConfig

    s, seed = cfg.stage3, cfg.seed_for("stage3")
    cuda = torch.cuda.is_available()
    completions = s.train_batch_size * s.num_generations
    return GRPOConfig(
        output_dir=str(ckpt),
        per_device_train_batch_size=s.micro_batch_size,
        gradient_accumulation_steps=completions // s.micro_batch_size,
        num_generations=s.num_generations,
        max_completion_length=s.max_response_length,
        temperature=s.temperature,
        top_p=s.top_p,
        beta=s.kl_beta,
        learning_rate=s.lr,
        lr_scheduler_type=s.lr_scheduler,
        warmup_steps=s.warmup_steps or s.warmup_ratio,  # an int >= 1 is steps, a float < 1 a share of them
        num_train_epochs=s.epochs,
        max_steps=s.max_steps if s.max_steps else -1,
        save_strategy="steps",
        save_steps=s.save_steps,
        save_total_limit=s.save_total_limit,
        logging_steps=s.logging_steps,
        logging_first_step=True,
        bf16=bool(s.bf16 and cuda and torch.cuda.is_bf16_supported()),
        use_cpu=not cuda,
        report_to="none",
        seed=seed,
        data_seed=seed,
        gradient_checkpointing=s.gradient_checkpointing,
        dataloader_num_workers=0,
        log_completions=False,
        disable_tqdm=True,
    )


@functools.cache
def _grpo_trainer_class():
    """TRL's GRPOTrainer stopping at the first non-finite value (`FiniteTraining`), whose prompt order is a
    function of the seed and the epoch alone: TRL's RepeatSampler draws every epoch from one generator seeded
    once, which a run resumed in a later epoch would restart. (trl is imported only when the backend runs.)"""
    from trl import GRPOTrainer
    from trl.trainer.utils import RepeatSampler

    class EpochRepeatSampler(RepeatSampler):
        def set_epoch(self, epoch: int) -> None:  # the Trainer's dataloader calls it before each epoch
            self.generator.manual_seed(self.seed + epoch)

    class Trainer(FiniteTraining, GRPOTrainer):
        def _get_train_sampler(self, dataset=None):  # GRPOTrainer's sampler, with set_epoch
            return EpochRepeatSampler(
                data_source=self.train_dataset if dataset is None else dataset,
                mini_repeat_count=self.num_generations,
                batch_size=self.args.generation_batch_size // self.num_generations,
                repeat_count=self.num_iterations * self.args.steps_per_generation,
                shuffle=self.shuffle_dataset,
                seed=self.args.seed,
            )

    return Trainer


def _peft_config(s):
    """LoRA on every linear layer (stage3.finetune=lora); None for full fine-tuning."""
    if s.finetune != "lora":
        return None
    from peft import LoraConfig

    return LoraConfig(
        r=s.lora_r,
        lora_alpha=s.lora_alpha,
        lora_dropout=s.lora_dropout,
        target_modules="all-linear",
        task_type="CAUSAL_LM",
    )


def _save_policy(model, tok, out: Path, finetune: str) -> tuple[str, str]:
    """The trained policy into the raw checkpoint folder `out`; returns (format, path) for its manifest.
    LoRA saves the adapter alone: merge-checkpoint folds it into the Stage 2 model."""
    if finetune == "lora":
        model.save_pretrained(out / "adapter")
        return "peft_lora", "adapter"
    save_model(model, tok, out / "model")
    return "hf", "model"


def _summary(history: list[dict]) -> dict:
    steps = [h for h in history if "reward" in h]
    per_step = [
        {
            "step": h["step"],
            "reward": h["reward"],
            "reward_std": h.get("reward_std"),
            "kl": h.get("kl"),
            "completion_length": h.get("completions/mean_length"),
            **{k: v for k, v in h.items() if k.startswith("sid/")},
        }
        for h in steps
    ]
    return {"per_step": per_step}


def train_trl(
    cfg: Config,
    stage2_model_dir: ModelFolder | Path,
    dataset_dir: Dataset | Path,
    sid_index_dir: SidIndex | Path,
    corpus_dir: Corpus | Path | None,
    out_checkpoint_dir: Stage3Checkpoint | Path,
) -> dict[str, float]:
    """Train into the checkpoint folder under its lock, then remove the stage's old checkpoint folders."""
    s = cfg.stage3
    stage2, dataset, sid_index = ModelFolder.at(stage2_model_dir), Dataset.at(dataset_dir), SidIndex.at(sid_index_dir)
    corpus = None if corpus_dir is None else Corpus.at(corpus_dir)
    inputs = [stage2.path, dataset.path, sid_index.path]
    ckpt = checkpoint_root("stage3", cfg, s, inputs + ([Path(corpus)] if s.prompts == "narrated" else []))
    with checkpoint_lock(ckpt):
        metrics = _train_and_save(cfg, stage2, dataset, sid_index, corpus, ckpt, Path(out_checkpoint_dir))
        remove_old_checkpoint_folders(ckpt, s.checkpoint_folders_kept)
    return metrics


def _train_and_save(
    cfg: Config,
    stage2: ModelFolder,
    dataset: Dataset,
    sid_index: SidIndex,
    corpus: Corpus | None,
    ckpt: Path,
    out: Path,
) -> dict[str, float]:
    start = time.time()
    s = cfg.stage3
    seed = cfg.seed_for("stage3")
    torch.manual_seed(seed)
    model, tok = load_model_and_tokenizer(stage2.path)
    rl_data.check_sid_tokens(tok, sid_index, stage2.path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    # TRL does not validate: the validation rows are only written next to the training rows.
    train_rows, valid_rows = rl_data.stage3_rows(s, seed, dataset, sid_index, corpus)
    train_ds, skipped = _dataset(tok, train_rows, s.max_prompt_length)
    catalogue = rl_reward.load_catalogue(sid_index)
    reward_fn = rl_reward.make_trl_reward(s.reward, catalogue)

    ckpt.mkdir(parents=True, exist_ok=True)
    resume = resumable_checkpoint(ckpt)
    if resume:
        log.info("stage3: resuming from %s", resume)
    args = _grpo_config(cfg, ckpt)
    started = ResumedAt()
    trainer = _grpo_trainer_class()(
        model=model,
        reward_funcs=[reward_fn],
        args=args,
        train_dataset=train_ds,
        processing_class=tok,
        peft_config=_peft_config(s),
        callbacks=[SealCheckpoints(), started],
        stage="stage3",
        lr_setting=f"stage3.lr={s.lr:g}",
    )
    t0 = time.time()
    trainer.train(resume_from_checkpoint=str(resume) if resume else None)
    train_wall = time.time() - t0
    resumed_from = started.step
    history = list(trainer.state.log_history)
    summary = _summary(history)
    steps_run = trainer.state.global_step - resumed_from
    completions_done = steps_run * s.train_batch_size * s.num_generations
    metrics = summary_metrics(
        summary["per_step"],
        trainer.state.global_step,
        resumed_from,
        len(train_ds),
        skipped,
        completions_done,
        train_wall,
        0.0,
    )
    model = trainer.model
    model.config.use_cache = True
    info = {
        "stage": "stage3",
        "backend": "trl",
        "per_step": summary["per_step"],
        "history": history,
        "checkpoint_dir": str(ckpt),
        "global_step": trainer.state.global_step,
        "max_steps": trainer.state.max_steps,
        "gradient_accumulation_steps": args.gradient_accumulation_steps,
        "per_device_train_batch_size": args.per_device_train_batch_size,
        "bf16": args.bf16,
        "finetune": s.finetune,
        "reward_fn": reward_fn.__name__,
    }
    metrics["wall_seconds"] = time.time() - start
    with Stage3Checkpoint.writing(out) as raw:
        fmt, policy_path = _save_policy(model, tok, raw.path, s.finetune)
        write_run(raw, cfg, train_rows, valid_rows, info, metrics, fmt, policy_path)
    return metrics
