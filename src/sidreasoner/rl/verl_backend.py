"""The `verl` backend of `rl-stage3`: verl's GRPO trainer (`python -m verl.trainer.main_ppo`: Ray, an
FSDP actor, vLLM/SGLang rollouts) on the Stage 2 model, with the shared SID reward
(`sidreasoner.rl.reward.compute_score`) and RL data (`sidreasoner.rl.data`).

The Hydra overrides are generated from the typed config (`verl_overrides`): stage3.num_generations ->
rollout.n; lr -> actor.optim.lr; kl_beta -> actor.kl_loss_coef with kl_loss_type=low_var_kl (no KL in
the reward; kl_beta=0 turns the KL loss and the reference model off); train_batch_size ->
data.train_batch_size (prompts per step); micro_batch_size -> actor.ppo_micro_batch_size_per_gpu;
max_prompt_length / max_response_length -> data.*; save_steps -> trainer.save_freq; save_total_limit ->
trainer.max_actor_ckpt_to_keep; max_steps -> trainer.total_training_steps; warmup_steps (or warmup_ratio) ->
actor.optim.lr_warmup_steps (lr_warmup_steps_ratio). The rest comes from stage3.verl, whose extra_overrides
go last. verl always trains in bf16 mixed precision (its FSDP engine
has no fp32 mode), so stage3.bf16 does not apply.

GPU only: verl 0.9.1's trainer cannot run on CPU (its rollouts are vLLM/SGLang servers, its
collectives NCCL), so with a local Ray head the step refuses at once when the pod has no CUDA GPU.
With stage3.verl.ray_address the GPUs are the Ray cluster's; then the cluster's workers must share
stage3.checkpoint_dir (the chart's PVC): the inputs are staged there, and verl writes its checkpoints
there for this pod to read back. verl checks the cluster's available GPUs once, so before it starts the
step asks the Ray autoscaler for them and waits up to stage3.verl.gpu_wait_s until they are there
(`cluster_gpus`); the request is withdrawn when verl ends.

Output folder (`Stage3Checkpoint`): actor/ (verl's sharded FSDP actor: model_world_size_*_rank_*.pt,
fsdp_config.json and huggingface/; no optimizer or extra state; `merge-checkpoint` turns it into a Hugging
Face model), and what every backend writes beside its weights (`sidreasoner.rl.checkpoint.write_run`): the
prompts, the run's record, its reward curve and the manifest.
"""

from __future__ import annotations

import collections
import logging
import math
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from sidreasoner.artifacts import Corpus, Dataset, ModelFolder, SidIndex, Stage3Checkpoint
from sidreasoner.config import Config
from sidreasoner.io import atomic_dir
from sidreasoner.model.checkpoints import checkpoint_root, remove_old_checkpoint_folders
from sidreasoner.model.folder_lock import checkpoint_lock
from sidreasoner.rl import data as rl_data
from sidreasoner.rl import reward as rl_reward
from sidreasoner.rl.checkpoint import write_run
from sidreasoner.rl.metrics import summary_metrics

log = logging.getLogger(__name__)

MAIN_MODULE = "verl.trainer.main_ppo"
# verl imports the reward module by package name, so a Ray cluster's workers need sidreasoner
# installed, not this pod's file layout.
REWARD_MODULE = "pkg://sidreasoner.rl.reward"
REWARD_FUNCTION = "compute_score"
TRACKER = "latest_checkpointed_iteration.txt"  # verl's record of the last complete checkpoint
CONSOLE_LOG = "verl_console.log"
ACTOR_KEEP = ("fsdp_config.json", "huggingface")
MODEL_SHARD = re.compile(r"model_world_size_\d+_rank_\d+\.pt")
# verl console metric -> per-step record key
PER_STEP_KEYS = {
    "reward": "critic/score/mean",
    "reward_max": "critic/score/max",
    "reward_min": "critic/score/min",
    "kl": "actor/kl_loss",
    "completion_length": "response_length/mean",
    "entropy": "actor/entropy",
    "pg_loss": "actor/pg_loss",
    "grad_norm": "actor/grad_norm",
    "step_seconds": "timing_s/step",
}


