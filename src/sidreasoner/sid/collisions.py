"""Collision handling on the last SID level (no extra level is ever added).

1. Sinkhorn rounds: items that share a full SID are re-assigned on the last level by Sinkhorn
   (balanced optimal transport over their last-level distances), for a few rounds. Two variants:
   - `sinkhorn` (the project's): over the last-level codes no other item of their prefix group
     holds; the rounds stop at one that does not lower the number of colliding items;
   - `research_sinkhorn` (MiniOneRec's rq/generate_indices.py): over every last-level code, the
     group's distances centred by their min and max, the transport plan normalised alternately by
     rows and columns; the rounds stop only when nothing collides or after the last round.
2. Whatever still collides is, with `leftover="resolve"`, resolved exactly: within each
   (levels-1)-prefix group, the colliding items get the cheapest distinct free last-level codes
   (`scipy.optimize.linear_sum_assignment`); with `leftover="keep"` (MiniOneRec) it stays.
   Items that never collided keep their codes.
"""

from __future__ import annotations

from collections import defaultdict

import numpy as np
from scipy.optimize import linear_sum_assignment

from sidreasoner.sid.codes import collision_stats, format_sid


class PrefixGroupTooLarge(ValueError):
    """More items share a (levels-1)-prefix than the last level has codes."""


def collision_groups(codes: np.ndarray) -> list[np.ndarray]:
    """Item indices of every full SID held by more than one item, in order of first item."""
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    inverse = inverse.reshape(-1)
    groups: dict[int, list[int]] = defaultdict(list)
    for item, sid in enumerate(inverse):
        if counts[sid] > 1:
            groups[int(sid)].append(item)
    return sorted((np.array(g) for g in groups.values()), key=lambda g: int(g[0]))


def prefix_groups(codes: np.ndarray) -> dict[tuple[int, ...], np.ndarray]:
    groups: dict[tuple[int, ...], list[int]] = defaultdict(list)
    for item, row in enumerate(codes[:, :-1].tolist()):
        groups[tuple(row)].append(item)
    return {k: np.array(v) for k, v in groups.items()}


def check_prefix_capacity(codes: np.ndarray, codebook_size: int) -> None:
    for prefix, items in prefix_groups(codes).items():
        if len(items) > codebook_size:
            shown = format_sid(prefix) if prefix else "(the whole catalogue: 1 level)"
            raise PrefixGroupTooLarge(
                f"{len(items)} items share the SID prefix {shown}, but the last level has only "
                f"{codebook_size} codes: collisions cannot be removed without another level. "
                "Raise sid.codebook_size or sid.levels, or use a more balanced quantizer (sid.balance)."
            )


def _lse(a: np.ndarray, axis: int) -> np.ndarray:
    top = a.max(axis=axis, keepdims=True)
    return (top + np.log(np.exp(a - top).sum(axis=axis, keepdims=True))).squeeze(axis)


def sinkhorn_assign(cost: np.ndarray, epsilon: float = 0.02, iters: int = 50) -> np.ndarray:
    """Entropic OT of n items (mass 1 each) onto m >= n codes (room 1 each) in log space; a zero-cost
    dummy row takes the m - n spare room. Returns the argmax code of each item's transport plan."""
    n, m = cost.shape
    span = cost.max() - cost.min()
    c = (cost - cost.min()) / (span if span > 0 else 1.0)
    log_k = np.vstack([-c / epsilon, np.zeros((1, m))])
    log_r = np.log(np.append(np.ones(n), max(m - n, 1e-9)))
    u, v = np.zeros(n + 1), np.zeros(m)
    for _ in range(iters):
        u = log_r - _lse(log_k + v[None, :], axis=1)
        v = -_lse(log_k + u[:, None], axis=0)
    return (log_k + u[:, None] + v[None, :])[:n].argmax(1)


def _free_codes(codes: np.ndarray, members: np.ndarray, exclude: np.ndarray, k: int) -> np.ndarray:
    """Last-level codes not held by `members` outside `exclude`."""
    others = np.setdiff1d(members, exclude)
    return np.setdiff1d(np.arange(k), codes[others, -1])


def sinkhorn_rounds(
    codes: np.ndarray, last_dists: np.ndarray, rounds: int, epsilon: float, iters: int = 50
) -> tuple[np.ndarray, int]:
    """The project's rounds; returns the codes and the number of rounds run."""
    codes = codes.copy()
    k = last_dists.shape[1]
    n_before = len(codes) + 1
    run = 0
    for _ in range(rounds):
        groups = collision_groups(codes)
        n_colliding = sum(len(g) for g in groups)
        if not groups or n_colliding >= n_before:  # done, or a round that did not help
            break
        n_before = n_colliding
        run += 1
        by_prefix = prefix_groups(codes)
        for group in groups:
            members = by_prefix[tuple(codes[group[0], :-1].tolist())]
            free = _free_codes(codes, members, group, k)
            codes[group, -1] = free[sinkhorn_assign(last_dists[np.ix_(group, free)], epsilon, iters)]
    return codes, run


