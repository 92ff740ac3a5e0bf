"""Components for the SID half: embed-items, quantize-sids."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Dataset, Input, Metrics, Output

from sidreasoner.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def embed_items(
    step: str,
    seed: int,
    embed: dict,
    dataset: Input[Dataset],
    embeddings: Output[Dataset],
    metrics: Output[Metrics],
    code_version: str = "",
    generation: int = 0,
    compiled_sections: Optional[dict] = None,
):
    """Encode every item's text into a dense vector."""
    from sidreasoner.components.runtime import run_component

    run_component(step, locals())


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def quantize_sids(
    step: str,
    seed: int,
    sid: dict,
    dataset: Input[Dataset],
    embeddings: Input[Dataset],
    sid_index: Output[Dataset],
    metrics: Output[Metrics],
    code_version: str = "",
    generation: int = 0,
    compiled_sections: Optional[dict] = None,
):
    """Quantize embeddings into collision-free Semantic IDs and the catalogue of valid SIDs."""
    from sidreasoner.components.runtime import run_component

    run_component(step, locals())