class GPURequiredError(RuntimeError):
    """stage3.backend=verl was asked to train where no CUDA GPU is visible."""


@dataclass(frozen=True)
class VerlPaths:
    """Where verl reads and writes (all absolute; on shared storage when a Ray cluster trains)."""

    model: Path  # the Stage 2 Hugging Face model folder
    train_files: Path  # RL Parquet (rl/data.py schema)
    val_files: Path
    catalogue: Path  # the SID index's catalogue file, for the research and rule rewards
    checkpoint_dir: Path  # trainer.default_local_dir: global_step_N/actor/… and the tracker
    train_prompts: int  # rows in train_files (steps per epoch for fractional stage3.epochs)


# ---------------------------------------------------------------- Hydra overrides


def _hydra_string(text: str) -> str:
    """A single-quoted Hydra string: quotes escaped, backslashes before a quote or at the end doubled."""
    if "${" in text:
        # Escaping gets it through Hydra, but verl resolves its config in place, which turns the
        # escaped text back into an interpolation.
        raise ValueError(f"verl cannot be given {text!r}: '${{' would be read as an OmegaConf interpolation")
    text = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text)
    text = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, text)
    return f"'{text}'"


def hydra_value(value) -> str:
    """`value` written in Hydra's override grammar."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{value} cannot be a verl setting")
        return repr(value)
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(hydra_value(v) for v in value) + "]"
    if isinstance(value, (str, Path)):
        return _hydra_string(str(value))
    raise TypeError(f"no Hydra rendering for {type(value).__name__}")


def _total_training_steps(cfg: Config, train_prompts: int) -> int | None:
    s = cfg.stage3
    if s.max_steps:
        return s.max_steps
    if float(s.epochs).is_integer():
        return None  # verl: epochs * (prompts // train_batch_size)
    return max(1, math.floor(s.epochs * (train_prompts // s.train_batch_size)))


def verl_settings(cfg: Config, paths: VerlPaths) -> dict[str, object]:
    """The verl config keys this backend sets, in order, before stage3.verl.extra_overrides."""
    s, v = cfg.stage3, cfg.stage3.verl
    actor, rollout, ref = "actor_rollout_ref.actor", "actor_rollout_ref.rollout", "actor_rollout_ref.ref"
    log_prob_micro = v.log_prob_micro_batch_size_per_gpu or s.micro_batch_size
    seed = cfg.seed_for("stage3")
    return {
        "algorithm.adv_estimator": "grpo",
        "algorithm.use_kl_in_reward": False,
        "data.train_files": paths.train_files,
        "data.val_files": paths.val_files,
        "data.prompt_key": "prompt",
        "data.max_prompt_length": s.max_prompt_length,
        "data.max_response_length": s.max_response_length,
        "data.train_batch_size": s.train_batch_size,
        "data.filter_overlong_prompts": True,
        "data.truncation": "error",
        "data.seed": seed,
        "actor_rollout_ref.model.path": paths.model,
        "actor_rollout_ref.model.enable_gradient_checkpointing": s.gradient_checkpointing,
        "actor_rollout_ref.model.use_remove_padding": True,
        f"{actor}.optim.lr": s.lr,
        f"{actor}.optim.lr_warmup_steps_ratio": s.warmup_ratio,
        f"{actor}.optim.lr_warmup_steps": s.warmup_steps or -1,  # verl: -1 = use the ratio
        f"{actor}.optim.lr_scheduler_type": "cosine" if s.lr_scheduler == "cosine" else "constant",
        f"{actor}.ppo_mini_batch_size": v.ppo_mini_batch_size or s.train_batch_size,
        f"{actor}.ppo_micro_batch_size_per_gpu": s.micro_batch_size,
        f"{actor}.use_kl_loss": s.kl_beta > 0,
        f"{actor}.kl_loss_coef": s.kl_beta,
        f"{actor}.kl_loss_type": "low_var_kl",
        f"{actor}.loss_agg_mode": v.loss_agg_mode,
        f"{actor}.entropy_coeff": 0,
        f"{actor}.data_loader_seed": seed,
        f"{actor}.fsdp_config.seed": seed,
        f"{actor}.fsdp_config.param_offload": v.fsdp_param_offload,
        f"{actor}.fsdp_config.optimizer_offload": v.fsdp_optimizer_offload,
        f"{ref}.fsdp_config.param_offload": v.fsdp_param_offload or v.ref_param_offload,
        f"{ref}.log_prob_micro_batch_size_per_gpu": log_prob_micro,
        f"{rollout}.name": v.rollout_engine,
        f"{rollout}.n": s.num_generations,
        f"{rollout}.temperature": s.temperature,
        f"{rollout}.top_p": s.top_p,
        f"{rollout}.seed": seed,
        f"{rollout}.tensor_model_parallel_size": v.rollout_tensor_parallel_size,
        f"{rollout}.gpu_memory_utilization": v.gpu_memory_utilization,
        f"{rollout}.log_prob_micro_batch_size_per_gpu": log_prob_micro,
        "reward.reward_manager.name": "naive",
        "reward.custom_reward_function.path": REWARD_MODULE,
        "reward.custom_reward_function.name": REWARD_FUNCTION,
        # verl merges these into every compute_score call; its config has no such key, hence the `+`.
        "+reward.custom_reward_function.reward_kwargs.kind": s.reward,
        "+reward.custom_reward_function.reward_kwargs.catalogue": paths.catalogue,
        "trainer.project_name": "sidreasoner",
        "trainer.experiment_name": f"stage3-{s.reward}",
        "trainer.logger": ["console"],
        "trainer.default_local_dir": paths.checkpoint_dir,
        "trainer.resume_mode": "auto",
        "trainer.save_freq": s.save_steps,
        "trainer.max_actor_ckpt_to_keep": s.save_total_limit,
        "trainer.test_freq": v.test_freq or -1,
        "trainer.val_before_train": v.val_before_train,
        "trainer.nnodes": v.nnodes,
        "trainer.n_gpus_per_node": v.n_gpus_per_node,
        "trainer.total_epochs": math.ceil(s.epochs),
        "trainer.total_training_steps": _total_training_steps(cfg, paths.train_prompts),
    }


def verl_overrides(cfg: Config, paths: VerlPaths) -> list[str]:
    """Hydra overrides for `python -m verl.trainer.main_ppo`; stage3.verl.extra_overrides go last."""
    generated = [f"{key}={hydra_value(value)}" for key, value in verl_settings(cfg, paths).items()]
    return generated + list(cfg.stage3.verl.extra_overrides)


def verl_command(overrides: list[str]) -> list[str]:
    return [sys.executable, "-m", MAIN_MODULE, *overrides]


# ---------------------------------------------------------------- console metrics

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_RAY_REPEAT = re.compile(r"\s*\[repeated \d+x across cluster\]\s*$")
_STEP_LINE = re.compile(r"(?:^|[\s)])step:(\d+) - (.+)$")
_NUMPY_SCALAR = re.compile(r"(?:np|numpy)\.\w+\((.+)\)")  # numpy 2 prints np.float64(0.5)


def _number(text: str) -> float | None:
    text = text.strip()
    m = _NUMPY_SCALAR.fullmatch(text)
    try:
        return float(m.group(1) if m else text)
    except ValueError:
        return None


def parse_console_metrics(lines) -> dict[int, dict[str, float]]:
    """Per-step metrics from verl's console logger lines (`step:N - key:value - …`, possibly behind
    Ray's `(TaskRunner pid=…)` prefix and colour codes). A step seen twice (a resumed run redoing it)
    keeps its latest values."""
    steps: dict[int, dict[str, float]] = {}
    for line in lines:
        line = _RAY_REPEAT.sub("", _ANSI.sub("", line.rstrip("\r\n")))
        m = _STEP_LINE.search(line)
        if not m:
            continue
        record = steps.setdefault(int(m.group(1)), {})
        for field in m.group(2).split(" - "):
            key, sep, value = field.rpartition(":")
            number = _number(value) if sep else None
            if key and number is not None:
                record[key.strip()] = number
    return dict(sorted(steps.items()))


def per_step_records(history: dict[int, dict[str, float]]) -> list[dict]:
    """Training steps (those with a reward) as records named like the TRL backend's."""
    return [
        {"step": step, **{name: metrics.get(key) for name, key in PER_STEP_KEYS.items()}}
        for step, metrics in history.items()
        if PER_STEP_KEYS["reward"] in metrics
    ]


