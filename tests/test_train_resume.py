"""Resumable training on real processes and files: a step SIGTERMed at a checkpoint and run again trains,
bit for bit, the model of a run never interrupted (sft-stage1 in each batching mode, rl-stage3 with TRL);
two runs of one config at once; damaged checkpoints; a retry after the training finished; a non-finite
loss. On the 6-item fixtures: 12 optimizer steps of 4 examples, 6 an epoch, a checkpoint every 3."""

from __future__ import annotations

import functools
import json
import logging
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from sidreasoner import config
from sidreasoner.model import folder_lock
from sidreasoner.model.checkpoints import SEAL
from sidreasoner.model.folder_lock import LockTimings
from sidreasoner.provenance import code_version
from sidreasoner.rl import reward, stage3
from sidreasoner.train import sft
from sidreasoner.train.checkpointing import NonFiniteTrainingError
from sidreasoner.train.data import LengthGroupedEpochSampler
from sidreasoner.train.sft import sft_stage1

from .helpers import training_process

pytestmark = pytest.mark.slow  # trains models (seconds each)

REPO = Path(__file__).resolve().parents[1]
SFT_RUN = [
    "stage1.per_device_batch_size=4",
    "stage1.global_batch_size=4",
    "stage1.max_per_task=3",
    "stage1.epochs=2",
    "stage1.save_steps=3",
    "stage1.save_total_limit=2",
    "stage1.logging_steps=1",
    "stage1.valid_samples=3",
    "stage1.hr_samples=0",
    "stage1.early_stopping_patience=0",
]
# Temperature 4: the tiny model's completions differ within a group, so the rewards (and the weights) change.
RL_RUN = [
    "stage3.backend=trl",
    "stage3.num_generations=2",
    "stage3.train_batch_size=2",
    "stage3.micro_batch_size=4",
    "stage3.max_response_length=12",
    "stage3.lr=1e-3",
    "stage3.temperature=4",
    "stage3.max_steps=6",
    "stage3.save_steps=3",
]


