"""Decoding constrained to the catalogue of valid Semantic IDs.

The catalogue is compiled once into a prefix trie of index tensors (`CatalogueTrie`): per SID level
l, the sorted token ids that occur there (`level_tokens[l]`, C_l of them) and a dense transition
table `child[l]` [nodes at depth l, C_l] holding the next node id, or -1 where that code does not
continue any valid SID. Masking a whole [rows, vocab] block is then one column gather, one table
lookup and one `masked_fill`: no Python loop over beams or steps' candidates. Only the C_l columns of
level l are ever candidates, so a token outside the catalogue can never be chosen, and a row whose
prefix has no continuation gets -inf everywhere (it is dropped), never a free token (MiniOneRec #50).

Decoding (`SidDecoder`):
- each prompt is prefilled ONCE (batched, left-padded, logits of the last position only);
- beam search: level 0 is chosen from the prefill's logits directly; each later level is one batched
  forward of the rows' SID prefixes over the prompt's KV cache (gathered per row), scores are
  log-softmax over the full vocabulary (as Hugging Face beam search scores them), summed over the
  L = len(SID) levels; exactly L constrained steps, after which the answer ends (end-of-sequence);
- `exact`: every valid SID's total log-probability, scoring each distinct prefix once per level
  against the same prompt cache, then the top K of the whole catalogue.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from transformers import DynamicCache, LogitsProcessor

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

    def to(self, device) -> "CatalogueTrie":
        for name in ("level_tokens", "child", "node_paths", "parent", "node_code"):
            setattr(self, name, [t.to(device) for t in getattr(self, name)])
        return self

    @classmethod
    def from_catalogue(cls, catalogue: Sequence[str], tokenizer) -> "CatalogueTrie":
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
                raise CatalogueError(f"SID token(s) {missing[:5]} of {sid!r} are not in the tokenizer's vocabulary "
                                     "(was the model trained with this SID index?)")
            rows.append([vocab[t] for t in toks])
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise CatalogueError(f"SIDs of different lengths in one catalogue: {sorted(lengths)}")
        probe = tokenizer(catalogue[0], add_special_tokens=False)["input_ids"]
        if list(probe) != rows[0]:
            raise CatalogueError(f"the tokenizer splits {catalogue[0]!r} into {probe}, not the SID tokens {rows[0]}")
        return cls(np.array(rows, dtype=np.int64), catalogue)

    # ------------------------------------------------------------------ the mask
    def level_candidates(self, level: int, nodes: torch.Tensor, logp: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
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
        nodes = self.trie.walk(input_ids[:, self.prompt_len:])
        cand, _ = self.trie.level_candidates(t, nodes, scores)
        out[:, self.trie.level_tokens[t]] = cand
        return out


@dataclass
class Timing:
    mask_s: float = 0.0
    forward_s: float = 0.0
    prefill_s: float = 0.0
    extra: dict = field(default_factory=dict)


StepFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""(row_user [R], paths [R, t]) -> log-probabilities [R, V] of the next token after prompt + path."""


