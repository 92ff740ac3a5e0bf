"""The training stages against the research code's settings: the paper presets' values, the warm-up that
reaches the trainers, Stage 2's checkpoint choice (`stage2.select_on`), the SFT validation sets, the
narrated-sample RL prompts (`stage3.prompts`) and the verl trainer config the office preset composes."""

from __future__ import annotations

import gzip
import json
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file
from transformers import TrainerControl, TrainerState, get_scheduler

from sidreasoner import config
from sidreasoner.artifacts import SidIndex
from sidreasoner.rl import data as rl_data
from sidreasoner.train import tasks
from sidreasoner.train.sft import BestModelCallback, _args, sft_stage2, valid_metric

RESEARCH_DATA = Path(__file__).parent / "data" / "research"

# ---------------------------------------------------------------- the paper presets

# Every training setting the research code fixes, as the paper presets carry it (SIDReasoner's
# sft_Qwen3.py + sft_Qwen3_enrich.sh, sft_reasoning_activation.py/.sh, RL_training_script.sh).
PAPER = {
    "stage1.lr": 3e-4,
    "stage1.epochs": 10,
    "stage1.global_batch_size": 1024,
    "stage1.cutoff_len": 1024,
    "stage1.lr_scheduler": "linear",
    "stage1.warmup_steps": 20,
    "stage1.early_stopping_patience": 3,
    "stage1.valid_samples": 0,
    "stage1.batching": "padded",
    "stage1.bf16": True,
    "stage1.weights_dtype": "bfloat16",
    "stage1.finetune": "full",
    "stage1.weight_decay": 0.0,
    "stage1.logging_steps": 1,
    "stage2.lr": 1e-5,
    "stage2.epochs": 5,
    "stage2.global_batch_size": 1024,
    "stage2.cutoff_len": 1024,
    "stage2.lr_scheduler": "linear",
    "stage2.warmup_steps": 10,
    "stage2.early_stopping_patience": 5,
    "stage2.valid_samples": 0,
    "stage2.select_on": "sid",
    "stage2.reasoning_holdout": 0,
    "stage2.batching": "padded",
    "stage2.bf16": True,
    "stage2.weights_dtype": "bfloat16",
    "stage2.finetune": "full",
    "stage2.weight_decay": 0.0,
    "stage2.logging_steps": 1,
    "stage3.backend": "verl",
    "stage3.epochs": 10,
    "stage3.lr": 5e-7,
    "stage3.lr_scheduler": "constant",
    "stage3.warmup_steps": 0,
    "stage3.warmup_ratio": 0.0,
    "stage3.num_generations": 16,
    "stage3.kl_beta": 0.001,
    "stage3.train_batch_size": 256,
    "stage3.micro_batch_size": 8,
    "stage3.max_prompt_length": 1024,
    "stage3.max_response_length": 1024,
    "stage3.temperature": 1.0,
    "stage3.top_p": 1.0,
    "stage3.save_steps": 100,
    "stage3.prompts": "narrated",
    "stage3.valid_samples": 0,
    "stage3.max_samples": 0,
    "stage3.gradient_checkpointing": True,
    "stage3.finetune": "full",
    "stage3.verl.n_gpus_per_node": 4,
    "stage3.verl.nnodes": 1,
    "stage3.verl.gpu_memory_utilization": 0.8,
    "stage3.verl.test_freq": 50,
    "stage3.verl.val_before_train": True,
    "stage3.verl.ppo_mini_batch_size": 0,
    "stage3.verl.log_prob_micro_batch_size_per_gpu": 0,
    "stage3.verl.rollout_tensor_parallel_size": 1,
    "stage3.verl.rollout_engine": "vllm",
    "stage3.verl.fsdp_param_offload": False,
    "stage3.verl.fsdp_optimizer_offload": False,
    "stage3.verl.ref_param_offload": True,
}
# Where the project keeps its own choice in the paper presets, with the setting that restores the research's.
PAPER_KEEPS = {"stage3.valid_split": "valid"}
# What the demo keeps for 2 CPU cores (unchanged by the settings above).
DEMO = {
    "stage1.lr_scheduler": "cosine",
    "stage1.warmup_steps": 0,
    "stage1.warmup_ratio": 0.05,
    "stage1.valid_samples": 200,
    "stage1.early_stopping_patience": 2,
    "stage1.batching": "length_grouped",
    "stage1.weights_dtype": "float32",
    "stage2.weights_dtype": "float32",
    "stage2.lr_scheduler": "cosine",
    "stage2.warmup_steps": 0,
    "stage2.warmup_ratio": 0.03,
    "stage2.select_on": "reasoning",
    "stage2.reasoning_holdout": 64,
    "stage2.valid_samples": 64,
    "stage2.early_stopping_patience": 1,
    "stage3.backend": "trl",
    "stage3.prompts": "train",
    "stage3.valid_split": "valid",
    "stage3.valid_samples": 32,
    "stage3.micro_batch_size": 16,
    "stage3.verl.n_gpus_per_node": 1,
    "stage3.verl.gpu_memory_utilization": 0.6,
}


