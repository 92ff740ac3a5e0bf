"""Constrained search over a `CatalogueTrie`, independent of how the model is run: the model side is a
step function (`StepFn`) that scores SID paths against the prompts.

- `beam_search_core`: level 0 is chosen from the prompts' next-token log-probabilities directly; each
  later level is one batched step over the rows' SID prefixes; scores are log-softmax over the full
  vocabulary (as Hugging Face beam search scores them), summed over the L = len(SID) levels; exactly
  L constrained steps, after which the answer ends (end-of-sequence). With a `suffix` (token ids
  forced after the SID, e.g. "\n" and end-of-sequence), the surviving beams also score those tokens
  and are re-ranked by the total, as a Hugging Face beam search constrained to SID + suffix ranks them.
- `exact_core`: every valid SID's total log-probability, scoring each distinct prefix once per level
  (and, with a `suffix`, every SID's suffix), then the top K of the whole catalogue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

import torch

from sidreasoner.eval.trie import NEG_INF, CatalogueTrie


@dataclass
class Timing:
    mask_s: float = 0.0
    forward_s: float = 0.0
    prefill_s: float = 0.0
    extra: dict = field(default_factory=dict)


StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(row_user [R], paths [R, t]) -> log-probabilities [R, V] of the next token after prompt + path."""


