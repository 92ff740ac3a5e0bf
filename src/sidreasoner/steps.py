"""The pipeline's steps as plain functions over folders: the one table the CLI, the KFP
components and the pipeline all read.

Each step reads the artifact folders named in `inputs`, writes the folders named in `outputs`
(atomically), and returns flat numeric metrics.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidreasoner import config as config_mod
from sidreasoner.config import Config


@dataclass(frozen=True)
class Step:
    name: str
    summary: str
    function: str  # "module:function", imported only when the step runs
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    # HTML pages a step writes inside an output folder, published as their own artifacts so the
    # KFP UI shows them: (artifact name, output folder, file inside it).
    reports: tuple[tuple[str, str, str], ...] = ()

    def load(self):
        module, attr = self.function.split(":")
        return getattr(importlib.import_module(module), attr)


STEPS: dict[str, Step] = {
    s.name: s
    for s in (
        Step("download-data", "fetch raw reviews and item metadata (demo generator, Amazon 2018/2023, or a folder)",
             "sidreasoner.data.download:download_data", (), ("raw",)),
        Step("preprocess", "title filter, time window, iterative k-core, sliding windows, chronological split",
             "sidreasoner.data.preprocess:preprocess", ("raw",), ("dataset",)),
        Step("embed-items", "item text to dense vectors with a sentence-transformers encoder",
             "sidreasoner.sid.embed:embed_items", ("dataset",), ("embeddings",)),
        Step("quantize-sids", "RQ-VAE or residual k-means to Semantic IDs, collision handling",
             "sidreasoner.sid.quantize:quantize_sids", ("dataset", "embeddings"), ("sid_index",)),
        Step("synthesize-corpus", "teacher LLM writes item narratives, history narratives and reasoning paths "
             "(API key from $SIDREASONER_TEACHER_API_KEY or $OPENAI_API_KEY, never from config)",
             "sidreasoner.teacher.corpus:synthesize_corpus", ("dataset", "sid_index"), ("corpus",)),
        Step("evaluate-baselines", "popularity and random rankings through the evaluation's metrics",
             "sidreasoner.eval.evaluate:evaluate_baselines", ("dataset", "sid_index"), ("baselines",)),
        Step("prepare-base-model", "resolve the base model: the built-in tiny Qwen3, a hub id, or a saved folder",
             "sidreasoner.train.base:prepare_base_model", ("dataset", "corpus"), ("base_model",)),
        Step("sft-stage1", "add SID tokens; multi-task SID-language alignment SFT",
             "sidreasoner.train.sft:sft_stage1", ("base_model", "dataset", "sid_index", "corpus"), ("stage1_model",),
             reports=(("loss_curve", "stage1_model", "loss_curve.html"),)),
        Step("evaluate-stage1", "constrained SID beam search with the Stage 1 model, HR/NDCG@K",
             "sidreasoner.eval.evaluate:evaluate", ("stage1_model", "dataset", "sid_index"), ("stage1_eval",)),
        Step("sft-stage2", "reasoning-activation SFT on the teacher's reasoning paths",
             "sidreasoner.train.sft:sft_stage2", ("stage1_model", "dataset", "sid_index", "corpus"), ("stage2_model",),
             reports=(("loss_curve", "stage2_model", "loss_curve.html"),)),
        Step("evaluate-stage2", "constrained SID beam search with the Stage 2 model, with and without thinking",
             "sidreasoner.eval.evaluate:evaluate", ("stage2_model", "dataset", "sid_index"), ("stage2_eval",)),
        Step("rl-stage3", "GRPO on the SID reward from the Stage 2 model (stage3.backend: trl, or verl on GPUs); "
             "writes a raw checkpoint",
             "sidreasoner.rl.stage3:rl_stage3", ("stage2_model", "dataset", "sid_index"), ("stage3_checkpoint",),
             reports=(("reward_curve", "stage3_checkpoint", "reward_curve.html"),)),
        Step("merge-checkpoint", "the raw Stage 3 checkpoint (verl FSDP shards, a LoRA adapter, or a saved model) "
             "to a plain Hugging Face model, checked by reloading it",
             "sidreasoner.rl.merge:merge_checkpoint", ("stage3_checkpoint", "stage2_model"), ("stage3_model",)),
        Step("evaluate-stage3", "constrained SID beam search with the Stage 3 model, with and without thinking",
             "sidreasoner.eval.evaluate:evaluate", ("stage3_model", "dataset", "sid_index"), ("stage3_eval",)),
        Step("report", "one page comparing the baselines and every stage, with sample reasoning traces",
             "sidreasoner.eval.report:report_stages",
             ("baselines", "stage1_eval", "stage2_eval", "stage3_eval", "dataset", "sid_index"), ("report",),
             reports=(("report_html", "report", "report.html"), ("report_md", "report", "report.md"))),
        Step("export-model", "push the Stage 3 model to export.uri (s3://, minio://, gs://, a folder); "
             "in the DAG only when export.uri is set",
             "sidreasoner.train.export:export_model", ("stage3_model",), ("model_export",)),
    )
}
assert tuple(STEPS) == config_mod.STEPS


def steps_until(until: str | None) -> list[Step]:
    names = list(STEPS)
    if until is None:
        return list(STEPS.values())
    if until not in STEPS:
        raise config_mod.ConfigError(f"unknown step '{until}'. Allowed: {', '.join(names)}")
    return [STEPS[n] for n in names[: names.index(until) + 1]]


def pipeline_steps(cfg: Config, until: str | None = None) -> list[Step]:
    """The steps of `cfg`'s DAG up to `until`. export-model is there only when export.uri is set."""
    steps = steps_until(until)
    if cfg.export.uri.strip():
        return steps
    if until == "export-model":
        raise config_mod.ConfigError("step 'export-model' is in the DAG only when export.uri is set")
    return [s for s in steps if s.name != "export-model"]


def downstream(name: str) -> list[str]:
    """`name` and every step that consumes its outputs, directly or not, in DAG order."""
    if name not in STEPS:
        raise config_mod.ConfigError(f"unknown step '{name}'. Allowed: {', '.join(STEPS)}")
    produced = set(STEPS[name].outputs)
    result = [name]
    for step in STEPS.values():
        if step.name != name and produced & set(step.inputs):
            result.append(step.name)
            produced |= set(step.outputs)
    return result


def run_step(name: str, cfg: Config | dict[str, Any], paths: dict[str, str | Path]) -> dict[str, float]:
    """Run one step. `cfg` is a Config or a step's config slice; `paths` maps every input and
    output name of the step to a folder."""
    step = STEPS[name]
    if not isinstance(cfg, Config):
        cfg = config_mod.from_step_config(cfg)
    missing = [k for k in (*step.inputs, *step.outputs) if k not in paths]
    if missing:
        raise ValueError(f"step {name} needs paths for: {', '.join(missing)}")
    for key in step.inputs:
        if not Path(paths[key]).is_dir():
            raise FileNotFoundError(f"step {name}: input '{key}' folder {paths[key]} does not exist")
    args = [Path(paths[k]) for k in (*step.inputs, *step.outputs)]
    metrics = step.load()(cfg, *args)
    return {k: float(v) for k, v in metrics.items()}
