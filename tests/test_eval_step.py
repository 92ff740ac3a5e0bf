import json

import numpy as np
import pandas as pd
import pytest

from sidreasoner import config
from sidreasoner.eval.baselines import evaluate_baselines, popularity_ranking, random_rankings
from sidreasoner.eval.evaluate import evaluate
from sidreasoner.eval.recommend import recommend

N_ITEMS = 60


@pytest.fixture(scope="module")
def folders(tmp_path_factory, random_codes, write_sid_index, write_dataset, build_tiny_model):
    root = tmp_path_factory.mktemp("ev")
    codes = random_codes(N_ITEMS, 3, 5, seed=2, collide=3)  # 3 items share a SID with another
    write_sid_index(root / "sid_index", np.arange(N_ITEMS), codes)
    write_dataset(root / "dataset", N_ITEMS, 12)
    build_tiny_model(root / "model", codes, 5, seed=2)
    return root


def _cfg(**over):
    sets = [f"eval.{k}={json.dumps(v)}" for k, v in over.items()]
    return config.load("demo", sets)


def test_evaluate_both_modes(folders):
    cfg = _cfg(splits=["test", "valid"], batch_size=5, think_max_tokens=8, ks=[1, 5, 10])
    m = evaluate(cfg, folders / "model", folders / "dataset", folders / "sid_index", folders / "out")
    for split in ("test", "valid"):
        for mode in ("nonthink", "think"):
            p = f"{split}_{mode}"
            for k in (1, 5, 10):
                assert 0 <= m[f"{p}_hr@{k}"] <= 1 and 0 <= m[f"{p}_item_ndcg@{k}"] <= 1
            assert m[f"{p}_hr@1"] <= m[f"{p}_hr@10"]
            assert m[f"{p}_users"] == 12 and m[f"{p}_users_per_s"] > 0
    preds = pd.read_parquet(folders / "out" / "predictions.parquet")
    assert len(preds) == 48
    cat = set(json.loads((folders / "sid_index" / "catalogue.json").read_text()))
    assert all(len(s) == 10 and set(s) <= cat for s in preds["pred_sids"])
    assert all(len(t) == 10 for t in preds["pred_titles"])
    assert (preds[preds["mode"] == "nonthink"]["reasoning"] == "").all()
    assert json.loads((folders / "out" / "metrics.json").read_text())["test_think_hr@10"] == m["test_think_hr@10"]
    # the metrics agree with the stored predictions
    t = preds[(preds["split"] == "test") & (preds["mode"] == "nonthink")]
    assert m["test_nonthink_hr@10"] == pytest.approx(((t["hit_rank"] >= 0) & (t["hit_rank"] < 10)).mean())


def test_exact_decoding_and_recommend(folders):
    cfg = _cfg(modes=["nonthink"], decoding="exact", max_users=4, ks=[1, 3])
    m = evaluate(cfg, folders / "model", folders / "dataset", folders / "sid_index", folders / "out_exact")
    assert m["test_nonthink_users"] == 4
    recs, reasoning = recommend(folders / "model", folders / "sid_index", folders / "dataset", [1, 2, 3], k=4)
    assert [r["rank"] for r in recs] == [1, 2, 3, 4] and reasoning == ""
    assert all(r["titles"] and len(r["titles"]) == len(r["item_ids"]) for r in recs)
    recs, reasoning = recommend(
        folders / "model",
        folders / "sid_index",
        folders / "dataset",
        [1, 2],
        k=3,
        think=True,
        cfg=_cfg(think_max_tokens=5),
    )
    assert len(recs) == 3 and isinstance(reasoning, str)


def test_baselines(folders):
    cfg = _cfg(ks=[1, 10])
    m = evaluate_baselines(cfg, folders / "dataset", folders / "sid_index", folders / "base")
    assert {"test_popularity_hr@10", "test_random_hr@10", "test_popularity_item_ndcg@10"} <= set(m)
    again = evaluate_baselines(cfg, folders / "dataset", folders / "sid_index", folders / "base2")
    assert again["test_random_hr@10"] == m["test_random_hr@10"]  # seeded
    preds = pd.read_parquet(folders / "base" / "predictions.parquet")
    assert set(preds["mode"]) == {"popularity", "random"}


def test_popularity_ties_and_random_are_deterministic():
    sid_of = {1: "A", 2: "B", 3: "B", 4: "C"}
    ranked, counts = popularity_ranking([1, 2, 3, 4, 4, 1], sid_of, ["A", "B", "C", "D"], 4)
    assert ranked == ["A", "B", "C", "D"] and counts == [2.0, 2.0, 2.0, 0.0]
    ranked, _ = popularity_ranking([4, 4, 4, 2], sid_of, ["A", "B", "C", "D"], 2)
    assert ranked == ["C", "B"]
    r1 = random_rankings(list("ABCDEFG"), 3, 4, seed=5)
    assert r1 == random_rankings(list("ABCDEFG"), 3, 4, seed=5)
    assert all(len(set(r)) == 4 for r in r1)


