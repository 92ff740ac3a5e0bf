"""The `evaluate` step: constrained SID decoding of one trained model on the configured splits, with and
without thinking (eval.modes "nonthink", "think"), written as an Evaluation (ranked predictions, HR/NDCG@K,
the record of what was evaluated)."""

from __future__ import annotations

import logging
import os
import time

import torch

from sidreasoner.artifacts import Dataset, Evaluation, ModelFolder, SidIndex
from sidreasoner.config import Config, EvalConfig
from sidreasoner.eval.catalogue import Catalogue
from sidreasoner.eval.decoder import SidDecoder
from sidreasoner.eval.predictions import load_split, prediction_rows, rows_metrics, write_evaluation
from sidreasoner.model.loading import load_model_and_tokenizer
from sidreasoner.model.prompts import evaluation_prompt, render_prompt

log = logging.getLogger(__name__)


def _device_dtype(ec: EvalConfig) -> tuple[str, torch.dtype]:
    device = ec.device if ec.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu")
    if ec.dtype == "bfloat16" or (ec.dtype == "auto" and device == "cuda" and torch.cuda.is_bf16_supported()):
        return device, torch.bfloat16
    return device, torch.float32


def load_decoder(model_dir: ModelFolder | os.PathLike, catalogue: list[str], ec: EvalConfig) -> SidDecoder:
    device, dtype = _device_dtype(ec)
    model, tokenizer = load_model_and_tokenizer(os.fspath(model_dir), dtype=dtype)
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


def evaluate(
    cfg: Config,
    model_dir: ModelFolder | os.PathLike,
    dataset_dir: Dataset | os.PathLike,
    sid_index_dir: SidIndex | os.PathLike,
    out_dir: Evaluation | os.PathLike,
) -> dict[str, float]:
    """Constrained SID decoding of one trained model on the configured splits and modes."""
    start = time.time()
    model, dataset = ModelFolder.at(model_dir), Dataset.at(dataset_dir)
    ec = cfg.eval
    cat = Catalogue.load(sid_index_dir, dataset)
    decoder = load_decoder(model, cat.catalogue, ec)
    ks = ec.reported_ks
    if ks != ec.ks:
        log.warning(
            "eval.ks_above_beams=drop: K %s above num_beams=%d not reported", sorted(set(ec.ks) - set(ks)), ec.num_beams
        )
    kmax = max(ks)
    rows: list[dict] = []
    metrics: dict[str, float] = {}
    for split in ec.splits:
        df = load_split(dataset, split, cat, ec.max_users)
        histories = [cat.history_sids(h) for h in df["history_item_ids"]]
        for mode in ec.modes:
            t0 = time.time()
            sids, scores, reasonings = decode_users(
                decoder, histories, ec, mode == "think", cfg.seed, progress=f"{split}/{mode}"
            )
            secs = time.time() - t0
            part = prediction_rows(df, split, mode, sids, scores, reasonings, cat, kmax)
            rows.extend(part)
            prefix = f"{split}_{mode}"
            metrics.update(rows_metrics(prefix, part, cat, ks))
            metrics[f"{prefix}_users"] = float(len(part))
            metrics[f"{prefix}_seconds"] = secs
            metrics[f"{prefix}_users_per_s"] = len(part) / secs if secs > 0 else 0.0
            log.info("%s: %s", prefix, {k: round(v, 4) for k, v in metrics.items() if k.startswith(prefix)})
    metrics["wall_seconds"] = time.time() - start
    record = {
        "kind": "model",
        "model_dir": os.fspath(model),
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
    if model.has_training():  # a Stage 3 model: the report draws its reward curve from these steps
        record["rl_per_step"] = model.training().get("per_step", [])
    write_evaluation(out_dir, rows, metrics, record)
    return metrics
