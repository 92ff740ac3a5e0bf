"""The component for serving: deploy-model (a KServe InferenceService on the exported model)."""

from typing import Optional

from kfp import dsl
from kfp.dsl import Input, Metrics, Model, Output

from sidreasoner.components.images import CPU_IMAGE


@dsl.component(base_image=CPU_IMAGE, install_kfp_package=False)
def deploy_model(
    step: str,
    seed: int,
    serve: dict,
    eval: dict,
    serving_pod: dict,
    model_export: Input[Model],
    deployment: Output[Model],
    metrics: Output[Metrics],
    code_version: str = "",
    generation: int = 0,
    compiled_sections: Optional[dict] = None,
):
    """Create or update the InferenceService serving the exported model; wait until it is Ready.
    `serving_pod`: the predictor pod's image and cluster settings, fixed when the pipeline was compiled."""
    import json
    import os

    from sidreasoner.artifacts import Deployment
    from sidreasoner.components.runtime import run_component
    from sidreasoner.serve.deploy import SERVING_POD_ENV

    os.environ[SERVING_POD_ENV] = json.dumps(serving_pod)
    run_component(step, locals())
    # The URL is text, which Metrics cannot hold: it goes on the artifact's metadata (shown in the UI).
    deployment.metadata.update(Deployment(deployment.path).record())