def _value(cfg, dotted: str):
    value = cfg
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


@pytest.mark.parametrize("preset", ["office", "industrial", "games"])
def test_paper_presets_carry_the_research_training_settings(preset):
    cfg = config.load(preset)
    assert {key: _value(cfg, key) for key in PAPER} == PAPER
    assert {key: _value(cfg, key) for key in PAPER_KEEPS} == PAPER_KEEPS
    assert cfg.cluster.resources["rl-stage3"].gpus == 4  # the 4 GPUs of RL_training_script.sh


def test_demo_keeps_its_own_training_settings():
    cfg = config.load("demo")
    assert {key: _value(cfg, key) for key in DEMO} == DEMO


def test_new_settings_validate_with_their_key():
    with pytest.raises(config.ConfigError, match=r"stage2: .*select_on=reasoning needs reasoning_holdout >= 1"):
        config.load("demo", ["stage2.reasoning_holdout=0"])
    with pytest.raises(config.ConfigError, match=r"stage2\.select_on: Input should be 'reasoning' or 'sid'"):
        config.load("demo", ["stage2.select_on=title"])
    with pytest.raises(config.ConfigError, match=r"stage3\.prompts: Input should be 'train' or 'narrated'"):
        config.load("demo", ["stage3.prompts=all"])
    with pytest.raises(config.ConfigError, match=r"stage1\.warmup_steps: Input should be greater than or equal to 0"):
        config.load("demo", ["stage1.warmup_steps=-1"])
    # 0 validation examples is now "the whole split", for SFT too.
    assert config.load("demo", ["stage1.valid_samples=0"]).stage1.valid_samples == 0


# ---------------------------------------------------------------- warm-up


def test_warmup_steps_reach_the_training_arguments(tmp_path):
    office, demo = config.load("office"), config.load("demo")
    s1 = _args(office.stage1, tmp_path / "s1", office.stage1.epochs, 0, evaluate=True, world=8)
    s2 = _args(office.stage2, tmp_path / "s2", office.stage2.epochs, 0, evaluate=True, world=8)
    d1 = _args(demo.stage1, tmp_path / "d1", demo.stage1.epochs, 0, evaluate=True, world=1)
    assert (s1.warmup_steps, s1.get_warmup_steps(500), str(s1.lr_scheduler_type)) == (20, 20, "SchedulerType.LINEAR")
    assert (s2.warmup_steps, s2.get_warmup_steps(500), str(s2.lr_scheduler_type)) == (10, 10, "SchedulerType.LINEAR")
    assert (d1.warmup_steps, d1.get_warmup_steps(100)) == (0.05, 5)  # the demo's 5% of the steps
    # 1024 per step: 8 GPUs x 8 per device x 16 accumulated (the research: 4 x 1 x 256, and 4 x 8 x 32)
    assert (s1.per_device_train_batch_size, s1.gradient_accumulation_steps) == (8, 16)
    assert (s2.per_device_train_batch_size, s2.gradient_accumulation_steps) == (8, 16)
    # The schedule the Trainer builds from them: 20 steps up to 3e-4, then linear decay to 0 at step 100.
    opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=office.stage1.lr)
    sched = get_scheduler(s1.lr_scheduler_type, opt, num_warmup_steps=s1.get_warmup_steps(100), num_training_steps=100)
    lrs = []
    for _ in range(100):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[10] == pytest.approx(1.5e-4) and lrs[20] == pytest.approx(3e-4) and lrs[60] == pytest.approx(1.5e-4)


