"""The chronological split's order on ties: by timestamp, then user id, then position in the user's
sequence; file order never decides."""

import numpy as np

from sidreasoner.data.preprocess import chronological_split, user_sequences


def test_ties_are_broken_by_user_then_position():
    ts = np.array([3, 3, 3, 3, 1, 1, 2, 2, 3, 3])
    user = np.array([2, 1, 1, 0, 5, 4, 0, 0, 2, 0])
    pos = np.array([2, 3, 1, 4, 1, 1, 2, 1, 1, 2])
    parts = chronological_split(ts, user, pos, (0.6, 0.2, 0.2))
    assert {k: v.tolist() for k, v in parts.items()} == {"train": [5, 4, 7, 6, 9, 3], "valid": [2, 1], "test": [8, 0]}


def test_user_sequences_break_equal_times_by_item_then_file_order():
    user = np.array([1, 0, 1, 0, 0, 1])
    item = np.array([7, 9, 3, 2, 9, 3])
    ts = np.array([5, 4, 5, 4, 4, 2])
    assert user_sequences(user, item, ts).tolist() == [3, 1, 4, 5, 2, 0]
