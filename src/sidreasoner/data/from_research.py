"""`preprocess` for `data.format=research`: a research data bundle becomes the project's dataset.

The bundle's split is kept exactly (no filters, no k-core, no re-split; rows in file order). Items
get dense ids 0..N-1 in the order of the bundle's item ids (`asin` holds the bundle's id), users in
order of first appearance over train, valid, test. The bundle has no timestamps: a sample's
`timestamp` is its position over the three splits, which keeps the research split's order.

What the later steps import is kept in the dataset (the `Dataset.BUNDLE_*` files), already mapped to the
dataset's ids, so that they read one validated form: the SID index (quantize-sids, sid.method=import), the item
narratives (synthesize-corpus, teacher.kind=import), the train samples' history narratives and reasoning
paths, the general-reasoning chats (sft-stage1), and the import's record (where the bundle came from, which
files, what was counted).
"""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import pyarrow as pa

from sidreasoner.artifacts.dataset import SPLITS, Dataset
from sidreasoner.config import Config
from sidreasoner.data.research import ResearchBundle, ResearchDataError, read_bundle

SAMPLE_SCHEMA = Dataset.sample_schema()


def _item_table(bundle: ResearchBundle) -> tuple[dict[int, int], dict[str, list]]:
    """Dense ids for every item any file names, and the columns of the dataset's item table."""
    titles: dict[int, str] = {}
    for rows in bundle.splits.values():
        for s in rows.samples:
            titles.setdefault(s.item_id, s.item_title)
            for item, title in zip(s.history_item_ids, s.history_titles, strict=True):
                titles.setdefault(item, title)
    meta = bundle.items.items if bundle.items else {}
    ids = sorted(set(titles) | set(meta) | set(bundle.index.codes if bundle.index else ()))
    dense = {research_id: n for n, research_id in enumerate(ids)}
    cols: dict[str, list] = {
        "item_id": list(range(len(ids))),
        "asin": [str(i) for i in ids],
        "title": [],
        "description": [],
        "brand": [],
        "categories": [],
    }
    for research_id in ids:
        item = meta.get(research_id)
        cols["title"].append(item.title if item else titles.get(research_id, ""))
        cols["description"].append(" ".join(item.description) if item else "")
        cols["brand"].append((item.brand or "") if item else "")
        cols["categories"].append(list(item.categories or []) if item else [])
    return dense, cols


def _samples(bundle: ResearchBundle, dense: dict[int, int]) -> tuple[dict[str, dict[str, list]], list[str]]:
    users: dict[str, int] = {}
    out, clock = {}, 0
    for split in SPLITS:
        rows = bundle.splits.get(split)
        cols: dict[str, list] = {"user_id": [], "history_item_ids": [], "item_id": [], "timestamp": []}
        for s in rows.samples if rows else ():
            cols["user_id"].append(users.setdefault(s.user_id, len(users)))
            cols["history_item_ids"].append([dense[i] for i in s.history_item_ids])
            cols["item_id"].append(dense[s.item_id])
            cols["timestamp"].append(clock)
            clock += 1
        out[split] = cols
    return out, list(users)


def _sample_narratives(
    bundle: ResearchBundle, dense: dict[int, int], train_keys: list[tuple]
) -> tuple[dict[str, list], int]:
    """The narrative rows matched to train samples by (user, history, target), in train order; a
    key that appears several times pairs up in file order. Returns the columns and the unmatched count."""
    rows_by_key: dict[tuple, list[int]] = defaultdict(list)
    for row, key in enumerate(train_keys):
        rows_by_key[key].append(row)
    matched: dict[int, tuple[str | None, str | None]] = {}
    unmatched = 0
    for r in bundle.narratives.rows:
        key = (r.user_id, tuple(dense.get(i, -1) for i in r.history_item_ids), dense.get(r.item_id, -1))
        free = rows_by_key.get(key)
        if not free:
            unmatched += 1
            continue
        matched[free.pop(0)] = (r.history_narrative, r.reasoning_path)
    order = sorted(matched)
    return {
        "sample": order,
        "history_narrative": [matched[k][0] for k in order],
        "reasoning_path": [matched[k][1] for k in order],
    }, unmatched