def test_warmup_steps_reach_grpo():
    from sidreasoner.rl.trl_backend import _grpo_config

    cfg = config.load("demo", ["stage3.warmup_steps=7", "stage3.lr_scheduler=linear"])
    args = _grpo_config(cfg, Path("/tmp/unused-grpo-ckpt"))
    assert (args.warmup_steps, args.get_warmup_steps(100)) == (7, 7)
    assert _grpo_config(config.load("demo"), Path("/tmp/unused-grpo-ckpt")).get_warmup_steps(100) == 0


# ---------------------------------------------------------------- Stage 2's checkpoint choice

# Per epoch, the two validation losses of a hand-made run: the reasoning loss is best after epoch 2,
# the next-SID loss after epoch 3 (epoch 4 ties it: a tie keeps the earlier checkpoint).
EPOCH_LOSSES = [
    {"reasoning": 2.0, "sid": 3.0},
    {"reasoning": 1.5, "sid": 3.2},
    {"reasoning": 1.7, "sid": 2.5},
    {"reasoning": 1.6, "sid": 2.5},
]


def _drive(tmp_path: Path, select: str, patience: int) -> tuple[float, dict, list[bool]]:
    """Play the epochs through BestModelCallback as the Trainer does (log, then on_evaluate, once per
    validation set); the model's weight is the epoch number, so the kept weights name the kept epoch."""
    model = torch.nn.Linear(1, 1, bias=False)
    state, control = TrainerState(), TrainerControl()
    cb = BestModelCallback(tmp_path / select / "best", patience, valid_metric(select))
    stops = []
    for epoch, losses in enumerate(EPOCH_LOSSES, 1):
        with torch.no_grad():
            model.weight.fill_(float(epoch))
        state.epoch, state.global_step = float(epoch), 10 * epoch
        for name, loss in losses.items():
            metrics = {valid_metric(name): loss, "epoch": float(epoch)}
            state.log_history.append({**metrics, "step": state.global_step})
            cb.on_evaluate(None, state, control, metrics=metrics, model=model)
        stops.append(control.should_training_stop)
    kept = load_file(str(tmp_path / select / "best" / "trainable.safetensors"))["weight"].item()
    return kept, json.loads((tmp_path / select / "best" / "best.json").read_text()), stops


def test_select_on_picks_the_checkpoint_of_its_own_loss(tmp_path):
    kept, best, stops = _drive(tmp_path, "reasoning", patience=2)
    assert kept == 2.0 and best == {"metric": "eval_reasoning_loss", "eval_loss": 1.5, "step": 20, "epoch": 2.0}
    assert stops == [False, False, False, True]  # epochs 3 and 4 did not beat epoch 2
    kept, best, stops = _drive(tmp_path, "sid", patience=2)
    assert kept == 3.0 and best == {"metric": "eval_sid_loss", "eval_loss": 2.5, "step": 30, "epoch": 3.0}
    assert stops == [False, False, False, False]  # epoch 2 was worse, but epoch 3 beat epoch 1


