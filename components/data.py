"""Components for the data half: download-data, preprocess."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from sidreasoner.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def download_data(
    step: str,
    seed: int,
    data: dict,
    raw: Output[Dataset],
    metrics: Output[Metrics],
    code_version: str = "",
    generation: int = 0,
    compiled_sections: Optional[dict] = None,
):
    """Fetch raw reviews and item metadata into the `raw` folder."""
    from sidreasoner.components.runtime import run_component

    run_component(step, locals())


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def preprocess(
    step: str,
    seed: int,
    data: dict,
    raw: Input[Dataset],
    dataset: Output[Dataset],
    metrics: Output[Metrics],
    code_version: str = "",
    generation: int = 0,
    compiled_sections: Optional[dict] = None,
):
    """Filter, k-core, sliding windows and the chronological split, as Parquet."""
    from sidreasoner.components.runtime import run_component

    run_component(step, locals())
