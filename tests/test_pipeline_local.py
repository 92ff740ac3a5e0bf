"""The DAG through kfp.local, as `sidreasoner run` runs it: artifacts, metrics, caching, --until."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from sidreasoner import config
from sidreasoner.pipelines.local import run_local
from sidreasoner.steps import STEPS as REGISTRY
from sidreasoner.steps import downstream

from .helpers.small_dag import (
    CACHE_KEY,
    SMALL,
    differences,
    machine,
    read_golden,
    run_small,
    seeded_metrics,
    tree_hash,
)

pytestmark = pytest.mark.slow

REMOTE = re.compile(r"""(src|href)\s*=\s*["']?(https?:)?//""")  # the KFP UI iframe must need nothing remote
# Every registered step but export-model, which joins the DAG only when export.uri is set.
STEPS = [name for name, step in REGISTRY.items() if not step.enabled_by]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("pipeline_root")


@pytest.fixture(scope="module")
def first_run(root, pytestconfig):
    """The demo DAG on SMALL settings. Its metrics go to pytest's cache with the hash of the tree that ran,
    when the tree did not change during the run: tests/test_image_dag.py compares its container run with them."""
    tree = tree_hash()
    run = run_small(root, summary_path=root / "summary.json")
    if tree_hash() == tree and all(t["status"] == "SUCCEEDED" for t in run["tasks"].values()):
        pytestconfig.cache.set(CACHE_KEY, {"tree": tree, "metrics": seeded_metrics(run["tasks"])})
    return run


def test_first_run_executes_every_step(first_run, root):
    assert list(first_run["tasks"]) == STEPS
    assert all(t["status"] == "SUCCEEDED" for t in first_run["tasks"].values())
    assert json.loads((root / "summary.json").read_text())["tasks"].keys() == first_run["tasks"].keys()


def test_artifacts_fit_together(first_run):
    tasks = first_run["tasks"]
    manifest = json.loads(open(tasks["download-data"]["outputs"]["raw"] + "/manifest.json").read())
    assert manifest["source"] == "demo"
    dataset = tasks["preprocess"]["outputs"]["dataset"]
    items = pd.read_parquet(f"{dataset}/items.parquet")
    assert list(items.item_id) == list(range(len(items)))
    test = pd.read_parquet(f"{dataset}/test.parquet")
    assert len(test) == tasks["preprocess"]["metrics"]["samples_test"] > 0
    emb = np.load(tasks["embed-items"]["outputs"]["embeddings"] + "/embeddings.npy")
    assert emb.shape == (len(items), 384)
    sid_dir = tasks["quantize-sids"]["outputs"]["sid_index"]
    index = json.loads(open(f"{sid_dir}/index.json").read())
    assert sorted(index, key=int) == [str(i) for i in range(len(items))]
    sids = ["".join(codes) for codes in index.values()]
    assert len(set(sids)) == len(items)  # collision-free after handling
    assert sorted(json.loads(open(f"{sid_dir}/catalogue.json").read())) == sorted(sids)
    corpus = tasks["synthesize-corpus"]["outputs"]["corpus"]
    narratives = pd.read_parquet(f"{corpus}/items.parquet")
    assert sorted(narratives.item_id) == list(range(len(items)))
    assert json.loads(open(f"{corpus}/meta.json").read())["templated"] is True
    samples = pd.read_parquet(f"{corpus}/samples.parquet")
    train = pd.read_parquet(f"{dataset}/train.parquet")
    assert len(samples) + tasks["synthesize-corpus"]["metrics"]["samples_rejected"] == len(train)
    for step, folder in (
        ("prepare-base-model", "base_model"),
        ("sft-stage1", "model"),
        ("sft-stage2", "model"),
        ("merge-checkpoint", "stage3_model"),
    ):
        files = {p.name for p in Path(tasks[step]["outputs"][folder]).iterdir()}
        assert {"model.safetensors", "tokenizer.json", "config.json"} <= files, step
    checkpoint = Path(tasks["rl-stage3"]["outputs"]["stage3_checkpoint"])
    assert json.loads((checkpoint / "checkpoint.json").read_text())["format"] == "hf"
    assert (checkpoint / "model" / "model.safetensors").exists()
    stage3_model = Path(tasks["merge-checkpoint"]["outputs"]["stage3_model"])
    assert json.loads((stage3_model / "merge.json").read_text())["format"] == "hf"
    assert (stage3_model / "training.json").exists() and (stage3_model / "rl_data" / "train.parquet").exists()
    for step in ("sft-stage1", "sft-stage2"):
        html = Path(tasks[step]["outputs"]["loss_curve"]).read_text()
        assert "<svg" in html and not REMOTE.search(html)
    report = Path(tasks["report"]["outputs"]["report_html"]).read_text()
    assert "<svg" in report and "stage1" in report and "popularity" in report and not REMOTE.search(report)
    assert Path(tasks["report"]["outputs"]["report_md"]).read_text().startswith("#")


