import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
import torch

from sidreasoner import config
from sidreasoner.config import RQVAEConfig
from sidreasoner.sid.codes import collision_stats, parse_sid
from sidreasoner.sid.kmeans import balanced_assign, kmeans, kmeans_pp_init
from sidreasoner.sid.quantize import quantize_sids
from sidreasoner.sid.rkmeans import fit_residual_kmeans, restart_seeds, rkmeans_quantize
from sidreasoner.sid.rqvae import rqvae_quantize


def _clusters(n_per: int, centers: np.ndarray, scale: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.concatenate([c + scale * rng.normal(size=(n_per, centers.shape[1])) for c in centers]).astype(np.float32)


def test_balanced_assign_exact():
    dist = torch.tensor([[0.0, 1.0], [0.1, 1.0], [0.2, 0.3], [0.3, 0.1]])
    assert balanced_assign(dist, None).tolist() == [0, 0, 0, 1]
    # capacity 2: item 2 is the farthest of the three proposing to cluster 0 and moves to cluster 1
    assert balanced_assign(dist, 2).tolist() == [0, 0, 1, 1]
    with pytest.raises(ValueError, match="cannot hold"):
        balanced_assign(dist, 1)


def test_kmeans_separates_tiny_clusters():
    x = torch.tensor([[0.0, 0.0], [0.1, 0.0], [10.0, 10.0], [10.1, 10.0], [-10.0, 10.0], [-10.0, 10.1]])
    _, assign = kmeans(x, 3, torch.Generator().manual_seed(0))
    a = assign.tolist()
    assert a[0] == a[1] and a[2] == a[3] and a[4] == a[5] and len({a[0], a[2], a[4]}) == 3


def _seeded_cluster_hits(x: torch.Tensor, label: np.ndarray, trials: int | None) -> list[int]:
    """For seeds 0..19: how many of the true clusters hold a k-means++ seed."""
    hits = []
    for seed in range(20):
        seeds = kmeans_pp_init(x, 8, torch.Generator().manual_seed(seed), trials=trials)
        nearest_item = torch.cdist(seeds, x).argmin(1).numpy()
        hits.append(len(set(label[nearest_item].tolist())))
    return hits


def test_greedy_kmeans_pp_seeds_every_separated_cluster():
    rng = np.random.default_rng(0)
    sizes = [40, 30, 20, 10, 5, 5, 3, 2]
    centers = rng.normal(size=(8, 5)) * 10
    x = torch.from_numpy(
        np.concatenate([c + 0.1 * rng.normal(size=(n, 5)) for c, n in zip(centers, sizes, strict=True)]).astype(
            np.float32
        )
    )
    label = np.repeat(np.arange(8), sizes)
    assert _seeded_cluster_hits(x, label, trials=None) == [8] * 20
    # one candidate per step (plain k-means++) leaves a cluster without a seed for some seed
    assert min(_seeded_cluster_hits(x, label, trials=1)) < 8


def test_rkmeans_restarts_keep_fewest_collisions_then_lowest_error():
    x = np.random.default_rng(1).normal(size=(48, 4)).astype(np.float32)
    fits = [fit_residual_kmeans(torch.from_numpy(x), 2, 6, s, 30, 1.5) for s in restart_seeds(3, 4)]
    colliding = [collision_stats(f.codes)["n_colliding_items"] for f in fits]
    errors = [round(f.metrics["relative_residual"], 4) for f in fits]
    assert colliding == [39, 37, 33, 33] and errors == [0.1868, 0.1729, 0.1699, 0.1602]
    chosen = rkmeans_quantize(x, 2, 6, seed=3, balance=1.5, restarts=4)
    np.testing.assert_array_equal(chosen.codes, fits[3].codes)  # tie at 33 colliding: the lower error wins
    assert chosen.metrics["restart_chosen"] == 3 and chosen.metrics["collision_rate_worst_restart"] == 39 / 48
    # fewer collisions beat a lower error
    assert rkmeans_quantize(x, 2, 6, seed=2, balance=1.5, restarts=4).metrics["restart_chosen"] == 1
    # more restarts add fits and keep the earlier ones: never more collisions
    assert restart_seeds(3, 4)[:2] == restart_seeds(3, 2)
    assert chosen.metrics["restarts_run"] == 4
    # a fit within the target ends the search: the first (39 of 48 colliding), then the second (37)
    assert rkmeans_quantize(x, 2, 6, seed=3, balance=1.5, restarts=4, target=39 / 48).metrics["restarts_run"] == 1
    assert rkmeans_quantize(x, 2, 6, seed=3, balance=1.5, restarts=4, target=38 / 48).metrics["restarts_run"] == 2


def test_rkmeans_restarts_stop_at_a_fit_without_collisions():
    x = _clusters(3, np.eye(8) * 5, 0.5)  # 8 clusters of 3: a 2-level 8 x 8 code separates every item
    res = rkmeans_quantize(x, 2, 8, seed=0, balance=1.5, restarts=8)
    first = fit_residual_kmeans(torch.from_numpy(x), 2, 8, restart_seeds(0, 1)[0], 30, 1.5)
    assert collision_stats(first.codes)["n_colliding_items"] > 0
    assert collision_stats(res.codes)["n_colliding_items"] == 0  # the second fit: the last one run
    assert res.metrics["restarts_run"] == 2 and res.metrics["restart_chosen"] == 1


def test_rkmeans_restarts_reject_zero():
    x = np.random.default_rng(1).normal(size=(48, 4)).astype(np.float32)
    with pytest.raises(ValueError, match="restarts must be >= 1"):
        rkmeans_quantize(x, 2, 6, seed=3, restarts=0)


def test_rkmeans_first_level_recovers_partition():
    centers = np.array([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 5.0], [-5.0, 0, 0]])
    x = _clusters(6, centers, 0.3)
    res = rkmeans_quantize(x, levels=2, k=4, seed=0, balance=1.0)
    first = res.codes[:, 0].reshape(4, 6)
    assert all(len(set(row)) == 1 for row in first.tolist())  # each true cluster one code
    assert len(set(first[:, 0].tolist())) == 4  # distinct codes per cluster
    assert res.codes.shape == (24, 2) and res.last_dists.shape == (24, 4)