@pytest.fixture(scope="module", autouse=True)
def _one_code_version():
    """The checkpoint key holds a digest of the installed source: every process of a test must find the same
    folder, even while the source tree is being edited."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SIDREASONER_CODE_VERSION", "test-train-resume")
        code_version.cache_clear()  # an earlier test of this session may have computed the real one
        yield
    code_version.cache_clear()


# ---------------------------------------------------------------- helpers


def _sft_overrides(base, ckpt_dir: Path, batching: str = "padded", *extra) -> list[str]:
    return base["overrides"] + SFT_RUN + [f"stage1.batching={batching}", f"stage1.checkpoint_dir={ckpt_dir}", *extra]


def _sft_dirs(base, out: Path) -> list[Path]:
    return [base["model_dir"], base["dataset"], base["sid_index"], base["corpus"], out]


def _rl_dirs(art, model_dir: Path, out: Path) -> list[Path]:
    return [model_dir, art["dataset"], art["sid_index"], art["corpus"], out]


def _start(step: str, overrides: list[str], dirs: list[Path], tmp: Path, pause_at: int = -1) -> subprocess.Popen:
    """The step in a process of its own (tests/helpers/training_process.py); its stderr goes to a file."""
    n = len(list(tmp.glob("proc-*.err")))
    ready, err = tmp / f"proc-{n}.ready", tmp / f"proc-{n}.err"
    with err.open("w") as stderr:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "tests.helpers.training_process",
                step,
                str(pause_at),
                str(ready),
                json.dumps(overrides),
                json.dumps([str(d) for d in dirs]),
            ],
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    proc.ready, proc.err = ready, err
    return proc


def _finish(proc: subprocess.Popen, timeout: float = 180) -> int:
    try:
        return proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _sigterm_when_paused(proc: subprocess.Popen, timeout: float = 180) -> None:
    end = time.monotonic() + timeout
    while not proc.ready.exists():
        if proc.poll() is not None or time.monotonic() > end:
            _finish(proc, 0)
            pytest.fail(f"the training process never paused (exit {proc.returncode}):\n{proc.err.read_text()[-3000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    assert _finish(proc, 30) == -signal.SIGTERM


def _assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a)), load_file(str(b))
    assert wa.keys() == wb.keys()
    differ = [name for name in wa if not torch.equal(wa[name], wb[name])]
    assert not differ, f"{len(differ)} of {len(wa)} tensors differ, e.g. {differ[:3]}"


def _sft_record(out: Path) -> dict:
    """What a finished sft-stage1 reports of its training, but timings and where it resumed."""
    info = json.loads((out / "training.json").read_text())
    skipped = ("wall_seconds", "tokens_per_s", "resumed_from_step")
    metrics = {k: v for k, v in info["metrics"].items() if k not in skipped}
    keys = (
        "valid_losses",
        "valid_losses_at_best",
        "initial_valid_losses",
        "best_valid_loss",
        "used_best_checkpoint",
        "global_step",
        "max_steps",
        "epochs_run",
    )
    return {
        **{k: info[k] for k in keys},
        "metrics": metrics,
        "train_curve": [(h["step"], h["loss"]) for h in info["history"] if "loss" in h],
    }


def _resumed_from(out: Path) -> int:
    return json.loads((out / "training.json").read_text())["resumed_from_step"]


def _stage_folder(ckpt_dir: Path, stage: str = "stage1") -> Path:
    (folder,) = ckpt_dir.glob(f"{stage}-*")
    return folder


@pytest.fixture(scope="module")
def sft_reference(tiny_base_model, tmp_path_factory):
    """sft_reference(batching) -> the folder of an uninterrupted sft-stage1 (its ckpt/ and out/), trained once."""
    runs = {}

    def get(batching: str = "padded") -> Path:
        if batching not in runs:
            tmp = tmp_path_factory.mktemp(f"sft-{batching}")
            overrides = _sft_overrides(tiny_base_model, tmp / "ckpt", batching)
            sft_stage1(config.load("demo", overrides), *_sft_dirs(tiny_base_model, tmp / "out"))
            runs[batching] = tmp
        return runs[batching]

    return get


def _copy_checkpoints(reference: Path, tmp: Path) -> Path:
    """The reference run's checkpoint folder copied under tmp/ckpt (the key leaves checkpoint_dir out)."""
    folder = _stage_folder(reference / "ckpt")
    shutil.copytree(folder, tmp / "ckpt" / folder.name)
    return tmp / "ckpt" / folder.name


# ---------------------------------------------------------------- a SIGTERM at a checkpoint, then the retry


def test_length_grouped_order_is_a_function_of_the_seed_and_the_epoch():
    lengths = [3, 9, 1, 7, 7, 2, 8, 5, 4, 6, 1, 9]
    sampler = LengthGroupedEpochSampler(lengths, batch_size=4, seed=7)
    first = list(sampler)
    torch.manual_seed(123)  # the global RNG, which a resume restores, plays no part
    assert list(LengthGroupedEpochSampler(lengths, 4, 7)) == first and sorted(first) == list(range(12))
    sampler.set_epoch(1)
    assert list(sampler) != first
    sampler.set_epoch(0)
    assert list(sampler) == first


@pytest.mark.parametrize("batching, pause_at", [("packed", 3), ("length_grouped", 3), ("padded", 6)])
def test_sft_sigterm_at_a_checkpoint_then_a_retry_trains_the_same_model(
    batching, pause_at, tiny_base_model, sft_reference, tmp_path
):
    """Mid-epoch (checkpoint-3) and at an epoch's end (checkpoint-6, saved after that epoch's evaluation)."""
    base = tiny_base_model
    overrides = _sft_overrides(base, tmp_path / "ckpt", batching)
    proc = _start("sft-stage1", overrides, _sft_dirs(base, tmp_path / "out"), tmp_path, pause_at)
    reference = sft_reference(batching)  # meanwhile
    _sigterm_when_paused(proc)
    assert not (tmp_path / "out").exists()
    sft_stage1(config.load("demo", overrides), *_sft_dirs(base, tmp_path / "out"))
    assert _resumed_from(tmp_path / "out") == pause_at
    _assert_same_weights(reference / "out" / "model.safetensors", tmp_path / "out" / "model.safetensors")
    assert _sft_record(tmp_path / "out") == _sft_record(reference / "out")