# ---------------------------------------------------------------- checkpoints


def latest_checkpoint(checkpoint_dir: Path) -> tuple[int, Path] | None:
    """(step, global_step_N folder) of verl's last complete checkpoint, from its tracker file."""
    tracker = Path(checkpoint_dir) / TRACKER
    if not tracker.exists():
        return None
    step = int(tracker.read_text().strip())
    folder = Path(checkpoint_dir) / f"global_step_{step}"
    return (step, folder) if folder.is_dir() else None


def copy_actor(actor_dir: Path, dest: Path) -> None:
    """Copy the actor's model shards, fsdp_config.json and huggingface/ (not optimizer/extra state)."""
    shards = [p for p in Path(actor_dir).iterdir() if MODEL_SHARD.fullmatch(p.name)]
    missing = [name for name in ACTOR_KEEP if not (Path(actor_dir) / name).exists()]
    missing += [] if shards else ["model_world_size_*_rank_*.pt"]
    if missing:
        raise FileNotFoundError(f"verl checkpoint {actor_dir} is incomplete: no {', '.join(missing)}")
    dest.mkdir(parents=True)
    for shard in shards:
        shutil.copy2(shard, dest / shard.name)
    shutil.copy2(Path(actor_dir) / "fsdp_config.json", dest / "fsdp_config.json")
    shutil.copytree(Path(actor_dir) / "huggingface", dest / "huggingface")


