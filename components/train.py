"""Components for the model side: prepare-base-model, sft-stage1, sft-stage2, rl-stage3, merge-checkpoint
(training image), and export-model (CPU image: it only uploads)."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from sidreasoner.components.images import CPU_IMAGE, TRAIN_IMAGE


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def prepare_base_model(seed: int, model: dict, dataset: Input[Dataset], corpus: Input[Dataset],
                       base_model: Output[Model], metrics: Output[Metrics]):
    """Resolve the base model (built-in tiny Qwen3, hub id, or saved folder) into a Model artifact."""
    from sidreasoner.components.runtime import run_component

    run_component("prepare-base-model", {"seed": seed, "model": model},
                  {"dataset": dataset.path, "corpus": corpus.path, "base_model": base_model.path}, metrics)


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def sft_stage1(seed: int, stage1: dict, base_model: Input[Model], dataset: Input[Dataset], sid_index: Input[Dataset],
               corpus: Input[Dataset], stage1_model: Output[Model], metrics: Output[Metrics],
               loss_curve: Output[HTML]):
    """Stage 1: add SID tokens, multi-task SID-language alignment SFT."""
    from sidreasoner.components.runtime import run_component

    run_component("sft-stage1", {"seed": seed, "stage1": stage1},
                  {"base_model": base_model.path, "dataset": dataset.path, "sid_index": sid_index.path,
                   "corpus": corpus.path, "stage1_model": stage1_model.path}, metrics, {"loss_curve": loss_curve})


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def sft_stage2(seed: int, stage2: dict, stage1_model: Input[Model], dataset: Input[Dataset], sid_index: Input[Dataset],
               corpus: Input[Dataset], stage2_model: Output[Model], metrics: Output[Metrics],
               loss_curve: Output[HTML]):
    """Stage 2: reasoning-activation SFT on the teacher's reasoning paths."""
    from sidreasoner.components.runtime import run_component

    run_component("sft-stage2", {"seed": seed, "stage2": stage2},
                  {"stage1_model": stage1_model.path, "dataset": dataset.path, "sid_index": sid_index.path,
                   "corpus": corpus.path, "stage2_model": stage2_model.path}, metrics, {"loss_curve": loss_curve})


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def rl_stage3(seed: int, stage3: dict, stage2_model: Input[Model], dataset: Input[Dataset], sid_index: Input[Dataset],
              stage3_checkpoint: Output[Model], metrics: Output[Metrics], reward_curve: Output[HTML]):
    """Stage 3: GRPO with the SID reward, from the Stage 2 model, into a raw checkpoint."""
    from sidreasoner.components.runtime import run_component

    run_component("rl-stage3", {"seed": seed, "stage3": stage3},
                  {"stage2_model": stage2_model.path, "dataset": dataset.path, "sid_index": sid_index.path,
                   "stage3_checkpoint": stage3_checkpoint.path}, metrics, {"reward_curve": reward_curve})


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def merge_checkpoint(seed: int, stage3: dict, stage3_checkpoint: Input[Model], stage2_model: Input[Model],
                     stage3_model: Output[Model], metrics: Output[Metrics]):
    """The raw Stage 3 checkpoint to a plain Hugging Face model."""
    from sidreasoner.components.runtime import run_component

    run_component("merge-checkpoint", {"seed": seed, "stage3": stage3},
                  {"stage3_checkpoint": stage3_checkpoint.path, "stage2_model": stage2_model.path,
                   "stage3_model": stage3_model.path}, metrics)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def export_model(seed: int, export: dict, stage3_model: Input[Model], model_export: Output[Dataset],
                 metrics: Output[Metrics]):
    """Push the Stage 3 model to export.uri (a bucket or folder); export.json records where."""
    from sidreasoner.components.runtime import run_component

    run_component("export-model", {"seed": seed, "export": export},
                  {"stage3_model": stage3_model.path, "model_export": model_export.path}, metrics)
