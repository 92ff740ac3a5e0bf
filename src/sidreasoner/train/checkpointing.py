"""The Trainer's side of resumable checkpoints, shared by SFT (transformers' Trainer) and the TRL backend
of rl-stage3 (TRL's GRPOTrainer): each checkpoint sealed once saved (`model.checkpoints.seal_checkpoint`),
the epoch's evaluation inside the checkpoint saved at the epoch's end, the global step the Trainer really
resumed at, and training stopped at the first non-finite loss, gradient norm or weight, with no checkpoint
of such weights kept."""

from __future__ import annotations

import math
from pathlib import Path

import torch
from transformers import TrainerCallback

from sidreasoner.model.checkpoints import remove_checkpoints_from, seal_checkpoint


class SealCheckpoints(TrainerCallback):
    """Seal each checkpoint once every rank has saved its part; the seal records whether the training had
    finished with it (its last step, or early stopping)."""

    def on_save(self, args, state, control, **kwargs):
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.barrier()
        if state.is_world_process_zero:
            finished = bool(control.should_training_stop or state.global_step >= state.max_steps)
            seal_checkpoint(
                Path(args.output_dir) / f"checkpoint-{state.global_step}",
                global_step=state.global_step,
                finished=finished,
            )


class SaveAfterEpochEvaluation(TrainerCallback):
    """With an evaluation per epoch, a checkpoint due at the last step of an epoch (or of the training) is
    saved after that epoch's evaluation, not before it as the Trainer does: a run resumed from it then has
    the evaluation (its loss, curve point, best weights and early-stopping decision) and does not run it again."""

    def __init__(self):
        self.deferred = False

    def on_step_end(self, args, state, control, **kwargs):
        if args.eval_strategy != "epoch" or not control.should_save:
            return
        if float(state.epoch or 0).is_integer() or control.should_training_stop:
            control.should_save, self.deferred = False, True

    def on_epoch_end(self, args, state, control, **kwargs):
        if self.deferred:
            control.should_save, self.deferred = True, False


class ResumedAt(TrainerCallback):
    """The global step the training started at: the loaded checkpoint's, 0 without one."""

    def __init__(self):
        self.step = 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.step = state.global_step


class NonFiniteTrainingError(RuntimeError):
    """The training met a non-finite loss, gradient norm or weight."""


class FiniteTraining:
    """A mixin for a transformers Trainer (first in the bases): stop at the first non-finite training loss or
    gradient norm (before the optimizer step) or trainable weight (after it, before a checkpoint can hold it).
    The checkpoints of the weights at fault and later ones are removed; the error names `stage`, the global
    step, the loss and `lr_setting` ("stage1.lr=0.001"), the setting that most often causes it."""

    def __init__(self, *args, stage: str, lr_setting: str, **kwargs):
        super().__init__(*args, **kwargs)
        self.stage, self.lr_setting, self.last_loss = stage, lr_setting, None
        self.add_callback(_FiniteWeights(self))

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        value = float(loss.detach().float().mean())
        if not math.isfinite(value):
            self.stop_non_finite(f"the training loss is {value}", self.state.global_step)
        self.last_loss = value
        return loss

    def _get_grad_norm(self, model, grad_norm=None):
        norm = super()._get_grad_norm(model, grad_norm)
        if norm is not None and not math.isfinite(float(norm)):
            self.stop_non_finite(f"the gradient norm is {float(norm)}", self.state.global_step)
        return norm

    def stop_non_finite(self, what: str, first_bad_step: int) -> None:
        """Raise NonFiniteTrainingError; the weights after `first_bad_step` optimizer steps are at fault."""
        removed = remove_checkpoints_from(Path(self.args.output_dir), first_bad_step) if self.args.should_save else []
        last = f"{self.last_loss:.4g}" if self.last_loss is not None else "none yet"
        raise NonFiniteTrainingError(
            f"{self.stage}: {what} at global step {self.state.global_step} of {self.state.max_steps} (last finite "
            f"loss: {last}); training stopped. {self.lr_setting} is the likely cause: lower it"
            + (f". Removed the checkpoints of those weights: {', '.join(removed)}" if removed else "")
        )


class _FiniteWeights(TrainerCallback):
    """After each optimizer step (before a checkpoint of it): the norm of each trainable weight is finite. It
    is not when a weight holds inf or NaN, or values so large (beyond ~1e19 in float32 or bfloat16) that their
    squares overflow: such weights give a non-finite loss, or a sampling error, at the next step."""

    def __init__(self, trainer: FiniteTraining):
        self.trainer = trainer

    def on_step_end(self, args, state, control, model=None, **kwargs):
        params = [p.detach() for p in model.parameters() if p.requires_grad] if model is not None else []
        norms = [torch.linalg.vector_norm(p).float() for p in params]  # no float32 copy of a bf16 weight
        if norms and not torch.isfinite(torch.stack(norms)).all():
            self.trainer.stop_non_finite("the weights' norm is not finite after the optimizer step", state.global_step)