# ---------------------------------------------------------------- the run


def require_gpu(cfg: Config) -> None:
    """Refuse before any work when verl would start a local Ray head without enough CUDA GPUs."""
    v = cfg.stage3.verl
    if v.ray_address:
        return  # the GPUs are the Ray cluster's; verl places its workers there
    import torch

    visible = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if visible < v.n_gpus_per_node:
        raise GPURequiredError(
            f"stage3.backend=verl needs CUDA GPUs, and this machine has {visible} visible "
            f"(stage3.verl.n_gpus_per_node={v.n_gpus_per_node}): verl's GRPO trainer cannot run on CPU. "
            "Use stage3.backend=trl (--set stage3.backend=trl), give the rl-stage3 step GPUs, or train on a "
            "Ray cluster (stage3.verl.ray_address)"
        )


# ---------------------------------------------------------------- the Ray cluster's GPUs

GPU_POLL_S = 10.0  # seconds between looks at the cluster's available GPUs


class ClusterGPUTimeout(TimeoutError):
    """The Ray cluster did not have verl's GPUs available within stage3.verl.gpu_wait_s."""


def gpu_bundles(nnodes: int, gpus_per_node: int) -> list[dict[str, float]]:
    """What verl places: one bundle of n_gpus_per_node GPUs per node (trainer.nnodes x trainer.n_gpus_per_node)."""
    return [{"GPU": float(gpus_per_node)} for _ in range(nnodes)]


