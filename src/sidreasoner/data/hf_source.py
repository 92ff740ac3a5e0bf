"""A shop export kept as a Hugging Face dataset: its two tables, `interactions` and `items`, as Parquet files.

Where the tables are read from (`data.source`):

- `hf://owner/name` (or `hf://datasets/owner/name`, the `huggingface_hub` file-system spelling): the dataset
  repo `owner/name` on the hub, at `data.revision` (a branch, tag or commit; empty = the default branch).
  Each table is a config of the repo, named `interactions` and `items`, read from the config's only split
  (whatever its name; `push_to_hub(repo, config_name="items")` writes a `train` split). Tables cannot be
  two splits of one config on the hub: the splits of a config share one set of columns.
- `hf:///abs/path` (`hf://` and an absolute path): a folder on this machine, written by `datasets`:
  `DatasetDict({"interactions": …, "items": …}).save_to_disk(path)` (one split per table), or two folders
  `path/interactions` and `path/items` each written by `save_to_disk`, or a copy of a hub repo laid out
  as above (configs). Revisions apply to hub repos only.

`datasets` takes the hub token from the environment (`HF_TOKEN`) and honours `HF_HUB_OFFLINE`,
`HF_ENDPOINT`; a hub repo is downloaded into `cache_dir` (Arrow files, memory-mapped) and each table is
written in batches, so a table larger than memory passes through. A file appears in `dest` only when whole.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sidreasoner.artifacts.raw import RawData
from sidreasoner.config.hf_address import HfAddressError, parse_hf_source
from sidreasoner.io import atomic_file

# The tables' names in the dataset (configs or splits); RawData names their files in the raw folder, where
# the interactions format finds them.
TABLES = tuple(RawData.HF_TABLE_FILES)  # interactions, items
PARQUET_BATCH_ROWS = 10_000
TOKEN_VARIABLES = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN")


class HfSourceError(RuntimeError):
    """A Hugging Face dataset source cannot give its two tables; the message names the source and what is
    missing."""


@dataclass
class HfTables:
    """The tables written by `fetch_hf_tables` and where each came from."""

    files: dict[str, Path]  # table name -> its Parquet file in dest
    rows: dict[str, int]
    origin: dict[str, dict[str, str]]  # table name -> {"config": …, "split": …} (what was read)
    layout: str  # configs | splits | folders
    commit: str | None = None  # the hub commit read; None for a local folder


def fetch_hf_tables(source: str, revision: str | None, dest: Path, cache_dir: Path | None = None) -> HfTables:
    """Write the `interactions` and `items` tables of the dataset at `source` as `dest/interactions.parquet`
    and `dest/items.parquet`; `revision` applies to hub repos, `cache_dir` is the `datasets` cache."""
    try:
        where = parse_hf_source(source)
    except HfAddressError as err:
        raise HfSourceError(str(err)) from None
    if where.folder is not None and revision:
        raise HfSourceError(
            f"data.source {source}: data.revision={revision!r} applies to hub repos only; a local folder "
            "has no revisions (empty data.revision)"
        )
    try:
        if where.folder is not None:
            tables, origin, layout, commit = _from_folder(source, where.folder, cache_dir)
        else:
            tables, origin, layout, commit = _from_hub(source, where.repo_id, revision or None, cache_dir)
        dest.mkdir(parents=True, exist_ok=True)
        files, rows = {}, {}
        for name, table in tables.items():
            files[name] = _write_parquet(table, dest / RawData.HF_TABLE_FILES[name])
            rows[name] = table.num_rows
    except HfSourceError:
        raise
    except ConnectionError as err:
        raise HfSourceError(_unreachable(source, revision, err)) from None
    except Exception as err:  # datasets and the hub client raise many types; name the source, keep one line
        raise HfSourceError(_one_line(f"data.source {source}{_at(revision)}: {type(err).__name__}: {err}")) from None
    return HfTables(files=files, rows=rows, origin=origin, layout=layout, commit=commit)


def manifest_entry(source: str, revision: str | None, fetched: HfTables) -> dict[str, Any]:
    """What the raw folder's manifest records of an hf:// source: enough to tell which data was read."""
    return {
        "source": source,
        "revision": revision or "",
        "commit": fetched.commit,
        "layout": fetched.layout,
        "tables": {
            name: {"file": path.name, "rows": fetched.rows[name], **fetched.origin[name]}
            for name, path in fetched.files.items()
        },
    }


# ---------------------------------------------------------------- hub repos (and local copies of one)


