"""export-model's target folder: it ends holding exactly the exported model, and a folder that is not
ours is refused unless export.overwrite is set. Local paths, S3 (moto_server) and GCS (the emulator),
all on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sidreasoner import storage
from sidreasoner.artifacts import ArtifactFileMissing, ModelExport
from sidreasoner.config import load
from sidreasoner.export import PENDING, export_model
from sidreasoner.storage.gcs import make_client as gcs_client
from sidreasoner.storage.s3 import make_client as s3_client


@pytest.fixture(params=["local", "s3", "gs"])
def target(request, tmp_path, monkeypatch):
    """A folder URI under which nothing exists yet, on each backend."""
    monkeypatch.setenv("SIDREASONER_STORAGE_RETRY_DELAY", "0.02")
    monkeypatch.setenv("SIDREASONER_STORAGE_RETRIES", "3")
    if request.param == "local":
        return str(tmp_path / "exports" / "run-1")
    if request.param == "s3":
        moto = request.getfixturevalue("moto_server")
        for name, value in (
            ("SIDREASONER_S3_ENDPOINT", moto["url"]),
            ("AWS_ACCESS_KEY_ID", moto["key"]),
            ("AWS_SECRET_ACCESS_KEY", moto["secret"]),
            ("AWS_REGION", "us-east-1"),
        ):
            monkeypatch.setenv(name, value)
        monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
        client = s3_client("s3")
        if not client.bucket_exists("exp"):
            client.make_bucket("exp")
    else:
        monkeypatch.setenv("STORAGE_EMULATOR_HOST", request.getfixturevalue("gcs_emulator"))
        client = gcs_client()
        if client.lookup_bucket("exp") is None:
            client.create_bucket("exp")
    return f"{request.param}://exp/{tmp_path.name}/run-1"  # tmp_path.name: a fresh prefix per test


def _model(root: Path, shards: dict[str, bytes]) -> Path:
    """A saved model folder as export-model checks it: config, tokenizer config, safetensors shards."""
    root.mkdir(parents=True)
    (root / "config.json").write_text('{"model_type": "qwen3"}')
    (root / "tokenizer_config.json").write_text("{}")
    for name, data in shards.items():
        (root / name).write_bytes(data)
    return root


def _put(uri: str, rel: str, data: bytes, tmp_path: Path) -> None:
    """Put a file there the way another tool would: no marker."""
    src = tmp_path / "foreign" / rel
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    storage.upload_file(src, f"{uri}/{rel}")


# What the export holds beside the model: the SID index folder, the dataset's item table and record.
CATALOGUE = [
    "catalogue/dataset/items.parquet",
    "catalogue/dataset/stats.json",
    "catalogue/sid_index/catalogue.json",
    "catalogue/sid_index/index.json",
    "catalogue/sid_index/research/Office.index.json",
]


def _inputs(root: Path) -> tuple[Path, Path]:
    """The SID index and dataset folders the catalogue comes from, made once under `root`."""
    sid_index, dataset = root / "sid_index", root / "dataset"
    if not sid_index.exists():
        (sid_index / "research").mkdir(parents=True)
        (sid_index / "index.json").write_text('{"0": ["<a_1>", "<b_2>", "<c_3>"]}')
        (sid_index / "catalogue.json").write_text('["<a_1><b_2><c_3>"]')
        (sid_index / "research" / "Office.index.json").write_text("{}")
        dataset.mkdir()
        (dataset / "items.parquet").write_bytes(b"PAR1 the item table")
        (dataset / "stats.json").write_text('{"category": "Office"}')
        (dataset / "interactions.parquet").write_bytes(b"PAR1 not for serving")
    return sid_index, dataset


def _export(uri: str, model: Path, record: Path, *overrides: str) -> dict[str, float]:
    sid_index, dataset = _inputs(model.parent)
    return export_model(load("demo", [f"export.uri={uri}", *overrides]), model, sid_index, dataset, record)


def _exactly(uri: str, model: Path) -> None:
    """The target holds the model's files and the catalogue, its manifest lists exactly those, and nothing
    else is there."""
    files = sorted(storage.local_files(model) + CATALOGUE)
    assert storage.list_files(uri) == files
    assert sorted(storage.read_marker(uri)["files"]) == files


def test_foreign_folder_is_refused_unless_overwrite(target, tmp_path):
    model = _model(tmp_path / "model", {"model.safetensors": b"new weights"})
    _put(target, "notes.txt", b"someone's notes", tmp_path)
    _put(target, "model-00002-of-00002.safetensors", b"a shard of another model", tmp_path)
    with pytest.raises(
        FileExistsError,
        match=r"holds 2 file\(s\) \(model-00002-of-00002.safetensors, notes.txt\) "
        r"and no _SUCCESS marker .*export.overwrite=true",
    ):
        _export(target, model, tmp_path / "e1")
    assert storage.list_files(target) == ["model-00002-of-00002.safetensors", "notes.txt"]  # untouched
    assert not (tmp_path / "e1").exists()

    m = _export(target, model, tmp_path / "e2", "export.overwrite=true")
    assert m["uploaded"] == 1.0 and m["files"] == 3.0 + len(CATALOGUE)
    _exactly(target, model)  # the stray shard is gone, not left beside the new model


def test_overwrite_leaves_no_file_of_the_old_model(target, tmp_path):
    old = _model(
        tmp_path / "old", {"model-00001-of-00002.safetensors": b"old 1", "model-00002-of-00002.safetensors": b"old 2"}
    )
    (old / "sub").mkdir()
    (old / "sub" / "extra.json").write_text("{}")
    new = _model(tmp_path / "new", {"model.safetensors": b"new weights, one shard"})
    _export(target, old, tmp_path / "e1")
    _exactly(target, old)
    with pytest.raises(FileExistsError, match="already holds a different complete model"):
        _export(target, new, tmp_path / "e2")
    _exactly(target, old)

    m = _export(target, new, tmp_path / "e3", "export.overwrite=true")
    assert m["uploaded"] == 1.0
    _exactly(target, new)
    assert json.loads((tmp_path / "e3" / "export.json").read_text())["files"] == storage.read_marker(target)["files"]
    if "://" not in target:
        assert sorted(p.name for p in Path(target).iterdir()) == [
            "_SUCCESS",
            "catalogue",
            "config.json",
            "model.safetensors",
            "tokenizer_config.json",
        ]  # no empty sub/


def test_a_file_dropped_beside_our_model_is_foreign(target, tmp_path):
    model = _model(tmp_path / "model", {"model.safetensors": b"weights"})
    _export(target, model, tmp_path / "e1")
    _put(target, "README.md", b"added by hand", tmp_path)
    with pytest.raises(
        FileExistsError,
        match=r"holds this model plus 1 file\(s\) not in its _SUCCESS manifest "
        r"\(README.md\)",
    ):
        _export(target, model, tmp_path / "e2")
    assert _export(target, model, tmp_path / "e3", "export.overwrite=true")["uploaded"] == 1.0
    _exactly(target, model)


def test_a_shard_missing_from_our_model_is_uploaded_again(target, tmp_path):
    model = _model(
        tmp_path / "model",
        {"model-00001-of-00002.safetensors": b"part one", "model-00002-of-00002.safetensors": b"part two"},
    )
    _export(target, model, tmp_path / "e1")
    storage.delete_files(target, ["model-00002-of-00002.safetensors"])
    m = _export(target, model, tmp_path / "e2")  # ours, same manifest: no overwrite needed to repair it
    assert m["uploaded"] == 1.0
    _exactly(target, model)
    storage.download_dir(target, tmp_path / "back")
    assert (tmp_path / "back" / "model-00002-of-00002.safetensors").read_bytes() == b"part two"


def test_an_interrupted_export_of_ours_is_resumed_without_overwrite(target, tmp_path):
    model = _model(
        tmp_path / "model",
        {"model-00001-of-00002.safetensors": b"part one", "model-00002-of-00002.safetensors": b"part two"},
    )
    # What an export killed mid-upload leaves: its pending mark, some files, no _SUCCESS.
    _put(target, PENDING, b'{"format": "sidreasoner.export/pending-v1", "files": []}\n', tmp_path)
    _put(target, "config.json", (model / "config.json").read_bytes(), tmp_path)
    _put(target, "model-00001-of-00002.safetensors", b"part o", tmp_path)  # cut short
    m = _export(target, model, tmp_path / "e1")
    assert m["uploaded"] == 1.0
    _exactly(target, model)

    # Killed after _SUCCESS but before its mark was cleared: the model is complete; only the mark goes.
    _put(target, PENDING, b"{}\n", tmp_path)
    again = _export(target, model, tmp_path / "e2")
    assert again["uploaded"] == 0.0
    _exactly(target, model)


def test_a_success_file_of_another_tool_is_not_ours(target, tmp_path):
    model = _model(tmp_path / "model", {"model.safetensors": b"weights"})
    _put(target, "part-00000.parquet", b"PAR1", tmp_path)
    _put(target, "_SUCCESS", b"", tmp_path)  # what Hadoop/Spark jobs write
    with pytest.raises(FileExistsError, match=r"holds 2 file\(s\) \(_SUCCESS, part-00000.parquet\) and no _SUCCESS"):
        _export(target, model, tmp_path / "e1")
    _export(target, model, tmp_path / "e2", "export.overwrite=true")
    _exactly(target, model)


def test_a_local_target_that_is_a_file_is_refused(tmp_path):
    model = _model(tmp_path / "model", {"model.safetensors": b"weights"})
    (tmp_path / "taken").write_text("a file")
    with pytest.raises(FileExistsError, match=r"export.uri .*taken is a file; it must name a folder"):
        _export(str(tmp_path / "taken"), model, tmp_path / "e1")
    assert (tmp_path / "taken").read_text() == "a file"


def _precious(folder: Path) -> dict[str, bytes]:
    """Another run's export that a link in the target points to; it must come through unchanged."""
    files = {"config.json": b'{"model_type": "run-6"}', "model.safetensors": b"run-6 weights", "sub/notes.txt": b"n"}
    for rel, data in files.items():
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        (folder / rel).write_bytes(data)
    return files