def test_rkmeans_deterministic():
    x = _clusters(10, np.eye(4) * 3, 0.5)
    a = rkmeans_quantize(x, 3, 4, seed=7)
    b = rkmeans_quantize(x, 3, 4, seed=7)
    np.testing.assert_array_equal(a.codes, b.codes)
    np.testing.assert_array_equal(a.codebooks, b.codebooks)


@pytest.mark.slow  # trains an RQ-VAE twice (seconds)
def test_rqvae_trains_uses_codes_and_is_deterministic():
    x = _clusters(16, np.eye(8) * 3, 0.5)  # 128 items, 8-d
    rq = RQVAEConfig(hidden_dims=[16], latent_dim=4, epochs=30, warmup_epochs=5, batch_size=4096, reseed_every=5)
    a = rqvae_quantize(x, rq, levels=2, k=8, seed=3)
    b = rqvae_quantize(x, rq, levels=2, k=8, seed=3)
    np.testing.assert_array_equal(a.codes, b.codes)
    assert a.codes.shape == (128, 2)
    assert all(len(np.unique(a.codes[:, lvl])) == 8 for lvl in range(2))
    assert np.isfinite(a.metrics["recon_mse"]) and a.metrics["recon_mse"] < 1.0


def _write_inputs(tmp_path, emb, category="Toys"):
    data = tmp_path / "data"
    data.mkdir()
    n = len(emb)
    pd.DataFrame(
        {
            "item_id": np.arange(n),
            "asin": [f"A{i}" for i in range(n)],
            "title": [f"t{i}" for i in range(n)],
            "description": [""] * n,
            "brand": [""] * n,
            "categories": [[]] * n,
        }
    ).to_parquet(data / "items.parquet")
    (data / "stats.json").write_text(json.dumps({"category": category}))
    emb_dir = tmp_path / "emb"
    emb_dir.mkdir()
    np.save(emb_dir / "embeddings.npy", emb)
    return data, emb_dir