def _from_hub(source: str, path: str, revision: str | None, cache_dir: Path | None):
    import datasets  # imported here: only this source needs it

    cache = str(cache_dir) if cache_dir is not None else None
    configs = datasets.get_dataset_config_names(path, revision=revision, cache_dir=cache)
    missing = [t for t in TABLES if t not in configs]
    if missing:
        raise HfSourceError(
            f"data.source {source}{_at(revision)}: no {' or '.join(map(repr, missing))} config; the repo has "
            f"configs {configs} (each table is a config of its own: push_to_hub(repo, config_name='items'))"
        )
    on_hub = not os.path.isdir(path)
    tables, origin, commit = {}, {}, None
    for name in TABLES:
        # The second table is read at the commit the first was: a push in between cannot mix two versions.
        builder = datasets.load_dataset_builder(path, name, revision=commit or revision, cache_dir=cache)
        split = _only_split(source, name, builder)
        builder.download_and_prepare()
        tables[name] = builder.as_dataset(split=split)
        origin[name] = {"config": name, "split": split}
        commit = builder.hash if on_hub else None
    return tables, origin, "configs", commit


def _only_split(source: str, config: str, builder: Any) -> str:
    data_files = getattr(builder.config, "data_files", None)
    splits = list(data_files) if data_files else list(builder.info.splits or [])
    if len(splits) != 1:
        raise HfSourceError(
            f"data.source {source}: config {config!r} has splits {splits}; a table's config needs exactly one"
        )
    return str(splits[0])


# ---------------------------------------------------------------- folders written by save_to_disk


def _from_folder(source: str, folder: Path, cache_dir: Path | None):
    import datasets  # imported here: only this source needs it

    if not folder.is_dir():
        raise HfSourceError(f"data.source {source}: folder {folder} does not exist")
    if _saved(folder):
        saved = datasets.load_from_disk(str(folder))
        if isinstance(saved, datasets.Dataset):
            raise HfSourceError(
                f"data.source {source}: {folder} holds one table (a Dataset); save both: "
                "DatasetDict({'interactions': …, 'items': …}).save_to_disk(path)"
            )
        missing = [t for t in TABLES if t not in saved]
        if missing:
            raise HfSourceError(
                f"data.source {source}: no {' or '.join(map(repr, missing))} split in the DatasetDict at {folder}; "
                f"it has splits {list(saved)}"
            )
        return {t: saved[t] for t in TABLES}, {t: {"split": t} for t in TABLES}, "splits", None
    per_table = [t for t in TABLES if _saved(folder / t)]
    if per_table:
        missing = [t for t in TABLES if t not in per_table]
        if missing:
            raise HfSourceError(
                f"data.source {source}: no {' or '.join(f'{folder / t}' for t in missing)} written by save_to_disk "
                f"beside {folder / per_table[0]}"
            )
        tables, origin = {}, {}
        for name in TABLES:
            tables[name], split = _one_table(source, folder / name, datasets.load_from_disk(str(folder / name)))
            origin[name] = {"folder": name, **({"split": split} if split else {})}
        return tables, origin, "folders", None
    return _from_hub(source, str(folder), None, cache_dir)


def _saved(folder: Path) -> bool:
    """Whether `folder` was written by Dataset.save_to_disk or DatasetDict.save_to_disk."""
    return (folder / "state.json").is_file() or (folder / "dataset_dict.json").is_file()


def _one_table(source: str, folder: Path, saved: Any) -> tuple[Any, str | None]:
    """A table folder's Dataset, or the only split of its DatasetDict: (dataset, split or None)."""
    import datasets

    if isinstance(saved, datasets.Dataset):
        return saved, None
    if len(saved) != 1:
        raise HfSourceError(f"data.source {source}: {folder} has splits {list(saved)}; a table needs exactly one")
    split = next(iter(saved))
    return saved[split], split


# ---------------------------------------------------------------- writing and messages


def _write_parquet(table: Any, final: Path) -> Path:
    with atomic_file(final) as tmp:
        table.to_parquet(str(tmp), batch_size=PARQUET_BATCH_ROWS)
    return final


def _at(revision: str | None) -> str:
    return f" (data.revision={revision})" if revision else ""


def _unreachable(source: str, revision: str | None, err: Exception) -> str:
    offline = [v for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") if os.environ.get(v, "").lower() in ("1", "true")]
    why = " and ".join(f"{v}={os.environ[v]}" for v in offline) + (" are set" if len(offline) > 1 else " is set")
    return _one_line(
        f"data.source {source}{_at(revision)}: the Hugging Face Hub is unreachable "
        f"({why if offline else 'no network route to it'}) and the dataset is not in the cache "
        f"(data.cache_dir): {err}. Unset HF_HUB_OFFLINE, set HF_ENDPOINT to a mirror, or copy the dataset "
        "to a bucket or folder"
    )


def _one_line(message: str) -> str:
    """`message` on one line, without the hub token's value."""
    for name in TOKEN_VARIABLES:
        secret = os.environ.get(name, "")
        if len(secret) >= 8:
            message = message.replace(secret, "***")
    return " ".join(message.split())