def wait_for_gpus(
    nnodes: int,
    gpus_per_node: int,
    timeout_s: float,
    available: Callable[[], dict],
    request: Callable[[list[dict]], None],
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    poll_s: float = GPU_POLL_S,
) -> float:
    """Ask the autoscaler for verl's GPUs (`request(bundles)`), then poll `available()` (a Ray resource dict)
    until it shows them; return the GPUs available. Raise ClusterGPUTimeout after `timeout_s` (0 = look once).

    verl 0.9.1 does not wait: RayPPOTrainer.init_workers (verl/trainer/ppo/ray_trainer.py) calls
    ResourcePoolManager.create_resource_pool, whose _check_resource_available (verl/single_controller/ray/base.py)
    sums the GPUs of ray._private.state.available_resources_per_node() and raises "Total available GPUs …
    is less than total desired GPUs …" when they fall short, so on a cluster whose GPU workers scale from zero
    it fails before the autoscaler has started one."""
    needed = nnodes * gpus_per_node
    request(gpu_bundles(nnodes, gpus_per_node))
    start = clock()
    while True:
        have, waited = float(available().get("GPU", 0)), clock() - start
        if have >= needed:
            log.info(
                "stage3 (verl): the Ray cluster has %g GPU(s) available, %d needed (after %.0f s)", have, needed, waited
            )
            return have
        if waited >= timeout_s:
            raise ClusterGPUTimeout(_gpu_timeout_message(nnodes, gpus_per_node, have, waited, timeout_s))
        log.info(
            "stage3 (verl): waiting for the Ray cluster's GPUs: %g available, %d needed, %.0f s of %g s",
            have,
            needed,
            waited,
            timeout_s,
        )
        sleep(min(poll_s, timeout_s - waited))


def _gpu_timeout_message(nnodes: int, gpus_per_node: int, have: float, waited: float, timeout_s: float) -> str:
    return (
        f"stage3 (verl): the Ray cluster (stage3.verl.ray_address) had {have:g} GPU(s) available after waiting "
        f"{waited:.0f} s (stage3.verl.gpu_wait_s={timeout_s:g}); verl needs {nnodes * gpus_per_node} "
        f"(stage3.verl.nnodes={nnodes} x stage3.verl.n_gpus_per_node={gpus_per_node}) and fails without them. "
        f"Check that the RayCluster can run {nnodes} worker(s) of {gpus_per_node} GPU(s): the chart's "
        f"rayCluster.workers.maxReplicas (>= {nnodes}) and rayCluster.workers.gpus (>= {gpus_per_node}), "
        "rayCluster.enableInTreeAutoscaling (without the autoscaler, rayCluster.workers.replicas), and that "
        "Kubernetes has GPU nodes for the workers (pending ray-worker pods, the autoscaler container's log on "
        "the Ray head); or raise stage3.verl.gpu_wait_s"
    )


def _request_on_cluster(bundles: list[dict]) -> None:
    """Ray's request_resources, run as a task on the cluster: through a Ray client (ray://) this process
    has no GCS connection of its own to write the request with."""
    import ray
    from ray.autoscaler.sdk import request_resources

    ray.get(ray.remote(num_cpus=0)(request_resources).remote(bundles=bundles))


def _connect(address: str):
    import ray

    try:
        ray.init(address=address)
    except Exception as e:
        raise ConnectionError(f"stage3.verl.ray_address={address}: cannot connect to the Ray cluster ({e})") from e
    return ray


def _withdraw_gpu_request(address: str) -> None:
    """An empty request replaces ours, so the autoscaler may stop the idle GPU workers again."""
    try:
        ray = _connect(address)
        try:
            _request_on_cluster([])
        finally:
            ray.shutdown()
    except Exception as e:
        log.warning(
            "stage3 (verl): could not withdraw the GPU request from the Ray cluster at %s (%s): its "
            "autoscaler keeps the GPU workers until another request replaces it",
            address,
            e,
        )