def test_stage2_sets_follow_select_on(tiny_artifacts):
    art = tiny_artifacts
    paper = config.load("office").stage2
    train, held = tasks.stage2_examples(paper, 0, art["sid_index"], art["corpus"])
    assert (len(train), held) == (5, [])  # every reasoning path trains
    assert sorted(ex.response.rsplit("\n", 1)[-1] for ex in train) == sorted(art["sids"][t] for t in (1, 2, 4, 5, 2))
    demo = config.load("demo", ["stage2.max_samples=0"]).stage2
    train, held = tasks.stage2_examples(demo, 0, art["sid_index"], art["corpus"])
    assert (len(train), len(held)) == (4, 1)  # a tenth of 5 paths, at least one
    # The next-SID validation set: valid_samples=0 is the whole valid split, in file order, without reasoning.
    sid_ex, hist = tasks.next_sid_valid(art["dataset"], art["sid_index"], 0, 0)
    sids = art["sids"]
    assert [ex.response for ex in sid_ex] == [sids[2], sids[5], sids[1]]
    assert hist == [[sids[0], sids[1]], [sids[3], sids[4]], [sids[0]]]
    assert not any(ex.thinking for ex in sid_ex) and all(ex.task == "sid_history_to_sid" for ex in sid_ex)
    assert len(tasks.next_sid_valid(art["dataset"], art["sid_index"], 2, 0)[0]) == 2


TINY_SFT = [
    "stage2.per_device_batch_size=4",
    "stage2.global_batch_size=4",
    "stage2.epochs=3",
    "stage2.lr=1e-2",
    "stage2.logging_steps=1",
    "stage2.save_steps=1000",
    "stage2.early_stopping_patience=0",
    "stage2.max_samples=0",
    "stage2.cutoff_len=512",
]


@pytest.mark.slow  # trains the tiny model (seconds)
@pytest.mark.parametrize("select", ["sid", "reasoning"])
def test_stage2_trains_and_keeps_the_epoch_of_its_select_loss(tmp_path, tiny_artifacts, tiny_sid_model, select):
    art = tiny_artifacts
    extra = (
        ["stage2.select_on=sid", "stage2.reasoning_holdout=0", "stage2.valid_samples=0"]
        if select == "sid"
        else ["stage2.select_on=reasoning", "stage2.reasoning_holdout=1", "stage2.valid_samples=2"]
    )
    cfg = config.load("demo", TINY_SFT + extra + [f"stage2.checkpoint_dir={tmp_path / 'ckpt'}"])
    m = sft_stage2(cfg, tiny_sid_model["dir"], art["dataset"], art["sid_index"], art["corpus"], tmp_path / "out")
    info = json.loads((tmp_path / "out" / "training.json").read_text())
    losses = info["valid_losses"]
    assert info["select_metric"] == f"eval_{select}_loss" and len(losses[select]) == 3
    if select == "sid":
        assert sorted(losses) == ["sid"] and m["samples"] == 5.0 and m["reasoning_holdout"] == 0.0
    else:
        assert sorted(losses) == ["reasoning", "sid"] and m["samples"] == 4.0 and m["reasoning_holdout"] == 1.0
        assert len(losses["sid"]) == 3
    best = losses[select].index(min(losses[select]))
    assert m["valid_loss"] == min(losses[select]) and info["used_best_checkpoint"]
    assert {k: m[f"valid_{k}_loss"] for k in losses} == {k: v[best] for k, v in losses.items()}
    assert json.loads(next((tmp_path / "ckpt").glob("stage2-*/best/best.json")).read_text())["epoch"] == best + 1


# ---------------------------------------------------------------- Stage 3 prompts


def _corpus(tmp_path: Path, source: Path, keep: list[int], item_of: dict[int, int] | None = None) -> Path:
    """A corpus folder whose samples.parquet holds only the samples `keep` of `source`'s (optionally with
    other target items)."""
    out = tmp_path / "corpus"
    out.mkdir()
    samples = pd.read_parquet(source / "samples.parquet")
    samples = samples[samples["sample"].isin(keep)].copy()
    for sample, item in (item_of or {}).items():
        samples.loc[samples["sample"] == sample, "item_id"] = item
    samples.to_parquet(out / "samples.parquet")
    return out