def test_report_renders_self_contained(folders):
    from sidreasoner.eval.catalogue import Catalogue
    from sidreasoner.eval.report import decode_sids, report

    cfg = _cfg(ks=[1, 5, 10], think_max_tokens=6, max_users=4, report_samples=2)
    evaluate_baselines(cfg, folders / "dataset", folders / "sid_index", folders / "rb")
    evaluate(cfg, folders / "model", folders / "dataset", folders / "sid_index", folders / "rs1")
    m = report(
        cfg,
        {"baselines": folders / "rb", "stage1": folders / "rs1"},
        folders / "dataset",
        folders / "sid_index",
        folders / "report",
    )
    text = (folders / "report" / "report.html").read_text()
    md = (folders / "report" / "report.md").read_text()
    assert "<svg" in text and "<rect" in text and "<script" not in text
    assert "http://" not in text.replace("http://www.w3.org/2000/svg", "") and "https://" not in text
    for name in ("popularity", "random", "stage1 (nonthink)", "stage1 (think)"):
        assert name in text and name in md
    assert text.count("class='user'") == 2 and "history" in text
    assert m["sample_users"] == 2 and "stage1_nonthink_hr@10" in m
    cat = Catalogue.load(folders / "sid_index", folders / "dataset")
    sid = cat.sid_of_item[3]
    assert (
        decode_sids(f"I think {sid} next", cat)
        == f"I think {sid} [{' / '.join(cat.title(i) for i in cat.sid_items[sid])}] next"
    )
    assert "[not in catalogue]" in decode_sids("<a_99><b_0><c_0>", cat)


@pytest.mark.slow  # three CLI processes, each importing torch and loading the model (~15 s)
def test_cli_recommend_prints_titles_and_reasoning(folders):
    import subprocess
    import sys

    args = [
        sys.executable,
        "-m",
        "sidreasoner.cli",
        "recommend",
        "--model",
        str(folders / "model"),
        "--sid-index",
        str(folders / "sid_index"),
        "--dataset",
        str(folders / "dataset"),
        "--history",
        "1,2,3",
    ]
    result = subprocess.run(args + ["-k", "3"], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.strip().splitlines()
    assert [line.split(".")[0].strip() for line in lines] == ["1", "2", "3"]
    assert all("<a_" in line and "log-prob" in line for line in lines)
    thinking = subprocess.run(
        args + ["-k", "2", "--think", "--set", "eval.think_max_tokens=4"], capture_output=True, text=True
    )
    assert thinking.returncode == 0, thinking.stderr[-2000:]
    assert thinking.stdout.startswith("Reasoning:")
    bad = subprocess.run(args[:-1] + ["1,x"], capture_output=True, text=True)
    assert bad.returncode == 2 and "comma-separated item ids" in bad.stderr


def _dataset_trained_on(folders, tmp_path, max_history: int):
    """The fixture dataset with the stats.json preprocess writes, recording data.max_history."""
    import shutil

    dataset = tmp_path / "dataset"
    shutil.copytree(folders / "dataset", dataset)
    (dataset / "stats.json").write_text(json.dumps({"category": "Demo", "data_config": {"max_history": max_history}}))
    return dataset


def test_recommend_names_unknown_ids_and_keeps_the_trained_history_length(folders, tmp_path):
    dataset = _dataset_trained_on(folders, tmp_path, 4)
    args = (folders / "model", folders / "sid_index", dataset)
    short = recommend(*args, [1, 999, 2], k=3)
    assert short.unknown_ids == [999] and short.history_used == [1, 2] and short.older_dropped == 0
    assert short.notes() == ["item id 999 is not in the SID index: left out of the history"]
    long = [i % N_ITEMS for i in range(3000)]
    got = recommend(*args, long[:1500] + [999] + long[1500:] + [-5], k=3)
    assert got.unknown_ids == [999, -5] and got.history_used == long[-4:] and got.older_dropped == 2996
    assert got.max_history == 4
    assert got.notes() == [
        "item ids 999, -5 are not in the SID index: left out of the history",
        f"the history has 3000 known items; the model was trained on at most 4 (data.max_history in "
        f"{dataset / 'stats.json'}): the 4 most recent are used",
    ]
    want = recommend(*args, long[-4:], k=3)
    assert [(r["sid"], r["score"]) for r in got.items] == [(r["sid"], r["score"]) for r in want.items]
    items, reasoning = got  # still unpacks as (items, reasoning)
    assert items == got.items and reasoning == ""


def test_cli_recommend_warns_and_reports_what_it_used(folders, tmp_path):
    from typer.testing import CliRunner

    from sidreasoner.cli import app

    dataset = _dataset_trained_on(folders, tmp_path, 2)
    args = [
        "recommend",
        "--model",
        str(folders / "model"),
        "--sid-index",
        str(folders / "sid_index"),
        "--dataset",
        str(dataset),
        "--history",
        "7,1,999,2,3",
        "-k",
        "2",
    ]
    text = CliRunner().invoke(app, args)
    assert text.exit_code == 0, text.output
    assert [line for line in text.stderr.splitlines() if line.startswith("warning:")] == [
        "warning: item id 999 is not in the SID index: left out of the history",
        f"warning: the history has 4 known items; the model was trained on at most 2 (data.max_history in "
        f"{dataset / 'stats.json'}): the 2 most recent are used",
    ]
    assert text.stdout.splitlines()[0] == "History used (oldest first): 2, 3"
    as_json = CliRunner().invoke(app, args + ["--json"])
    assert as_json.exit_code == 0, as_json.output
    out = json.loads(as_json.stdout)
    assert (out["history_used"], out["unknown_item_ids"], out["older_items_dropped"], out["max_history"]) == (
        [2, 3],
        [999],
        2,
        2,
    )
    assert [r["rank"] for r in out["recommendations"]] == [1, 2] and out["reasoning"] == ""
