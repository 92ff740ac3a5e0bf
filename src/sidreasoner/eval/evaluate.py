"""The `evaluate` and `evaluate-baselines` steps and the `recommend` library function.

Artifact layout of an evaluation folder (model or baselines):
  predictions.parquet  user_id, split, mode, target_item_id, target_sid, history_item_ids,
                       pred_sids (top-K), pred_scores, pred_item_ids (item-level top-K),
                       pred_titles, hit_rank (SID level, -1 = miss), reasoning
  metrics.json         {"<split>_<mode>_hr@K", "..._ndcg@K", "..._item_hr@K", "..._item_ndcg@K",
                        "..._users", "..._users_per_s", "..._seconds", "wall_seconds"}
  eval.json            what was evaluated (label, modes, splits, decoding, beams, ks, the scoring and
                       rendering options score_suffix / empty_think / think_close, catalogue size)
Modes: "nonthink", "think" for models; "popularity", "random" for baselines.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
import torch

from sidreasoner.config import Config, DataConfig, EvalConfig
from sidreasoner.eval import baselines
from sidreasoner.eval.decoder import SidDecoder
from sidreasoner.eval.metrics import expand_to_items, sid_and_item_metrics, sid_item_map, target_rank
from sidreasoner.io import atomic_dir, write_json
from sidreasoner.model.loading import load_model_and_tokenizer
from sidreasoner.model.prompts import evaluation_prompt, render_prompt

log = logging.getLogger(__name__)


@dataclass
class Catalogue:
    sid_of_item: dict[int, str]
    sid_items: dict[str, list[int]]
    catalogue: list[str]
    titles: dict[int, str]

    @classmethod
    def load(cls, sid_index_dir: Path, dataset_dir: Path) -> Catalogue:
        sids = pd.read_parquet(Path(sid_index_dir) / "sids.parquet", columns=["item_id", "sid"])
        cat_path = Path(sid_index_dir) / "catalogue.json"
        catalogue = json.loads(cat_path.read_text()) if cat_path.exists() else sorted(set(sids["sid"]))
        items = pd.read_parquet(Path(dataset_dir) / "items.parquet", columns=["item_id", "title"])
        return cls(
            sid_of_item={int(i): s for i, s in zip(sids["item_id"], sids["sid"], strict=True)},
            sid_items=sid_item_map(sids["item_id"].tolist(), sids["sid"].tolist()),
            catalogue=sorted(set(catalogue)),
            titles={int(i): str(t) for i, t in zip(items["item_id"], items["title"], strict=True)},
        )

    def history_sids(self, history) -> list[str]:
        return [self.sid_of_item[int(i)] for i in history if int(i) in self.sid_of_item]

    def title(self, item_id: int) -> str:
        return self.titles.get(int(item_id), f"item {item_id}")


def load_split(dataset_dir: Path, split: str, cat: Catalogue, max_users: int = 0) -> pd.DataFrame:
    df = pd.read_parquet(Path(dataset_dir) / f"{split}.parquet")
    df = df[df["item_id"].map(lambda i: int(i) in cat.sid_of_item)].reset_index(drop=True)
    return df.head(max_users) if max_users else df


def _rows(
    df: pd.DataFrame, split: str, mode: str, ranked_sids, scores, reasonings, cat: Catalogue, kmax: int
) -> list[dict]:
    rows = []
    for r, sids, sc, reasoning in zip(df.itertuples(index=False), ranked_sids, scores, reasonings, strict=True):
        target_sid = cat.sid_of_item[int(r.item_id)]
        items = expand_to_items(sids, cat.sid_items, kmax)
        rank = target_rank(sids[:kmax], target_sid)
        rows.append(
            {
                "user_id": r.user_id,
                "split": split,
                "mode": mode,
                "target_item_id": int(r.item_id),
                "target_sid": target_sid,
                "history_item_ids": [int(i) for i in r.history_item_ids],
                "pred_sids": list(sids[:kmax]),
                "pred_scores": [float(s) for s in sc[:kmax]],
                "pred_item_ids": items,
                "pred_titles": [cat.title(i) for i in items],
                "hit_rank": -1 if rank is None else int(rank),
                "reasoning": reasoning or "",
            }
        )
    return rows


def _metrics(prefix: str, rows: list[dict], cat: Catalogue, ks: list[int]) -> dict[str, float]:
    m = sid_and_item_metrics(
        [r["pred_sids"] for r in rows],
        [r["target_sid"] for r in rows],
        [r["target_item_id"] for r in rows],
        cat.sid_items,
        ks,
    )
    return {f"{prefix}_{k}": float(v) for k, v in m.items()}


def _write(out_dir: Path, rows: list[dict], metrics: dict, info: dict) -> None:
    with atomic_dir(out_dir) as tmp:
        pd.DataFrame(
            rows,
            columns=[
                "user_id",
                "split",
                "mode",
                "target_item_id",
                "target_sid",
                "history_item_ids",
                "pred_sids",
                "pred_scores",
                "pred_item_ids",
                "pred_titles",
                "hit_rank",
                "reasoning",
            ],
        ).to_parquet(tmp / "predictions.parquet")
        write_json(tmp / "metrics.json", metrics)
        write_json(tmp / "eval.json", info)


def _device_dtype(ec: EvalConfig) -> tuple[str, torch.dtype]:
    device = ec.device if ec.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if ec.dtype == "bfloat16" or (ec.dtype == "auto" and device == "cuda" and torch.cuda.is_bf16_supported()):
        return device, torch.bfloat16
    return device, torch.float32


def load_decoder(model_dir: Path, catalogue: list[str], ec: EvalConfig) -> SidDecoder:
    device, dtype = _device_dtype(ec)
    model, tokenizer = load_model_and_tokenizer(str(model_dir), dtype=dtype)
    return SidDecoder(model.to(device), tokenizer, catalogue, max_rows=ec.max_rows)


def _prompts(
    decoder: SidDecoder,
    histories: list[list[str]],
    think: bool,
    empty_think: str = "training",
    wording: str = "research",
) -> list[list[int]]:
    texts = [
        render_prompt(decoder.tokenizer, user, thinking=think, empty_think=empty_think, system=system)
        for system, user in (evaluation_prompt(h, think, wording) for h in histories)
    ]
    return decoder.encode(texts)


def decode_users(
    decoder: SidDecoder,
    histories: list[list[str]],
    ec: EvalConfig,
    think: bool,
    seed: int = 0,
    progress: str | None = None,
):
    """Top-K SIDs, scores and reasoning texts for each history (batched)."""
    kmax = max(ec.reported_ks)
    beams = ec.beams
    sids, scores, reasonings = [], [], []
    starts = range(0, len(histories), ec.batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, desc=progress, unit="batch", mininterval=5)
    for start in starts:
        ids = _prompts(decoder, histories[start : start + ec.batch_size], think, ec.empty_think, ec.prompt_wording)
        texts = [""] * len(ids)
        if think:
            ids, texts = decoder.think(
                ids,
                ec.think_max_tokens,
                ec.think_sample,
                ec.temperature,
                ec.top_p,
                seed=seed + start,
                close=ec.think_close,
            )
        for r in decoder.rank(ids, beams, kmax, ec.decoding, ec.score_suffix):
            sids.append(r.sids)
            scores.append(r.scores)
        reasonings.extend(texts)
    return sids, scores, reasonings


def evaluate(cfg: Config, model_dir: Path, dataset_dir: Path, sid_index_dir: Path, out_dir: Path) -> dict[str, float]:
    """Constrained SID decoding of one trained model on the configured splits and modes."""
    start = time.time()
    ec = cfg.eval
    cat = Catalogue.load(sid_index_dir, dataset_dir)
    decoder = load_decoder(model_dir, cat.catalogue, ec)
    ks = ec.reported_ks
    if ks != ec.ks:
        log.warning(
            "eval.ks_above_beams=drop: K %s above num_beams=%d not reported", sorted(set(ec.ks) - set(ks)), ec.num_beams
        )
    kmax = max(ks)
    rows: list[dict] = []
    metrics: dict[str, float] = {}
    for split in ec.splits:
        df = load_split(dataset_dir, split, cat, ec.max_users)
        histories = [cat.history_sids(h) for h in df["history_item_ids"]]
        for mode in ec.modes:
            t0 = time.time()
            sids, scores, reasonings = decode_users(
                decoder, histories, ec, mode == "think", cfg.seed, progress=f"{split}/{mode}"
            )
            secs = time.time() - t0
            part = _rows(df, split, mode, sids, scores, reasonings, cat, kmax)
            rows.extend(part)
            prefix = f"{split}_{mode}"
            metrics.update(_metrics(prefix, part, cat, ks))
            metrics[f"{prefix}_users"] = float(len(part))
            metrics[f"{prefix}_seconds"] = secs
            metrics[f"{prefix}_users_per_s"] = len(part) / secs if secs > 0 else 0.0
            log.info("%s: %s", prefix, {k: round(v, 4) for k, v in metrics.items() if k.startswith(prefix)})
    metrics["wall_seconds"] = time.time() - start
    info = {
        "kind": "model",
        "model_dir": str(model_dir),
        "modes": ec.modes,
        "splits": ec.splits,
        "ks": ks,
        "decoding": ec.decoding,
        "num_beams": ec.beams,
        "score_suffix": ec.score_suffix,
        "empty_think": ec.empty_think,
        "think_close": ec.think_close,
        "catalogue_size": len(cat.catalogue),
        "items": len(cat.sid_of_item),
    }
    rl_record = Path(model_dir) / "training.json"
    if rl_record.is_file():  # a Stage 3 model: the report draws its reward curve from these steps
        info["rl_per_step"] = json.loads(rl_record.read_text()).get("per_step", [])
    _write(Path(out_dir), rows, metrics, info)
    return metrics


def evaluate_baselines(cfg: Config, dataset_dir: Path, sid_index_dir: Path, out_dir: Path) -> dict[str, float]:
    """Popularity (train-split target counts) and random (seeded) rankings, same metrics and layout."""
    start = time.time()
    ec = cfg.eval
    cat = Catalogue.load(sid_index_dir, dataset_dir)
    ks = ec.reported_ks
    kmax = max(ks)
    train = pd.read_parquet(Path(dataset_dir) / "train.parquet", columns=["item_id"])
    pop_sids, pop_scores = baselines.popularity_ranking(train["item_id"].tolist(), cat.sid_of_item, cat.catalogue, kmax)
    rows: list[dict] = []
    metrics: dict[str, float] = {}
    for split in ec.splits:
        df = load_split(dataset_dir, split, cat, ec.max_users)
        n = len(df)
        rand = baselines.random_rankings(cat.catalogue, n, kmax, cfg.seed)
        for mode, sids, scores in (
            ("popularity", [pop_sids] * n, [pop_scores] * n),
            ("random", rand, [[0.0] * kmax] * n),
        ):
            part = _rows(df, split, mode, sids, scores, [""] * n, cat, kmax)
            rows.extend(part)
            metrics.update(_metrics(f"{split}_{mode}", part, cat, ks))
            metrics[f"{split}_{mode}_users"] = float(n)
    metrics["wall_seconds"] = time.time() - start
    info = {
        "kind": "baselines",
        "modes": ["popularity", "random"],
        "splits": ec.splits,
        "ks": ks,
        "catalogue_size": len(cat.catalogue),
        "items": len(cat.sid_of_item),
    }
    _write(Path(out_dir), rows, metrics, info)
    return metrics


def _named(ids: list[int], most: int = 20) -> str:
    shown = ", ".join(str(i) for i in ids[:most])
    return shown + (f", … ({len(ids)} in all)" if len(ids) > most else "")


@dataclass
class Recommendation:
    """What `recommend` found and what it used: `items` ([{rank, sid, score, item_ids, titles}]), the
    reasoning ('' without thinking), the item ids the prompt holds (oldest first), the given ids that are
    not in the SID index, and how many older known ids were left out to keep `max_history` (the history
    length the training data was cut to, read from `max_history_source`). Unpacks as (items, reasoning)."""

    items: list[dict]
    reasoning: str
    history_used: list[int]
    unknown_ids: list[int] = field(default_factory=list)
    older_dropped: int = 0
    max_history: int = 0
    max_history_source: str = ""

    def __iter__(self):
        return iter((self.items, self.reasoning))

    def notes(self) -> list[str]:
        """One line per thing left out of the history."""
        out = []
        if self.unknown_ids:
            one = len(self.unknown_ids) == 1
            out.append(
                f"item id{'' if one else 's'} {_named(self.unknown_ids)} {'is' if one else 'are'} not in the "
                "SID index: left out of the history"
            )
        if self.older_dropped:
            known = len(self.history_used) + self.older_dropped
            out.append(
                f"the history has {known} known items; the model was trained on at most {self.max_history} "
                f"({self.max_history_source}): the {self.max_history} most recent are used"
            )
        return out


def trained_max_history(dataset_dir: Path, cfg: Config | None) -> tuple[int, str]:
    """The history length the dataset's samples were cut to (preprocess records data.max_history in its
    stats.json), else the config's data.max_history; and where it was read."""
    stats = Path(dataset_dir) / "stats.json"
    if stats.is_file():
        try:
            value = json.loads(stats.read_text()).get("data_config", {}).get("max_history")
        except (ValueError, AttributeError) as err:
            raise ValueError(f"{stats}: not a preprocess stats record ({err})") from None
        if isinstance(value, int) and value > 0:
            return value, f"data.max_history in {stats}"
    return (cfg.data if cfg else DataConfig()).max_history, "data.max_history of the config"