def test_rl_prompts_from_the_narrated_samples(tmp_path, tiny_artifacts):
    art = tiny_artifacts
    corpus = _corpus(tmp_path, art["corpus"], [4, 1, 3])  # the teacher narrated train rows 1, 3 and 4
    assert rl_data.narrated_samples(art["dataset"], corpus) == [1, 3, 4]
    s = config.load("demo", ["stage3.prompts=narrated", "stage3.max_samples=0", "stage3.valid_samples=0"]).stage3
    train, valid = rl_data.stage3_rows(s, 0, art["dataset"], art["sid_index"], corpus)
    assert [(r["extra_info"]["index"], r["extra_info"]["user_id"], r["extra_info"]["item_id"]) for r in train] == [
        (1, 0, 2),
        (3, 1, 5),
        (4, 2, 2),
    ]
    assert [r["reward_model"]["ground_truth"] for r in train] == [art["sids"][2], art["sids"][5], art["sids"][2]]
    assert [(r["extra_info"]["split"], r["extra_info"]["index"]) for r in valid] == [
        ("valid", 0),
        ("valid", 1),
        ("valid", 2),
    ]
    # A seeded sample of the narrated rows, never a row the teacher did not narrate.
    s2 = config.load("demo", ["stage3.prompts=narrated", "stage3.max_samples=2"]).stage3
    assert [
        r["extra_info"]["index"] for r in rl_data.stage3_rows(s2, 0, art["dataset"], art["sid_index"], corpus)[0]
    ] == [3, 4]
    # The whole train split, and the test split for validation only when asked.
    s3 = config.load(
        "demo", ["stage3.prompts=train", "stage3.max_samples=0", "stage3.valid_split=test", "stage3.valid_samples=2"]
    ).stage3
    train, valid = rl_data.stage3_rows(s3, 0, art["dataset"], art["sid_index"], corpus)
    assert [r["extra_info"]["index"] for r in train] == [0, 1, 2, 3, 4]
    assert [r["extra_info"]["split"] for r in valid] == ["test", "test"]


def test_narrated_samples_must_be_this_datasets_rows(tmp_path, tiny_artifacts):
    art = tiny_artifacts
    with pytest.raises(ValueError, match="sample 3 is not train row 3"):
        rl_data.narrated_samples(art["dataset"], _corpus(tmp_path, art["corpus"], [1, 3], item_of={3: 0}))
    with pytest.raises(FileNotFoundError, match="stage3.prompts=narrated needs the corpus' samples.parquet"):
        rl_data.narrated_samples(art["dataset"], tmp_path / "nowhere")


# Stands in for the GPU-only `python -m verl.trainer.main_ppo`: leaves a verl-shaped checkpoint.
FAKE_MAIN = textwrap.dedent("""\
    import sys
    from pathlib import Path
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    root = Path(args["trainer.default_local_dir"].strip("'"))
    print("(TaskRunner pid=7) step:1 - critic/score/mean:np.float64(0.5) - actor/kl_loss:np.float64(0.0)", flush=True)
    actor = root / "global_step_1" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    (actor / "model_world_size_1_rank_0.pt").write_bytes(b"x")
    (actor / "fsdp_config.json").write_text("{}")
    (actor / "huggingface" / "config.json").write_text("{}")
    (root / "latest_checkpointed_iteration.txt").write_text("1")
    """)


