"""A Hugging Face dataset as a data source: datasets saved on this machine stand in for the hub."""

from __future__ import annotations

from pathlib import Path

import datasets
import huggingface_hub.constants
import pyarrow.parquet as pq
import pytest
from pydantic import ValidationError

from sidreasoner.config.hf_address import HfAddressError, HfSource, parse_hf_source
from sidreasoner.config.schema import DataConfig
from sidreasoner.data.hf_source import HfSourceError, _one_line, fetch_hf_tables, manifest_entry

EVENTS = {"user_id": ["u1", "u2", "u1"], "item_id": ["i1", "i2", "i2"], "timestamp": [100, 200, 300]}
ITEMS = {"item_id": ["i1", "i2"], "title": ["Red pen", "Blue ink"], "description": ["fine", ""]}


@pytest.fixture(autouse=True)
def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # both libraries read the variables once, at import time
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)


def _read(path):
    return pq.read_table(path).to_pydict()


def test_a_saved_dataset_dict_gives_both_tables(tmp_path):
    datasets.DatasetDict(
        {"interactions": datasets.Dataset.from_dict(EVENTS), "items": datasets.Dataset.from_dict(ITEMS)}
    ).save_to_disk(str(tmp_path / "export"))
    source = f"hf://{tmp_path}/export"
    fetched = fetch_hf_tables(source, "", tmp_path / "raw", tmp_path / "cache")
    raw = tmp_path / "raw"
    assert fetched.files == {"interactions": raw / "interactions.parquet", "items": raw / "items.parquet"}
    assert _read(fetched.files["interactions"]) == EVENTS
    assert _read(fetched.files["items"]) == ITEMS
    assert sorted(p.name for p in (tmp_path / "raw").iterdir()) == ["interactions.parquet", "items.parquet"]
    assert manifest_entry(source, "", fetched) == {
        "source": source,
        "revision": "",
        "commit": None,
        "layout": "splits",
        "tables": {
            "interactions": {"file": "interactions.parquet", "rows": 3, "split": "interactions"},
            "items": {"file": "items.parquet", "rows": 2, "split": "items"},
        },
    }


def test_two_saved_folders_give_the_tables_and_a_folders_only_split(tmp_path):
    datasets.Dataset.from_dict(EVENTS).save_to_disk(str(tmp_path / "export/interactions"))
    datasets.DatasetDict({"train": datasets.Dataset.from_dict(ITEMS)}).save_to_disk(str(tmp_path / "export/items"))
    fetched = fetch_hf_tables(f"hf://{tmp_path}/export", None, tmp_path / "raw")
    assert (fetched.layout, fetched.origin) == (
        "folders",
        {"interactions": {"folder": "interactions"}, "items": {"folder": "items", "split": "train"}},
    )
    assert _read(tmp_path / "raw/interactions.parquet") == EVENTS
    assert _read(tmp_path / "raw/items.parquet") == ITEMS


def _hub_layout_copy(folder, configs):
    """A folder laid out as push_to_hub(repo, config_name=…) lays out a hub repo: one config per table."""
    card = ["---", "configs:"]
    for name, columns in configs.items():
        (folder / name).mkdir(parents=True)
        datasets.Dataset.from_dict(columns).to_parquet(str(folder / name / "train-00000-of-00001.parquet"))
        card += [f"- config_name: {name}", "  data_files:", "  - split: train", f"    path: {name}/train-*"]
    (folder / "README.md").write_text("\n".join([*card, "---", ""]))


def test_a_copy_of_a_hub_repo_reads_one_config_per_table(tmp_path):
    _hub_layout_copy(tmp_path / "repo", {"interactions": EVENTS, "items": ITEMS})
    fetched = fetch_hf_tables(f"hf://{tmp_path}/repo", "", tmp_path / "raw", tmp_path / "cache")
    assert (fetched.layout, fetched.commit, fetched.rows) == ("configs", None, {"interactions": 3, "items": 2})
    assert fetched.origin == {
        "interactions": {"config": "interactions", "split": "train"},
        "items": {"config": "items", "split": "train"},
    }
    assert _read(tmp_path / "raw/interactions.parquet") == EVENTS
    assert _read(tmp_path / "raw/items.parquet") == ITEMS