def research_sinkhorn_assign(dists: np.ndarray, epsilon: float, iters: int) -> np.ndarray:
    """MiniOneRec's last-level Sinkhorn for one colliding group: distances [B, K] to every code.

    The distances are centred in float32 to [-1, 1] by the group's min and max (half-range plus 1e-5),
    then in float64: Q = exp(-d / epsilon) / its total; `iters` times the rows are scaled to 1/B and
    then the columns to 1/K; the code of each item is the argmax of its row of B * Q (a NaN counts as
    the largest value, as in torch.argmax).
    """
    d = np.asarray(dists, dtype=np.float32)
    top, bottom = d.max(), d.min()
    middle = (top + bottom) / np.float32(2)
    amplitude = top - middle + np.float32(1e-5)
    q = np.exp(-((d - middle) / amplitude).astype(np.float64) / epsilon)
    b, k = q.shape
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):
        q /= q.sum(axis=1, keepdims=True).sum(axis=0, keepdims=True)
        for _ in range(iters):
            q /= q.sum(axis=1, keepdims=True)
            q /= b
            q /= q.sum(axis=0, keepdims=True)
            q /= k
        q *= b
    return q.argmax(axis=1)


def research_sinkhorn_rounds(
    codes: np.ndarray, last_dists: np.ndarray, rounds: int, epsilon: float, iters: int
) -> tuple[np.ndarray, int]:
    """MiniOneRec's rounds: while SIDs collide, at most `rounds` times, every group of items sharing a
    full SID (found at the start of the round) takes the last-level codes of `research_sinkhorn_assign`
    over all codes of the level. New collisions with other items may arise; whatever collides after
    the last round is left. Returns the codes and the number of rounds run."""
    codes = codes.copy()
    run = 0
    for _ in range(rounds):
        groups = collision_groups(codes)
        if not groups:
            break
        run += 1
        for group in groups:
            codes[group, -1] = research_sinkhorn_assign(last_dists[group], epsilon, iters)
    return codes, run


def exact_resolve(codes: np.ndarray, last_dists: np.ndarray) -> np.ndarray:
    """Give colliding items distinct free last-level codes, cheapest total distance per prefix group."""
    codes = codes.copy()
    k = last_dists.shape[1]
    colliding = np.zeros(len(codes), dtype=bool)
    for group in collision_groups(codes):
        colliding[group] = True
    for members in prefix_groups(codes).values():
        movers = members[colliding[members]]
        if len(movers) == 0:
            continue
        free = _free_codes(codes, members, movers, k)
        rows, cols = linear_sum_assignment(last_dists[np.ix_(movers, free)])
        codes[movers[rows], -1] = free[cols]
    return codes


def resolve_collisions(
    codes: np.ndarray,
    last_dists: np.ndarray,
    rounds: int = 10,
    epsilon: float = 0.02,
    iters: int = 50,
    method: str = "sinkhorn",
    leftover: str = "resolve",
) -> tuple[np.ndarray, dict[str, float]]:
    """Codes [N, L] after collision handling (`method` sinkhorn | research_sinkhorn, then `leftover`
    resolve | keep), and before/after figures. With leftover=resolve no two items share a full SID."""
    codes = np.asarray(codes, dtype=np.int64)
    if last_dists.shape != (len(codes), last_dists.shape[1]):
        raise ValueError(f"last_dists has shape {last_dists.shape}, expected ({len(codes)}, codebook_size)")
    if method not in ("sinkhorn", "research_sinkhorn"):
        raise ValueError(f"unknown collision method {method!r}; allowed: sinkhorn, research_sinkhorn")
    if leftover not in ("resolve", "keep"):
        raise ValueError(f"unknown collision leftover {leftover!r}; allowed: resolve, keep")
    if leftover == "resolve":
        check_prefix_capacity(codes, last_dists.shape[1])
    before = collision_stats(codes)
    if method == "sinkhorn":
        after_sk, run = sinkhorn_rounds(codes, last_dists, rounds, epsilon, iters)
    else:
        after_sk, run = research_sinkhorn_rounds(codes, last_dists, rounds, epsilon, iters)
    mid = collision_stats(after_sk)
    final = exact_resolve(after_sk, last_dists) if leftover == "resolve" else after_sk
    after = collision_stats(final)
    if leftover == "resolve" and after["n_colliding_items"]:
        raise AssertionError("collision handling left collisions; this is a bug")
    metrics = {
        "collision_rate_before": before["collision_rate"],
        "duplicate_rate_before": before["duplicate_rate"],
        "collision_rate_after_sinkhorn": mid["collision_rate"],
        "collision_rate_after": after["collision_rate"],
        "duplicate_rate_after": after["duplicate_rate"],
        "sinkhorn_rounds_run": float(run),
        "items_reassigned": float((final[:, -1] != codes[:, -1]).sum()),
    }
    return final, metrics