def _write_bundle_extras(
    dataset: Dataset, bundle: ResearchBundle, dense: dict[int, int], train_keys: list[tuple], metrics: dict[str, float]
) -> None:
    if bundle.index is not None:
        dataset.write_bundle_sid_index({str(dense[i]): codes for i, codes in bundle.index.codes.items()})
    if bundle.item_narratives is not None:
        texts = sorted((dense[i], t) for i, t in bundle.item_narratives.texts.items() if i in dense)
        metrics["item_narratives_unknown_item"] = len(bundle.item_narratives.texts) - len(texts)
        dataset.write_bundle_item_narratives(
            pa.table(
                {
                    "item_id": pa.array([i for i, _ in texts], pa.int64()),
                    "narrative": pa.array([t for _, t in texts], pa.string()),
                }
            )
        )
    if bundle.narratives is not None:
        cols, unmatched = _sample_narratives(bundle, dense, train_keys)
        metrics.update(narrative_rows_matched=len(cols["sample"]), narrative_rows_unmatched=unmatched)
        dataset.write_bundle_sample_narratives(
            pa.table(
                {
                    "sample": pa.array(cols["sample"], pa.int64()),
                    "history_narrative": pa.array(cols["history_narrative"], pa.string()),
                    "reasoning_path": pa.array(cols["reasoning_path"], pa.string()),
                }
            )
        )
    if bundle.general is not None:
        dataset.write_bundle_general(bundle.general.conversations)


def dataset_from_bundle(
    cfg: Config, bundle_dir: Path, category: str, source: str, out_dir: Dataset
) -> dict[str, float]:
    """Write the project's dataset for the bundle in `bundle_dir` into `out_dir` (atomically)."""
    started = time.perf_counter()
    data = cfg.data
    try:
        bundle = read_bundle(bundle_dir, category, max_malformed_fraction=data.max_malformed_fraction, seed=cfg.seed)
    except ResearchDataError as err:
        raise ResearchDataError(f"preprocess (data.format=research): {err}") from None
    missing = [s for s in SPLITS if s not in bundle.splits]
    if missing:
        raise ResearchDataError(
            f"{bundle_dir}: no {'/'.join(missing)} split CSV for category {category!r}; found: "
            f"{bundle.files.describe()}"
        )
    dense, item_cols = _item_table(bundle)
    splits, users = _samples(bundle, dense)
    train_n = len(splits["train"]["item_id"])
    if train_n < data.min_samples:
        raise ResearchDataError(
            f"{bundle.files.train}: {train_n} usable train rows (data.min_samples={data.min_samples})"
        )
    metrics: dict[str, float] = {
        **bundle.metrics,
        "items": len(dense),
        "users": len(users),
        **{f"samples_{s}": len(splits[s]["item_id"]) for s in SPLITS},
    }
    metrics["interactions"] = sum(metrics[f"samples_{s}"] for s in SPLITS)
    train = splits["train"]
    train_keys = [
        (users[u], tuple(h), t)
        for u, h, t in zip(train["user_id"], train["history_item_ids"], train["item_id"], strict=True)
    ]
    with Dataset.writing(out_dir) as dataset:
        dataset.write_items(
            pa.table(
                {
                    **item_cols,
                    "item_id": pa.array(item_cols["item_id"], pa.int64()),
                    "categories": pa.array(item_cols["categories"], pa.list_(pa.string())),
                }
            )
        )
        dataset.write_users(pa.table({"user_id": pa.array(range(len(users)), pa.int64()), "raw_user_id": users}))
        for split in SPLITS:
            dataset.write_split(split, pa.table(splits[split], schema=SAMPLE_SCHEMA))
        # The bundle holds samples, not a review log: each sample's target is one interaction.
        dataset.write_interactions(
            pa.table(
                {
                    "user_id": pa.array([u for s in SPLITS for u in splits[s]["user_id"]], pa.int64()),
                    "item_id": pa.array([i for s in SPLITS for i in splits[s]["item_id"]], pa.int64()),
                    "timestamp": pa.array([t for s in SPLITS for t in splits[s]["timestamp"]], pa.int64()),
                    "rating": pa.array([None] * int(metrics["interactions"]), pa.float32()),
                }
            )
        )
        dataset.write_research_items(
            category,
            {
                str(n): {"title": t, "description": d}
                for n, t, d in zip(item_cols["item_id"], item_cols["title"], item_cols["description"], strict=True)
            },
        )
        _write_bundle_extras(dataset, bundle, dense, train_keys, metrics)
        files = {
            k: str(p.relative_to(bundle.files.root))
            for k, p in vars(bundle.files).items()
            if isinstance(p, Path) and k != "root"
        }
        dataset.write_bundle_record({"source": source, "category": category, "files": files, "metrics": metrics})
        metrics["wall_seconds"] = round(time.perf_counter() - started, 3)
        dataset.write_stats(
            {
                "category": category,
                "format": "research",
                "source": source,
                "metrics": metrics,
                "data_config": data.model_dump(mode="json"),
            }
        )
    return {k: float(v) for k, v in metrics.items()}
