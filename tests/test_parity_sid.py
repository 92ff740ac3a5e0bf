"""SID construction as the research code does it (MiniOneRec's rq/: text2emb, rqvae.py, generate_indices.py),
selected by settings, and the paper presets' values."""

import itertools
import json

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from sidreasoner import config
from sidreasoner.config import ConfigError, RQVAEConfig
from sidreasoner.sid.codes import collision_stats
from sidreasoner.sid.collisions import (
    PrefixGroupTooLarge,
    research_sinkhorn_assign,
    research_sinkhorn_rounds,
    resolve_collisions,
    sinkhorn_rounds,
)
from sidreasoner.sid.embed import (
    _model_path,
    embed_items,
    research_field_text,
    research_item_text,
)
from sidreasoner.sid.quantize import load_embeddings, quantize_sids
from sidreasoner.sid.rqvae import (
    RQVAE,
    constant_after_warmup,
    duplicate_rate,
    train_rqvae,
)

PAPER_PRESETS = ["office", "industrial", "games"]

# ---------------------------------------------------------------- collision handling (generate_indices.py)

# Last level of 4 codes. Items 0 and 1 are duplicates (identical distances); items 2 and 3 collide on (1, 0);
# item 4 holds (1, 2); item 5 is alone in prefix 2.
CODES = np.array([[0, 1], [0, 1], [1, 0], [1, 0], [1, 2], [2, 3]])
DISTS = np.array(
    [
        [0.2, 0.0, 0.5, 0.9],
        [0.2, 0.0, 0.5, 0.9],
        [0.0, 0.3, 0.2, 0.8],
        [0.0, 0.9, 0.1, 0.7],
        [0.5, 0.5, 0.0, 0.5],
        [0.5, 0.5, 0.5, 0.0],
    ],
    dtype=np.float32,
)


def test_research_sinkhorn_assign_exact():
    # the plan's columns all get mass 1/K: the duplicates leave their nearest code together, and of
    # items 2 and 3 (both nearest to code 0) one takes code 1 and the other code 2
    assert research_sinkhorn_assign(DISTS[[0, 1]], 0.003, 50).tolist() == [0, 0]
    assert research_sinkhorn_assign(DISTS[[2, 3]], 0.003, 50).tolist() == [1, 2]


def test_research_sinkhorn_rounds_stop_after_their_rounds_and_leave_collisions():
    # Over every code of the level: item 3 takes code 2, which item 4 holds, so the collision moves on
    # each round instead of ending; the duplicates never part.
    last = {r: research_sinkhorn_rounds(CODES, DISTS, r, 0.003, 50) for r in range(5)}
    assert {r: (c[:, 1].tolist(), run) for r, (c, run) in last.items()} == {
        0: ([1, 1, 0, 0, 2, 3], 0),
        1: ([0, 0, 1, 2, 2, 3], 1),
        2: ([0, 0, 1, 0, 1, 3], 2),
        3: ([0, 0, 0, 0, 2, 3], 3),
        4: ([0, 0, 1, 2, 2, 3], 4),
    }
    for codes, _ in last.values():
        np.testing.assert_array_equal(codes[:, 0], CODES[:, 0])  # only the last level moves


def test_research_sinkhorn_rounds_end_when_nothing_collides():
    codes, run = research_sinkhorn_rounds(CODES[[2, 3, 5]], DISTS[[2, 3, 5]], 20, 0.003, 50)
    assert codes.tolist() == [[1, 1], [1, 2], [2, 3]] and run == 1
    assert research_sinkhorn_rounds(CODES[[0, 2, 5]], DISTS[[0, 2, 5]], 20, 0.003, 50)[1] == 0


def test_resolve_collisions_research_keeps_leftovers():
    codes, m = resolve_collisions(
        CODES, DISTS, rounds=3, epsilon=0.003, iters=50, method="research_sinkhorn", leftover="keep"
    )
    assert codes[:, 1].tolist() == [0, 0, 0, 0, 2, 3]
    assert m == {
        "collision_rate_before": 4 / 6,
        "duplicate_rate_before": pytest.approx(2 / 6),
        "collision_rate_after_sinkhorn": 4 / 6,
        "collision_rate_after": 4 / 6,
        "duplicate_rate_after": pytest.approx(2 / 6),
        "sinkhorn_rounds_run": 3.0,
        "items_reassigned": 2.0,
    }
    # the project's handling on the same input: Sinkhorn over free codes only (the duplicates stay together),
    # then the exact assignment parts them
    assert sinkhorn_rounds(CODES, DISTS, 10, 0.02)[0][:, 1].tolist() == [1, 1, 1, 0, 2, 3]
    exact, m2 = resolve_collisions(CODES, DISTS)
    assert exact[:, 1].tolist() == [1, 0, 1, 0, 2, 3] and m2["collision_rate_after"] == 0.0