def test_a_symlink_in_a_local_target_is_refused_and_overwrite_removes_only_the_link(tmp_path):
    run6, target = tmp_path / "exports" / "run-6", tmp_path / "exports" / "run-7"
    kept = _precious(run6)
    _export(str(target), _model(tmp_path / "old", {"model.safetensors": b"old"}), tmp_path / "e1")
    (target / "previous").symlink_to("../run-6")
    (target / "config.json").unlink()
    (target / "config.json").symlink_to(run6 / "config.json")
    new = _model(tmp_path / "new", {"model.safetensors": b"new weights"})
    for model in (new, tmp_path / "old"):  # a different model, and the same one with a linked file
        with pytest.raises(
            FileExistsError,
            match=r"holds 2 symbolic link\(s\) \(config\.json -> .*run-6/config\.json, "
            r"previous -> \.\./run-6\), which an export never writes; "
            r"set export\.overwrite=true",
        ):
            _export(str(target), model, tmp_path / "e2")
    m = _export(str(target), new, tmp_path / "e3", "export.overwrite=true")
    assert m["uploaded"] == 1.0
    _exactly(str(target), new)
    assert not any(p.is_symlink() for p in target.iterdir())
    assert {p.relative_to(run6).as_posix(): p.read_bytes() for p in run6.rglob("*") if p.is_file()} == kept