def test_a_repo_without_items_names_what_it_has_and_writes_nothing(tmp_path):
    _hub_layout_copy(tmp_path / "repo", {"interactions": EVENTS, "reviews": ITEMS})
    with pytest.raises(HfSourceError) as err:
        fetch_hf_tables(f"hf://{tmp_path}/repo", "", tmp_path / "raw", tmp_path / "cache")
    assert str(err.value) == (
        f"data.source hf://{tmp_path}/repo: no 'items' config; the repo has configs ['interactions', 'reviews'] "
        "(each table is a config of its own: push_to_hub(repo, config_name='items'))"
    )
    assert not (tmp_path / "raw").exists()


def test_a_saved_dict_without_items_names_its_splits(tmp_path):
    datasets.DatasetDict({"interactions": datasets.Dataset.from_dict(EVENTS)}).save_to_disk(str(tmp_path / "x"))
    with pytest.raises(HfSourceError, match=r"no 'items' split in the DatasetDict at .*; it has splits \['interact"):
        fetch_hf_tables(f"hf://{tmp_path}/x", "", tmp_path / "raw")


def test_one_saved_dataset_is_not_two_tables(tmp_path):
    datasets.Dataset.from_dict(EVENTS).save_to_disk(str(tmp_path / "x"))
    with pytest.raises(HfSourceError, match=r"holds one table \(a Dataset\)"):
        fetch_hf_tables(f"hf://{tmp_path}/x", "", tmp_path / "raw")


def test_a_revision_of_a_local_folder_is_refused(tmp_path):
    with pytest.raises(HfSourceError) as err:
        fetch_hf_tables(f"hf://{tmp_path}", "v1", tmp_path / "raw")
    assert str(err.value) == (
        f"data.source hf://{tmp_path}: data.revision='v1' applies to hub repos only; a local folder has no "
        "revisions (empty data.revision)"
    )


def test_an_unreachable_hub_says_so_in_one_line(tmp_path):
    with pytest.raises(HfSourceError) as err:
        fetch_hf_tables("hf://shop/export", "v1", tmp_path / "raw", tmp_path / "cache")
    message = str(err.value)
    assert message.startswith(
        "data.source hf://shop/export (data.revision=v1): the Hugging Face Hub is unreachable "
        "(HF_HUB_OFFLINE=1 and HF_DATASETS_OFFLINE=1 are set) and the dataset is not in the cache"
    )
    assert "\n" not in message


def test_a_missing_folder_is_named(tmp_path):
    with pytest.raises(HfSourceError, match=f"folder {tmp_path}/nope does not exist"):
        fetch_hf_tables(f"hf://{tmp_path}/nope", "", tmp_path / "raw")


@pytest.mark.parametrize(
    ("source", "where"),
    [
        ("hf://shop/export", HfSource(repo_id="shop/export")),
        ("hf://datasets/shop/export/", HfSource(repo_id="shop/export")),
        ("hf://squad", HfSource(repo_id="squad")),
        ("hf:///data/export", HfSource(folder=Path("/data/export"))),
    ],
)
def test_hf_sources_name_a_repo_or_a_folder(source, where):
    assert parse_hf_source(source) == where


@pytest.mark.parametrize(
    ("source", "problem"),
    [
        ("hf://shop/export@v1", "put the revision in data.revision"),
        ("hf://shop/export/data", "names no dataset repo or folder"),
        ("hf://", "names no dataset repo or folder"),
        ("hf://../x", "names no dataset repo or folder"),
    ],
)
def test_malformed_hf_sources_are_refused(source, problem):
    with pytest.raises(HfAddressError, match=problem):
        parse_hf_source(source)
    with pytest.raises(HfSourceError, match=problem):
        fetch_hf_tables(source, "", Path("/nonexistent/raw"))


def test_the_hub_token_never_reaches_a_message(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefgh12345678")
    assert _one_line("401 for hf_abcdefgh12345678\nat https://hub") == "401 for *** at https://hub"


def test_the_config_takes_a_revision_for_hub_repos_only():
    assert DataConfig(source="hf://shop/export", format="interactions", revision="v1").revision == "v1"
    for fields, problem in [
        ({"source": "hf://shop/export"}, "set data.format=interactions"),
        ({"source": "/data/x", "format": "interactions", "revision": "v1"}, "hf://owner/name sources only"),
        ({"source": "hf:///data/x", "format": "interactions", "revision": "v1"}, "hub repos only"),
        ({"source": "hf://shop/export@v1", "format": "interactions"}, "put the revision in data.revision"),
    ]:
        with pytest.raises(ValidationError, match=problem):
            DataConfig(**fields)
