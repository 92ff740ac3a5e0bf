"""A step sees only the config sections its registry entry declares: every step runs through the runner
with that view, and a read of any other section fails naming the step and the section."""

from __future__ import annotations

import contextlib
import copy
import json
import pickle
import time
from pathlib import Path

import pytest

from sidreasoner import config
from sidreasoner.artifacts import Dataset, Evaluation
from sidreasoner.config import ScopedConfig, UndeclaredSection
from sidreasoner.runner import run_step
from sidreasoner.steps import STEPS, Step

# The demo preset on the smallest settings that still reach every step's code: a catalogue of 40 items,
# a few training steps per stage, a few evaluated users.
TINY_DAG = [
    "data.demo.num_items=40",
    "data.demo.num_users=80",
    "data.min_samples=10",
    "sid.codebook_size=8",
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.head_dim=8",
    "model.tiny.num_layers=1",
    "model.tiny.vocab_size=400",
    "stage1.max_per_task=8",
    "stage1.epochs=1",
    "stage1.hr_samples=4",
    "stage1.valid_samples=4",
    "stage2.max_samples=8",
    "stage2.valid_samples=4",
    "stage2.reasoning_holdout=4",
    "stage2.epochs=1",
    "stage3.max_steps=1",
    "stage3.max_samples=2",
    "stage3.valid_samples=2",
    "stage3.num_generations=2",
    "stage3.max_response_length=8",
    "stage3.micro_batch_size=4",
    "eval.max_users=4",
    "eval.think_max_tokens=8",
    "eval.report_samples=1",
]


def _reads_model(cfg, out: Path) -> dict[str, float]:
    return {"base": float(len(cfg.model.base))}


def _reads_declared(cfg, out: Evaluation) -> dict[str, float]:
    out.path.mkdir()
    return {"seed": float(cfg.seed), "beams": float(cfg.eval.num_beams)}


def _probe(function: str) -> dict[str, Step]:
    return {
        "probe": Step(
            "probe",
            "reads the config",
            "evaluate",
            f"{__name__}:{function}",
            ("seed", "eval"),
            outputs={"out": Evaluation},
        )
    }


def test_an_undeclared_read_names_the_step_and_the_section(tmp_path):
    cfg = config.load("office")
    with pytest.raises(
        UndeclaredSection,
        match=r"step 'probe' reads config section 'model', which its registry "
        r"entry does not declare \(it declares seed, eval\)",
    ):
        run_step("probe", cfg, {"out": tmp_path / "out"}, registry=_probe("_reads_model"))
    assert run_step("probe", cfg, {"out": tmp_path / "ok"}, registry=_probe("_reads_declared")) == {
        "seed": 0.0,
        "beams": 10.0,
    }


def test_a_slice_rebuilt_for_a_step_refuses_other_sections():
    cfg = config.load("office", ["generations.sft-stage1=3", "generations.rl-stage3=5"])
    view = config.from_step_config(config.step_config(cfg, "quantize-sids"), "quantize-sids")
    assert view.sid == cfg.sid and view.seed == cfg.seed
    for section in ("data", "model", "stage1", "cluster"):
        with pytest.raises(UndeclaredSection, match=f"step 'quantize-sids' reads config section '{section}'"):
            getattr(view, section)
    with pytest.raises(UndeclaredSection, match="'model'"):
        _ = config.scoped(cfg, "sft-stage1").model.base
    # A full Config still takes the defaults for what a slice leaves out (enabled_at_run_time reads one).
    assert config.from_step_config({"seed": 1}).model.base == "tiny"
    # Only the step's own generation: another step's is not part of its task's parameters.
    assert config.scoped(cfg, "sft-stage1").generations == {"sft-stage1": 3}


def test_a_scoped_config_dumps_compares_and_copies_its_declared_sections():
    cfg = config.load("office")
    view = config.scoped(cfg, "rl-stage3")
    assert isinstance(view, config.Config)
    assert set(view.model_dump()) == {"seed", "stage3", "generations"}
    assert config.to_params(view) == config.step_config(cfg, "rl-stage3")
    assert view == config.scoped(cfg, "rl-stage3") != config.scoped(config.load("demo"), "rl-stage3")
    for twin in (copy.deepcopy(view), pickle.loads(pickle.dumps(view)), view.model_copy()):
        assert twin == view and isinstance(twin, ScopedConfig)
        with pytest.raises(UndeclaredSection, match="step 'rl-stage3' reads config section 'data'"):
            _ = twin.data
    assert "ScopedConfig(seed=0, stage3=" in repr(view)


