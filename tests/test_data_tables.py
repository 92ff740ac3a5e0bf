"""data.format=interactions and recbole: a shop's own export as the data source. After reading, the same
filters, windows and split as the Amazon sources; bad rows counted by reason; bad names are clear errors."""

import datetime as dt
import gzip
import json

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

from sidreasoner import config, storage
from sidreasoner.artifacts import Dataset
from sidreasoner.artifacts.dataset import SPLITS
from sidreasoner.artifacts.raw import RawData
from sidreasoner.data.download import DownloadError
from sidreasoner.data.raw import RawDataError
from sidreasoner.data.tables import TimeColumn
from sidreasoner.runner import run_step
from sidreasoner.storage.s3 import make_client

# (user, item, epoch seconds, rating): 6 users over 6 items, with a repeat and equal timestamps.
T0 = 1_600_000_000
EVENTS = [
    (user, item, T0 + 86_400 * day + 3600 * (u % 3), float(1 + (u + day) % 5))
    for u, user in enumerate(["ann", "bob", "cat", "dan", "eve", "fay"])
    for day, item in enumerate(
        [f"P{(u + k) % 6}" for k in range(5)] + ([f"P{u % 6}"] if u % 2 else [])  # odd users buy again
    )
]
ITEMS = [  # id, title (None: the record has none), description, categories
    (f"P{n}", f"Pen &amp; Ink {n}" if n != 5 else None, f"Part {n}.", ["Office", f"Pens {n % 2}"]) for n in range(7)
]
SETTINGS = [
    "data.k_core=2",
    "data.min_samples=5",
    "data.max_malformed_fraction=0.2",
    "data.title_rule=unescape",
    "data.repeats=keep",
]


def _iso(seconds: int, hours_east: int) -> str:
    zone = dt.timezone(dt.timedelta(hours=hours_east))
    return dt.datetime.fromtimestamp(seconds, zone).isoformat()


def _amazon_folder(root):
    root.mkdir()
    with gzip.open(root / "Shop.json.gz", "wt") as fh:
        for user, item, ts, rating in EVENTS:
            fh.write(json.dumps({"reviewerID": user, "asin": item, "overall": rating, "unixReviewTime": ts}) + "\n")
    with gzip.open(root / "meta_Shop.json.gz", "wt") as fh:
        for asin, title, description, cats in ITEMS:
            rec = {"asin": asin, "description": description, "category": cats}
            fh.write(json.dumps(rec | ({"title": title} if title else {})) + "\n")
    return root


def _shop_folder(root, events_kind="csv"):
    """The same events with the shop's own column names, ISO-8601 times in several zones, and one event
    without a user (counted, not kept)."""
    root.mkdir()
    events = pa.table(
        {
            "customer": [e[0] for e in EVENTS] + [None],
            "sku": [e[1] for e in EVENTS] + ["P1"],
            "event_time": [_iso(e[2], n % 5 - 2) for n, e in enumerate(EVENTS)] + [_iso(T0, 0)],
            "stars": [e[3] for e in EVENTS] + [3.0],
        }
    )
    if events_kind == "csv":
        import pyarrow.csv as pacsv

        pacsv.write_csv(events, root / "interactions.csv")
    else:  # a folder of part files, as Spark writes them
        (root / "interactions").mkdir()
        half = events.num_rows // 2
        pq.write_table(events.slice(0, half), root / "interactions" / "part-00000.snappy.parquet")
        pq.write_table(events.slice(half), root / "interactions" / "part-00001.snappy.parquet")
        (root / "interactions" / "_SUCCESS").write_text("")
    items = pa.table(
        {
            "sku": [i[0] for i in ITEMS],
            "name": [i[1] for i in ITEMS],
            "blurb": [i[2] for i in ITEMS],
            "category": [i[3] for i in ITEMS],
        }
    )
    pq.write_table(items, root / "items.parquet")
    return root


def _shop_settings(fmt="interactions"):
    return [
        f"data.format={fmt}",
        "data.columns.user_id=customer",
        "data.columns.item_id=sku",
        "data.columns.timestamp=event_time",
        "data.columns.rating=stars",
        "data.columns.title=name",
        "data.columns.description=blurb",
        'data.item_text_columns=["category"]',
    ]


def _dataset(tmp_path, name, source, *sets):
    cfg = config.load("demo", [f"data.source={source}", "data.category=Shop", *SETTINGS, *sets])
    paths = {"raw": tmp_path / f"{name}_raw", "dataset": tmp_path / f"{name}_dataset"}
    metrics = run_step("download-data", cfg, paths)
    metrics |= run_step("preprocess", cfg, paths)
    return Dataset.at(paths["dataset"]), metrics