def test_leftover_keep_needs_no_room_in_the_prefix():
    codes = np.array([[0, 0]] * 5)  # 5 items in one prefix, 4 codes: only another level could separate them
    dists = np.tile(np.array([0.0, 0.1, 0.2, 0.3], np.float32), (5, 1))
    with pytest.raises(PrefixGroupTooLarge):
        resolve_collisions(codes, dists, method="research_sinkhorn", leftover="resolve")
    kept, m = resolve_collisions(codes, dists, rounds=2, epsilon=0.003, method="research_sinkhorn", leftover="keep")
    assert collision_stats(kept)["n_colliding_items"] == 5 and m["sinkhorn_rounds_run"] == 2


# ---------------------------------------------------------------- RQ-VAE (rqvae.py, models/, trainer.py)


def _linear_shapes(seq: nn.Sequential) -> list[tuple[int, int]]:
    return [tuple(m.weight.shape) for m in seq if isinstance(m, nn.Linear)]


def test_research_rqvae_builds_the_paper_encoder():
    rq = config.load("office").sid.rqvae
    model = RQVAE(
        2560, rq.hidden_dims, rq.latent_dim, 3, 256, rq.beta, rq.quant_loss, rq.deep_commitment, rq.weight_init
    )
    widths = [2560, 2048, 1024, 512, 256, 128, 64, 32]
    assert _linear_shapes(model.encoder) == [(b, a) for a, b in itertools.pairwise(widths)]
    back = widths[::-1]
    assert _linear_shapes(model.decoder) == [(b, a) for a, b in itertools.pairwise(back)]
    assert [type(m).__name__ for m in model.encoder][-2:] == ["ReLU", "Linear"]  # no activation on the latent
    assert sum(isinstance(m, nn.ReLU) for m in model.encoder) == 6
    assert tuple(model.codebooks.shape) == (3, 256, 32)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert all(float(m.bias.detach().abs().max()) == 0.0 for m in linears)
    first = model.encoder[0].weight  # Xavier-normal: std sqrt(2 / (fan_in + fan_out))
    assert float(first.detach().std()) == pytest.approx((2 / (2560 + 2048)) ** 0.5, rel=0.01)


def _two_level_model(**kw) -> RQVAE:
    model = RQVAE(2, [], 2, levels=2, k=2, beta=0.25, **kw)
    with torch.no_grad():
        model.codebooks.copy_(torch.tensor([[[1.0, 0.0], [0.0, 1.0]], [[0.0, 0.5], [0.5, 0.0]]]))
    return model


@pytest.mark.parametrize(
    "quant_loss,deep,loss,grad",
    [
        # levels: 0.25 (1 + beta) and 0.125 (1 + beta); only the first level's commitment reaches z unless deep
        ("mean", False, 0.234375, [[0.0, 0.0], [0.0, 0.0625]]),
        ("sum", True, 0.46875, [[0.0, -0.0625], [0.0, 0.1875]]),
    ],
)
def test_vq_loss_reduction_and_residual_gradient(quant_loss, deep, loss, grad):
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    _, codes, vq_loss, _ = _two_level_model(quant_loss=quant_loss, deep_commitment=deep).quantize(z)
    assert codes.tolist() == [[0, 0], [1, 0]]
    assert float(vq_loss.detach()) == loss
    vq_loss.backward()
    assert z.grad.tolist() == grad


def test_constant_after_warmup_starts_at_zero():
    f = constant_after_warmup(4)
    assert [f(s) for s in range(6)] == [0.0, 0.25, 0.5, 0.75, 1.0, 1.0]
    assert constant_after_warmup(0)(0) == 1.0