def test_rl_stage3_sigterm_at_a_checkpoint_then_a_retry_trains_the_same_model(
    tiny_artifacts, tiny_sid_model, tmp_path, monkeypatch
):
    """checkpoint-3 is in the second epoch (2 steps an epoch): the retry draws that epoch's prompts again."""
    monkeypatch.setattr(reward, "make_trl_reward", training_process.graded_reward)
    art, model_dir = tiny_artifacts, tiny_sid_model["dir"]
    overrides = RL_RUN + [f"stage3.checkpoint_dir={tmp_path / 'ckpt'}"]
    proc = _start("rl-stage3", overrides, _rl_dirs(art, model_dir, tmp_path / "out"), tmp_path, 3)
    reference = RL_RUN + [f"stage3.checkpoint_dir={tmp_path / 'ref-ckpt'}"]
    stage3.rl_stage3(config.load("demo", reference), *_rl_dirs(art, model_dir, tmp_path / "ref"))  # meanwhile
    _sigterm_when_paused(proc)
    metrics = stage3.rl_stage3(config.load("demo", overrides), *_rl_dirs(art, model_dir, tmp_path / "out"))
    assert metrics["resumed_from_step"] == 3 and metrics["steps"] == 6
    _assert_same_weights(
        tmp_path / "ref" / "model" / "model.safetensors", tmp_path / "out" / "model" / "model.safetensors"
    )
    steps = [json.loads((tmp_path / run / "training.json").read_text())["per_step"] for run in ("ref", "out")]
    assert steps[0] == steps[1] and len({p["reward"] for p in steps[0]}) > 1


# ---------------------------------------------------------------- two runs, damaged checkpoints, a finished training


def test_two_runs_of_one_config_at_once_train_one_model(tiny_base_model, sft_reference, tmp_path, monkeypatch):
    """A second process (this one) starts while the first holds the checkpoint folder's lock: it waits, then
    finds the first's finished training and reports that training, validation included, and the global
    step it really resumed from."""
    base = tiny_base_model
    overrides = _sft_overrides(base, tmp_path / "ckpt")
    first = _start("sft-stage1", overrides, _sft_dirs(base, tmp_path / "a"), tmp_path)
    reference = sft_reference()  # meanwhile
    monkeypatch.setattr(
        sft, "checkpoint_lock", functools.partial(folder_lock.checkpoint_lock, timings=LockTimings(poll_s=0.05))
    )
    end = time.monotonic() + 180
    while not list((tmp_path / "ckpt").glob(".stage1-*.lock")):
        assert first.poll() is None and time.monotonic() < end, first.err.read_text()[-3000:]
        time.sleep(0.01)
    sft.sft_stage1(config.load("demo", overrides), *_sft_dirs(base, tmp_path / "b"))
    assert _finish(first) == 0, first.err.read_text()[-3000:]
    assert [_resumed_from(tmp_path / name) for name in ("a", "b")] == [0, 12]
    for name in ("a", "b"):
        _assert_same_weights(reference / "out" / "model.safetensors", tmp_path / name / "model.safetensors")
        assert _sft_record(tmp_path / name) == _sft_record(reference / "out")


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _garble(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data))


DAMAGE = {  # id -> (what is done to checkpoint-12, what the log says of checkpoint-12, where the retry resumes)
    "truncated trainer_state.json": (
        lambda c: _truncate(c / "trainer_state.json"),
        r"trainer_state\.json: [\d,]+ bytes, [\d,]+ when saved",
        9,
    ),
    "truncated model.safetensors": (
        lambda c: _truncate(c / "model.safetensors"),
        r"model\.safetensors: [\d,]+ bytes, [\d,]+ when saved",
        9,
    ),
    "garbled optimizer.pt": (
        lambda c: _garble(c / "optimizer.pt"),
        r"optimizer\.pt: its content changed since it was saved",
        9,
    ),
    "killed while saving": (lambda c: (c / SEAL).unlink(), rf"{re.escape(SEAL)}: absent", 9),
    "every checkpoint damaged": (
        lambda c: [_truncate(c.with_name(n) / "trainer_state.json") for n in ("checkpoint-9", "checkpoint-12")],
        r"trainer_state\.json: [\d,]+ bytes",
        0,
    ),
}


