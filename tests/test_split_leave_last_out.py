"""data.split=leave_last_out: per user, the last interaction is test and the one before valid (SASRec/BERT4Rec)."""

from __future__ import annotations

import datetime as dt
import json

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from sidreasoner import config
from sidreasoner.artifacts import Dataset, RawData
from sidreasoner.cli import app
from sidreasoner.data.preprocess import PreprocessError, leave_last_out_split, preprocess
from sidreasoner.errors import ConfigError
from tests.helpers.raw_manifest import seal

DAY = 86_400
BASE = int(dt.datetime(2017, 1, 1, tzinfo=dt.UTC).timestamp())

# (user, asin, day). Items B001..B005 get ids 0..4, users U1..U4 ids 0..3 (id_order=sorted).
# U2 is the earliest user, U3 the latest: a chronological cut would test U3, leave-last-out tests U1 and U2.
EVENTS = [
    ("U1", "B001", 10),
    ("U1", "B002", 11),
    ("U1", "B003", 12),
    ("U1", "B004", 13),
    ("U1", "B005", 14),  # 5 interactions: train, train, valid, test
    ("U2", "B003", 1),
    ("U2", "B001", 2),
    ("U2", "B002", 3),  # 3 interactions: valid, test, no train sample
    ("U3", "B004", 20),
    ("U3", "B005", 21),  # 2 interactions: one sample, train
    ("U4", "B001", 30),  # 1 interaction: no sample
]


def _raw(folder, events):
    folder.mkdir(parents=True)
    reviews = [
        {"reviewerID": u, "asin": a, "overall": 5.0, "unixReviewTime": BASE + d * DAY, "reviewText": "ok"}
        for u, a, d in events
    ]
    meta = [{"asin": f"B00{k}", "title": f"Item {k}", "description": ["d"]} for k in range(1, 6)]
    (folder / "Tiny.json").write_text("".join(json.dumps(r) + "\n" for r in reviews))
    (folder / "meta_Tiny.json").write_text("".join(json.dumps(m) + "\n" for m in meta))
    (folder / RawData.MANIFEST).write_text(
        json.dumps(
            {
                "source": "test",
                "format": "amazon2018",
                "category": "Tiny",
                "reviews": "Tiny.json",
                "meta": "meta_Tiny.json",
            }
        )
    )
    return seal(folder)


def _cfg(*extra):
    return config.load(
        "demo",
        [
            "data.k_core=1",
            "data.max_history=2",
            "data.min_samples=1",
            "data.category=Tiny",
            "data.id_order=sorted",
            "data.split=leave_last_out",
            *extra,
        ],
    )


def _samples(out, split):
    t = Dataset.at(out).split_table(split).to_pydict()
    return list(zip(t["user_id"], t["history_item_ids"], t["item_id"], t["timestamp"], strict=True))


def test_unit_split_by_user_and_position():
    # samples of 4 users with 5, 3, 2 and 4 interactions (targets at positions 1..n-1, grouped by user)
    user = np.array([0, 0, 0, 0, 1, 1, 2, 5, 5, 5])
    pos = np.array([1, 2, 3, 4, 1, 2, 1, 1, 2, 3])
    parts = leave_last_out_split(user, pos)
    assert {k: v.tolist() for k, v in parts.items()} == {
        "train": [0, 1, 6, 7],
        "valid": [2, 4, 8],
        "test": [3, 5, 9],
    }
    assert {k: v.tolist() for k, v in leave_last_out_split(np.zeros(0, np.int64), np.zeros(0, np.int64)).items()} == {
        "train": [],
        "valid": [],
        "test": [],
    }


def test_preprocess_exact_samples_and_metrics(tmp_path):
    out = tmp_path / "out"
    m = preprocess(_cfg(), _raw(tmp_path / "raw", EVENTS), out)
    assert (m["users"], m["interactions"]) == (4, 11)
    assert (m["samples_train"], m["samples_valid"], m["samples_test"], m["users_train_only"]) == (3, 2, 2, 1)
    assert _samples(out, "train") == [
        (0, [0], 1, BASE + 11 * DAY),
        (0, [0, 1], 2, BASE + 12 * DAY),
        (2, [3], 4, BASE + 21 * DAY),
    ]
    assert _samples(out, "valid") == [(0, [1, 2], 3, BASE + 13 * DAY), (1, [2], 0, BASE + 2 * DAY)]
    assert _samples(out, "test") == [(0, [2, 3], 4, BASE + 14 * DAY), (1, [2, 0], 1, BASE + 3 * DAY)]
    assert Dataset.at(out).stats()["data_config"]["split"] == "leave_last_out"


def test_chronological_fractions_still_cut_globally(tmp_path):
    m = preprocess(_cfg("data.split=[0.5,0.25,0.25]"), _raw(tmp_path / "raw", EVENTS), tmp_path / "out")
    assert (m["samples_train"], m["samples_valid"], m["samples_test"]) == (3, 2, 2) and "users_train_only" not in m
    # the 7 samples by time: U2's two, U1's four, U3's one; the cut is at 3 and 5
    assert [s[0] for s in _samples(tmp_path / "out", "test")] == [0, 2]


def test_no_user_with_three_interactions_is_a_clear_error(tmp_path):
    events = [e for e in EVENTS if e[0] in ("U3", "U4")]
    with pytest.raises(PreprocessError, match=r"the valid split is empty \(1 samples, data\.split=leave_last_out: "):
        preprocess(_cfg(), _raw(tmp_path / "raw", events), tmp_path / "out")


def test_config_takes_the_name_or_fractions_and_names_both_when_wrong():
    assert config.load("demo", ["data.split=leave_last_out"]).data.split == "leave_last_out"
    assert config.load("demo", ["data.split=[0.8,0.1,0.1]"]).data.split == (0.8, 0.1, 0.1)
    for bad in ("last", "null", "0.8"):
        with pytest.raises(ConfigError) as err:
            config.load("demo", [f"data.split={bad}"])
        assert str(err.value).startswith(
            "invalid config:\n  data.split: must be 'leave_last_out' or three fractions [train, valid, test] "
            "summing to 1 (got "
        )
    cfg = config.load("office", ["data.split=leave_last_out"])
    sliced = config.step_config(cfg, "preprocess")
    assert sliced["data"]["split"] == "leave_last_out"
    assert config.from_step_config(sliced).data == cfg.data


def test_cli_config_and_compiled_parameter(tmp_path):
    shown = CliRunner().invoke(app, ["config", "--set", "data.split=leave_last_out"])
    assert shown.exit_code == 0 and json.loads(shown.output)["data"]["split"] == "leave_last_out"
    shown = CliRunner().invoke(app, ["config", "--set", "data.split=[0.8,0.1,0.1]"])
    assert shown.exit_code == 0 and json.loads(shown.output)["data"]["split"] == [0.8, 0.1, 0.1]
    path = tmp_path / "p.yaml"
    compiled = CliRunner().invoke(app, ["compile", "--set", "data.split=leave_last_out", "-o", str(path)])
    assert compiled.exit_code == 0, compiled.output
    spec = next(yaml.safe_load_all(path.read_text()))
    assert spec["root"]["inputDefinitions"]["parameters"]["data"]["defaultValue"]["split"] == "leave_last_out"
