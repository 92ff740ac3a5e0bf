"""Components for the model side: prepare-base-model, SFT (Stages 1 and 2), rl-stage3,
merge-checkpoint, export-model."""

from typing import Optional

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output

from sidreasoner.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def prepare_base_model(
    step: str,
    seed: int,
    model: dict,
    dataset: Input[Dataset],
    corpus: Input[Dataset],
    base_model: Output[Model],
    metrics: Output[Metrics],
    code_version: str = "",
    generation: int = 0,
    compiled_sections: Optional[dict] = None,
):
    """Resolve the base model (built-in tiny Qwen3, hub id, or saved folder) into a Model artifact."""
    from sidreasoner.components.runtime import run_component

    run_component(step, locals())


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def sft(
    step: str,
    seed: int,
    base_model: Input[Model],
    dataset: Input[Dataset],
    sid_index: Input[Dataset],
    corpus: Input[Dataset],
    model: Output[Model],
    metrics: Output[Metrics],
    loss_curve: Output[HTML],
    stage1: Optional[dict] = None,
    stage2: Optional[dict] = None,
    code_version: str = "",
    generation: int = 0,
    compiled_sections: Optional[dict] = None,
):
    """One SFT stage from `base_model`: Stage 1 (SID-language alignment) or Stage 2 (reasoning
    activation). A task receives only its own stage's config section."""
    from sidreasoner.components.runtime import run_component

    run_component(step, locals())


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def rl_stage3(
    step: str,
    seed: int,
    stage3: dict,
    stage2_model: Input[Model],
    dataset: Input[Dataset],
    sid_index: Input[Dataset],
    corpus: Input[Dataset],
    stage3_checkpoint: Output[Model],
    metrics: Output[Metrics],
    reward_curve: Output[HTML],
    code_version: str = "",
    generation: int = 0,
    compiled_sections: Optional[dict] = None,
):
    """Stage 3: GRPO with the SID reward, from the Stage 2 model, into a raw checkpoint (the corpus names the
    narrated samples, the training prompts with stage3.prompts=narrated)."""
    from sidreasoner.components.runtime import run_component

    run_component(step, locals())


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def merge_checkpoint(
    step: str,
    seed: int,
    stage3: dict,
    stage3_checkpoint: Input[Model],
    stage2_model: Input[Model],
    stage3_model: Output[Model],
    metrics: Output[Metrics],
    code_version: str = "",
    generation: int = 0,
    compiled_sections: Optional[dict] = None,
):
    """The raw Stage 3 checkpoint to a plain Hugging Face model."""
    from sidreasoner.components.runtime import run_component

    run_component(step, locals())


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def export_model(
    step: str,
    seed: int,
    export: dict,
    stage3_model: Input[Model],
    sid_index: Input[Dataset],
    dataset: Input[Dataset],
    model_export: Output[Model],
    metrics: Output[Metrics],
    code_version: str = "",
    generation: int = 0,
    compiled_sections: Optional[dict] = None,
):
    """Push the Stage 3 model with its serving catalogue to export.uri (a bucket or folder); its record says where."""
    from sidreasoner.components.runtime import run_component

    run_component(step, locals())
