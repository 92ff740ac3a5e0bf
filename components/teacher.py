"""Component for synthesize-corpus."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from sidreasoner.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def synthesize_corpus(
    step: str,
    seed: int,
    teacher: dict,
    dataset: Input[Dataset],
    sid_index: Input[Dataset],
    corpus: Output[Dataset],
    metrics: Output[Metrics],
    code_version: str = "",
    generation: int = 0,
    compiled_sections: Optional[dict] = None,
):
    """Have the teacher write item narratives, history narratives and reasoning paths."""
    from sidreasoner.components.runtime import run_component

    run_component(step, locals())
