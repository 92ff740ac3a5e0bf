"""The raw Stage 3 checkpoint that `rl-stage3` writes (`Stage3Checkpoint`) and `merge-checkpoint` turns into
a plain Hugging Face model: what every backend writes beside its weights, written once here."""

from __future__ import annotations

from sidreasoner.artifacts import Stage3Checkpoint
from sidreasoner.config import Config
from sidreasoner.curves import loss_curve_html
from sidreasoner.rl import data as rl_data


def write_run(
    out: Stage3Checkpoint,
    cfg: Config,
    train_rows: list[dict],
    valid_rows: list[dict],
    info: dict,
    metrics: dict[str, float],
    fmt: str,
    weights: str,
) -> None:
    """Into `out` (the checkpoint folder being built, the weights already in its entry `weights`): the
    prompts, the run's record (`info`, whose "per_step" figures draw the reward curve, with the metrics and
    the settings), the reward curve, and last the manifest naming the weights' format `fmt`."""
    s = cfg.stage3
    rl_data.write_parquet(train_rows, out.file(Stage3Checkpoint.rl_data_file("train")))
    rl_data.write_parquet(valid_rows, out.file(Stage3Checkpoint.rl_data_file("valid")))
    settings = {"seed": cfg.seed_for("stage3"), "stage3": s.model_dump(mode="json")}
    out.write_training({**info, "metrics": metrics, "config": settings})
    backend = info["backend"]
    pts = [(p["step"], p["reward"]) for p in info["per_step"]]
    out.write_reward_curve(
        loss_curve_html(
            f"stage3 ({s.reward} reward, {backend}): mean reward per step", pts, [], metrics, labels=("mean reward", "")
        )
    )
    out.write_manifest(fmt, weights, backend=backend, global_step=info["global_step"])
