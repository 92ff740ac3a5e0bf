"""Constrained greedy decoding of one SID per prompt (Stage 1's valid_sid_rate / hr_at_1), through the
evaluation's constrained decoder: greedy = beam search with one beam over the catalogue's trie."""

from __future__ import annotations

from sidreasoner.eval.decoder import SidDecoder


def constrained_greedy_sid(
    model, tokenizer, prompts: list[str], catalogue: list[str], batch_size: int = 32
) -> list[str]:
    """For each rendered prompt, the greedy SID where at each level only continuations of valid
    catalogue SIDs are allowed."""
    # shared=False: the shared-prefix attention would switch the model's attention implementation,
    # and this model is saved right after.
    decoder = SidDecoder(model, tokenizer, catalogue, shared=False)
    out: list[str] = []
    for start in range(0, len(prompts), batch_size):
        ids = decoder.encode(prompts[start : start + batch_size])
        out.extend(ranked.sids[0] for ranked in decoder.beam(ids, beams=1))
    return out