def beam_search_core(trie: CatalogueTrie, first_logp: torch.Tensor, step_fn: StepFn, beams: int,
                     timing: Timing | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Constrained beam search given the prompts' next-token log-probs [B, V].

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
        paths = torch.cat([paths.gather(1, beam_idx.unsqueeze(-1).expand(-1, -1, level)),
                           trie.level_tokens[level][code_idx].unsqueeze(-1)], dim=-1)
        k = k_new
        timing.mask_s += time.perf_counter() - t0
    leaves = torch.where(torch.isfinite(scores), nodes, torch.full_like(nodes, -1))
    return leaves, scores.masked_fill(leaves < 0, NEG_INF)


def exact_core(trie: CatalogueTrie, first_logp: torch.Tensor, step_fn: StepFn, k: int, max_rows: int = 4096,
               timing: Timing | None = None) -> tuple[torch.Tensor, torch.Tensor]:
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
        # rows = (user, node) pairs in chunks of max_rows
        users_per_chunk = max(1, max_rows // n_d)
        node_chunk = n_d if users_per_chunk > 1 or n_d <= max_rows else max_rows
        for u0 in range(0, b, users_per_chunk):
            users = torch.arange(u0, min(b, u0 + users_per_chunk), device=dev)
            for n0 in range(0, n_d, node_chunk):
                nodes = torch.arange(n0, min(n_d, n0 + node_chunk), device=dev)
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
    k = min(k, trie.size)
    scores, leaves = node_scores.topk(k, dim=1)
    return leaves, scores


# ---------------------------------------------------------------------- the model side

def left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, width - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, width - len(s):] = 1
    return ids.to(device), mask.to(device)


SHARED_PREFIX_ATTN = "sid_shared_prefix"


def _shared_prefix_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention of short SID suffixes over their prompt's cached keys WITHOUT copying the prompt
    cache per row: rows are grouped per prompt (n rows each), the prompt part is one batched matmul
    per (prompt, kv head), the suffix part a tiny causal block per row; one softmax over both.
    Without a `sid_prefix` kwarg (prefill, `generate`) it is plain SDPA."""
    prefix = kwargs.pop("sid_prefix", None)
    if prefix is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)
    pk, pv = prefix.kv[module.layer_idx]  # [U, Hkv, P, d]
    pmask = prefix.mask  # [U, P] bool
    rows, heads, t, d = query.shape
    users, hkv, plen, _ = pk.shape
    n, g = rows // users, heads // hkv
    scaling = scaling if scaling is not None else d ** -0.5
    q = query.view(users, n, hkv, g, t, d).permute(0, 2, 1, 3, 4, 5)  # [U, Hkv, n, g, t, d]
    s_p = torch.matmul(q.reshape(users, hkv, n * g * t, d), pk.transpose(-1, -2)) * scaling  # [U, Hkv, M, P]
    s_p = s_p.masked_fill(~pmask[:, None, None, :], NEG_INF).view(users, hkv, n, g * t, plen)
    ks = key.view(users, n, hkv, t, d).permute(0, 2, 1, 3, 4)  # [U, Hkv, n, t, d]
    vs = value.view(users, n, hkv, t, d).permute(0, 2, 1, 3, 4)
    s_s = torch.matmul(q.reshape(users, hkv, n, g * t, d), ks.transpose(-1, -2)) * scaling  # [U, Hkv, n, g*t, t]
    qpos = torch.arange(g * t, device=query.device) % t
    s_s = s_s.masked_fill(torch.arange(t, device=query.device)[None, :] > qpos[:, None], NEG_INF)
    probs = torch.softmax(torch.cat([s_p, s_s], -1).float(), -1).to(query.dtype)
    out = torch.matmul(probs[..., :plen].reshape(users, hkv, n * g * t, plen), pv).view(users, hkv, n, g * t, d)
    out = out + torch.matmul(probs[..., plen:], vs)
    out = out.view(users, hkv, n, g, t, d).permute(0, 2, 4, 1, 3, 5).reshape(rows, t, heads, d)
    return out, None


def _register_attention() -> bool:
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(SHARED_PREFIX_ATTN, _shared_prefix_attention)
        AttentionMaskInterface.register(SHARED_PREFIX_ATTN, sdpa_mask)
        return True
    except Exception:  # pragma: no cover - older transformers
        return False


_HAS_SHARED = _register_attention()


@dataclass
class _Prefix:
    kv: list
    mask: torch.Tensor


class PromptCache:
    """The prompts' KV cache after one batched, left-padded prefill, plus a step function that
    scores short SID paths of any rows against it.

    `shared=True` (models whose attention layers take HF's pluggable attention functions, e.g.
    Qwen2/Qwen3/Llama): rows attend to their prompt's cache in place (no per-row copy). Otherwise the
    prompt cache is gathered per row into a `DynamicCache` (generic, copies)."""

    def __init__(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_rows: int = 4096,
                 shared: bool = True):
        self.model, self.max_rows = model, max_rows
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=True,
                    logits_to_keep=1)
        self.first_logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        cache = out.past_key_values
        self.kv = [(layer.keys, layer.values) for layer in cache.layers]
        self.mask = attention_mask
        self.lengths = attention_mask.sum(-1)
        self.shared = shared and _HAS_SHARED and getattr(model.config, "_attn_implementation", None) == SHARED_PREFIX_ATTN

    def _chunks(self, row_user: torch.Tensor):
        """(start, end, users, rows per user) chunks of <= max_rows rows with equal-size user groups."""
        users, counts = torch.unique_consecutive(row_user, return_counts=True)
        if self.shared and len(users) and bool((counts == counts[0]).all()):
            n = int(counts[0])
            per = max(1, self.max_rows // n)
            for u0 in range(0, len(users), per):
                u = users[u0:u0 + per]
                yield u0 * n, (u0 + len(u)) * n, u, n
        else:
            for r0 in range(0, len(row_user), self.max_rows):
                yield r0, min(len(row_user), r0 + self.max_rows), row_user[r0:r0 + self.max_rows], 1

    def step(self, row_user: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
        outs = []
        for r0, r1, users, n in self._chunks(row_user):
            pa = paths[r0:r1]
            rows, t = pa.shape
            ru = row_user[r0:r1]
            pos = self.lengths.index_select(0, ru).unsqueeze(1) + torch.arange(t, device=pa.device)
            if self.shared:
                prefix = _Prefix([(k.index_select(0, users), v.index_select(0, users)) if len(users) != len(self.mask)
                                  else (k, v) for k, v in self.kv],
                                 self.mask.index_select(0, users).bool())
                out = self.model(input_ids=pa, position_ids=pos, use_cache=False, logits_to_keep=1, sid_prefix=prefix)
            else:
                cache = DynamicCache(ddp_cache_data=[(k.index_select(0, ru), v.index_select(0, ru)) for k, v in self.kv])
                mask = torch.cat([self.mask.index_select(0, ru), torch.ones(rows, t, dtype=self.mask.dtype, device=pa.device)], 1)
                out = self.model(input_ids=pa, attention_mask=mask, position_ids=pos, past_key_values=cache,
                                 use_cache=True, logits_to_keep=1)
            outs.append(torch.log_softmax(out.logits[:, -1].float(), dim=-1))
        return torch.cat(outs) if len(outs) > 1 else outs[0]


@dataclass
class Ranked:
    sids: list[str]
    scores: list[float]


class SidDecoder:
    """Constrained SID decoding for one model + catalogue."""

    def __init__(self, model, tokenizer, catalogue: Sequence[str], max_rows: int = 4096, shared: bool = True):
        self.model, self.tokenizer, self.max_rows = model.eval(), tokenizer, max_rows
        self.device = next(model.parameters()).device
        self.trie = CatalogueTrie.from_catalogue(catalogue, tokenizer).to(self.device)
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.timing = Timing()
        self.shared = False
        if shared and _HAS_SHARED and getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager", SHARED_PREFIX_ATTN):
            model.config._attn_implementation = SHARED_PREFIX_ATTN  # SDPA unless a step passes sid_prefix
            self.shared = True

    def encode(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(x) for x in self.tokenizer(list(texts), add_special_tokens=False)["input_ids"]]

    def _prefill(self, prompt_ids: Sequence[Sequence[int]]) -> PromptCache:
        ids, mask = left_pad(prompt_ids, self.pad_id, self.device)
        t0 = time.perf_counter()
        pc = PromptCache(self.model, ids, mask, self.max_rows, self.shared)
        self.timing.prefill_s += time.perf_counter() - t0
        return pc

    def _ranked(self, leaves: torch.Tensor, scores: torch.Tensor) -> list[Ranked]:
        out = []
        for lrow, srow in zip(leaves.tolist(), scores.tolist()):
            keep = [(l, s) for l, s in zip(lrow, srow) if l >= 0]
            out.append(Ranked([self.trie.labels[l] for l, _ in keep], [float(s) for _, s in keep]))
        return out

    @torch.no_grad()
    def beam(self, prompt_ids: Sequence[Sequence[int]], beams: int) -> list[Ranked]:
        pc = self._prefill(prompt_ids)
        leaves, scores = beam_search_core(self.trie, pc.first_logp, pc.step, beams, self.timing)
        return self._ranked(leaves, scores)

    @torch.no_grad()
    def exact(self, prompt_ids: Sequence[Sequence[int]], k: int) -> list[Ranked]:
        pc = self._prefill(prompt_ids)
        leaves, scores = exact_core(self.trie, pc.first_logp, pc.step, k, self.max_rows, self.timing)
        return self._ranked(leaves, scores)

    def rank(self, prompt_ids: Sequence[Sequence[int]], beams: int, k: int, method: str = "beam") -> list[Ranked]:
        if method == "exact":
            return self.exact(prompt_ids, k)
        ranked = self.beam(prompt_ids, max(beams, k))
        return [Ranked(r.sids[:k], r.scores[:k]) for r in ranked]

    @torch.no_grad()
    def think(self, prompt_ids: Sequence[Sequence[int]], max_new_tokens: int, sample: bool = False,
              temperature: float = 0.7, top_p: float = 0.95, seed: int = 0) -> tuple[list[list[int]], list[str]]:
        """Reasoning until `</think>` (or max_new_tokens, then `</think>` is appended), greedy or
        sampled. Returns the SID-phase prompts (prompt + reasoning + `</think>\\n\\n`, as in training's
        `<think>\\n…\\n</think>\\n\\n{SID}`) and the reasoning texts."""
        tok = self.tokenizer
        close = tok("</think>", add_special_tokens=False)["input_ids"]
        if len(close) != 1:
            raise CatalogueError("thinking mode needs '</think>' to be one token of the tokenizer")
        close_id = close[0]
        sep = tok("\n\n", add_special_tokens=False)["input_ids"]
        stops = [close_id] + [t for t in {tok.eos_token_id, self.pad_id} if t is not None]
        ids, mask = left_pad(prompt_ids, self.pad_id, self.device)
        kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p) if sample else dict(do_sample=False)
        if sample:
            torch.manual_seed(seed)
        gen = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens,
                                  eos_token_id=stops, pad_token_id=self.pad_id, num_beams=1, **kwargs)
        new = gen[:, ids.shape[1]:].tolist()
        sid_prompts, texts = [], []
        stop_set = set(stops)
        for p, row in zip(prompt_ids, new):
            cut = next((i for i, t in enumerate(row) if t in stop_set), len(row))
            reasoning = row[:cut]
            text = tok.decode(reasoning, skip_special_tokens=True)
            text = text.strip()
            if text.startswith("<think>"):
                text = text[len("<think>"):].strip()
            texts.append(text)
            sid_prompts.append(list(p) + reasoning + [close_id] + sep)
        return sid_prompts, texts