def test_metrics_reach_the_summary(first_run):
    tasks = first_run["tasks"]
    assert tasks["preprocess"]["metrics"]["items"] > 100
    assert tasks["embed-items"]["metrics"]["dim"] == 384
    assert tasks["quantize-sids"]["metrics"]["collision_rate_after"] == 0.0
    assert tasks["synthesize-corpus"]["metrics"]["requests"] == 0  # the template teacher calls no model
    assert tasks["evaluate-stage1"]["metrics"]["test_nonthink_users"] == 16
    assert "test_think_hr@10" in tasks["evaluate-stage2"]["metrics"]
    assert tasks["report"]["metrics"]["labels"] >= 4
    assert "stage3_nonthink_hr@10" in tasks["report"]["metrics"]
    assert tasks["rl-stage3"]["metrics"]["steps"] == 2
    assert "<svg" in Path(tasks["rl-stage3"]["outputs"]["reward_curve"]).read_text()
    merge = tasks["merge-checkpoint"]["metrics"]
    assert merge["format"] == 0 and merge["max_abs_diff"] == 0.0 and merge["tied_embeddings"] == 1
    stage1 = tasks["sft-stage1"]["metrics"]
    assert stage1["valid_sid_rate"] == 1.0 and stage1["steps"] > 0
    assert stage1["sid_tokens_added"] == 3 * 16


def test_metrics_equal_the_golden_file(first_run):
    """The seeded figures are what `make golden` recorded, on a machine that rounds as the recorder's did."""
    golden = read_golden()
    if golden["machine"] != machine():
        pytest.skip(
            f"tests/golden/small_dag_metrics.json was recorded on {golden['machine']}, this machine is "
            f"{machine()}: its figures may round differently (`make golden` records them here)"
        )
    differing = differences(seeded_metrics(first_run["tasks"]), golden["metrics"])
    assert not differing, (
        "metrics (this run, golden file) differ from tests/golden/small_dag_metrics.json; "
        f"if the change is intended, `make golden` records them again: {differing}"
    )


def test_identical_second_run_is_fully_cached(first_run, root):
    second = run_local(config.load("demo", SMALL), root)
    assert all(t["status"] == "CACHED" for t in second["tasks"].values())
    for name in STEPS:
        assert second["tasks"][name]["outputs"] == first_run["tasks"][name]["outputs"]
        assert second["tasks"][name]["metrics"] == first_run["tasks"][name]["metrics"]


def test_changing_a_late_section_reruns_only_that_step(first_run, root):
    changed = run_local(config.load("demo", SMALL + ["stage3.lr=0.0002"]), root)
    status = {name: t["status"] for name, t in changed["tasks"].items()}
    rerun = {"rl-stage3", "merge-checkpoint", "evaluate-stage3", "report"}
    assert set(downstream("rl-stage3")) & set(STEPS) == rerun
    assert status == {name: "SUCCEEDED" if name in rerun else "CACHED" for name in STEPS}


def test_rerun_from_retrains_the_step_and_reruns_what_follows(first_run, root, tmp_path):
    """`sidreasoner run --rerun-from rl-stage3` on a finished root: Stage 3 trains again from step 0 (a new
    generation, so a new checkpoint folder), merge, evaluate-stage3 and report run again, everything
    before comes from the cache; the printed setting gives a later run these results, a plain run the
    earlier ones."""
    summary = tmp_path / "rerun.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidreasoner.cli",
            "run",
            "--pipeline-root",
            str(root),
            "--rerun-from",
            "rl-stage3",
            "--summary",
            str(summary),
            *sum((["--set", s] for s in SMALL), []),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = json.loads(summary.read_text())["tasks"]
    rerun = ["rl-stage3", "merge-checkpoint", "evaluate-stage3", "report"]
    assert {n: t["status"] for n, t in tasks.items()} == {n: "SUCCEEDED" if n in rerun else "CACHED" for n in STEPS}
    assert (tasks["rl-stage3"]["metrics"]["steps"], tasks["rl-stage3"]["metrics"]["resumed_from_step"]) == (2, 0)
    keep = re.search(r"--set (generations\.rl-stage3=\d+)", result.stdout).group(1)
    assert "Re-executed with a new generation: rl-stage3, merge-checkpoint, evaluate-stage3, report." in result.stdout
    kept = run_local(config.load("demo", SMALL + [keep]), root)
    assert all(t["status"] == "CACHED" for t in kept["tasks"].values())
    assert kept["tasks"]["report"]["outputs"] == tasks["report"]["outputs"]
    plain = run_local(config.load("demo", SMALL), root)
    assert all(t["status"] == "CACHED" for t in plain["tasks"].values())
    assert plain["tasks"]["report"]["outputs"] == first_run["tasks"]["report"]["outputs"]


