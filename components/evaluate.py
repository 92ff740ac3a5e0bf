"""Components for evaluation: baselines, each trained stage, and the report."""

from kfp import dsl
from kfp.dsl import HTML, Dataset, Input, Markdown, Metrics, Model, Output

from sidreasoner.components.images import CPU_IMAGE, TRAIN_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def evaluate_baselines(seed: int, eval: dict, dataset: Input[Dataset], sid_index: Input[Dataset],
                       baselines: Output[Dataset], metrics: Output[Metrics]):
    """Popularity and random rankings, scored like the models."""
    from sidreasoner.components.runtime import run_component

    run_component("evaluate-baselines", {"seed": seed, "eval": eval},
                  {"dataset": dataset.path, "sid_index": sid_index.path, "baselines": baselines.path}, metrics)


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def evaluate_stage1(seed: int, eval: dict, stage1_model: Input[Model], dataset: Input[Dataset],
                    sid_index: Input[Dataset], stage1_eval: Output[Dataset], metrics: Output[Metrics]):
    """Constrained SID beam search with the Stage 1 model."""
    from sidreasoner.components.runtime import run_component

    run_component("evaluate-stage1", {"seed": seed, "eval": eval},
                  {"stage1_model": stage1_model.path, "dataset": dataset.path, "sid_index": sid_index.path,
                   "stage1_eval": stage1_eval.path}, metrics)


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def evaluate_stage2(seed: int, eval: dict, stage2_model: Input[Model], dataset: Input[Dataset],
                    sid_index: Input[Dataset], stage2_eval: Output[Dataset], metrics: Output[Metrics]):
    """Constrained SID beam search with the Stage 2 model, with and without thinking."""
    from sidreasoner.components.runtime import run_component

    run_component("evaluate-stage2", {"seed": seed, "eval": eval},
                  {"stage2_model": stage2_model.path, "dataset": dataset.path, "sid_index": sid_index.path,
                   "stage2_eval": stage2_eval.path}, metrics)


@dsl.component(base_image=TRAIN_IMAGE, install_kfp_package=False)
def evaluate_stage3(seed: int, eval: dict, stage3_model: Input[Model], dataset: Input[Dataset],
                    sid_index: Input[Dataset], stage3_eval: Output[Dataset], metrics: Output[Metrics]):
    """Constrained SID beam search with the Stage 3 (RL) model, with and without thinking."""
    from sidreasoner.components.runtime import run_component

    run_component("evaluate-stage3", {"seed": seed, "eval": eval},
                  {"stage3_model": stage3_model.path, "dataset": dataset.path, "sid_index": sid_index.path,
                   "stage3_eval": stage3_eval.path}, metrics)


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def report(seed: int, eval: dict, baselines: Input[Dataset], stage1_eval: Input[Dataset], stage2_eval: Input[Dataset],
           stage3_eval: Input[Dataset], dataset: Input[Dataset], sid_index: Input[Dataset], report: Output[Dataset],
           metrics: Output[Metrics], report_html: Output[HTML], report_md: Output[Markdown]):
    """One page comparing the baselines and every stage, with sample users and reasoning traces."""
    from sidreasoner.components.runtime import run_component

    run_component("report", {"seed": seed, "eval": eval},
                  {"baselines": baselines.path, "stage1_eval": stage1_eval.path, "stage2_eval": stage2_eval.path,
                   "stage3_eval": stage3_eval.path, "dataset": dataset.path, "sid_index": sid_index.path,
                   "report": report.path}, metrics, {"report_html": report_html, "report_md": report_md})