def recommend(
    model_dir,
    sid_index_dir,
    dataset_dir,
    history_item_ids: list[int],
    k: int = 10,
    think: bool = False,
    cfg: Config | None = None,
) -> Recommendation:
    """Top-k recommendations for one history. Item ids not in the SID index are left out, and of the
    rest only the most recent `trained_max_history` are used, as training saw them; the result says which."""
    ec = (cfg.eval if cfg else EvalConfig()).model_copy(update={"batch_size": 1})
    ec = ec.model_copy(update={"ks": [k], "num_beams": max(ec.num_beams, k)})
    cat = Catalogue.load(Path(sid_index_dir), Path(dataset_dir))
    known = [int(i) for i in history_item_ids if int(i) in cat.sid_of_item]
    unknown = [int(i) for i in history_item_ids if int(i) not in cat.sid_of_item]
    if not known:
        raise ValueError(f"none of the history item ids ({_named(unknown)}) is in the SID index")
    max_history, source = trained_max_history(Path(dataset_dir), cfg)
    used = known[-max_history:]
    decoder = load_decoder(Path(model_dir), cat.catalogue, ec)
    sids, scores, reasonings = decode_users(decoder, [cat.history_sids(used)], ec, think, cfg.seed if cfg else 0)
    recs = []
    for rank, (sid, score) in enumerate(zip(sids[0][:k], scores[0][:k], strict=True), start=1):
        items = cat.sid_items.get(sid, [])
        recs.append(
            {"rank": rank, "sid": sid, "score": score, "item_ids": items, "titles": [cat.title(i) for i in items]}
        )
    return Recommendation(recs, reasonings[0], used, unknown, len(known) - len(used), max_history, source)
