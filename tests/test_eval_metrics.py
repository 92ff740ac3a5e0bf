import math

import pytest

from sidreasoner.eval.metrics import expand_to_items, hr_ndcg, sid_and_item_metrics, sid_item_map


def test_hr_ndcg_exact_values():
    ranked = [["a", "b", "c", "d"], ["b", "a", "c", "d"], ["c", "d", "b", "a"], ["x", "y", "z", "w"]]
    targets = ["a", "a", "a", "a"]  # ranks 0, 1, 3, miss
    m = hr_ndcg(ranked, targets, [1, 3, 5])
    assert m["hr@1"] == pytest.approx(1 / 4)
    assert m["hr@3"] == pytest.approx(2 / 4)
    assert m["hr@5"] == pytest.approx(3 / 4)
    assert m["ndcg@1"] == pytest.approx(1 / 4)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(3)) / 4)
    assert m["ndcg@5"] == pytest.approx((1 + 1 / math.log2(3) + 1 / math.log2(5)) / 4)


def test_only_top_k_counts_and_first_occurrence():
    m = hr_ndcg([["b", "a", "a"]], ["a"], [1, 2])
    assert m == {"hr@1": 0.0, "ndcg@1": 0.0, "hr@2": 1.0, "ndcg@2": pytest.approx(1 / math.log2(3))}
    assert hr_ndcg([], [], [1]) == {"hr@1": 0.0, "ndcg@1": 0.0}
    with pytest.raises(ValueError):
        hr_ndcg([["a"]], [], [1])


def test_item_level_expands_colliding_sids_in_item_order():
    sid_items = sid_item_map([7, 3, 5, 9], ["S", "S", "T", "U"])
    assert sid_items == {"S": [3, 7], "T": [5], "U": [9]}
    assert expand_to_items(["S", "T", "U"], sid_items, 3) == [3, 7, 5]
    assert expand_to_items(["Z", "T"], sid_items, 5) == [5]
    # Target item 7 shares SID S with item 3: SID-level hit at rank 0, item-level rank 1.
    m = sid_and_item_metrics([["S", "T"], ["T", "U"]], ["S", "U"], [7, 9], sid_items, [1, 2])
    assert m["hr@1"] == pytest.approx(0.5)
    assert m["hr@2"] == pytest.approx(1.0)
    assert m["ndcg@2"] == pytest.approx((1 + 1 / math.log2(3)) / 2)
    assert m["item_hr@1"] == 0.0
    assert m["item_hr@2"] == pytest.approx(1.0)  # [3, 7] and [5, 9]: both at rank 1
    assert m["item_ndcg@2"] == pytest.approx(1 / math.log2(3))