def beam_search_core(
    trie: CatalogueTrie,
    first_logp: torch.Tensor,
    step_fn: StepFn,
    beams: int,
    timing: Timing | None = None,
    suffix: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Constrained beam search given the prompts' next-token log-probs [B, V].

    `suffix`: token ids that follow every SID; the beams kept after the last SID level add their
    log-probabilities (one step per token, no further pruning: each beam has one allowed token) and
    are re-ranked by that total.

    Returns (leaf ids [B, k], scores [B, k]) with k = min(beams, reachable), best first; leaf id -1
    (score -inf) marks a slot no valid SID filled."""
    timing = timing or Timing()
    b = first_logp.shape[0]
    dev = first_logp.device
    t0 = time.perf_counter()
    cand, nxt = trie.level_candidates(0, torch.zeros(b, dtype=torch.long, device=dev), first_logp)
    k = min(beams, cand.shape[1])
    scores, idx = cand.topk(k, dim=1)
    nodes = nxt.gather(1, idx)
    paths = trie.level_tokens[0][idx].unsqueeze(-1)  # [B, k, 1]
    timing.mask_s += time.perf_counter() - t0
    for level in range(1, trie.levels):
        rows = b * k
        row_user = torch.arange(b, device=dev).repeat_interleave(k)
        t1 = time.perf_counter()
        logp = step_fn(row_user, paths.reshape(rows, level))
        t0 = time.perf_counter()
        timing.forward_s += t0 - t1
        cand, nxt = trie.level_candidates(level, nodes.reshape(rows), logp)
        c = cand.shape[1]
        total = (scores.reshape(rows, 1) + cand).reshape(b, k * c)
        k_new = min(beams, k * c)
        scores, flat = total.topk(k_new, dim=1)
        beam_idx, code_idx = flat // c, flat % c
        nodes = nxt.reshape(b, k * c).gather(1, flat)
        paths = torch.cat(
            [
                paths.gather(1, beam_idx.unsqueeze(-1).expand(-1, -1, level)),
                trie.level_tokens[level][code_idx].unsqueeze(-1),
            ],
            dim=-1,
        )
        k = k_new
        timing.mask_s += time.perf_counter() - t0
    if len(suffix):
        scores, nodes = _score_suffix(scores, nodes, paths, step_fn, suffix, timing)
    leaves = torch.where(torch.isfinite(scores), nodes, torch.full_like(nodes, -1))
    return leaves, scores.masked_fill(leaves < 0, NEG_INF)


def _score_suffix(
    scores: torch.Tensor,
    nodes: torch.Tensor,
    paths: torch.Tensor,
    step_fn: StepFn,
    suffix: Sequence[int],
    timing: Timing,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Add log p(suffix | prompt + SID) to each beam's score [B, k], then sort each row again."""
    b, k, levels = paths.shape
    dev = scores.device
    rows = paths.reshape(b * k, levels)
    row_user = torch.arange(b, device=dev).repeat_interleave(k)
    added = torch.zeros(b * k, device=dev, dtype=scores.dtype)
    for tok in suffix:
        t1 = time.perf_counter()
        logp = step_fn(row_user, rows)
        timing.forward_s += time.perf_counter() - t1
        added += logp[:, int(tok)].to(scores.dtype)
        rows = torch.cat([rows, torch.full((b * k, 1), int(tok), dtype=rows.dtype, device=dev)], dim=1)
    total = scores + added.reshape(b, k)  # a dead slot stays -inf
    total, order = total.sort(dim=1, descending=True, stable=True)
    return total, nodes.gather(1, order)


def exact_core(
    trie: CatalogueTrie,
    first_logp: torch.Tensor,
    step_fn: StepFn,
    k: int,
    max_rows: int = 4096,
    timing: Timing | None = None,
    suffix: Sequence[int] = (),
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every valid SID's total log-probability (scoring each distinct prefix once per level), then the
    top k of the whole catalogue per prompt: (leaf ids [B, k'], scores [B, k']), k' = min(k, N)."""
    timing = timing or Timing()
    b = first_logp.shape[0]
    dev = first_logp.device
    # depth-1 node scores straight from the prefill
    node_scores = first_logp.index_select(1, trie.level_tokens[0])[:, trie.node_code[1]]  # [B, n1]
    for depth in range(1, trie.levels):
        n_d = trie.nodes_at(depth)
        paths = trie.node_paths[depth]
        nxt_scores = torch.empty(b, trie.nodes_at(depth + 1), device=dev, dtype=node_scores.dtype)
        for users, nodes in _row_chunks(b, n_d, max_rows, dev):
            n0 = int(nodes[0])
            row_user = users.repeat_interleave(len(nodes))
            row_node = nodes.repeat(len(users))
            t1 = time.perf_counter()
            logp = step_fn(row_user, paths[row_node])
            timing.forward_s += time.perf_counter() - t1
            cand = logp.index_select(1, trie.level_tokens[depth])  # [R, C]
            # children of these nodes: their local code and parent
            child_mask = (trie.parent[depth + 1] >= n0) & (trie.parent[depth + 1] < n0 + len(nodes))
            child_ids = child_mask.nonzero().squeeze(1)
            par = trie.parent[depth + 1][child_ids] - n0
            code = trie.node_code[depth + 1][child_ids]
            cand = cand.reshape(len(users), len(nodes), -1)
            base = node_scores[users][:, n0 + par]  # [U, n_children]
            nxt_scores[users.unsqueeze(1), child_ids.unsqueeze(0)] = base + cand[:, par, code]
        node_scores = nxt_scores
    if len(suffix):
        node_scores = node_scores + _suffix_logp_all(trie, step_fn, b, suffix, max_rows, timing).to(node_scores.dtype)
    k = min(k, trie.size)
    scores, leaves = node_scores.topk(k, dim=1)
    return leaves, scores


def _suffix_logp_all(
    trie: CatalogueTrie, step_fn: StepFn, b: int, suffix: Sequence[int], max_rows: int, timing: Timing
) -> torch.Tensor:
    """log p(suffix | prompt + SID) for every prompt and every SID of the catalogue: [B, N]."""
    leaf_paths = trie.node_paths[trie.levels]
    n = len(leaf_paths)
    dev = leaf_paths.device
    out = torch.empty(b, n, device=dev)
    for users, leaves in _row_chunks(b, n, max_rows, dev):
        row_user = users.repeat_interleave(len(leaves))
        rows = leaf_paths[leaves.repeat(len(users))]
        added = torch.zeros(len(rows), device=dev)
        for tok in suffix:
            t1 = time.perf_counter()
            logp = step_fn(row_user, rows)
            timing.forward_s += time.perf_counter() - t1
            added += logp[:, int(tok)].float()
            rows = torch.cat([rows, torch.full((len(rows), 1), int(tok), dtype=rows.dtype, device=dev)], dim=1)
        out[users.unsqueeze(1), leaves.unsqueeze(0)] = added.reshape(len(users), len(leaves))
    return out


def _row_chunks(b: int, n: int, max_rows: int, device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(users, columns) blocks covering every (prompt, catalogue node) pair of a [b, n] grid, each at most
    max_rows pairs: whole rows of several users when a user's n nodes fit, else one user's nodes in
    chunks of max_rows."""
    users_per_chunk = max(1, max_rows // n)
    col_chunk = n if users_per_chunk > 1 or n <= max_rows else max_rows
    for u0 in range(0, b, users_per_chunk):
        users = torch.arange(u0, min(b, u0 + users_per_chunk), device=device)
        for c0 in range(0, n, col_chunk):
            yield users, torch.arange(c0, min(n, c0 + col_chunk), device=device)


def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s) :] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s) :] = 1
    return ids.to(device), mask.to(device)
