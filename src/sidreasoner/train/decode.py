"""Constrained greedy decoding of one SID through a prefix trie over the catalogue."""

from __future__ import annotations

import torch


class SidTrie:
    def __init__(self, tokenizer, catalogue: list[str]):
        self.root: dict = {}
        self.levels = 0
        for sid in catalogue:
            ids = tokenizer(sid, add_special_tokens=False)["input_ids"]
            self.levels = max(self.levels, len(ids))
            node = self.root
            for t in ids:
                node = node.setdefault(t, {})

    def allowed(self, prefix: list[int]) -> list[int]:
        node = self.root
        for t in prefix:
            node = node.get(t)
            if node is None:
                return []
        return list(node)


@torch.no_grad()
def constrained_greedy_sid(model, tokenizer, prompts: list[str], catalogue: list[str], batch_size: int = 32) -> list[str]:
    """For each rendered prompt, the greedy SID where at each of the `levels` steps only
    continuations of valid catalogue SIDs are allowed."""
    trie = SidTrie(tokenizer, catalogue)
    eos = tokenizer.eos_token_id
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    model.eval()
    out: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            chunk = prompts[start:start + batch_size]
            enc = tokenizer(chunk, return_tensors="pt", padding=True, add_special_tokens=False).to(model.device)
            plen = enc["input_ids"].shape[1]

            def allowed(_batch_id: int, ids: torch.Tensor) -> list[int]:
                return trie.allowed(ids[plen:].tolist()) or [eos]

            gen = model.generate(**enc, max_new_tokens=trie.levels, do_sample=False,
                                 prefix_allowed_tokens_fn=allowed, pad_token_id=tokenizer.pad_token_id)
            for row in gen[:, plen:]:
                out.append(tokenizer.decode(row, skip_special_tokens=True).strip())
    finally:
        tokenizer.padding_side = side
    return out