@pytest.mark.parametrize("damage", list(DAMAGE))
def test_a_damaged_newest_checkpoint_is_skipped_naming_the_file(
    damage, tiny_base_model, sft_reference, tmp_path, caplog
):
    """The retry logs the checkpoint, the file and why, moves the checkpoint aside, and resumes from the
    previous one (or starts afresh): it trains the model the uninterrupted run trained."""
    base, reference = tiny_base_model, sft_reference()
    folder = _copy_checkpoints(reference, tmp_path)
    harm, said, resumes_at = DAMAGE[damage]
    harm(folder / "checkpoint-12")
    with caplog.at_level(logging.WARNING, logger="sidreasoner"):
        sft_stage1(config.load("demo", _sft_overrides(base, tmp_path / "ckpt")), *_sft_dirs(base, tmp_path / "out"))
    assert re.search(
        rf"{re.escape(str(folder / 'checkpoint-12'))}: not resumed from: {said}.*moved to "
        r"\.checkpoint-12\.damaged-",
        caplog.text,
    ), caplog.text
    assert _resumed_from(tmp_path / "out") == resumes_at
    _assert_same_weights(reference / "out" / "model.safetensors", tmp_path / "out" / "model.safetensors")
    assert _sft_record(tmp_path / "out") == _sft_record(reference / "out")


def test_a_garbled_initial_json_is_evaluated_again(tiny_base_model, sft_reference, tmp_path, caplog):
    base, reference = tiny_base_model, sft_reference()
    folder = _copy_checkpoints(reference, tmp_path)
    (folder / "initial.json").write_text('{"initial_valid_loss": 5.2, "initial_valid_lo')
    with caplog.at_level(logging.WARNING, logger="sidreasoner"):
        sft_stage1(config.load("demo", _sft_overrides(base, tmp_path / "ckpt")), *_sft_dirs(base, tmp_path / "out"))
    assert f"{folder / 'initial.json'}: unreadable (" in caplog.text
    assert _sft_record(tmp_path / "out") == _sft_record(reference / "out")
    assert json.loads((folder / "initial.json").read_text()) == json.loads(
        (_stage_folder(reference / "ckpt") / "initial.json").read_text()
    )


def test_a_retry_after_the_training_finished_reports_the_same_validation(tiny_base_model, sft_reference, tmp_path):
    """The last checkpoint holds the last epoch's evaluation: the retry's validation loss and curve are the
    uninterrupted run's (before, its validation loss was NaN and its curve empty)."""
    base, reference = tiny_base_model, sft_reference()
    _copy_checkpoints(reference, tmp_path)
    cfg = config.load("demo", _sft_overrides(base, tmp_path / "ckpt"))
    metrics = sft_stage1(cfg, *_sft_dirs(base, tmp_path / "out"))
    assert metrics["resumed_from_step"] == 12 and metrics["valid_loss"] < metrics["valid_loss_initial"]
    record = _sft_record(tmp_path / "out")
    assert record == _sft_record(reference / "out") and len(record["valid_losses"]["sid"]) == 2
    _assert_same_weights(reference / "out" / "model.safetensors", tmp_path / "out" / "model.safetensors")


def test_a_retry_after_an_early_stop_does_not_train_on(tiny_base_model, tmp_path):
    """The early stop at step 18 (the third epoch's loss is higher) saves a checkpoint, off the save_steps grid,
    sealed as finished: the retry loads it and trains no step (before, it trained on past the early stop)."""
    overrides = _sft_overrides(
        tiny_base_model,
        tmp_path / "ckpt",
        "padded",
        "stage1.epochs=5",
        "stage1.lr=0.05",
        "stage1.early_stopping_patience=1",
        "stage1.save_steps=4",
    )
    for out in ("a", "b"):
        sft_stage1(config.load("demo", overrides), *_sft_dirs(tiny_base_model, tmp_path / out))
    losses = _sft_record(tmp_path / "a")["valid_losses"]["sid"]
    assert len(losses) == 3 and losses[2] > losses[1]
    assert [_resumed_from(tmp_path / out) for out in ("a", "b")] == [0, 18]
    assert _sft_record(tmp_path / "b") == _sft_record(tmp_path / "a")
    assert _sft_record(tmp_path / "a")["global_step"] == 18
    _assert_same_weights(tmp_path / "a" / "model.safetensors", tmp_path / "b" / "model.safetensors")