@contextmanager
def cluster_gpus(cfg: Config):
    """With stage3.verl.ray_address: have the cluster's GPUs available before verl starts, and withdraw the
    request once it has ended. Without: nothing."""
    v = cfg.stage3.verl
    if not v.ray_address:
        yield
        return
    ray = _connect(v.ray_address)
    try:
        try:
            wait_for_gpus(v.nnodes, v.n_gpus_per_node, v.gpu_wait_s, ray.available_resources, _request_on_cluster)
        finally:
            ray.shutdown()  # verl's driver connects on its own
        yield
    finally:
        _withdraw_gpu_request(v.ray_address)


def _stage_model(stage2_model_dir: Path, inputs: Path) -> Path:
    """A copy of the model under the shared checkpoint folder (named by a hash of config and inputs), made once."""
    staged = inputs / "stage2_model"
    if not staged.exists():
        with atomic_dir(staged) as tmp:
            shutil.copytree(stage2_model_dir, tmp, dirs_exist_ok=True)
    return staged


def _run_streaming(cmd: list[str], env: dict[str, str], cwd: Path, log_file: Path, tail_lines: int = 60) -> None:
    """Run `cmd`, streaming its output to the log and appending it to `log_file`; on failure raise
    with the output's tail."""
    tail: collections.deque[str] = collections.deque(maxlen=tail_lines)
    with log_file.open("a", encoding="utf-8") as out:
        out.write(f"=== {time.strftime('%Y-%m-%d %H:%M:%S')} {' '.join(cmd[:3])} ===\n")
        proc = subprocess.Popen(
            cmd,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            bufsize=1,
        )
        try:
            for line in proc.stdout:
                out.write(line)
                tail.append(line.rstrip())
                log.info("verl | %s", line.rstrip())
            rc = proc.wait()
        except BaseException:
            proc.terminate()
            proc.wait()
            raise
    if rc != 0:
        raise RuntimeError(f"verl ({MAIN_MODULE}) exited with status {rc}; last output:\n" + "\n".join(tail))


def _env(cfg: Config, catalogue: Path) -> dict[str, str]:
    env = {
        **os.environ,
        "TOKENIZERS_PARALLELISM": "false",
        "PYTHONUNBUFFERED": "1",
        "HYDRA_FULL_ERROR": "1",
        rl_reward.CATALOGUE_ENV: str(catalogue),
    }
    if cfg.stage3.verl.ray_address:
        env["RAY_ADDRESS"] = cfg.stage3.verl.ray_address
    else:
        env.pop("RAY_ADDRESS", None)  # "" means a local head: an inherited address must not redirect it
    return env


def train_verl(
    cfg: Config,
    stage2_model_dir: ModelFolder | Path,
    dataset_dir: Dataset | Path,
    sid_index_dir: SidIndex | Path,
    corpus_dir: Corpus | Path | None,
    out_dir: Stage3Checkpoint | Path,
) -> dict[str, float]:
    from transformers import AutoTokenizer

    require_gpu(cfg)
    start = time.time()
    s = cfg.stage3
    stage2_model_dir, sid_index = Path(stage2_model_dir).resolve(), SidIndex(Path(sid_index_dir).resolve())
    dataset, corpus = Dataset.at(dataset_dir), None if corpus_dir is None else Corpus.at(corpus_dir)
    tok = AutoTokenizer.from_pretrained(stage2_model_dir)
    rl_data.check_sid_tokens(tok, sid_index, stage2_model_dir)
    all_train, all_valid = rl_data.stage3_rows(s, cfg.seed_for("stage3"), dataset, sid_index, corpus)
    train_rows, skipped = rl_data.fitting_rows(tok, all_train, s.max_prompt_length)
    valid_rows, _ = rl_data.fitting_rows(tok, all_valid, s.max_prompt_length)
    if len(train_rows) < s.train_batch_size or not valid_rows:
        raise ValueError(
            f"stage3: {len(train_rows)} training and {len(valid_rows)} validation prompts fit "
            f"max_prompt_length={s.max_prompt_length}; verl needs at least train_batch_size="
            f"{s.train_batch_size} and one"
        )

    read = [stage2_model_dir, dataset.path, sid_index.path] + ([Path(corpus)] if s.prompts == "narrated" else [])
    ckpt = checkpoint_root("stage3", cfg, s, read).resolve()
    with checkpoint_lock(ckpt):
        metrics = _train_in(cfg, ckpt, stage2_model_dir, sid_index, train_rows, valid_rows, skipped, start, out_dir)
        remove_old_checkpoint_folders(ckpt, s.checkpoint_folders_kept)
    return metrics