def test_verl_step_trains_on_the_narrated_samples(tmp_path, tiny_artifacts, tiny_sid_model, monkeypatch):
    pytest.importorskip("verl")
    from sidreasoner.rl import verl_backend

    script = tmp_path / "fake_main_ppo.py"
    script.write_text(FAKE_MAIN)
    monkeypatch.setattr(verl_backend, "require_gpu", lambda cfg: None)
    monkeypatch.setattr(verl_backend, "verl_command", lambda overrides: [sys.executable, str(script), *overrides])
    art = tiny_artifacts
    corpus = _corpus(tmp_path, art["corpus"], [0, 2, 3])
    cfg = config.load(
        "demo",
        [
            "stage3.backend=verl",
            "stage3.prompts=narrated",
            "stage3.max_samples=0",
            "stage3.valid_samples=0",
            "stage3.train_batch_size=2",
            "stage3.micro_batch_size=8",
            f"stage3.checkpoint_dir={tmp_path / 'ckpt'}",
        ],
    )
    m = verl_backend.train_verl(cfg, tiny_sid_model["dir"], art["dataset"], art["sid_index"], corpus, tmp_path / "out")
    assert m["prompts"] == 3
    train = pd.read_parquet(tmp_path / "out" / "rl_data" / "train.parquet")
    assert [e["index"] for e in train.extra_info] == [0, 2, 3]
    assert len(pd.read_parquet(tmp_path / "out" / "rl_data" / "valid.parquet")) == 3


# ---------------------------------------------------------------- the verl trainer config of the office preset

# RL_training_script.sh's overrides, and the verl defaults it relied on (verl 0.4.1's ppo_trainer.yaml),
# as verl's own config composes the office preset's generated overrides.
RESEARCH_VERL = {
    "algorithm.adv_estimator": "grpo",
    "algorithm.use_kl_in_reward": False,
    "algorithm.norm_adv_by_std_in_grpo": True,
    "data.train_batch_size": 256,
    "data.max_prompt_length": 1024,
    "data.max_response_length": 1024,
    "data.filter_overlong_prompts": True,
    "data.truncation": "error",
    "data.shuffle": True,
    "actor_rollout_ref.model.use_remove_padding": True,
    "actor_rollout_ref.model.enable_gradient_checkpointing": True,
    "actor_rollout_ref.actor.optim.lr": 5e-7,
    "actor_rollout_ref.actor.optim.lr_warmup_steps": -1,
    "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio": 0.0,
    "actor_rollout_ref.actor.optim.lr_scheduler_type": "constant",
    "actor_rollout_ref.actor.optim.weight_decay": 0.01,
    "actor_rollout_ref.actor.grad_clip": 1.0,
    "actor_rollout_ref.actor.ppo_mini_batch_size": 256,
    "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 8,
    "actor_rollout_ref.actor.ppo_epochs": 1,
    "actor_rollout_ref.actor.clip_ratio": 0.2,
    "actor_rollout_ref.actor.loss_agg_mode": "token-mean",
    "actor_rollout_ref.actor.use_kl_loss": True,
    "actor_rollout_ref.actor.kl_loss_coef": 0.001,
    "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
    "actor_rollout_ref.actor.entropy_coeff": 0,
    "actor_rollout_ref.actor.fsdp_config.param_offload": False,
    "actor_rollout_ref.actor.fsdp_config.optimizer_offload": False,
    "actor_rollout_ref.rollout.name": "vllm",
    "actor_rollout_ref.rollout.n": 16,
    "actor_rollout_ref.rollout.temperature": 1.0,
    "actor_rollout_ref.rollout.top_p": 1.0,
    "actor_rollout_ref.rollout.top_k": -1,
    "actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
    "actor_rollout_ref.rollout.gpu_memory_utilization": 0.8,
    "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 8,
    "actor_rollout_ref.rollout.val_kwargs.do_sample": False,
    "actor_rollout_ref.rollout.val_kwargs.temperature": 0,
    "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": 8,
    "actor_rollout_ref.ref.fsdp_config.param_offload": True,
    "trainer.critic_warmup": 0,
    "trainer.n_gpus_per_node": 4,
    "trainer.nnodes": 1,
    "trainer.save_freq": 100,
    "trainer.test_freq": 50,
    "trainer.total_epochs": 10,
    "trainer.val_before_train": True,
    "trainer.total_training_steps": None,
}


