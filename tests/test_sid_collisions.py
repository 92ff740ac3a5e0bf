import numpy as np
import pytest

from sidreasoner.sid.codes import collision_stats
from sidreasoner.sid.collisions import (
    PrefixGroupTooLarge,
    collision_groups,
    exact_resolve,
    resolve_collisions,
    sinkhorn_assign,
)

# prefix (0,) holds items 0,1,2 colliding on <b_1> and item 3 on <b_2>; item 4 alone in prefix (1,);
# items 5,6 collide on (2, 0).
CODES = np.array([[0, 1], [0, 1], [0, 1], [0, 2], [1, 1], [2, 0], [2, 0]])
DISTS = np.array(
    [
        [0.5, 0.0, 0.1, 0.9],  # item 0: best 1, then 2 (held by item 3), then 0
        [0.2, 0.0, 0.1, 0.3],  # item 1
        [0.9, 0.0, 0.1, 0.1],  # item 2: prefers 3 after 1
        [0.9, 0.9, 0.0, 0.9],
        [0.9, 0.0, 0.9, 0.9],
        [0.0, 0.3, 0.4, 0.5],
        [0.0, 0.1, 0.4, 0.5],
    ]
)


def test_collision_groups():
    groups = collision_groups(CODES)
    assert [g.tolist() for g in groups] == [[0, 1, 2], [5, 6]]


def test_resolve_exact_result():
    codes, metrics = resolve_collisions(CODES, DISTS)
    assert codes.tolist() == [[0, 1], [0, 0], [0, 3], [0, 2], [1, 1], [2, 0], [2, 1]]
    assert metrics["collision_rate_before"] == 5 / 7
    assert metrics["collision_rate_after"] == 0.0
    assert metrics["items_reassigned"] == 3
    assert collision_stats(codes)["n_colliding_items"] == 0


def test_non_colliding_items_untouched_and_prefix_kept():
    codes, _ = resolve_collisions(CODES, DISTS)
    assert codes[3].tolist() == [0, 2] and codes[4].tolist() == [1, 1]
    np.testing.assert_array_equal(codes[:, 0], CODES[:, 0])


def test_exact_resolve_alone_gives_optimal_distinct_codes():
    codes = exact_resolve(CODES, DISTS)
    # items 0,1,2 take the cheapest distinct codes among {0,1,3} (2 is held by item 3): total 0.0+0.2+0.1
    assert codes[:3, 1].tolist() == [1, 0, 3]
    assert codes[5:, 1].tolist() == [0, 1]


def test_overfull_prefix_group_raises():
    codes = np.array([[0, 0]] * 5 + [[1, 0]])
    with pytest.raises(PrefixGroupTooLarge, match=r"5 items share the SID prefix <a_0>.*only 4 codes"):
        resolve_collisions(codes, np.zeros((6, 4)))


def test_single_level_catalogue_too_large():
    with pytest.raises(PrefixGroupTooLarge, match="whole catalogue"):
        resolve_collisions(np.zeros((3, 1), dtype=int), np.zeros((3, 2)))


def test_sinkhorn_gives_competing_items_distinct_codes():
    # both prefer code 0; the cheaper total puts item 1 on code 1 (0.05) rather than item 0 (0.1)
    choice = sinkhorn_assign(np.array([[0.0, 0.1, 1.0, 1.0], [0.0, 0.05, 1.0, 1.0]]))
    assert choice.tolist() == [0, 1]


def test_no_collisions_is_identity():
    codes = np.array([[0, 0], [0, 1], [1, 0]])
    out, metrics = resolve_collisions(codes, np.random.default_rng(0).random((3, 2)))
    assert out.tolist() == codes.tolist() and metrics["items_reassigned"] == 0