def _train_in(
    cfg: Config,
    ckpt: Path,
    stage2_model_dir: Path,
    sid_index: SidIndex,
    train_rows: list[dict],
    valid_rows: list[dict],
    skipped: int,
    start: float,
    out_dir: Stage3Checkpoint | Path,
) -> dict[str, float]:
    """Stage the inputs in the checkpoint folder `ckpt` (whose lock the caller holds; the prompts in the
    raw checkpoint's layout), run verl, and write the raw checkpoint to `out_dir`."""
    s = cfg.stage3
    inputs = ckpt / "inputs"
    catalogue = inputs / SidIndex.CATALOGUE
    inputs.mkdir(parents=True, exist_ok=True)
    shutil.copy2(sid_index.catalogue_path(), catalogue)
    paths = VerlPaths(
        model=_stage_model(stage2_model_dir, inputs) if s.verl.ray_address else stage2_model_dir,
        train_files=rl_data.write_parquet(train_rows, inputs / Stage3Checkpoint.rl_data_file("train")),
        val_files=rl_data.write_parquet(valid_rows, inputs / Stage3Checkpoint.rl_data_file("valid")),
        catalogue=catalogue,
        checkpoint_dir=ckpt / "verl",
        train_prompts=len(train_rows),
    )
    overrides = verl_overrides(cfg, paths)
    before = latest_checkpoint(paths.checkpoint_dir)
    resumed_from = before[0] if before else 0
    if before:
        log.info("stage3 (verl): resuming from %s", before[1])

    with cluster_gpus(cfg):
        t0 = time.time()  # the wait for the cluster's GPUs is not training time
        _run_streaming(verl_command(overrides), _env(cfg, catalogue), ckpt, ckpt / CONSOLE_LOG)
        train_wall = time.time() - t0
    after = latest_checkpoint(paths.checkpoint_dir)
    if after is None:
        raise RuntimeError(
            f"verl finished without a checkpoint in {paths.checkpoint_dir} (with a Ray cluster, "
            "stage3.checkpoint_dir must be storage its workers share with this pod)"
        )
    global_step, step_dir = after

    with (ckpt / CONSOLE_LOG).open(encoding="utf-8", errors="replace") as fh:
        history = parse_console_metrics(fh)
    per_step = per_step_records(history)
    completions_done = (global_step - resumed_from) * s.train_batch_size * s.num_generations
    metrics = summary_metrics(
        per_step, global_step, resumed_from, len(train_rows), skipped, completions_done, train_wall, time.time() - start
    )
    info = {
        "stage": "stage3",
        "backend": "verl",
        "per_step": per_step,
        "history": [{"step": step, **values} for step, values in history.items()],
        "checkpoint_dir": str(ckpt),
        "verl_checkpoint": str(step_dir),
        "global_step": global_step,
        "command": f"python -m {MAIN_MODULE}",
        "overrides": overrides,
    }
    with Stage3Checkpoint.writing(out_dir) as raw:
        copy_actor(step_dir / "actor", raw.file("actor"))
        metrics["wall_seconds"] = time.time() - start
        write_run(raw, cfg, train_rows, valid_rows, info, metrics, "verl_fsdp", "actor")
    return metrics