def test_a_step_cannot_declare_a_section_the_config_lacks():
    with pytest.raises(config.ConfigError, match="step 'odd' declares config section.s. nowhere, generations"):
        config.scope_config(config.load("demo"), "odd", ("seed", "nowhere", "generations"))


def test_the_ranks_of_a_torchrun_relaunch_see_what_the_step_sees():
    from sidreasoner.train.distributed import config_for_ranks, config_of_rank

    view = config.scoped(config.load("office", ["generations.sft-stage2=7"]), "sft-stage2")
    rebuilt = config_of_rank(json.loads(json.dumps(config_for_ranks(view))))
    assert rebuilt == view and rebuilt.generations == {"sft-stage2": 7}
    with pytest.raises(UndeclaredSection, match="step 'sft-stage2' reads config section 'model'"):
        _ = rebuilt.model


def test_the_category_is_the_datasets(tmp_path):
    dataset = Dataset(tmp_path)
    with pytest.raises(FileNotFoundError, match=r"dataset .*: stats.json \(the dataset's record.*\) not found"):
        dataset.category()
    (tmp_path / "stats.json").write_text(json.dumps({"category": "../up"}))
    with pytest.raises(ValueError, match=r"stats.json: the category '../up' cannot be part of a file name"):
        dataset.category()
    (tmp_path / "stats.json").write_text(json.dumps({"category": "Toys_and_Games"}))
    assert dataset.category() == "Toys_and_Games"


class TinyDag:
    """Runs registry steps through the runner on TINY_DAG, each once, its producers first."""

    def __init__(self, root: Path):
        self.root = root
        extra = [f"{s}.checkpoint_dir={root / 'checkpoints'}" for s in ("stage1", "stage2", "stage3")]
        self.cfg = config.load(
            "demo",
            [
                *TINY_DAG,
                *extra,
                f"data.cache_dir={root / 'downloads'}",
                f"teacher.cache_dir={root / 'teacher'}",
                f"export.uri={root / 'export'}",
                "serve.namespace=recsys",
            ],
        )
        self.folders: dict[str, Path] = {}  # "step.output" -> folder
        self.results: dict[str, dict[str, float] | Exception] = {}

    def run(self, name: str) -> dict[str, float]:
        if name not in self.results:
            step = STEPS[name]
            for producer in dict.fromkeys(step.source(i)[0] for i in step.inputs):
                self.run(producer)
            paths = {i: self.folders[step.inputs[i]] for i in step.inputs}
            paths.update({o: self.root / name / o for o in step.outputs})
            try:
                self.results[name] = run_step(name, self.cfg, paths)
            except Exception as err:  # kept: each step that needs this one fails with it too
                self.results[name] = err
            self.folders.update({f"{name}.{o}": self.root / name / o for o in step.outputs})
        result = self.results[name]
        if isinstance(result, Exception):
            raise result
        return result


@pytest.fixture(scope="module")
def tiny_dag(tmp_path_factory) -> TinyDag:
    return TinyDag(tmp_path_factory.mktemp("scoped-dag"))


@contextlib.contextmanager
def _deploying(dag: TinyDag, tmp_path: Path, monkeypatch):
    """For deploy-model: the Kubernetes API server stand-in (as $KUBECONFIG) and the compiled pod setting. The
    InferenceService's storageUri must be a bucket: export-model's record is pointed at one (the tiny DAG
    exports to a folder; deploy-model reads nothing else of the export)."""
    from sidreasoner.artifacts import ModelExport
    from sidreasoner.serve import deploy

    from .helpers.kube_api import serving

    dag.run("export-model")
    record = ModelExport(dag.folders["export-model.model_export"])
    record.write_record({**record.record(), "uri": "s3://models/tiny-dag"})
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    monkeypatch.setattr(deploy, "POLL_S", 0.01)
    monkeypatch.setenv(deploy.SERVING_POD_ENV, json.dumps({"image": "registry.example/sidreasoner-cpu:t"}))
    with serving() as api:
        monkeypatch.setenv("KUBECONFIG", str(api.kubeconfig(tmp_path / "kubeconfig")))
        yield


@pytest.mark.parametrize("name", list(STEPS))
def test_every_step_runs_on_its_declared_sections(tiny_dag, tmp_path, monkeypatch, name):
    started = time.perf_counter()
    deploying = name == "deploy-model"
    with _deploying(tiny_dag, tmp_path, monkeypatch) if deploying else contextlib.nullcontext():
        metrics = tiny_dag.run(name)
    assert metrics and all(isinstance(v, float) for v in metrics.values())
    for output in STEPS[name].outputs:
        assert (tiny_dag.root / name / output).is_dir()
    print(f"{name}: {time.perf_counter() - started:.1f} s")
