"""How the evaluate and evaluate-baselines steps wire their inputs together, on a hand-made dataset whose
splits differ: the prompts hold exactly each row's history, the rows evaluated are the asked split's,
popularity is counted on the train split, and exact decoding is the brute-force top K."""

import json
import re

import numpy as np
import pandas as pd
import pytest
import torch

from sidreasoner import config
from sidreasoner.eval.baselines import evaluate_baselines
from sidreasoner.eval.decoder import SidDecoder
from sidreasoner.eval.evaluate import evaluate
from sidreasoner.model.loading import load_model_and_tokenizer

CODES = [[0, 1, 2], [0, 1, 3], [0, 2, 0], [1, 0, 1], [1, 0, 2], [1, 3, 3]]
SID = [f"<a_{a}><b_{b}><c_{c}>" for a, b, c in CODES]
# (user, history, target). Train targets: item 4 three times, item 1 twice, item 0 once; the test split's
# targets (2, 5, 1) would rank items 1, 2, 5 first.
SPLITS = {
    "train": [(0, [0], 1), (0, [0, 1], 4), (1, [3], 4), (1, [3, 4], 4), (2, [5], 1), (2, [5, 1], 0)],
    "valid": [(5, [1, 2], 3), (6, [4], 0)],
    "test": [(7, [0, 1], 2), (8, [3, 4], 5), (9, [0], 1)],
}


@pytest.fixture(scope="module")
def folders(tmp_path_factory, tiny_sid_model, write_sid_index):
    root = tmp_path_factory.mktemp("wiring_eval")
    write_sid_index(root / "sid_index", np.arange(6), np.array(CODES))
    data = root / "dataset"
    data.mkdir()
    pd.DataFrame({"item_id": range(6), "title": [f"item {i}" for i in range(6)]}).to_parquet(data / "items.parquet")
    for split, rows in SPLITS.items():
        pd.DataFrame(
            [
                {"user_id": u, "history_item_ids": h, "item_id": t, "timestamp": 100 + i}
                for i, (u, h, t) in enumerate(rows)
            ]
        ).to_parquet(data / f"{split}.parquet")
    return {"root": root, "dataset": data, "sid_index": root / "sid_index", "model": tiny_sid_model["dir"]}


def _cfg(**over):
    return config.load("demo", [f"eval.{k}={json.dumps(v)}" for k, v in over.items()])


def _preds(out):
    return pd.read_parquet(out / "predictions.parquet")


def _rows(p):
    return list(zip(p["user_id"], p["history_item_ids"].map(list), p["target_item_id"], strict=True))


def test_prompts_hold_each_rows_history_and_the_asked_split_is_evaluated(folders, monkeypatch):
    prompts = []
    rank = SidDecoder.rank

    def recording_rank(self, prompt_ids, *a, **k):
        prompts.extend(self.tokenizer.decode(p) for p in prompt_ids)
        return rank(self, prompt_ids, *a, **k)

    monkeypatch.setattr(SidDecoder, "rank", recording_rank)
    out = folders["root"] / "model_eval"
    m = evaluate(
        _cfg(modes=["nonthink"], splits=["test"], ks=[1, 3], batch_size=2),
        folders["model"],
        folders["dataset"],
        folders["sid_index"],
        out,
    )
    p = _preds(out)
    assert _rows(p) == SPLITS["test"] and set(p["split"]) == {"test"} and m["test_nonthink_users"] == 3
    assert list(p["target_sid"]) == [SID[2], SID[5], SID[1]]
    assert [re.findall(r"<a_\d+>\s*<b_\d+>\s*<c_\d+>", t) for t in prompts] == [
        [SID[0], SID[1]],
        [SID[3], SID[4]],
        [SID[0]],
    ]

    valid = evaluate(
        _cfg(modes=["nonthink"], splits=["valid"], ks=[1]),
        folders["model"],
        folders["dataset"],
        folders["sid_index"],
        folders["root"] / "model_eval_valid",
    )
    assert _rows(_preds(folders["root"] / "model_eval_valid")) == SPLITS["valid"] and valid["valid_nonthink_users"] == 2


def test_popularity_is_counted_on_the_train_split(folders):
    out = folders["root"] / "baselines"
    m = evaluate_baselines(_cfg(splits=["test"], ks=[1, 3]), folders["dataset"], folders["sid_index"], out)
    p = _preds(out)
    pop = p[p["mode"] == "popularity"]
    assert _rows(pop) == SPLITS["test"]
    assert all(list(s) == [SID[4], SID[1], SID[0]] for s in pop["pred_sids"])
    assert all(list(s) == [3.0, 2.0, 1.0] for s in pop["pred_scores"])
    assert list(pop["hit_rank"]) == [-1, -1, 1]
    assert m["test_popularity_hr@1"] == 0.0 and m["test_popularity_hr@3"] == pytest.approx(1 / 3)
    assert m["test_popularity_ndcg@3"] == pytest.approx(1 / np.log2(3) / 3)
    assert _rows(p[p["mode"] == "random"]) == SPLITS["test"]


def _brute_force_top(model, tok, prompt_ids, k):
    """Every catalogue SID's log-probability after the prompt, one full forward each; the best k."""
    scored = []
    for sid in SID:
        sid_ids = tok(sid, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([list(prompt_ids) + sid_ids])
        with torch.no_grad():
            logp = torch.log_softmax(model(input_ids=ids).logits[0].float(), -1)
        n = len(prompt_ids)
        scored.append((sum(float(logp[n - 1 + j, t]) for j, t in enumerate(sid_ids)), sid))
    return sorted(scored, reverse=True)[:k]


def test_exact_decoding_returns_the_brute_force_best_k(folders, monkeypatch):
    prompts = []
    rank = SidDecoder.rank

    def recording_rank(self, prompt_ids, *a, **k):
        prompts.extend(list(p) for p in prompt_ids)
        return rank(self, prompt_ids, *a, **k)

    monkeypatch.setattr(SidDecoder, "rank", recording_rank)
    out = folders["root"] / "exact"
    evaluate(
        _cfg(modes=["nonthink"], splits=["test"], ks=[1, 3], decoding="exact", num_beams=3, dtype="float32"),
        folders["model"],
        folders["dataset"],
        folders["sid_index"],
        out,
    )
    model, tok = load_model_and_tokenizer(str(folders["model"]), dtype=torch.float32)
    model.eval()
    p = _preds(out)
    assert len(prompts) == len(p) == 3
    for ids, sids, scores in zip(prompts, p["pred_sids"], p["pred_scores"], strict=True):
        best = _brute_force_top(model, tok, ids, 3)
        assert list(sids) == [s for _, s in best]
        assert list(scores) == pytest.approx([s for s, _ in best], abs=1e-4)