def _small_cfg(method):
    return config.load(
        "demo",
        [
            f"sid.method={method}",
            "sid.codebook_size=16",
            "sid.rqvae.epochs=20",
            "sid.rqvae.hidden_dims=[16]",
            "sid.rqvae.latent_dim=4",
            "sid.rqvae.warmup_epochs=5",
        ],
    )


@pytest.mark.parametrize("method", ["rkmeans", "rqvae"])
def test_quantize_sids_outputs_and_byte_identical(tmp_path, method):
    emb = _clusters(20, np.eye(6) * 3, 0.6)  # 120 items
    data, emb_dir = _write_inputs(tmp_path, emb)
    cfg = _small_cfg(method)
    m1 = quantize_sids(cfg, data, emb_dir, tmp_path / "out1")
    m2 = quantize_sids(cfg, data, emb_dir, tmp_path / "out2")
    b1, b2 = (tmp_path / "out1" / "sids.parquet").read_bytes(), (tmp_path / "out2" / "sids.parquet").read_bytes()
    assert b1 == b2
    table = pq.read_table(tmp_path / "out1" / "sids.parquet").to_pandas()
    assert table["item_id"].tolist() == list(range(120))
    assert all(
        parse_sid(s, levels=3, codebook_size=16) == list(c) for s, c in zip(table["sid"], table["codes"], strict=True)
    )
    assert collision_stats(np.stack(table["codes"].to_numpy()))["collision_rate"] == 0.0
    assert m1["collision_rate_after"] == 0.0 and m1["n_items"] == 120
    index = json.loads((tmp_path / "out1" / "index.json").read_text())
    assert index["0"] == [f"<{c}_{v}>" for c, v in zip("abc", table["codes"][0], strict=True)]
    research = json.loads((tmp_path / "out1" / "research" / "index" / "Toys.index.json").read_text())
    assert research == index
    catalogue = json.loads((tmp_path / "out1" / "catalogue.json").read_text())
    assert catalogue == sorted(table["sid"]) and np.load(tmp_path / "out1" / "codebooks.npy").shape[:2] == (3, 16)
    assert m1["codes_used_level_0"] == m2["codes_used_level_0"] and 0 < m1["code_usage_level_2"] <= 1


def test_missing_embeddings_names_file(tmp_path):
    data, emb_dir = _write_inputs(tmp_path, np.zeros((10, 3), np.float32))
    (emb_dir / "embeddings.npy").unlink()
    with pytest.raises(FileNotFoundError, match=r"embeddings .*/emb: embeddings\.npy \(the item vectors\) not found"):
        quantize_sids(_small_cfg("rkmeans"), data, emb_dir, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_row_count_mismatch_names_both_files(tmp_path):
    data, emb_dir = _write_inputs(tmp_path, np.zeros((10, 3), np.float32))
    np.save(emb_dir / "embeddings.npy", np.zeros((9, 3), np.float32))
    with pytest.raises(ValueError, match=r"9 rows.*items\.parquet has 10"):
        quantize_sids(_small_cfg("rkmeans"), data, emb_dir, tmp_path / "out")


def test_research_export_with_splits(tmp_path):
    emb = _clusters(20, np.eye(6) * 3, 0.6)
    data, emb_dir = _write_inputs(tmp_path, emb)
    for split in ("train", "valid", "test"):
        pd.DataFrame({"user_id": ["u1"], "history_item_ids": [[0, 1]], "item_id": [2], "timestamp": [1]}).to_parquet(
            data / f"{split}.parquet"
        )
    quantize_sids(_small_cfg("rkmeans"), data, emb_dir, tmp_path / "out")
    research = tmp_path / "out" / "research"
    sids = pq.read_table(tmp_path / "out" / "sids.parquet").to_pandas()["sid"]
    rows = (research / "test" / "Toys.csv").read_text().splitlines()
    assert rows[1].endswith("," + sids[2]) and (research / "info" / "Toys.txt").is_file()
    assert (research / "index" / "Toys.item.json").is_file()