def test_cli_until_stops_after_the_step(tmp_path):
    summary = tmp_path / "s.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidreasoner.cli",
            "run",
            "--pipeline-root",
            str(tmp_path / "root"),
            "--until",
            "preprocess",
            "--summary",
            str(summary),
            *sum((["--set", s] for s in SMALL), []),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = json.loads(summary.read_text())["tasks"]
    assert list(tasks) == ["download-data", "preprocess"]
    assert "preprocess" in result.stdout and "dataset" in result.stdout


def test_export_model_joins_the_dag_when_asked_and_never_comes_from_the_cache(first_run, root, tmp_path):
    target = tmp_path / "exported"
    cfg = config.load("demo", SMALL + [f"export.uri=file://{target}"])
    first = run_local(cfg, root)
    assert list(first["tasks"]) == STEPS + ["export-model"]
    status = {name: t["status"] for name, t in first["tasks"].items()}
    assert status == {**{name: "CACHED" for name in STEPS}, "export-model": "SUCCEEDED"}
    model = Path(first_run["tasks"]["merge-checkpoint"]["outputs"]["stage3_model"])
    assert (target / "_SUCCESS").exists()
    assert (target / "model.safetensors").read_bytes() == (model / "model.safetensors").read_bytes()
    record = json.loads((Path(first["tasks"]["export-model"]["outputs"]["model_export"]) / "export.json").read_text())
    assert record["uri"] == f"file://{target}" and first["tasks"]["export-model"]["metrics"]["uploaded"] == 1.0
    # Side effects outside the artifact store are never cached: the step runs again and finds the model there.
    again = run_local(cfg, root)
    assert again["tasks"]["export-model"]["status"] == "SUCCEEDED"
    assert again["tasks"]["export-model"]["metrics"]["uploaded"] == 0.0


def test_demo_reasoning_pays(demo_run):
    """What the demo shows, as properties: the Stage 3 reward rises; after Stage 3 thinking mode beats
    non-thinking (HR@10, and HR@1 by far) and Stage 1's non-thinking figure; RL keeps what Stage 2 taught."""
    tasks = demo_run["tasks"]
    checkpoint = Path(tasks["rl-stage3"]["outputs"]["stage3_checkpoint"])
    rewards = [p["reward"] for p in json.loads((checkpoint / "training.json").read_text())["per_step"]]
    quarter = len(rewards) // 4
    assert np.mean(rewards[-quarter:]) >= np.mean(rewards[:quarter]) + 0.03, rewards
    stage1, stage2, stage3 = (tasks[f"evaluate-stage{n}"]["metrics"] for n in (1, 2, 3))
    popularity = tasks["evaluate-baselines"]["metrics"]["test_popularity_hr@10"]
    assert stage3["test_think_hr@10"] >= stage3["test_nonthink_hr@10"], stage3
    assert stage3["test_think_hr@1"] >= 1.5 * stage3["test_nonthink_hr@1"], stage3
    assert stage3["test_think_hr@10"] >= stage1["test_nonthink_hr@10"], (stage1, stage3)
    assert stage3["test_think_hr@10"] >= 0.95 * stage2["test_think_hr@10"], (stage2, stage3)
    assert stage3["test_think_hr@10"] >= 2 * popularity, (stage3, popularity)
    page = (Path(tasks["report"]["outputs"]["report"]) / "report.html").read_text()
    assert "<p class='lead'>On the test split (500 users), the best recommender is" in page
    assert "stage3: RL reward per step" in page and "<polyline" in page
