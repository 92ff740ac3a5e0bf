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

A narrative row is paired with a train sample by the sample's ids (user, history item ids, target item id),
or by its SIDs (history SIDs, target SID) when the narrative file has only the columns the research code
reads (the SIDs and the texts). Every later consumer (the Stage 1 history narratives, the Stage 2 reasoning
examples, the Stage 3 `narrated` prompts) then reads the paired train sample.
"""

from __future__ import annotations

import time
from collections import Counter, defaultdict
from collections.abc import Callable
from pathlib import Path

import pyarrow as pa

from sidreasoner.artifacts.dataset import SPLITS, Dataset
from sidreasoner.config import Config
from sidreasoner.data.research import NarrativeRow, ResearchBundle, ResearchDataError, Sample, read_bundle

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


def _pairing_key(has_ids: bool) -> Callable[[Sample | NarrativeRow], tuple]:
    """What pairs a narrative row with a train sample: (user, history item ids, target item id), or
    (history SIDs, target SID) for a narrative file without ids."""
    if has_ids:
        return lambda r: (r.user_id, tuple(r.history_item_ids), r.item_id)
    return lambda r: (tuple(r.history_sids), r.item_sid)


def _sample_narratives(bundle: ResearchBundle) -> tuple[dict[str, list], Counter]:
    """The narrative rows paired with the bundle's train samples (the dataset's train rows, same order), in
    train order, and the counts `matched`, `unmatched` (no train sample with the row's key is left: the row
    is dropped) and `ambiguous` (matched rows whose key several train samples share: such rows pair with
    them in file order; by SIDs, the samples may differ in user or in items that share a SID)."""
    key = _pairing_key(bundle.narratives.has_ids)
    free: dict[tuple, list[int]] = defaultdict(list)
    for row, sample in enumerate(bundle.splits["train"].samples):
        free[key(sample)].append(row)
    shared = {k for k, rows in free.items() if len(rows) > 1}
    matched: dict[int, tuple[str | None, str | None]] = {}
    counts: Counter = Counter(matched=0, unmatched=0, ambiguous=0)
    for r in bundle.narratives.rows:
        k = key(r)
        if not free.get(k):
            counts["unmatched"] += 1
            continue
        counts["matched"] += 1
        counts["ambiguous"] += k in shared
        matched[free[k].pop(0)] = (r.history_narrative, r.reasoning_path)
    order = sorted(matched)
    return {
        "sample": order,
        "history_narrative": [matched[k][0] for k in order],
        "reasoning_path": [matched[k][1] for k in order],
    }, counts


def _write_bundle_extras(
    dataset: Dataset, bundle: ResearchBundle, dense: dict[int, int], metrics: dict[str, float]
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
        cols, counts = _sample_narratives(bundle)
        metrics.update({f"narrative_rows_{k}": v for k, v in counts.items()})
        metrics["narrative_matched_by_sids"] = 0 if bundle.narratives.has_ids else 1
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
        _write_bundle_extras(dataset, bundle, dense, metrics)
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
