"""When the project's Sinkhorn collision rounds stop: after a round that did not lower the number of
colliding items, or when nothing collides; never by running out of rounds here."""

from sidreasoner.sid.collisions import resolve_collisions, sinkhorn_rounds

# The collision fixture of the parity tests: items 0 and 1 are duplicates (identical distances: Sinkhorn never
# parts them); items 2 and 3 collide on (1, 0) and part in the first round; item 4 holds (1, 2), item 5 is alone.
from .test_parity_sid import CODES, DISTS


def test_rounds_stop_after_one_that_did_not_help():
    runs = {r: sinkhorn_rounds(CODES, DISTS, r, 0.02) for r in (0, 1, 2, 3, 10)}
    assert {r: (c[:, 1].tolist(), n) for r, (c, n) in runs.items()} == {
        0: ([1, 1, 0, 0, 2, 3], 0),
        1: ([1, 1, 1, 0, 2, 3], 1),
        2: ([1, 1, 1, 0, 2, 3], 2),
        3: ([1, 1, 1, 0, 2, 3], 2),
        10: ([1, 1, 1, 0, 2, 3], 2),
    }
    assert resolve_collisions(CODES, DISTS, rounds=10)[1]["sinkhorn_rounds_run"] == 2.0


def test_rounds_stop_when_nothing_collides():
    codes, run = sinkhorn_rounds(CODES[[2, 3, 5]], DISTS[[2, 3, 5]], 10, 0.02)
    assert codes.tolist() == [[1, 0], [1, 2], [2, 3]] and run == 1
    assert sinkhorn_rounds(CODES[[0, 2, 5]], DISTS[[0, 2, 5]], 10, 0.02)[1] == 0
