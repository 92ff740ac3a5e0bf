"""Stage 3 `verl` backend on CPU, without Ray: the generated Hydra overrides composed and validated by
verl's own `ppo_trainer` config, our Parquet read by verl's RLHFDataset and rendered by its rollout
tokenizer path, our reward scored through verl's reward loop worker, the console-log parser, the
checkpoint hand-over, and the orchestration around `main_ppo` (with a stand-in for the GPU-only
trainer process)."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("verl")

import torch  # noqa: E402
import verl  # noqa: E402
from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.errors import ConfigCompositionException  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from sidreasoner import config  # noqa: E402
from sidreasoner.artifacts import Stage3Checkpoint  # noqa: E402
from sidreasoner.model import prompts  # noqa: E402
from sidreasoner.rl import data as rl_data  # noqa: E402
from sidreasoner.rl import reward as rl_reward  # noqa: E402
from sidreasoner.rl import verl_backend  # noqa: E402
from sidreasoner.rl.metrics import summary_metrics  # noqa: E402
from sidreasoner.rl.verl_backend import VerlPaths, verl_overrides  # noqa: E402

VERL_CONFIG_DIR = str(Path(verl.__file__).parent / "trainer" / "config")


def compose_verl(overrides: list[str]):
    """verl's trainer config as `python -m verl.trainer.main_ppo <overrides>` builds it, resolved as its
    TaskRunner does."""
    with initialize_config_dir(config_dir=VERL_CONFIG_DIR, version_base=None):
        cfg = compose(config_name="ppo_trainer", overrides=overrides)
    OmegaConf.resolve(cfg)
    return cfg


def fake_paths(root: Path = Path("/runs/r1"), train_prompts: int = 1000) -> VerlPaths:
    return VerlPaths(
        model=root / "stage2",
        train_files=root / "rl" / "train.parquet",
        val_files=root / "rl" / "valid.parquet",
        catalogue=root / "sid_index" / "catalogue.json",
        checkpoint_dir=root / "ckpt" / "verl",
        train_prompts=train_prompts,
    )


@pytest.fixture(scope="module")
def art(tmp_path_factory, tiny_artifacts, tiny_sid_model):
    """The shared tiny artifacts plus the Stage-2-like tiny model whose tokenizer has the SID codes."""
    tmp = tmp_path_factory.mktemp("verl")
    a, stage2, tok = tiny_artifacts, tiny_sid_model["dir"], tiny_sid_model["tok"]
    files = rl_data.write_rl_data(a["dataset"], a["sid_index"], tmp / "rl")
    paths = VerlPaths(
        model=stage2,
        train_files=files["train"],
        val_files=files["valid"],
        catalogue=a["sid_index"] / "catalogue.json",
        checkpoint_dir=tmp / "ckpt",
        train_prompts=5,
    )
    cfg = config.load("demo", ["stage3.backend=verl"])
    return {**a, "stage2": stage2, "tok": tok, "paths": paths, "verl_cfg": compose_verl(verl_overrides(cfg, paths))}


# ---------------------------------------------------------------- the Hydra overrides

EXPECTED = {
    "office": {
        "actor_rollout_ref.rollout.n": 16,
        "actor_rollout_ref.actor.optim.lr": 5e-7,
        "actor_rollout_ref.actor.kl_loss_coef": 0.001,
        "data.train_batch_size": 256,
        "data.max_prompt_length": 1024,
        "data.max_response_length": 1024,
        "trainer.save_freq": 100,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 256,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 8,
        "actor_rollout_ref.model.enable_gradient_checkpointing": True,
        "trainer.total_training_steps": None,
        # 4 GPUs, vLLM at 0.8 of their memory, 10 epochs, validation before training and every 50 steps,
        # micro-batches of 8 for the log-probs too, the reference policy offloaded, no warm-up.
        "trainer.n_gpus_per_node": 4,
        "actor_rollout_ref.rollout.gpu_memory_utilization": 0.8,
        "trainer.total_epochs": 10,
        "trainer.test_freq": 50,
        "trainer.val_before_train": True,
        "actor_rollout_ref.rollout.log_prob_micro_batch_size_per_gpu": 8,
        "actor_rollout_ref.ref.log_prob_micro_batch_size_per_gpu": 8,
        "actor_rollout_ref.ref.fsdp_config.param_offload": True,
        "actor_rollout_ref.actor.fsdp_config.param_offload": False,
        "actor_rollout_ref.actor.fsdp_config.optimizer_offload": False,
        "actor_rollout_ref.actor.optim.lr_warmup_steps": -1,
        "actor_rollout_ref.actor.optim.lr_warmup_steps_ratio": 0.0,
        "actor_rollout_ref.actor.optim.lr_scheduler_type": "constant",
        # stage3.seed 1: the research's verl shuffles its prompts with data.get("seed", 1).
        "data.seed": 1,
        "actor_rollout_ref.rollout.seed": 1,
        "reward.custom_reward_function.reward_kwargs": {
            "kind": "research",
            "catalogue": "/runs/r1/sid_index/catalogue.json",
        },
    },
    "demo": {
        "actor_rollout_ref.rollout.n": 8,
        "actor_rollout_ref.actor.optim.lr": 5e-5,
        "actor_rollout_ref.actor.kl_loss_coef": 0.001,
        "data.train_batch_size": 2,
        "data.max_prompt_length": 384,
        "data.max_response_length": 96,
        "trainer.save_freq": 50,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 2,
        "actor_rollout_ref.actor.ppo_micro_batch_size_per_gpu": 16,
        "actor_rollout_ref.model.enable_gradient_checkpointing": False,
        "trainer.total_training_steps": 150,
        "trainer.n_gpus_per_node": 1,
        "actor_rollout_ref.rollout.gpu_memory_utilization": 0.6,
        "trainer.total_epochs": 1,
        "trainer.test_freq": -1,
        "trainer.val_before_train": False,
        "actor_rollout_ref.ref.fsdp_config.param_offload": False,
        "data.seed": 0,  # the run's seed
        "actor_rollout_ref.rollout.seed": 0,
        "reward.custom_reward_function.reward_kwargs": {
            "kind": "rule",
            "catalogue": "/runs/r1/sid_index/catalogue.json",
        },
    },
}
COMMON = {
    "algorithm.adv_estimator": "grpo",
    "algorithm.use_kl_in_reward": False,
    "actor_rollout_ref.actor.use_kl_loss": True,
    "actor_rollout_ref.actor.kl_loss_type": "low_var_kl",
    "actor_rollout_ref.rollout.name": "vllm",
    "actor_rollout_ref.rollout.temperature": 1.0,
    "actor_rollout_ref.rollout.tensor_model_parallel_size": 1,
    "data.prompt_key": "prompt",
    "data.filter_overlong_prompts": True,
    "data.train_files": "/runs/r1/rl/train.parquet",
    "data.val_files": "/runs/r1/rl/valid.parquet",
    "actor_rollout_ref.model.path": "/runs/r1/stage2",
    "reward.custom_reward_function.path": "pkg://sidreasoner.rl.reward",
    "reward.custom_reward_function.name": "compute_score",
    "reward.reward_manager.name": "naive",
    "trainer.default_local_dir": "/runs/r1/ckpt/verl",
    "trainer.resume_mode": "auto",
    "trainer.logger": ["console"],
    "trainer.nnodes": 1,
}


def _get(cfg, dotted: str):
    value = OmegaConf.select(cfg, dotted, throw_on_missing=True)
    return OmegaConf.to_container(value) if OmegaConf.is_config(value) else value


@pytest.mark.filterwarnings("ignore:Disabled critic")  # verl's notice that GRPO needs no critic
@pytest.mark.parametrize("preset", ["office", "demo"])
def test_overrides_compose_into_verls_trainer_config(preset):
    from verl.trainer.config import AlgoConfig
    from verl.trainer.ppo.utils import need_critic, need_reference_policy
    from verl.utils.config import omega_conf_to_dataclass, validate_config
    from verl.workers.config import RolloutConfig

    cfg = config.load(preset, ["stage3.backend=verl"] if preset == "demo" else [])
    assert cfg.stage3.backend == "verl"
    composed = compose_verl(verl_overrides(cfg, fake_paths()))
    got = {key: _get(composed, key) for key in {**COMMON, **EXPECTED[preset]}}
    assert got == {**COMMON, **EXPECTED[preset]}
    # What main_ppo checks before it starts Ray (none of it needs a GPU), and the typed configs its workers build.
    assert need_reference_policy(composed) and not need_critic(composed)
    validate_config(composed, use_reference_policy=True, use_critic=False)
    assert isinstance(omega_conf_to_dataclass(composed.algorithm), AlgoConfig)
    rollout = omega_conf_to_dataclass(composed.actor_rollout_ref.rollout)
    assert isinstance(rollout, RolloutConfig) and rollout.n == EXPECTED[preset]["actor_rollout_ref.rollout.n"]
    assert rollout.prompt_length == EXPECTED[preset]["data.max_prompt_length"]  # interpolated from data.*


def test_paths_survive_hydra_quoting():
    odd = Path("/runs/a b/it's,k=[v]/{x:1}/back\\slash")
    composed = compose_verl(verl_overrides(config.load("office"), fake_paths(odd)))
    assert composed.data.train_files == f"{odd}/rl/train.parquet"
    assert composed.actor_rollout_ref.model.path == f"{odd}/stage2"
    assert composed.trainer.default_local_dir == f"{odd}/ckpt/verl"
    assert (
        verl_backend.hydra_value("ends\\") == "'ends\\\\'"
        and verl_backend.hydra_value(["a", 1, None]) == "['a',1,null]"
    )
    with pytest.raises(ValueError, match="interpolation"):
        verl_overrides(config.load("office"), fake_paths(Path("/runs/${HOME}")))


def test_extra_overrides_win_and_unknown_keys_fail():
    cfg = config.load(
        "office", ['stage3.verl.extra_overrides=["actor_rollout_ref.rollout.gpu_memory_utilization=0.3"]']
    )
    overrides = verl_overrides(cfg, fake_paths())
    assert overrides[-1] == "actor_rollout_ref.rollout.gpu_memory_utilization=0.3"
    assert compose_verl(overrides).actor_rollout_ref.rollout.gpu_memory_utilization == 0.3
    bad = config.load("office", ['stage3.verl.extra_overrides=["actor_rollout_ref.actor.not_a_key=1"]'])
    with pytest.raises(ConfigCompositionException, match="not_a_key"):
        compose_verl(verl_overrides(bad, fake_paths()))


def test_steps_and_kl_switch():
    fractional = config.load("office", ["stage3.epochs=1.5"])
    composed = compose_verl(verl_overrides(fractional, fake_paths(train_prompts=2600)))
    # 2600 prompts // 256 per step = 10 steps per epoch; 1.5 epochs = 15 steps.
    assert (composed.trainer.total_epochs, composed.trainer.total_training_steps) == (2, 15)
    no_kl = compose_verl(verl_overrides(config.load("office", ["stage3.kl_beta=0"]), fake_paths()))
    assert no_kl.actor_rollout_ref.actor.use_kl_loss is False and no_kl.actor_rollout_ref.actor.kl_loss_coef == 0.0


def test_verl_only_config_checks():
    with pytest.raises(config.ConfigError, match="rank penalty"):
        config.load("office", ["stage3.reward=ranking"])
    with pytest.raises(config.ConfigError, match="trains every weight"):
        config.load("office", ["stage3.finetune=lora"])
    with pytest.raises(config.ConfigError, match="constant and cosine"):
        config.load("office", ["stage3.lr_scheduler=linear"])
    with pytest.raises(config.ConfigError, match="needs a Ray cluster"):
        config.load("office", ["stage3.verl.nnodes=2"])
    with pytest.raises(config.ConfigError, match="not a Hydra override"):
        config.load("office", ['stage3.verl.extra_overrides=["just words"]'])
    assert config.load("demo", ["stage3.reward=ranking"]).stage3.backend == "trl"  # TRL has the group penalty


def test_command_line():
    overrides = verl_overrides(config.load("office"), fake_paths())
    assert verl_backend.verl_command(overrides) == [sys.executable, "-m", "verl.trainer.main_ppo", *overrides]


# ---------------------------------------------------------------- data and reward through verl's own code


def test_rlhf_dataset_reads_our_parquet_and_renders_the_thinking_prompt(art):
    from verl.utils.dataset.rl_dataset import RLHFDataset
    from verl.utils.tokenizer.continuous_token_wiring import create_continuous_token_builder

    tok, data_cfg = art["tok"], art["verl_cfg"].data
    rows = rl_data.rl_rows(art["dataset"], art["sid_index"], "train")
    ds = RLHFDataset(data_files=[str(art["paths"].train_files)], tokenizer=tok, config=data_cfg)
    assert len(ds) == len(rows) == 5
    # The rollout renders raw_prompt with the chat template (verl's Continuous Token builder for qwen3).
    builder = create_continuous_token_builder(
        tok, hf_model_type="qwen3", chat_template_kwargs=data_cfg.get("apply_chat_template_kwargs", {})
    )
    sids = art["sids"]
    for i, row in enumerate(rows):
        item = ds[i]
        assert item["reward_model"]["ground_truth"] == row["reward_model"]["ground_truth"]
        assert item["data_source"] == "sidreasoner" and item["extra_info"]["index"] == i
        text = tok.decode(builder.build_initial_tokens(list(item["raw_prompt"])))
        assert text == prompts.render_chat_prompt(tok, row["prompt"], thinking=True)
        assert text.startswith("<|im_start|>system\n" + prompts.SYSTEM_NEXT_ITEM + "<|im_end|>\n<|im_start|>user\n")
        history = [sids[h] for h in [[0], [0, 1], [3], [3, 4], [1]][i]]
        assert prompts.sid_history(history) in text and prompts.REASONING_SUFFIX.strip() in text
        # Thinking mode: the prompt stops at the assistant turn; the model opens <think> itself.
        assert text.endswith("<|im_start|>assistant\n") and "<think>" not in text
    assert [ds[i]["reward_model"]["ground_truth"] for i in range(5)] == [sids[t] for t in (1, 2, 4, 5, 2)]


RESPONSES = {
    # response -> score for the target, item 1's SID <a_0><b_1><c_3>
    "<think>\nThe series continues.\n</think>\n\n<a_0><b_1><c_3>": 1.1,  # exact, in the catalogue
    "<think>\nA pen again.\n</think>\n\n<a_0><b_2><c_0>": 0.25 + 0.1,  # first level, a catalogue SID
    "<think>\nClose.\n</think>\n\n<a_0><b_1><c_0>": 0.5,  # two levels, not in the catalogue
    "<think>\nI keep thinking and never": 0.0,  # reasoning cut off: no answer
    "the answer is pens": 0.0,  # junk
}


@pytest.mark.filterwarnings("ignore:Ray state API:DeprecationWarning")  # raised by importing verl's reward loop
def test_reward_through_verls_reward_loop_worker(art):
    import ray
    from tensordict import TensorDict
    from verl import DataProto
    from verl.experimental.reward_loop.reward_loop import RewardLoopWorker
    from verl.trainer.ppo.reward import resolve_reward_manager_cls

    tok, vcfg = art["tok"], art["verl_cfg"]
    target = art["sids"][1]
    texts = list(RESPONSES)
    prompt_ids = tok("<|im_start|>user\nnext?<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)[
        "input_ids"
    ]
    response_ids = [
        tok(t, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")] for t in texts
    ]
    width = max(map(len, response_ids))
    responses = torch.tensor([r + [tok.pad_token_id] * (width - len(r)) for r in response_ids])
    response_mask = torch.tensor([[1] * len(r) + [0] * (width - len(r)) for r in response_ids])
    prompts_t = torch.tensor([prompt_ids] * len(texts))
    n = len(texts)
    data = DataProto(
        batch=TensorDict(
            {
                "prompts": prompts_t,
                "responses": responses,
                "attention_mask": torch.cat([torch.ones_like(prompts_t), response_mask], dim=1),
            },
            batch_size=n,
        ),
        non_tensor_batch={
            "data_source": np.array(["sidreasoner"] * n, dtype=object),
            "reward_model": np.array([{"style": "rule", "ground_truth": target}] * n, dtype=object),
            "extra_info": np.array([{"split": "train", "index": i} for i in range(n)], dtype=object),
        },
    )
    # SID codes are plain added tokens: the manager's skip_special_tokens decode keeps them.
    assert tok.decode(response_ids[0], skip_special_tokens=True) == texts[0]

    worker = RewardLoopWorker(vcfg)  # what RewardLoopManager runs as a Ray actor, here in-process
    outputs = worker.loop.run_until_complete(worker.compute_score_batch(data))
    scores = [o["reward_score"] for o in outputs]
    assert scores == pytest.approx(list(RESPONSES.values()), abs=1e-12)
    catalogue = rl_reward.load_catalogue(art["sid_index"])
    assert scores == [
        rl_reward.compute_score("sidreasoner", t, target, kind="rule", catalogue=catalogue)["score"] for t in texts
    ]
    assert [o["reward_extra_info"]["exact"] for o in outputs] == [1.0, 0.0, 0.0, 0.0, 0.0]
    assert [o["reward_extra_info"]["in_catalogue"] for o in outputs] == [1.0, 1.0, 0.0, 0.0, 0.0]
    # The token-level reward sits on each response's last real token.
    rm = resolve_reward_manager_cls(vcfg).assemble_rm_scores(data, scores)
    last = response_mask.sum(dim=1) - 1
    assert rm[torch.arange(n), last].tolist() == pytest.approx(scores)
    assert float(rm.sum()) == pytest.approx(sum(scores))
    assert not ray.is_initialized()


# ---------------------------------------------------------------- console log, checkpoints

LOG_EXCERPT = textwrap.dedent("""\
    ray init kwargs: {'num_cpus': None}
    \x1b[36m(TaskRunner pid=4242)\x1b[0m step:0 - val-core/sidreasoner/reward/mean@1:np.float64(0.125) - val-aux/num_turns/min:np.int32(2)
    (TaskRunner pid=4242) Training Progress:  50%|#####     | 1/2 [00:10<00:10]
    (TaskRunner pid=4242) step:1 - actor/pg_loss:np.float64(-0.0312) - actor/kl_loss:np.float64(0.0) - critic/score/mean:np.float64(0.25) - critic/score/max:np.float64(1.1) - critic/score/min:np.float64(0.0) - response_length/mean:np.float64(41.5) - timing_s/step:12.75 - training/global_step:1 - actor/entropy:nan
    (TaskRunner pid=4242) step:2 - critic/score/mean:np.float64(0.5) - actor/kl_loss:np.float64(0.002) - response_length/mean:np.float64(38.0) - perf/max_memory_allocated_gb:3.5e-01 [repeated 2x across cluster]
    (TaskRunner pid=5151) step:2 - critic/score/mean:np.float64(0.6) - actor/kl_loss:np.float64(0.003) - response_length/mean:np.float64(36.0) - training/global_step:2
    """)  # noqa: E501 (verbatim verl console lines)


def test_console_log_parser_on_a_verl_excerpt():
    history = verl_backend.parse_console_metrics(LOG_EXCERPT.splitlines(keepends=True))
    assert list(history) == [0, 1, 2]
    assert history[0] == {"val-core/sidreasoner/reward/mean@1": 0.125, "val-aux/num_turns/min": 2.0}
    one = history[1]
    assert {k: v for k, v in one.items() if k != "actor/entropy"} == {
        "actor/pg_loss": -0.0312,
        "actor/kl_loss": 0.0,
        "critic/score/mean": 0.25,
        "critic/score/max": 1.1,
        "critic/score/min": 0.0,
        "response_length/mean": 41.5,
        "timing_s/step": 12.75,
        "training/global_step": 1.0,
    }
    assert np.isnan(one["actor/entropy"])
    # Step 2 was logged, then redone after a resume: the later values win, keys of both are kept.
    assert history[2] == {
        "critic/score/mean": 0.6,
        "actor/kl_loss": 0.003,
        "response_length/mean": 36.0,
        "perf/max_memory_allocated_gb": 0.35,
        "training/global_step": 2.0,
    }
    per_step = verl_backend.per_step_records(history)
    assert [(p["step"], p["reward"], p["kl"], p["completion_length"]) for p in per_step] == [
        (1, 0.25, 0.0, 41.5),
        (2, 0.6, 0.003, 36.0),
    ]
    m = summary_metrics(
        per_step, global_step=2, resumed_from=0, n_prompts=8, skipped=1, completions_done=32, train_wall=16.0, wall=20.0
    )
    assert (m["reward_first"], m["reward_last"], m["reward_mean"], m["kl_last"], m["steps"]) == (
        0.25,
        0.6,
        0.425,
        0.003,
        2.0,
    )
    assert (m["completion_length_mean"], m["samples_per_s"], m["prompts_skipped_too_long"]) == (38.75, 2.0, 1.0)


def _fake_verl_checkpoint(root: Path, step: int, tracker: bool = True) -> Path:
    actor = root / f"global_step_{step}" / "actor"
    (actor / "huggingface").mkdir(parents=True)
    for name in ("model", "optim", "extra_state"):
        (actor / f"{name}_world_size_1_rank_0.pt").write_bytes(name.encode())
    (actor / "fsdp_config.json").write_text(json.dumps({"FSDP_version": 2, "world_size": 1}))
    (actor / "huggingface" / "config.json").write_text("{}")
    if tracker:
        (root / verl_backend.TRACKER).write_text(str(step))
    return actor


def test_latest_checkpoint_and_actor_copy(tmp_path):
    assert verl_backend.latest_checkpoint(tmp_path) is None
    _fake_verl_checkpoint(tmp_path, 2)
    actor = _fake_verl_checkpoint(tmp_path, 4, tracker=False)  # being written: not in the tracker yet
    assert verl_backend.latest_checkpoint(tmp_path) == (2, tmp_path / "global_step_2")
    verl_backend.copy_actor(actor, tmp_path / "out" / "actor")
    assert sorted(p.relative_to(tmp_path / "out").as_posix() for p in (tmp_path / "out").rglob("*")) == [
        "actor",
        "actor/fsdp_config.json",
        "actor/huggingface",
        "actor/huggingface/config.json",
        "actor/model_world_size_1_rank_0.pt",
    ]
    Stage3Checkpoint(tmp_path / "out").write_manifest("verl_fsdp", "actor", backend="verl", global_step=4)
    assert Stage3Checkpoint(tmp_path / "out").manifest()["format"] == "verl_fsdp"
    (actor / "fsdp_config.json").unlink()
    with pytest.raises(FileNotFoundError, match="incomplete: no fsdp_config.json$"):
        verl_backend.copy_actor(actor, tmp_path / "out2" / "actor")


# ---------------------------------------------------------------- the step around main_ppo


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA GPU is visible: verl would train here")
def test_train_verl_refuses_without_gpu_and_writes_nothing(tmp_path):
    cfg = config.load("demo", ["stage3.backend=verl", f"stage3.checkpoint_dir={tmp_path / 'ckpt'}"])
    with pytest.raises(verl_backend.GPURequiredError, match="cannot run on CPU.*Use stage3.backend=trl"):
        verl_backend.train_verl(cfg, tmp_path / "m", tmp_path / "d", tmp_path / "s", tmp_path / "c", tmp_path / "out")
    assert list(tmp_path.iterdir()) == []
    # On a Ray cluster the GPUs are the cluster's: nothing to check from this pod.
    verl_backend.require_gpu(config.load("demo", ["stage3.backend=verl", "stage3.verl.ray_address=ray://head:10001"]))


# Stands in for `python -m verl.trainer.main_ppo` (GPU-only): checks what it is handed, prints console
# metric lines the way Ray forwards them, and leaves a verl-shaped checkpoint.
FAKE_MAIN = textwrap.dedent("""\
    import json, os, sys
    from pathlib import Path
    args = dict(a.split("=", 1) for a in sys.argv[1:])
    value = lambda k: args[k].strip("'")
    assert Path(value("data.train_files")).exists() and Path(value("data.val_files")).exists()
    assert os.environ["SIDREASONER_CATALOGUE"] == value("+reward.custom_reward_function.reward_kwargs.catalogue")
    assert "RAY_ADDRESS" not in os.environ and os.environ["TOKENIZERS_PARALLELISM"] == "false"
    if os.environ.get("FAKE_VERL_FAIL"):
        print("Traceback: CUDA error: no kernel image"); sys.exit(3)
    root = Path(value("trainer.default_local_dir"))
    for step, score in ((1, 0.25), (2, 0.75)):
        print(f"(TaskRunner pid=7) step:{step} - critic/score/mean:np.float64({score})"
              f" - actor/kl_loss:np.float64(0.001) - response_length/mean:np.float64(20.0)", flush=True)
    actor = root / "global_step_2" / "actor"
    (actor / "huggingface").mkdir(parents=True, exist_ok=True)
    for name in ("model", "optim", "extra_state"):
        (actor / f"{name}_world_size_1_rank_0.pt").write_bytes(b"x")
    (actor / "fsdp_config.json").write_text("{}")
    (actor / "huggingface" / "config.json").write_text("{}")
    (root / "latest_checkpointed_iteration.txt").write_text("2")
    """)


@pytest.fixture
def fake_main(tmp_path, monkeypatch):
    script = tmp_path / "fake_main_ppo.py"
    script.write_text(FAKE_MAIN)
    monkeypatch.setattr(verl_backend, "require_gpu", lambda cfg: None)
    monkeypatch.setattr(verl_backend, "verl_command", lambda overrides: [sys.executable, str(script), *overrides])
    return tmp_path


def test_train_verl_runs_main_ppo_and_writes_the_raw_checkpoint(art, fake_main, monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "ray://elsewhere:10001")  # ray_address "" must still mean a local head
    cfg = config.load(
        "demo",
        [
            "stage3.backend=verl",
            "stage3.train_batch_size=2",
            "stage3.micro_batch_size=8",
            "stage3.max_steps=2",
            "stage3.num_generations=4",
            f"stage3.checkpoint_dir={fake_main / 'ckpt'}",
        ],
    )
    out = fake_main / "out"
    m = verl_backend.train_verl(cfg, art["stage2"], art["dataset"], art["sid_index"], art["corpus"], out)
    assert (m["steps"], m["resumed_from_step"], m["reward_first"], m["reward_last"], m["prompts"]) == (
        2,
        0,
        0.25,
        0.75,
        5,
    )
    assert sorted(p.name for p in (out / "actor").iterdir()) == [
        "fsdp_config.json",
        "huggingface",
        "model_world_size_1_rank_0.pt",
    ]
    assert Stage3Checkpoint(out).manifest() == {
        "format": "verl_fsdp",
        "path": "actor",
        "backend": "verl",
        "global_step": 2,
    }
    info = json.loads((out / "training.json").read_text())
    assert [(p["step"], p["reward"]) for p in info["per_step"]] == [(1, 0.25), (2, 0.75)]
    assert "actor_rollout_ref.rollout.n=4" in info["overrides"] and info["global_step"] == 2
    assert len(pd.read_parquet(out / "rl_data" / "train.parquet")) == 5
    assert "mean reward" in (out / "reward_curve.html").read_text()
    # A retry finds verl's checkpoint and reports where training resumed.
    again = verl_backend.train_verl(
        cfg, art["stage2"], art["dataset"], art["sid_index"], art["corpus"], fake_main / "out2"
    )
    assert again["resumed_from_step"] == 2


def test_train_verl_failure_shows_the_tail_and_leaves_no_output(art, fake_main, monkeypatch):
    monkeypatch.setenv("FAKE_VERL_FAIL", "1")
    cfg = config.load(
        "demo",
        [
            "stage3.backend=verl",
            "stage3.train_batch_size=2",
            "stage3.micro_batch_size=8",
            f"stage3.checkpoint_dir={fake_main / 'ckpt'}",
        ],
    )
    with pytest.raises(RuntimeError, match="exited with status 3(.|\n)*no kernel image"):
        verl_backend.train_verl(cfg, art["stage2"], art["dataset"], art["sid_index"], art["corpus"], fake_main / "out")
    assert not (fake_main / "out").exists()