def _verl_paths():
    from sidreasoner.rl.verl_backend import VerlPaths

    root = Path("/runs/r1")
    return VerlPaths(
        model=root / "stage2",
        train_files=root / "train.parquet",
        val_files=root / "valid.parquet",
        catalogue=root / "catalogue.json",
        checkpoint_dir=root / "ckpt",
        train_prompts=10_000,
    )


def _composed_verl_config(cfg):
    """verl's trainer config as verl's own Hydra config composes `cfg`'s overrides, resolved."""
    verl = pytest.importorskip("verl")
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from sidreasoner.rl.verl_backend import verl_overrides

    with initialize_config_dir(config_dir=str(Path(verl.__file__).parent / "trainer" / "config"), version_base=None):
        composed = compose(config_name="ppo_trainer", overrides=verl_overrides(cfg, _verl_paths()))
    OmegaConf.resolve(composed)
    return composed


@pytest.mark.filterwarnings("ignore:Disabled critic")
def test_office_verl_config_is_the_research_scripts():
    from omegaconf import OmegaConf

    from sidreasoner.rl.verl_backend import verl_overrides

    composed = _composed_verl_config(config.load("office"))
    got = {key: OmegaConf.select(composed, key, throw_on_missing=True) for key in RESEARCH_VERL}
    assert got == RESEARCH_VERL
    # A warm-up in steps reaches verl's optimizer.
    warm = verl_overrides(config.load("office", ["stage3.warmup_steps=5"]), _verl_paths())
    assert "actor_rollout_ref.actor.optim.lr_warmup_steps=5" in warm


@pytest.mark.filterwarnings("ignore:Disabled critic")
def test_loss_aggregation_is_a_setting_that_reaches_verls_actor():
    # verl 0.9.1 has no mode that averages per micro-batch as 0.4.1 did; token-mean stays the presets' choice.
    assert config.load("office").stage3.verl.loss_agg_mode == "token-mean"
    per_sequence = config.load("office", ["stage3.verl.loss_agg_mode=seq-mean-token-mean"])
    assert _composed_verl_config(per_sequence).actor_rollout_ref.actor.loss_agg_mode == "seq-mean-token-mean"
    with pytest.raises(config.ConfigError, match=r"stage3\.verl\.loss_agg_mode: Input should be 'token-mean'"):
        config.load("office", ["stage3.verl.loss_agg_mode=micro-batch-token-mean"])


def test_sid_tokens_join_in_the_research_order_in_the_paper_presets(tmp_path):
    # sft_Qwen3.py's get_new_tokens: sorted(set(every code of the index)), Python's string order; on the index
    # the research code trains its Office model on (tests/data/research/README.md).
    released = json.loads(gzip.decompress((RESEARCH_DATA / "Office_Products.index.json.gz").read_bytes()))
    index = SidIndex(tmp_path / "sid_index")
    index.path.mkdir()
    index.write_index({int(item): codes for item, codes in released.items()})
    research = index.code_tokens("lexicographic")
    numeric = index.code_tokens("numeric")
    assert len(research) == 600
    assert research[:5] == ["<a_0>", "<a_101>", "<a_102>", "<a_106>", "<a_116>"]
    assert research[85:90] == ["<a_94>", "<a_96>", "<a_99>", "<b_0>", "<b_100>"]
    assert research[-1] == "<c_9>"
    assert numeric[:3] == ["<a_0>", "<a_1>", "<a_3>"] and numeric[-1] == "<c_255>"
    # Only each level's first code keeps its id: 597 of the 600 new token ids differ between the orders.
    assert [i for i, (r, n) in enumerate(zip(research, numeric, strict=True)) if r == n] == [0, 88, 344]
    assert {name: config.load(name).stage1.sid_token_order for name in ("demo", "office", "industrial", "games")} == {
        "demo": "numeric",
        "office": "lexicographic",
        "industrial": "lexicographic",
        "games": "lexicographic",
    }
