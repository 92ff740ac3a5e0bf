"""The DAG through kfp.local, as `sidreasoner run` runs it: artifacts, metrics, caching, --until."""

import json
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from sidreasoner import config
from sidreasoner.pipelines.local import run_local

pytestmark = pytest.mark.slow

SMALL = ["data.demo.num_items=120", "data.demo.num_users=400", "sid.codebook_size=16", "sid.rqvae.epochs=40"]
STEPS = ["download-data", "preprocess", "embed-items", "quantize-sids", "synthesize-corpus"]


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("pipeline_root")


@pytest.fixture(scope="module")
def first_run(root):
    return run_local(config.load("demo", SMALL), root, summary_path=root / "summary.json")


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


def test_metrics_reach_the_summary(first_run):
    tasks = first_run["tasks"]
    assert tasks["preprocess"]["metrics"]["items"] > 100
    assert tasks["embed-items"]["metrics"]["dim"] == 384
    assert tasks["quantize-sids"]["metrics"]["collision_rate_after"] == 0.0
    assert tasks["synthesize-corpus"]["metrics"]["requests"] == 0  # the template teacher calls no model


def test_identical_second_run_is_fully_cached(first_run, root):
    second = run_local(config.load("demo", SMALL), root)
    assert all(t["status"] == "CACHED" for t in second["tasks"].values())
    for name in STEPS:
        assert second["tasks"][name]["outputs"] == first_run["tasks"][name]["outputs"]
        assert second["tasks"][name]["metrics"] == first_run["tasks"][name]["metrics"]


def test_changing_a_late_section_reruns_only_that_step(first_run, root):
    changed = run_local(config.load("demo", SMALL + ["sid.method=rqvae"]), root)
    status = {name: t["status"] for name, t in changed["tasks"].items()}
    assert status == {"download-data": "CACHED", "preprocess": "CACHED", "embed-items": "CACHED",
                      "quantize-sids": "SUCCEEDED", "synthesize-corpus": "SUCCEEDED"}


def test_cli_until_stops_after_the_step(tmp_path):
    summary = tmp_path / "s.json"
    result = subprocess.run(
        [sys.executable, "-m", "sidreasoner.cli", "run", "--pipeline-root", str(tmp_path / "root"),
         "--until", "preprocess", "--summary", str(summary), *sum((["--set", s] for s in SMALL), [])],
        capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-3000:]
    tasks = json.loads(summary.read_text())["tasks"]
    assert list(tasks) == ["download-data", "preprocess"]
    assert "preprocess" in result.stdout and "dataset" in result.stdout