def _research_rq(**kw) -> RQVAEConfig:
    rq = config.load("office").sid.rqvae.model_dump()
    rq.update({"hidden_dims": [8], "latent_dim": 2, "device": "cpu"}, **kw)
    return RQVAEConfig(**rq)


def _tiny_x() -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy((np.repeat(np.eye(4) * 3, 10, axis=0) + rng.normal(size=(40, 4))).astype(np.float32))


def test_first_step_of_the_warmup_does_not_move_the_parameters():
    x, rq = _tiny_x(), _research_rq(epochs=1, select_every=0)
    torch.manual_seed(5)
    model, _ = train_rqvae(x, rq, 2, 4, torch.Generator().manual_seed(0))
    torch.manual_seed(5)
    fresh = RQVAE(4, [8], 2, 2, 4, 0.25, weight_init="xavier_normal")
    for a, b in zip(model.encoder.parameters(), fresh.encoder.parameters(), strict=True):
        assert torch.equal(a, b)


def test_select_every_keeps_the_earliest_fewest_duplicates():
    x = _tiny_x()

    def train(epochs: int, select_every: int):
        torch.manual_seed(3)
        rq = _research_rq(epochs=epochs, select_every=select_every, lr=0.05, lr_warmup_epochs=1)
        return train_rqvae(x, rq, 2, 4, torch.Generator().manual_seed(0))

    def rate(model) -> float:
        with torch.no_grad():
            return duplicate_rate(model.quantize(model.encoder(x))[1])

    # without reseeding, a shorter run is the start of a longer one: the rates at epochs 2, 4, 6, 8
    evaluated = {e: rate(train(e, 0)[0]) for e in (2, 4, 6, 8)}
    assert evaluated == {2: 0.75, 4: 0.775, 6: 0.675, 8: 0.675}
    model, m = train(8, 2)
    assert m["selected_epoch"] == 6.0 and m["selected_duplicate_rate"] == 0.675  # the earlier of the tied best
    assert rate(model) == 0.675
    assert "selected_epoch" not in train(8, 0)[1]