def _assert_same_dataset(a: Dataset, b: Dataset):
    assert a.items_table().equals(b.items_table())
    assert a.read_table(Dataset.USERS).equals(b.read_table(Dataset.USERS))
    assert a.interactions().equals(b.interactions())
    for split in SPLITS:
        assert a.split_table(split).equals(b.split_table(split)), split
    assert a.read_json(Dataset.research_item_file("Shop")) == b.read_json(Dataset.research_item_file("Shop"))


@pytest.mark.parametrize("events_kind", ["csv", "parquet_parts"])
def test_a_shop_export_gives_the_dataset_of_the_same_events_as_amazon_files(tmp_path, events_kind):
    amazon, _ = _dataset(tmp_path, "amazon", _amazon_folder(tmp_path / "amazon"))
    shop, metrics = _dataset(tmp_path, "shop", _shop_folder(tmp_path / "shop", events_kind), *_shop_settings())
    _assert_same_dataset(amazon, shop)
    assert len(amazon.items()) == 5  # P5 has no title, P6 no event
    assert metrics["review_records_skipped_missing_user_id"] == 1
    assert metrics["raw_review_lines"] == len(EVENTS) + 1
    assert metrics["items_dropped_missing_title"] == 1
    assert metrics["reviews_dropped_unknown_item"] == sum(e[1] == "P5" for e in EVENTS)
    assert metrics["timestamps_iso8601"] == 1.0
    assert metrics["files"] == (2.0 if events_kind == "csv" else 3.0)  # _SUCCESS is not copied


def test_recbole_atomic_files_give_the_same_dataset(tmp_path):
    amazon, _ = _dataset(tmp_path, "amazon", _amazon_folder(tmp_path / "amazon"))
    root = tmp_path / "recbole"
    root.mkdir()
    lines = ["user_id:token\titem_id:token\trating:float\ttimestamp:float"]
    lines += [f"{u}\t{i}\t{r}\t{t * 1000}" for u, i, t, r in EVENTS]  # epoch milliseconds
    (root / "Shop.inter").write_text("\n".join(lines) + "\n")
    items = ["item_id:token\ttitle:token_seq\tdescription:token_seq\tcategories:token_seq"]
    items += [f"{i}\t{t or ''}\t{d}\t{c[0]}" for i, t, d, c in ITEMS]
    (root / "Shop.item").write_text("\n".join(items) + "\n")
    shop, metrics = _dataset(tmp_path, "shop", root, "data.format=recbole")
    assert shop.interactions().equals(amazon.interactions())
    for split in SPLITS:
        assert shop.split_table(split).equals(amazon.split_table(split))
    assert shop.items()["title"].tolist() == amazon.items()["title"].tolist()
    assert metrics["timestamps_milliseconds"] == 1.0


def test_an_unknown_column_lists_the_files_columns_with_a_suggestion(tmp_path):
    root = _shop_folder(tmp_path / "shop")
    sets = [s for s in _shop_settings() if "user_id" not in s] + ["data.columns.user_id=custmer"]
    with pytest.raises(RawDataError) as err:
        _dataset(tmp_path, "shop", root, *sets)
    text = str(err.value)
    assert "interactions.csv: no column 'custmer' (data.columns.user_id" in text
    assert "'customer', 'sku', 'event_time', 'stars'" in text and "did you mean 'customer'?" in text
    assert not (tmp_path / "shop_dataset").exists()  # nothing half-written


def test_too_many_bad_rows_name_the_file_row_and_column(tmp_path):
    root = tmp_path / "shop"
    root.mkdir()
    rows = ["user_id,item_id,timestamp"] + [f"u{n % 3},P{n % 4},{T0 + n}" for n in range(20)]
    rows[5] = "u1,P1,yesterday"
    rows[9] = "u2,P2,"
    rows[12] = "u2,P2,1600000000,surplus"
    (root / "interactions.csv").write_text("\n".join(rows) + "\n")
    (root / "items.csv").write_text("item_id,title\n" + "".join(f"P{n},Pen {n}\n" for n in range(4)))
    with pytest.raises(RawDataError) as err:
        _dataset(tmp_path, "shop", root, "data.format=interactions", "data.max_malformed_fraction=0.05")
    assert "3 of 20 rows (15.0%)" in str(err.value)
    assert "invalid_timestamp: 1, malformed_line: 1, missing_timestamp: 1" in str(err.value)
    assert "interactions.csv row 5, column 'timestamp': not epoch seconds" in str(err.value)


