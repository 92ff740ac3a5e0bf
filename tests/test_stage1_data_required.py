"""A Stage 1 task with a weight but no data is refused, never left out: the paper presets' general-reasoning
data at compile, run and submit (from the config), and in sft-stage1 (from its folders); the explicit
opt-out (stage1.tasks.<task>=0) and what the metrics record."""

import json
import shutil
import subprocess
import sys

import pytest
import yaml

from sidreasoner import config
from sidreasoner.artifacts import Corpus, Dataset
from sidreasoner.config.stage1_data import GENERAL_DATA_SOURCES, require_stage1_data, stage1_data_problems
from sidreasoner.pipelines.compile import compile_pipeline
from sidreasoner.pipelines.submit import submit
from sidreasoner.runner import run_step
from sidreasoner.train import tasks

CAT = "Office_Products"
NO_GENERAL = (
    "stage1.tasks.instructions=1 but no general-reasoning data reaches it (stage1.instruction_file is empty, "
    f"data.format=amazon2018). Give it {GENERAL_DATA_SOURCES}; or train without it: stage1.tasks.instructions=0"
)


def sidreasoner(*args):
    return subprocess.run([sys.executable, "-m", "sidreasoner.cli", *args], capture_output=True, text=True)


@pytest.fixture()
def chats(tmp_path):
    """Two general-reasoning chats in the research code's {messages} lines."""
    path = tmp_path / "general.jsonl"
    lines = [
        {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
        {"messages": [{"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "red"}]},
    ]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def _stage1_default(yaml_path) -> dict:
    pipeline = next(yaml.safe_load_all(yaml_path.read_text()))
    return pipeline["root"]["inputDefinitions"]["parameters"]["stage1"]["defaultValue"]


@pytest.mark.parametrize("preset", ["office", "industrial", "games"])
def test_a_paper_preset_names_the_general_data_it_needs(preset):
    assert stage1_data_problems(config.load(preset)) == [NO_GENERAL]
    assert stage1_data_problems(config.load("demo")) == []


def test_compile_refuses_a_paper_preset_without_general_data_naming_the_settings(tmp_path):
    out = tmp_path / "p.yaml"
    result = sidreasoner("compile", "--preset", "office", "-o", str(out))
    assert result.returncode == 2
    assert result.stderr == f"error: Stage 1 lacks data:\n  {NO_GENERAL}\n"
    assert not out.exists()


def test_a_paper_preset_compiles_with_a_file_a_research_bundle_or_the_opt_out(tmp_path, chats):
    given = compile_pipeline(config.load("office", [f"stage1.instruction_file={chats}"]), tmp_path / "f.yaml")
    assert (_stage1_default(given)["instruction_file"], _stage1_default(given)["tasks"]["instructions"]) == (
        str(chats),
        1.0,
    )
    bundle = config.load("office", ["data.format=research", "data.source=s3://bucket/Amazon"])
    assert _stage1_default(compile_pipeline(bundle, tmp_path / "r.yaml"))["tasks"]["instructions"] == 1.0
    opted_out = config.load("office", ["stage1.tasks.instructions=0"])
    assert _stage1_default(compile_pipeline(opted_out, tmp_path / "o.yaml"))["tasks"]["instructions"] == 0.0


def test_run_and_submit_refuse_it_before_anything_runs(tmp_path):
    root = tmp_path / "root"
    result = sidreasoner("run", "--preset", "office", "--pipeline-root", str(root))
    assert (result.returncode, result.stderr) == (2, f"error: Stage 1 lacks data:\n  {NO_GENERAL}\n")
    assert not root.exists()
    # No server listens on port 9: the config is refused before any request.
    with pytest.raises(config.ConfigError, match="stage1.tasks.instructions=0$"):
        submit(config.load("office"), "http://127.0.0.1:9")
    require_stage1_data(config.load("office"), until="synthesize-corpus")  # a run that stops before Stage 1


def test_other_tasks_without_data_and_a_file_left_out_are_refused():
    cfg = config.load("demo", ["teacher.history_narratives=false", "stage1.instruction_file=/data/general.jsonl"])
    assert stage1_data_problems(cfg) == [
        "stage1.tasks.history_narratives=0.5 but teacher.history_narratives=false writes none. Give it the "
        "teacher's history narratives (synthesize-corpus, teacher.history_narratives=true); or train without it: "
        "stage1.tasks.history_narratives=0",
        "stage1.instruction_file=/data/general.jsonl is set but stage1.tasks.instructions=0 leaves it out: set "
        "stage1.tasks.instructions=1 to train on it, or drop stage1.instruction_file",
    ]
    bucket = config.load("office", ["stage1.instruction_file=s3://bucket/general/sampled_data.arrow"])
    assert stage1_data_problems(bucket) == []
    web = config.load("office", ["stage1.instruction_file=https://example.com/general.jsonl"])
    assert stage1_data_problems(web) == [
        "stage1.instruction_file=https://example.com/general.jsonl: unsupported scheme https://; a path the "
        "sft-stage1 pod can read, file://, s3://, minio:// or gs://<bucket>/<key>"
    ]


def test_the_general_data_is_read_from_a_bucket(chats, moto_server, monkeypatch):
    """sft-stage1 reads stage1.instruction_file from a bucket through the step's storage credentials; a
    missing object is named by its URI."""
    from sidreasoner.storage import upload_file
    from sidreasoner.train.data import InstructionFileError, read_instruction_file

    monkeypatch.setenv("SIDREASONER_S3_ENDPOINT", moto_server["url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_server["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_server["secret"])
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("SIDREASONER_STORAGE_RETRIES", "1")
    from sidreasoner.storage.s3 import make_client

    client = make_client("s3")
    if not client.bucket_exists("general"):
        client.make_bucket("general")
    upload_file(chats, "s3://general/bundle/sampled_data.arrow")
    remote = read_instruction_file("s3://general/bundle/sampled_data.arrow")
    assert [(e.prompt, e.response) for e in remote] == [("2+2?", "4"), ("Name a colour", "red")]
    assert remote == read_instruction_file(chats) == read_instruction_file(f"file://{chats}")
    with pytest.raises(InstructionFileError, match=r"^stage1\.instruction_file s3://general/none\.jsonl: "):
        read_instruction_file("s3://general/none.jsonl")


def test_a_corpus_without_item_narratives_is_refused_in_stage1(tmp_path, tiny_artifacts):
    corpus = tmp_path / "corpus"
    shutil.copytree(tiny_artifacts["corpus"], corpus)
    (corpus / Corpus.ITEMS).unlink()
    s = config.load("demo").stage1
    with pytest.raises(ValueError) as err:
        tasks.stage1_examples(s, 0, tiny_artifacts["dataset"], tiny_artifacts["sid_index"], corpus)
    assert str(err.value) == (
        "stage1 lacks data:\n  stage1.tasks.item_narratives=0.5 but the corpus "
        f"{corpus} has no {Corpus.ITEMS}. Give it the teacher's item narratives (synthesize-corpus, "
        "teacher.item_narratives=true); or train without it: stage1.tasks.item_narratives=0"
    )


@pytest.fixture()
def bundle_without_general(tmp_path, write_research_bundle):
    """A research bundle whose general/ data is missing, imported up to the corpus: the step folders."""
    bundle = write_research_bundle(tmp_path / "Amazon", CAT, n_users=12, n_items=20)
    bundle["paths"]["general_reasoning"].unlink()
    sets = ["data.format=research", f"data.source={bundle['root']}", f"data.category={CAT}", "data.min_samples=5"]
    cfg = config.load("demo", sets)
    paths = {k: tmp_path / k for k in ("raw", "dataset", "embeddings", "sid_index", "corpus")}
    for step in ("download-data", "preprocess", "embed-items", "quantize-sids", "synthesize-corpus"):
        run_step(step, cfg, paths)
    return cfg, sets, paths


def test_sft_stage1_refuses_a_research_dataset_without_general_data(bundle_without_general, tmp_path):
    cfg, sets, paths = bundle_without_general
    assert Dataset.at(paths["dataset"]).general_chats() is None
    assert cfg.stage1.tasks.instructions == 1.0 and stage1_data_problems(cfg) == []  # the config cannot tell
    want = (
        f"stage1 lacks data:\n  stage1.tasks.instructions=1 but stage1.instruction_file is empty and the dataset "
        f"{paths['dataset']} holds no general-reasoning chats from a research bundle ({Dataset.BUNDLE_GENERAL}). "
        f"Give it {GENERAL_DATA_SOURCES}; or train without it: stage1.tasks.instructions=0"
    )
    folders = {**paths, "base_model": tmp_path / "not-a-model", "model": tmp_path / "out"}
    folders["base_model"].mkdir()  # an empty folder: refused before any model is read
    with pytest.raises(ValueError) as err:
        run_step("sft-stage1", cfg, folders)
    assert str(err.value) == want
    args = [f"--{name.replace('_', '-')}={folders[name]}" for name in ("base_model", "dataset", "sid_index", "corpus")]
    result = sidreasoner(
        "step", "sft-stage1", *args, f"--model={folders['model']}", *sum((["--set", s] for s in sets), [])
    )
    assert (result.returncode, result.stderr) == (1, f"error: sft-stage1: {want}\n")
    assert not folders["model"].exists()
    # The opt-out trains without it.
    opted_out = config.load("demo", [*sets, "stage1.tasks.instructions=0"]).stage1
    examples, counts = tasks.stage1_examples(opted_out, 0, paths["dataset"], paths["sid_index"], paths["corpus"])
    assert "instructions" not in counts and sum(counts.values()) == len(examples) > 0


def test_stage1_metrics_count_each_task_and_record_the_opt_out(tiny_base_model, tmp_path, chats):
    from sidreasoner.train.sft import sft_stage1

    short = [
        "stage1.epochs=1",
        "stage1.valid_samples=1",
        "stage1.hr_samples=0",
        f"stage1.checkpoint_dir={tmp_path / 'ckpt'}",
    ]
    folders = [tiny_base_model[k] for k in ("model_dir", "dataset", "sid_index", "corpus")]
    opted_out = sft_stage1(config.load("demo", tiny_base_model["overrides"] + short), *folders, tmp_path / "a")
    given = [f"stage1.instruction_file={chats}", "stage1.tasks.instructions=1"]
    with_data = sft_stage1(config.load("demo", tiny_base_model["overrides"] + short + given), *folders, tmp_path / "b")
    counts = {k: v for k, v in opted_out.items() if k.startswith("examples_")}
    assert counts == {
        "examples_sid_history_to_sid": 10.0,
        "examples_title_to_sid": 6.0,
        "examples_sid_to_title": 6.0,
        "examples_sid_history_to_title": 5.0,
        "examples_title_history_to_title": 0.0,
        "examples_title_history_to_sid": 5.0,
        "examples_item_narratives": 3.0,
        "examples_history_narratives": 2.0,
        "examples_instructions": 0.0,
    }
    assert opted_out["samples"] == sum(counts.values()) and opted_out["general_data_opted_out"] == 1.0
    assert (with_data["examples_instructions"], with_data["general_data_opted_out"]) == (2.0, 0.0)