@pytest.mark.parametrize("recipe", ["research", "project"])
def test_full_batch_trains_as_the_per_step_indexing_does(recipe):
    # one batch holds all 40 items: the full-batch path uses x as it is, the other indexes x[arange(40)] every
    # step; the same rows in the same order, so on the CPU every parameter, code and loss is bit-identical
    x = _tiny_x()
    rq = (
        _research_rq(epochs=8, select_every=2, lr=0.05, lr_warmup_epochs=1)
        if recipe == "research"
        else RQVAEConfig(hidden_dims=[8], latent_dim=2, epochs=8, warmup_epochs=2, reseed_every=3, select_every=2)
    )

    def train(gather: bool):
        torch.manual_seed(3)
        return train_rqvae(x, rq, 2, 4, torch.Generator().manual_seed(0), gather_batches=gather)

    (full, full_metrics), (gathered, gathered_metrics) = train(False), train(True)
    assert full_metrics == gathered_metrics
    assert full_metrics.keys() >= {"train_loss", "selected_epoch", "selected_duplicate_rate"}
    for (name, a), b in zip(full.state_dict().items(), gathered.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
    with torch.no_grad():
        assert torch.equal(full.quantize(full.encoder(x))[1], gathered.quantize(gathered.encoder(x))[1])


def test_train_loss_is_the_loss_of_the_kept_epoch():
    # the first step of the learning-rate warm-up does not move the parameters: the one epoch's loss is
    # the returned model's reconstruction + VQ loss on the catalogue
    x, rq = _tiny_x(), _research_rq(epochs=1, select_every=0)
    model, metrics = train_rqvae(x, rq, 2, 4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        x_hat, _, vq_loss, _ = model(x)
        assert metrics["train_loss"] == float(nn.functional.mse_loss(x_hat, x) + vq_loss)


def _write_inputs(tmp_path, emb):
    data, emb_dir = tmp_path / "data", tmp_path / "emb"
    data.mkdir()
    emb_dir.mkdir()
    pd.DataFrame({"item_id": np.arange(len(emb))}).to_parquet(data / "items.parquet")
    (data / "stats.json").write_text(json.dumps({"category": "Office_Products"}))
    np.save(emb_dir / "embeddings.npy", emb)
    return data, emb_dir


def test_quantize_sids_with_the_research_recipe(tmp_path):
    emb = np.repeat(np.eye(6, dtype=np.float32) * 3, 8, axis=0)  # 6 groups of 8 identical items: collisions stay
    emb[::8] += 0.5
    data, emb_dir = _write_inputs(tmp_path, emb)
    cfg = config.load(
        "office",
        [
            "sid.codebook_size=8",
            "sid.rqvae.hidden_dims=[16]",
            "sid.rqvae.latent_dim=4",
            "sid.rqvae.epochs=20",
            "sid.rqvae.select_every=5",
            "sid.rqvae.device=cpu",
            "sid.rqvae.lr_warmup_epochs=2",
        ],
    )
    m = quantize_sids(cfg, data, emb_dir, tmp_path / "out")
    assert m["selected_epoch"] in (5.0, 10.0, 15.0, 20.0)
    assert m["sinkhorn_rounds_run"] == 20.0  # identical items never part: every round runs
    assert m["collision_rate_after"] > 0 and m["duplicate_rate_after"] > 0  # and their collisions are kept
    index = json.loads((tmp_path / "out" / "index.json").read_text())
    assert len(index) == 48 and len({"".join(v) for v in index.values()}) < 48


def test_nonfinite_embeddings_zeroed_or_refused(tmp_path):
    emb = np.arange(24, dtype=np.float32).reshape(8, 3)
    emb[1, 2], emb[5, 0] = np.nan, np.inf
    data, emb_dir = _write_inputs(tmp_path, emb)
    assert load_embeddings(emb_dir, "zero")[1] == 2
    np.testing.assert_array_equal(load_embeddings(emb_dir, "zero")[0][[1, 5]], [[3, 4, 0], [0, 16, 17]])
    with pytest.raises(ValueError, match=r"2 NaN or infinite values \(sid\.nonfinite_embeddings=zero"):
        load_embeddings(emb_dir)
    cfg = config.load("demo", ["sid.codebook_size=4", "sid.levels=2", "sid.nonfinite_embeddings=zero"])
    assert quantize_sids(cfg, data, emb_dir, tmp_path / "out")["nonfinite_values_zeroed"] == 2.0


# ---------------------------------------------------------------- item text and embeddings (text2emb)


def test_research_item_text_exact():
    item = {
        "title": 'Pilot G2 &amp; "Gel" Pens',
        "description": "['Smooth <b>writing</b>.', 'Pack of 12...']",
        "brand": "Pilot",
    }
    assert research_item_text(item, ["title", "description"]) == (
        "Pilot G2 & Gel Pens. ['Smooth writing.', 'Pack of 12...']."
    )
    # an empty description still gives its '.'; text with line breaks loses them
    assert research_item_text({"title": "Stapler\n", "description": ""}, ["title", "description"]) == "Stapler. ."
    assert research_item_text({"title": "x" * 1999, "description": "y" * 5}, ["title", "description"]) == "yyyyy."
    assert research_item_text({"title": "x" * 1998}, ["title"]) == "x" * 1998 + "."
    assert research_field_text(["<i>A</i> &quot;x&quot;", " B. "]) == "A x B."
    assert [research_field_text(t) for t in (".", "...", "a..", None)] == ["..", "..", "a.", "."]


def test_embed_research_text_mean_pooled_not_normalised(tmp_path):
    from transformers import AutoModel, AutoTokenizer

    data = tmp_path / "data"
    data.mkdir()
    items = pd.DataFrame(
        {
            "item_id": [0, 1],
            "title": ["Red stapler", "Gel pens &amp; refills"],
            "description": ["Heavy-duty, for 40 sheets...", ""],
        }
    )
    items.to_parquet(data / "items.parquet")
    cfg = config.load(
        "demo",
        [
            "embed.device=cpu",
            "embed.text_template=research",
            "embed.normalize=false",
            'embed.fields=["title", "description"]',
        ],
    )
    embed_items(cfg, data, tmp_path / "emb")
    emb = np.load(tmp_path / "emb" / "embeddings.npy")
    meta = json.loads((tmp_path / "emb" / "meta.json").read_text())
    assert meta["example_text"] == "Red stapler. Heavy-duty, for 40 sheets."
    texts = ["Red stapler. Heavy-duty, for 40 sheets.", "Gel pens & refills. ."]
    path = _model_path(cfg.embed.model)
    tok, model = AutoTokenizer.from_pretrained(path), AutoModel.from_pretrained(path)
    enc = tok(texts, padding=True, truncation=True, max_length=cfg.embed.max_length, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**enc).last_hidden_state
    mask = enc["attention_mask"].unsqueeze(-1).float()
    expected = ((hidden * mask).sum(1) / mask.sum(1)).numpy()
    np.testing.assert_allclose(emb, expected, atol=1e-5)
    assert abs(float(np.linalg.norm(emb[0])) - 1.0) > 0.1  # not normalised


def test_embed_float16_pools_in_float32(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    pd.DataFrame({"item_id": [0, 1], "title": ["Red stapler", "Gel pens"], "description": ["", "Blue"]}).to_parquet(
        data / "items.parquet"
    )
    base = [
        "embed.device=cpu",
        "embed.text_template=research",
        "embed.normalize=false",
        'embed.fields=["title", "description"]',
    ]
    embed_items(config.load("demo", base), data, tmp_path / "e32")
    embed_items(config.load("demo", [*base, "embed.dtype=float16"]), data, tmp_path / "e16")
    e32, e16 = np.load(tmp_path / "e32" / "embeddings.npy"), np.load(tmp_path / "e16" / "embeddings.npy")
    assert e16.dtype == np.float32
    np.testing.assert_allclose(e16, e32, atol=2e-2)
    # not rounded to float16 at the end: some values are not representable in float16
    assert not np.array_equal(e16, e16.astype(np.float16).astype(np.float32))


# ---------------------------------------------------------------- presets and validation


@pytest.mark.parametrize("preset", PAPER_PRESETS)
def test_paper_presets_use_the_research_recipe(preset):
    cfg = config.load(preset)
    assert cfg.embed.model_dump() == {
        "model": "Qwen/Qwen3-Embedding-4B",
        "pooling": "mean",
        "fields": ["title", "description"],
        "text_template": "research",
        "max_length": 2048,
        "batch_size": 32,
        "device": "auto",
        "dtype": "float16",
        "normalize": False,
    }
    sid = cfg.sid.model_dump()
    rq = sid.pop("rqvae")
    assert {
        k: sid[k]
        for k in (
            "method",
            "levels",
            "codebook_size",
            "collision",
            "sinkhorn_epsilon",
            "sinkhorn_iters",
            "sinkhorn_rounds",
            "collision_leftover",
            "nonfinite_embeddings",
        )
    } == {
        "method": "rqvae",
        "levels": 3,
        "codebook_size": 256,
        "collision": "research_sinkhorn",
        "sinkhorn_epsilon": 0.003,
        "sinkhorn_iters": 50,
        "sinkhorn_rounds": 20,
        "collision_leftover": "keep",
        "nonfinite_embeddings": "zero",
    }
    assert rq == {
        "hidden_dims": [2048, 1024, 512, 256, 128, 64],
        "latent_dim": 32,
        "epochs": 10000,
        "lr": 1e-3,
        "lr_warmup_epochs": 50,
        "grad_clip": 1.0,
        "batch_size": 20480,
        "beta": 0.25,
        "quant_loss": "mean",
        "deep_commitment": False,
        "weight_init": "xavier_normal",
        "standardize": False,
        "kmeans_init": True,
        "kmeans_iters": 100,
        "warmup_epochs": 0,
        "reseed_every": 0,
        "balance": 0.0,
        "select_every": 50,
        "device": "auto",
    }


def test_demo_keeps_residual_kmeans_and_exact_collision_handling():
    cfg = config.load("demo")
    assert (cfg.sid.method, cfg.sid.collision, cfg.sid.collision_leftover) == ("rkmeans", "sinkhorn", "resolve")
    assert (cfg.sid.sinkhorn_epsilon, cfg.sid.sinkhorn_rounds) == (0.02, 10)
    assert (cfg.embed.text_template, cfg.embed.normalize, cfg.embed.dtype) == ("labelled", True, "float32")


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"sid\.collision_leftover"):
        config.load("demo", ["sid.collision_leftover=drop"])
    with pytest.raises(ConfigError, match=r"sid\.rqvae\.quant_loss"):
        config.load("demo", ["sid.rqvae.quant_loss=max"])
    with pytest.raises(ConfigError, match=r"embed\.text_template"):
        config.load("demo", ["embed.text_template=plain"])