def test_the_export_holds_the_serving_catalogue(target, tmp_path):
    model = _model(tmp_path / "model", {"model.safetensors": b"weights"})
    _export(target, model, tmp_path / "e1")
    storage.download_dir(target, tmp_path / "served")
    served = tmp_path / "served"
    assert (served / ModelExport.CATALOGUE_SID_INDEX / "index.json").read_text() == '{"0": ["<a_1>", "<b_2>", "<c_3>"]}'
    assert (served / ModelExport.CATALOGUE_DATASET / "items.parquet").read_bytes() == b"PAR1 the item table"
    assert sorted(p.name for p in (served / ModelExport.CATALOGUE_DATASET).iterdir()) == ["items.parquet", "stats.json"]
    assert ModelExport(tmp_path / "e1").uri() == target


def test_a_model_folder_holding_a_catalogue_or_a_dataset_without_items_is_refused(tmp_path):
    model = _model(tmp_path / "model", {"model.safetensors": b"weights"})
    sid_index, dataset = _inputs(tmp_path)
    (dataset / "items.parquet").unlink()
    with pytest.raises(ArtifactFileMissing, match=r"dataset .*: items.parquet \(the item table\) not found"):
        _export(str(tmp_path / "out"), model, tmp_path / "e1")
    (model / "catalogue").mkdir()
    with pytest.raises(FileExistsError, match=r"holds 'catalogue', the name of the exported catalogue"):
        _export(str(tmp_path / "out"), model, tmp_path / "e1")
    assert not (tmp_path / "out").exists() and not (tmp_path / "e1").exists()
