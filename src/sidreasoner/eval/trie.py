"""The catalogue of valid Semantic IDs as a prefix trie of index tensors, and the logits mask built
from it.

`CatalogueTrie` holds, per SID level l, the sorted token ids that occur there (`level_tokens[l]`, C_l
of them) and a dense transition table `child[l]` [nodes at depth l, C_l] holding the next node id, or
-1 where that code does not continue any valid SID. Masking a whole [rows, vocab] block is then one
column gather, one table lookup and one `masked_fill`: no Python loop over beams or steps'
candidates. Only the C_l columns of level l are ever candidates, so a token outside the catalogue can
never be chosen, and a row whose prefix has no continuation gets -inf everywhere (it is dropped),
never a free token (a bug reported against MiniOneRec).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from transformers import LogitsProcessor

from sidreasoner.sid.codes import parse_sid, sid_tokens

NEG_INF = float("-inf")


class CatalogueError(ValueError):
    pass


class CatalogueTrie:
    """Prefix trie over the catalogue's token sequences, compiled to index tensors.

    `token_matrix` [N, L]: one row of token ids per distinct SID (leaf id = row index)."""

    def __init__(self, token_matrix: np.ndarray | torch.Tensor, labels: Sequence[str] | None = None):
        tm = np.asarray(token_matrix, dtype=np.int64)
        if tm.ndim != 2 or tm.shape[0] == 0 or tm.shape[1] == 0:
            raise CatalogueError(f"token matrix must be [N>0, L>0], got shape {tm.shape}")
        if len(np.unique(tm, axis=0)) != len(tm):
            raise CatalogueError("catalogue rows must be distinct SIDs")
        n, levels = tm.shape
        self.levels = levels
        self.labels = list(labels) if labels is not None else [" ".join(map(str, r)) for r in tm.tolist()]
        self.token_matrix = torch.from_numpy(tm)
        self.level_tokens: list[torch.Tensor] = []
        self.child: list[torch.Tensor] = []
        self.node_paths: list[torch.Tensor] = [torch.zeros(1, 0, dtype=torch.long)]  # depth d: [n_d, d]
        self.parent: list[torch.Tensor] = [torch.zeros(0, dtype=torch.long)]  # depth d: [n_d] node at d-1
        self.node_code: list[torch.Tensor] = [torch.zeros(0, dtype=torch.long)]  # depth d: [n_d] local code at d-1
        node_of_row = np.zeros(n, dtype=np.int64)
        n_prev = 1
        for level in range(levels):
            toks = np.unique(tm[:, level])
            local = np.searchsorted(toks, tm[:, level])
            key = node_of_row * len(toks) + local
            if level < levels - 1:
                uniq, first, nxt = np.unique(key, return_index=True, return_inverse=True)
                nxt = nxt.reshape(-1)
                n_next = len(uniq)
            else:
                nxt = np.arange(n)
                first = np.arange(n)
                n_next = n
            table = np.full((n_prev, len(toks)), -1, dtype=np.int64)
            table[node_of_row, local] = nxt
            self.level_tokens.append(torch.from_numpy(toks))
            self.child.append(torch.from_numpy(table))
            self.node_paths.append(torch.from_numpy(tm[first, : level + 1].copy()))
            self.parent.append(torch.from_numpy(node_of_row[first].copy()))
            self.node_code.append(torch.from_numpy(local[first].copy()))
            node_of_row, n_prev = nxt, n_next

    @property
    def size(self) -> int:
        return len(self.labels)

    def nodes_at(self, depth: int) -> int:
        return len(self.node_paths[depth])

    def to(self, device) -> CatalogueTrie:
        for name in ("level_tokens", "child", "node_paths", "parent", "node_code"):
            setattr(self, name, [t.to(device) for t in getattr(self, name)])
        return self

    @classmethod
    def from_catalogue(cls, catalogue: Sequence[str], tokenizer) -> CatalogueTrie:
        """SID strings ('<a_1><b_2><c_3>') -> trie over their token ids. Every SID code must be ONE
        token of `tokenizer`, and the tokenizer must split the SID string into exactly those tokens."""
        catalogue = sorted(set(catalogue))
        if not catalogue:
            raise CatalogueError("the catalogue is empty")
        vocab = tokenizer.get_vocab()
        rows = []
        for sid in catalogue:
            codes = parse_sid(sid)
            if codes is None:
                raise CatalogueError(f"catalogue entry {sid!r} is not a SID")
            toks = sid_tokens(codes)
            missing = [t for t in toks if t not in vocab]
            if missing:
                raise CatalogueError(
                    f"SID token(s) {missing[:5]} of {sid!r} are not in the tokenizer's vocabulary "
                    "(was the model trained with this SID index?)"
                )
            rows.append([vocab[t] for t in toks])
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise CatalogueError(f"SIDs of different lengths in one catalogue: {sorted(lengths)}")
        probe = tokenizer(catalogue[0], add_special_tokens=False)["input_ids"]
        if list(probe) != rows[0]:
            raise CatalogueError(f"the tokenizer splits {catalogue[0]!r} into {probe}, not the SID tokens {rows[0]}")
        return cls(np.array(rows, dtype=np.int64), catalogue)

    # ------------------------------------------------------------------ the mask
    def level_candidates(
        self, level: int, nodes: torch.Tensor, logp: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Scores of level `level`'s codes for rows at trie `nodes` (-1 = dead row): ([R, C], next [R, C]);
        invalid continuations are -inf and their next node is -1."""
        cand = logp.index_select(1, self.level_tokens[level])
        nxt = self.child[level].index_select(0, nodes.clamp(min=0))
        invalid = (nxt < 0) | (nodes < 0).unsqueeze(1) | torch.isnan(cand)
        return cand.masked_fill(invalid, NEG_INF), nxt.masked_fill(invalid, -1)

    def walk(self, generated: torch.Tensor) -> torch.Tensor:
        """Trie node of each row after the SID tokens `generated` [R, t] (t <= levels), -1 if off the trie."""
        nodes = torch.zeros(generated.shape[0], dtype=torch.long, device=generated.device)
        for level in range(generated.shape[1]):
            toks = self.level_tokens[level]
            pos = torch.searchsorted(toks, generated[:, level].contiguous()).clamp(max=len(toks) - 1)
            ok = (toks[pos] == generated[:, level]) & (nodes >= 0)
            nxt = self.child[level][nodes.clamp(min=0), pos]
            nodes = torch.where(ok, nxt, torch.full_like(nxt, -1))
        return nodes


class TrieLogitsProcessor(LogitsProcessor):
    """A Hugging Face `LogitsProcessor` over whole [batch x beams, vocab] score blocks: at SID step t
    only the trie's continuations keep their score, everything else is -inf (a row off the trie gets
    -inf everywhere, never a free token); after `levels` steps only end-of-sequence is allowed."""

    def __init__(self, trie: CatalogueTrie, prompt_len: int, eos_token_id: int):
        self.trie, self.prompt_len, self.eos = trie, prompt_len, eos_token_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        t = input_ids.shape[1] - self.prompt_len
        out = torch.full_like(scores, NEG_INF)
        if t >= self.trie.levels:
            out[:, self.eos] = scores[:, self.eos]
            return out
        nodes = self.trie.walk(input_ids[:, self.prompt_len :])
        cand, _ = self.trie.level_candidates(t, nodes, scores)
        out[:, self.trie.level_tokens[t]] = cand
        return out
