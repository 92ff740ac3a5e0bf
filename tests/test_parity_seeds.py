"""Per-step seeds (`sid.seed`, `stage1/2/3.seed`, empty = the run's `seed`) and the research code's values in
the paper presets: MiniOneRec's RQ-VAE 2024, SIDReasoner's SFT --seed 42, its verl's data.get("seed", 1). Also
the paper presets' pure bf16 Stages 1 and 2."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from safetensors.torch import load_file

from sidreasoner import config
from sidreasoner.artifacts import SidIndex
from sidreasoner.config.scope import UndeclaredSection, scope_config
from sidreasoner.model import prompts
from sidreasoner.model.checkpoints import checkpoint_key
from sidreasoner.rl.trl_backend import _grpo_config
from sidreasoner.rl.verl_backend import VerlPaths, verl_settings
from sidreasoner.sid.quantize import quantize_sids
from sidreasoner.train import tasks
from sidreasoner.train.sft import sft_stage2

from .test_sid_quantize import _write_inputs

PAPER_PRESETS = ["office", "industrial", "games"]
STEP_SECTIONS = ["sid", "stage1", "stage2", "stage3"]

# ---------------------------------------------------------------- the settings


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_presets_carry_the_research_seeds(preset):
    cfg = config.load(preset)
    assert cfg.seed == 0
    # MiniOneRec rq/rqvae.py:54; sft_Qwen3_enrich.sh:40 and sft_reasoning_activation.sh --seed 42;
    # SIDReasoner verl/trainer/main_ppo.py:331 data_config.get("seed", 1) (RL_training_script.sh sets none).
    research = {"sid": 2024, "stage1": 42, "stage2": 42, "stage3": 1}
    assert {name: cfg.seed_for(name) for name in STEP_SECTIONS} == research


def test_demo_keeps_the_run_seed_for_every_step():
    cfg = config.load("demo", ["seed=7"])
    assert [getattr(cfg, name).seed for name in STEP_SECTIONS] == [None] * 4
    assert {name: cfg.seed_for(name) for name in STEP_SECTIONS} == dict.fromkeys(STEP_SECTIONS, 7)
    one = config.load("demo", ["seed=7", "stage2.seed=42"])
    assert {name: one.seed_for(name) for name in STEP_SECTIONS} == {"sid": 7, "stage1": 7, "stage2": 42, "stage3": 7}
    # A paper preset's step seed set back to empty follows the run's seed again.
    assert config.load("office", ["seed=5", "stage1.seed=null"]).seed_for("stage1") == 5


@pytest.mark.parametrize("section", STEP_SECTIONS)
def test_a_step_seed_takes_the_run_seeds_range(section):
    assert config.load("demo", [f"{section}.seed={2**32 - 1}"]).seed_for(section) == 2**32 - 1
    assert config.load("demo", [f"{section}.seed=3.0"]).seed_for(section) == 3  # a KFP parameter's float
    for bad in (2**32, -1, 1e23):
        with pytest.raises(config.ConfigError, match=rf"{section}\.seed: .*0 <= seed < 2\*\*32"):
            config.load("demo", [f"{section}.seed={bad}"])
    with pytest.raises(config.ConfigError, match=rf"{section}\.seed: .*not a boolean"):
        config.load("demo", [f"{section}.seed=true"])


def test_a_scoped_step_reads_its_own_seed_only():
    cfg = config.load("office")
    scoped = scope_config(cfg, "sft-stage1", ("seed", "stage1"))
    assert scoped.seed_for("stage1") == 42
    with pytest.raises(UndeclaredSection, match="'sft-stage1' reads config section 'stage2'"):
        scoped.seed_for("stage2")


def test_the_checkpoint_key_follows_the_seed_used(tmp_path):
    """Stage 1 seeded 42 is the same training whether the 42 comes from stage1.seed or the run's seed."""
    key = {}
    for name, overrides in {"own": ["stage1.seed=42"], "run": ["seed=42"], "other": ["stage1.seed=43"]}.items():
        cfg = config.load("demo", overrides)
        key[name] = checkpoint_key("stage1", cfg, cfg.stage1, [tmp_path])
    assert key["own"] == key["run"] != key["other"]


@pytest.mark.parametrize("preset", [*PAPER_PRESETS, "demo"])
def test_paper_presets_train_stages_1_and_2_in_pure_bf16(preset):
    """sft_Qwen3.py:235-238,391 and sft_reasoning_activation.py:230-233,355: bf16 weights, bf16=True. The demo
    keeps fp32 weights (and fp32 compute on CPU)."""
    cfg = config.load(preset)
    expected = ("float32", False) if preset == "demo" else ("bfloat16", True)
    assert [(s.weights_dtype, s.bf16) for s in (cfg.stage1, cfg.stage2)] == [expected, expected]


# ---------------------------------------------------------------- Stage 1's title-history instructions

# The research loop (SIDReasoner data_Qwen3.py:134, :187-189) seeds Python's global generator once with the
# dataset's seed and draws random.randint(0, 10) for each train row in file order, nothing else drawing in
# between. Computed once, with seed 42, as `random.seed(42); [random.randint(0, 10) for _ in range(12)]`:
RESEARCH_INSTRUCTIONS_SEED_42 = [10, 1, 0, 4, 3, 3, 2, 1, 10, 8, 1, 9]


