"""The whole demo DAG from a shop's own export (data.format=interactions), as `sidreasoner run` runs it."""

import gzip
import json
import subprocess
import sys

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from sidreasoner.config import DemoDataConfig
from sidreasoner.data.demo import generate_demo_raw
from sidreasoner.data.raw import iter_json_lines

from .helpers.small_dag import SMALL

pytestmark = pytest.mark.slow


def _shop_export_from_demo(root, tmp_path):
    """The demo generator's reviews and items, rewritten as a shop would export them: its own column
    names, ISO-8601 times with a zone, events in two Parquet part files, items as gzipped JSON lines."""
    demo = tmp_path / "demo"
    generate_demo_raw(DemoDataConfig(num_items=120, num_users=400), "Demo", demo, seed=0)
    reviews = [rec for _, rec in iter_json_lines(demo / "Demo.json.gz", 1.0)]
    events = pa.table(
        {
            "customer": [r["reviewerID"] for r in reviews],
            "sku": [r["asin"] for r in reviews],
            "event_time": pa.array([r["unixReviewTime"] * 1_000_000 for r in reviews], pa.int64())
            .cast(pa.timestamp("us", tz="UTC"))
            .cast(pa.string()),
        }
    )
    (root / "interactions").mkdir(parents=True)
    half = events.num_rows // 2
    pq.write_table(events.slice(0, half), root / "interactions" / "part-00000.parquet")
    pq.write_table(events.slice(half), root / "interactions" / "part-00001.parquet")
    with gzip.open(root / "items.jsonl.gz", "wb") as fh:
        for _, meta in iter_json_lines(demo / "meta_Demo.json.gz", 1.0):
            shop = {"sku": meta["asin"], "name": meta.get("title"), "blurb": meta.get("description")}
            fh.write(orjson.dumps(shop | {"maker": meta.get("brand"), "category": meta.get("category")}) + b"\n")
    return events.num_rows


def test_the_demo_dag_runs_from_a_shop_export_to_the_report(tmp_path):
    export = tmp_path / "shop"
    n_events = _shop_export_from_demo(export, tmp_path)
    sets = [
        *SMALL,
        f"data.source={export}",
        "data.format=interactions",
        "data.category=Shop",
        "data.columns.user_id=customer",
        "data.columns.item_id=sku",
        "data.columns.timestamp=event_time",
        "data.columns.title=name",
        "data.columns.description=blurb",
        'data.item_text_columns=["maker", "category"]',
    ]
    summary = tmp_path / "summary.json"
    result = subprocess.run(
        [sys.executable, "-m", "sidreasoner.cli", "run", "--preset", "demo", "--pipeline-root", str(tmp_path / "root")]
        + ["--summary", str(summary), *sum((["--set", s] for s in sets), [])],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    tasks = json.loads(summary.read_text())["tasks"]
    assert all(t["status"] == "SUCCEEDED" for t in tasks.values())
    data = tasks["preprocess"]["metrics"]
    assert data["raw_review_lines"] == n_events and data["timestamps_iso8601"] == 1.0
    assert data["items_dropped_missing_title"] > 0  # the demo's dirt: items without a title
    assert tasks["evaluate-stage3"]["metrics"]["test_nonthink_users"] > 0
    assert "report" in tasks and tasks["report"]["status"] == "SUCCEEDED"