# ---------------------------------------------------------------- non-finite training


def _with_lr(overrides: list[str], section: str, lr: float):
    """The config with a learning rate the config itself refuses (a stand-in for any cause of overflow)."""
    cfg = config.load("demo", overrides)
    return cfg.model_copy(update={section: getattr(cfg, section).model_copy(update={"lr": lr})})


def test_sft_stops_at_the_first_non_finite_value_naming_the_step_the_loss_and_the_setting(tiny_base_model, tmp_path):
    base = tiny_base_model
    overrides = _sft_overrides(base, tmp_path / "ckpt", "padded", "stage1.save_steps=1", "stage1.warmup_ratio=0")
    cfg = _with_lr(overrides, "stage1", 1e30)
    expected = (
        r"stage1: the weights' norm is not finite after the optimizer step at global step 1 of 12 "
        r"\(last finite loss: \d[\d.]*\); training stopped\. stage1\.lr=1e\+30 is the likely cause"
    )
    for _ in range(2):  # the retry fails the same way, at once
        with pytest.raises(NonFiniteTrainingError, match=expected):
            sft_stage1(cfg, *_sft_dirs(base, tmp_path / "out"))
        assert not list((tmp_path / "ckpt").glob("stage1-*/checkpoint-*")) and not (tmp_path / "out").exists()


@pytest.mark.parametrize("fault", ["training loss", "gradient norm"])
def test_a_non_finite_value_removes_the_checkpoint_whose_weights_gave_it(fault, tiny_base_model, tmp_path, monkeypatch):
    """The step after checkpoint-4 meets a NaN loss, or a finite loss with NaN gradients."""
    from transformers import Trainer

    compute_loss = Trainer.compute_loss

    def nan_at_step_4(self, *args, **kwargs):
        loss = compute_loss(self, *args, **kwargs)
        if self.state.global_step != 4:
            return loss
        if fault == "training loss":
            return loss * float("nan")
        loss.register_hook(lambda grad: grad * float("nan"))
        return loss

    monkeypatch.setattr(Trainer, "compute_loss", nan_at_step_4)
    overrides = _sft_overrides(
        tiny_base_model, tmp_path / "ckpt", "padded", "stage1.save_steps=2", "stage1.save_total_limit=3"
    )
    with pytest.raises(
        NonFiniteTrainingError,
        match=rf"stage1: the {fault} is nan at global step 4 of 12 .*"
        r"Removed the checkpoints of those weights: checkpoint-4$",
    ):
        sft_stage1(config.load("demo", overrides), *_sft_dirs(tiny_base_model, tmp_path / "out"))
    assert sorted(p.name for p in _stage_folder(tmp_path / "ckpt").glob("checkpoint-*")) == ["checkpoint-2"]


def test_rl_stage3_stops_at_the_first_non_finite_value_keeping_no_checkpoint(
    tiny_artifacts, tiny_sid_model, tmp_path, monkeypatch
):
    monkeypatch.setattr(reward, "make_trl_reward", training_process.graded_reward)
    overrides = RL_RUN + ["stage3.max_steps=2", "stage3.save_steps=1", f"stage3.checkpoint_dir={tmp_path / 'ckpt'}"]
    cfg = _with_lr(overrides, "stage3", 1e30)
    with pytest.raises(NonFiniteTrainingError, match=r"stage3: .* at global step 1 of 2 .*stage3\.lr=1e\+30"):
        stage3.rl_stage3(cfg, *_rl_dirs(tiny_artifacts, tiny_sid_model["dir"], tmp_path / "out"))
    assert not list((tmp_path / "ckpt").glob("stage3-*/checkpoint-*")) and not (tmp_path / "out").exists()