def _dataset_with_train_rows(tmp_path: Path, source: Path, n_rows: int) -> Path:
    """`source`'s dataset folder with a train split of `n_rows` rows, each with a history of its own."""
    out = tmp_path / "dataset"
    shutil.copytree(source, out)
    histories = [[a, b] for a in range(6) for b in range(6) if a != b][:n_rows]
    pd.DataFrame(
        {
            "user_id": range(n_rows),
            "history_item_ids": histories,
            "item_id": [(h[-1] + 1) % 6 for h in histories],
            "timestamp": range(n_rows),
        }
    ).to_parquet(out / "train.parquet")
    return out


def test_title_history_instructions_are_the_research_draws_with_seed_42(tmp_path, tiny_artifacts):
    art = tiny_artifacts
    dataset = _dataset_with_train_rows(tmp_path, art["dataset"], len(RESEARCH_INSTRUCTIONS_SEED_42))
    only = [f"stage1.tasks.{t}=0" for t in tasks.STAGE1_TASKS if t != "title_history_to_title"]
    cfg = config.load("office", only)
    examples, counts = tasks.stage1_examples(
        cfg.stage1, cfg.seed_for("stage1"), dataset, art["sid_index"], art["corpus"]
    )
    assert counts == {"title_history_to_title": 12}
    category = tasks.category_text(dataset)
    expected = [prompts.title_history_system(i, category) for i in RESEARCH_INSTRUCTIONS_SEED_42]
    assert [ex.system for ex in examples] == expected
    # Row by row, in file order: each example's prompt names its own row's history.
    titles = pd.read_parquet(dataset / "items.parquet")["title"].tolist()
    train = pd.read_parquet(dataset / "train.parquet")
    assert all(
        all(titles[i] in ex.prompt for i in history)
        for ex, history in zip(examples, train["history_item_ids"], strict=True)
    )


# ---------------------------------------------------------------- the seed each step uses


def _quantizer_inputs(tmp_path: Path) -> tuple[Path, Path]:
    """60 items in 6 separated clusters of 8-dimensional embeddings: a dataset and an embeddings folder."""
    rng = np.random.default_rng(0)
    emb = np.concatenate([3 * np.eye(8)[c] + 0.5 * rng.normal(size=(10, 8)) for c in range(6)]).astype(np.float32)
    return _write_inputs(tmp_path, emb)


def test_the_quantizer_draws_with_sid_seed(tmp_path):
    data, emb_dir = _quantizer_inputs(tmp_path)
    small = ["sid.method=rkmeans", "sid.codebook_size=8", "sid.restarts=1"]
    runs = {"own": ["sid.seed=2024"], "run": ["seed=2024"], "zero": []}
    for name, overrides in runs.items():
        quantize_sids(config.load("demo", small + overrides), data, emb_dir, tmp_path / name)
    assert [SidIndex.at(tmp_path / name).quantizer()["seed"] for name in runs] == [2024, 2024, 0]
    codebooks = {name: np.load(tmp_path / name / "codebooks.npy") for name in runs}
    assert np.array_equal(codebooks["own"], codebooks["run"])
    assert not np.array_equal(codebooks["own"], codebooks["zero"])


def test_stage3_trainers_take_stage3_seed():
    where = Path("/tmp/unused-verl")
    paths = VerlPaths(where, where / "train.parquet", where / "valid.parquet", where / "catalogue.json", where, 512)
    settings = verl_settings(config.load("office"), paths)
    seeds = {key: value for key, value in settings.items() if key.endswith("seed")}
    assert seeds == {
        "data.seed": 1,
        "actor_rollout_ref.actor.data_loader_seed": 1,
        "actor_rollout_ref.actor.fsdp_config.seed": 1,
        "actor_rollout_ref.rollout.seed": 1,
    }
    args = _grpo_config(config.load("demo", ["seed=3", "stage3.seed=11"]), Path("/tmp/unused-grpo-ckpt"))
    assert (args.seed, args.data_seed) == (11, 11)


# The paper's Stage 2 section on the 6-item fixtures: small batches, one epoch, checkpoints in tmp.
TINY_PAPER_STAGE2 = [
    "stage2.per_device_batch_size=4",
    "stage2.global_batch_size=4",
    "stage2.epochs=1",
    "stage2.gradient_checkpointing=false",
]


@pytest.mark.slow  # trains the tiny model (seconds)
def test_paper_stage2_trains_pure_bf16_with_seed_42(tmp_path, tiny_artifacts, tiny_sid_model):
    """The office preset's Stage 2 settings: weights loaded, trained and saved in bf16 (the research code's
    torch_dtype=torch.bfloat16 with bf16=True), the Trainer seeded 42 for its order, recorded as such."""
    art = tiny_artifacts
    cfg = config.load("office", [*TINY_PAPER_STAGE2, f"stage2.checkpoint_dir={tmp_path / 'ckpt'}"])
    assert (cfg.stage2.weights_dtype, cfg.stage2.bf16) == ("bfloat16", True)
    sft_stage2(cfg, tiny_sid_model["dir"], art["dataset"], art["sid_index"], art["corpus"], tmp_path / "out")
    info = json.loads((tmp_path / "out" / "training.json").read_text())
    assert info["config"]["seed"] == 42 and info["config"]["stage2"]["seed"] == 42
    weights = load_file(tmp_path / "out" / "model.safetensors")
    assert {t.dtype for t in weights.values()} == {torch.bfloat16}
    args = torch.load(next((tmp_path / "ckpt").glob("stage2-*/checkpoint-*/training_args.bin")), weights_only=False)
    assert (args.seed, args.data_seed) == (42, 42)
