"""Shared-prompt attention for constrained SID decoding: many short SID suffixes attend to their
prompt's cached keys and values in place, without copying the prompt cache per row.

It is a Hugging Face pluggable attention function (`AttentionInterface`), registered under
`SHARED_PREFIX_ATTN` by `register_shared_prefix_attention()`; the decoder calls that before it
switches a model to this attention. Without a `sid_prefix` keyword (prefill, `generate`) the
function is plain SDPA.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

NEG_INF = float("-inf")
SHARED_PREFIX_ATTN = "sid_shared_prefix"


@dataclass
class SharedPrefix:
    """The `sid_prefix` keyword of a forward pass: per layer, the prompts' cached (keys, values)
    [U, Hkv, P, d], and the prompts' padding mask [U, P] (bool)."""

    kv: list
    mask: torch.Tensor


def _shared_prefix_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, **kwargs):
    """Attention of short SID suffixes over their prompt's cached keys WITHOUT copying the prompt
    cache per row: rows are grouped per prompt (n rows each), the prompt part is one batched matmul
    per (prompt, kv head), the suffix part a tiny causal block per row; one softmax over both.
    Without a `sid_prefix` kwarg (prefill, `generate`) it is plain SDPA."""
    prefix = kwargs.pop("sid_prefix", None)
    if prefix is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    pk, pv = prefix.kv[module.layer_idx]  # [U, Hkv, P, d]
    pmask = prefix.mask  # [U, P] bool
    rows, heads, t, d = query.shape
    users, hkv, plen, _ = pk.shape
    n, g = rows // users, heads // hkv
    scaling = scaling if scaling is not None else d**-0.5
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


@functools.cache
def register_shared_prefix_attention() -> bool:
    """Register the shared-prefix attention (and SDPA's mask for it) with transformers, once; True
    when it is available (False on a transformers without pluggable attention)."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

        AttentionInterface.register(SHARED_PREFIX_ATTN, _shared_prefix_attention)
        AttentionMaskInterface.register(SHARED_PREFIX_ATTN, sdpa_mask)
        return True
    except Exception:  # pragma: no cover - older transformers
        return False
