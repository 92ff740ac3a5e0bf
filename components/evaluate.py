"""Components for evaluation: the baselines, any trained model (one component, a task per stage),
and the report; for the evaluate pipeline, the model trained elsewhere and its report."""

from typing import Optional

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from sidreasoner.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate_baselines(
    step: str,
    seed: int,
    eval: dict,
    dataset: Input[Dataset],
    sid_index: Input[Dataset],
    baselines: Output[Dataset],
    metrics: Output[Metrics],
    code_version: str = "",
    generation: int = 0,
    compiled_sections: Optional[dict] = None,
):
    """Popularity and random rankings, scored like the models."""
    from sidreasoner.components.runtime import run_component

    run_component(step, locals())


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate(
    step: str,
    seed: int,
    eval: dict,
    model: Input[Model],
    dataset: Input[Dataset],
    sid_index: Input[Dataset],
    evaluation: Output[Dataset],
    metrics: Output[Metrics],
    code_version: str = "",
    generation: int = 0,
    compiled_sections: Optional[dict] = None,
):
    """Constrained SID beam search with a trained model, with and without thinking: HR/NDCG@K."""
    from sidreasoner.components.runtime import run_component

    run_component(step, locals())


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def report(
    step: str,
    seed: int,
    eval: dict,
    baselines: Input[Dataset],
    stage1_eval: Input[Dataset],
    stage2_eval: Input[Dataset],
    stage3_eval: Input[Dataset],
    dataset: Input[Dataset],
    sid_index: Input[Dataset],
    report: Output[Dataset],
    metrics: Output[Metrics],
    report_html: Output[HTML],
    report_md: Output[Markdown],
    code_version: str = "",
    generation: int = 0,
    compiled_sections: Optional[dict] = None,
):
    """One page comparing the baselines and every stage, with sample users and reasoning traces."""
    from sidreasoner.components.runtime import run_component

    run_component(step, locals())


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def load_model(
    step: str,
    seed: int,
    model: dict,
    sid_index: Input[Dataset],
    trained_model: Output[Model],
    metrics: Output[Metrics],
    code_version: str = "",
    generation: int = 0,
    compiled_sections: Optional[dict] = None,
):
    """A model trained elsewhere (model.base), checked to hold every SID token of the index as one token."""
    from sidreasoner.components.runtime import run_component

    run_component(step, locals())


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def report_model(
    step: str,
    seed: int,
    eval: dict,
    baselines: Input[Dataset],
    model_eval: Input[Dataset],
    dataset: Input[Dataset],
    sid_index: Input[Dataset],
    report: Output[Dataset],
    metrics: Output[Metrics],
    report_html: Output[HTML],
    report_md: Output[Markdown],
    code_version: str = "",
    generation: int = 0,
    compiled_sections: Optional[dict] = None,
):
    """One page comparing the baselines and the model model.base names, with sample users and reasoning traces."""
    from sidreasoner.components.runtime import run_component

    run_component(step, locals())
