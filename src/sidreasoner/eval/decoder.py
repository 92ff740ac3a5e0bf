"""Constrained SID decoding with a model (`SidDecoder`), over the catalogue's trie (`eval.trie`) with
the model-independent searches of `eval.search`:

- each prompt is prefilled ONCE (batched, left-padded, logits of the last position only);
- beam search: level 0 is chosen from the prefill's logits directly; each later level is one batched
  forward of the rows' SID prefixes over the prompt's KV cache (gathered per row, or attended in
  place with the shared-prompt attention of `eval.attention`);
- `exact`: every valid SID's total log-probability against the same prompt cache, then the top K of
  the whole catalogue;
- `think`: reasoning until `</think>` before the SID phase.

`score_suffix=True` also scores what the research code's constrained beam search generates after the
SID, "\n" then end-of-sequence (`research_suffix`), into each beam's score and ranks by the total.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from transformers import DynamicCache

from sidreasoner.eval.attention import SHARED_PREFIX_ATTN, SharedPrefix, register_shared_prefix_attention
from sidreasoner.eval.search import Timing, beam_search_core, exact_core, left_pad
from sidreasoner.eval.trie import CatalogueError, CatalogueTrie


class PromptCache:
    """The prompts' KV cache after one batched, left-padded prefill, plus a step function that
    scores short SID paths of any rows against it.

    `shared=True` (models whose attention layers take HF's pluggable attention functions, e.g.
    Qwen2/Qwen3/Llama): rows attend to their prompt's cache in place (no per-row copy). Otherwise the
    prompt cache is gathered per row into a `DynamicCache` (generic, copies)."""

    def __init__(
        self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, max_rows: int = 4096, shared: bool = True
    ):
        self.model, self.max_rows = model, max_rows
        pos = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        out = model(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=pos, use_cache=True, logits_to_keep=1
        )
        self.first_logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)
        cache = out.past_key_values
        self.kv = [(layer.keys, layer.values) for layer in cache.layers]
        self.mask = attention_mask
        self.lengths = attention_mask.sum(-1)
        self.shared = (
            shared
            and getattr(model.config, "_attn_implementation", None) == SHARED_PREFIX_ATTN
            and register_shared_prefix_attention()
        )

    def _chunks(self, row_user: torch.Tensor):
        """(start, end, users, rows per user) chunks of <= max_rows rows with equal-size user groups."""
        users, counts = torch.unique_consecutive(row_user, return_counts=True)
        if self.shared and len(users) and bool((counts == counts[0]).all()):
            n = int(counts[0])
            per = max(1, self.max_rows // n)
            for u0 in range(0, len(users), per):
                u = users[u0 : u0 + per]
                yield u0 * n, (u0 + len(u)) * n, u, n
        else:
            for r0 in range(0, len(row_user), self.max_rows):
                yield r0, min(len(row_user), r0 + self.max_rows), row_user[r0 : r0 + self.max_rows], 1

    def step(self, row_user: torch.Tensor, paths: torch.Tensor) -> torch.Tensor:
        outs = []
        for r0, r1, users, _n in self._chunks(row_user):
            pa = paths[r0:r1]
            rows, t = pa.shape
            ru = row_user[r0:r1]
            pos = self.lengths.index_select(0, ru).unsqueeze(1) + torch.arange(t, device=pa.device)
            if self.shared:
                prefix = SharedPrefix(
                    [
                        (k.index_select(0, users), v.index_select(0, users)) if len(users) != len(self.mask) else (k, v)
                        for k, v in self.kv
                    ],
                    self.mask.index_select(0, users).bool(),
                )
                out = self.model(input_ids=pa, position_ids=pos, use_cache=False, logits_to_keep=1, sid_prefix=prefix)
            else:
                cache = DynamicCache(
                    ddp_cache_data=[(k.index_select(0, ru), v.index_select(0, ru)) for k, v in self.kv]
                )
                mask = torch.cat(
                    [self.mask.index_select(0, ru), torch.ones(rows, t, dtype=self.mask.dtype, device=pa.device)], 1
                )
                out = self.model(
                    input_ids=pa,
                    attention_mask=mask,
                    position_ids=pos,
                    past_key_values=cache,
                    use_cache=True,
                    logits_to_keep=1,
                )
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
        self._suffix: list[int] | None = None
        self.shared = False
        if (
            shared
            and getattr(model.config, "_attn_implementation", None) in ("sdpa", "eager", SHARED_PREFIX_ATTN)
            and register_shared_prefix_attention()
        ):
            model.config._attn_implementation = SHARED_PREFIX_ATTN  # SDPA unless a step passes sid_prefix
            self.shared = True

    @property
    def research_suffix(self) -> list[int]:
        """Token ids after a SID in the research code's constrained decoding: the tokens of "\n" as the
        tokenizer splits "{SID}\n", then end-of-sequence."""
        if self._suffix is None:
            sid = self.trie.labels[0]
            ids = list(self.tokenizer(sid + "\n", add_special_tokens=False)["input_ids"])
            head = self.trie.token_matrix[0].tolist()
            if ids[: len(head)] != head or len(ids) == len(head):
                raise CatalogueError(
                    f"the tokenizer splits {sid + chr(10)!r} into {ids}, not the SID tokens {head} + newline"
                )
            if self.tokenizer.eos_token_id is None:
                raise CatalogueError("score_suffix needs a tokenizer with an end-of-sequence token")
            self._suffix = ids[len(head) :] + [int(self.tokenizer.eos_token_id)]
        return self._suffix

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
        for lrow, srow in zip(leaves.tolist(), scores.tolist(), strict=True):
            keep = [(leaf, s) for leaf, s in zip(lrow, srow, strict=True) if leaf >= 0]
            out.append(Ranked([self.trie.labels[leaf] for leaf, _ in keep], [float(s) for _, s in keep]))
        return out

    @torch.no_grad()
    def beam(self, prompt_ids: Sequence[Sequence[int]], beams: int, score_suffix: bool = False) -> list[Ranked]:
        pc = self._prefill(prompt_ids)
        leaves, scores = beam_search_core(
            self.trie, pc.first_logp, pc.step, beams, self.timing, suffix=self.research_suffix if score_suffix else ()
        )
        return self._ranked(leaves, scores)

    @torch.no_grad()
    def exact(self, prompt_ids: Sequence[Sequence[int]], k: int, score_suffix: bool = False) -> list[Ranked]:
        pc = self._prefill(prompt_ids)
        leaves, scores = exact_core(
            self.trie,
            pc.first_logp,
            pc.step,
            k,
            self.max_rows,
            self.timing,
            suffix=self.research_suffix if score_suffix else (),
        )
        return self._ranked(leaves, scores)

    def rank(
        self, prompt_ids: Sequence[Sequence[int]], beams: int, k: int, method: str = "beam", score_suffix: bool = False
    ) -> list[Ranked]:
        """Top k SIDs per prompt: `beam` search with `beams` beams (at least k), or `exact`."""
        if method == "exact":
            return self.exact(prompt_ids, k, score_suffix)
        ranked = self.beam(prompt_ids, max(beams, k), score_suffix)
        return [Ranked(r.sids[:k], r.scores[:k]) for r in ranked]

    @torch.no_grad()
    def think(
        self,
        prompt_ids: Sequence[Sequence[int]],
        max_new_tokens: int,
        sample: bool = False,
        temperature: float = 0.7,
        top_p: float = 0.95,
        seed: int = 0,
        close: str = "generated",
    ) -> tuple[list[list[int]], list[str]]:
        """Reasoning until `</think>` (or max_new_tokens, then `</think>` is appended), greedy or
        sampled. Returns the SID-phase prompts and the reasoning texts.

        close="generated": prompt + the reasoning's tokens + `</think>\\n\\n` (as in training's
        `<think>\\n…\\n</think>\\n\\n{SID}`). close="research" (the research code's evaluation): the text
        of prompt + reasoning, cut before `</think>`, trailing whitespace stripped, then
        "\\n</think>\\n\\n", tokenized again; a reasoning that never closed (token budget or
        end-of-sequence) also loses its last character there, as the research code's cut does."""
        if close not in ("generated", "research"):
            raise ValueError(f"close must be 'generated' or 'research', got {close!r}")
        tok = self.tokenizer
        close_ids = tok("</think>", add_special_tokens=False)["input_ids"]
        if len(close_ids) != 1:
            raise CatalogueError("thinking mode needs '</think>' to be one token of the tokenizer")
        close_id = close_ids[0]
        sep = tok("\n\n", add_special_tokens=False)["input_ids"]
        stops = [close_id] + [t for t in {tok.eos_token_id, self.pad_id} if t is not None]
        ids, mask = left_pad(prompt_ids, self.pad_id, self.device)
        kwargs = dict(do_sample=True, temperature=temperature, top_p=top_p) if sample else dict(do_sample=False)
        if sample:
            torch.manual_seed(seed)
        gen = self.model.generate(
            input_ids=ids,
            attention_mask=mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=stops,
            pad_token_id=self.pad_id,
            num_beams=1,
            **kwargs,
        )
        new = gen[:, ids.shape[1] :].tolist()
        sid_prompts, texts = [], []
        stop_set = set(stops)
        for p, row in zip(prompt_ids, new, strict=True):
            cut = next((i for i, t in enumerate(row) if t in stop_set), len(row))
            reasoning = row[:cut]
            text = tok.decode(reasoning, skip_special_tokens=True)
            text = text.strip()
            if text.startswith("<think>"):
                text = text[len("<think>") :].strip()
            texts.append(text)
            if close == "research":
                closed = cut < len(row) and row[cut] == close_id
                sid_prompts.append(self._research_close(p, reasoning, closed))
            else:
                sid_prompts.append(list(p) + reasoning + [close_id] + sep)
        return sid_prompts, texts

    def _research_close(self, prompt: Sequence[int], reasoning: Sequence[int], closed: bool) -> list[int]:
        tok = self.tokenizer
        generated = tok.decode(list(reasoning), skip_special_tokens=False) + ("</think>" if closed else "")
        text = tok.decode(list(prompt), skip_special_tokens=False) + generated.strip()
        end = text.find("</think>")  # -1 when the reasoning never closed: the last character goes
        return list(tok(text[:end].strip() + "\n</think>\n\n", add_special_tokens=False)["input_ids"])