def test_a_folder_without_the_tables_is_refused_naming_what_it_holds(tmp_path):
    root = tmp_path / "shop"
    root.mkdir()
    (root / "orders.csv").write_text("a\n1\n")
    with pytest.raises(DownloadError, match=r"no interactions table .*Present: \['orders.csv'\]"):
        _dataset(tmp_path, "shop", root, "data.format=interactions")


@pytest.mark.parametrize(
    ("values", "kind", "seconds"),
    [
        ([1_600_000_000, None], "seconds", [1_600_000_000, np.nan]),
        ([1_600_000_000_123, 5], "milliseconds", [1_600_000_000, 0]),
        (["1600000000", "x"], "seconds", [1_600_000_000, np.nan]),
        (["2020-09-13T12:26:40Z", "2020-09-13 14:26:40.75+02:00", None], "iso8601", [1_600_000_000] * 2 + [np.nan]),
        (
            [
                "2020-09-13T12:26:40Z",
                "2020-09-13 14:26:40+02:00",
                "2020-09-13",
                "2020-02-30",
                "2020-09-13T12:26:40.5-0130",
            ],
            "iso8601",
            [1_600_000_000, 1_600_000_000, 1_599_955_200, np.nan, 1_600_000_000 + 5400],
        ),
    ],
)
def test_timestamps_are_detected_per_column(values, kind, seconds):
    clock = TimeColumn()
    arr = pa.array(values)
    clock.decide(arr)
    assert clock.kind == kind
    np.testing.assert_array_equal(clock.seconds(arr), np.array(seconds, float))


def test_a_timestamp_typed_parquet_column_is_read_in_utc():
    arr = pc.cast(pa.array([1_600_000_000_000_000], pa.int64()), pa.timestamp("us", tz="Europe/Berlin"))
    clock = TimeColumn()
    clock.decide(arr)
    assert (clock.kind, clock.seconds(arr).tolist()) == ("timestamp", [1_600_000_000.0])


def test_a_bucket_export_of_part_files_gives_the_same_dataset(tmp_path, moto_server, monkeypatch):
    monkeypatch.setenv("SIDREASONER_S3_ENDPOINT", moto_server["url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_server["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_server["secret"])
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_SESSION_TOKEN", raising=False)
    client = make_client("s3")
    if not client.bucket_exists("shop"):
        client.make_bucket("shop")
    local = _shop_folder(tmp_path / "export", "parquet_parts")
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
        storage.upload_file(path, f"s3://shop/june/{path.relative_to(local).as_posix()}")
    from_folder, _ = _dataset(tmp_path, "folder", local, *_shop_settings())
    from_bucket, metrics = _dataset(tmp_path, "bucket", "s3://shop/june", *_shop_settings())
    _assert_same_dataset(from_folder, from_bucket)
    assert metrics["files"] == 3.0


def test_a_hugging_face_dataset_export_gives_the_same_dataset(tmp_path, monkeypatch):
    """data.source=hf:///folder (a DatasetDict written by `datasets`; hf://owner/name reads the hub the same
    way): the two tables reach the raw folder as Parquet, and the manifest says where they came from."""
    datasets = pytest.importorskip("datasets")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    local = _shop_folder(tmp_path / "export", "parquet_parts")
    events = pa.concat_tables(pq.read_table(p) for p in sorted((local / "interactions").glob("*.parquet")))
    saved = tmp_path / "saved"
    datasets.DatasetDict(
        {
            "interactions": datasets.Dataset(events),
            "items": datasets.Dataset(pq.read_table(local / "items.parquet")),
        }
    ).save_to_disk(str(saved))
    from_folder, _ = _dataset(tmp_path, "folder", local, *_shop_settings())
    from_hf, metrics = _dataset(tmp_path, "hf", f"hf://{saved}", *_shop_settings())
    _assert_same_dataset(from_folder, from_hf)
    manifest = RawData.at(tmp_path / "hf_raw").manifest()
    assert (manifest["format"], manifest["hf"]["layout"], manifest["hf"]["commit"]) == ("interactions", "splits", None)
    assert {name: table["rows"] for name, table in manifest["hf"]["tables"].items()} == {
        "interactions": len(EVENTS) + 1,
        "items": len(ITEMS),
    }
    assert metrics["files"] == 2.0
