"""Evaluation decode benchmark: our constrained SID decoding vs the research code's way (HF
`generate` beam search + a `prefix_allowed_tokens_fn` hash-dict constraint, as MiniOneRec/SIDReasoner
write it). One run, same model, same inputs.

Model: the built-in tiny Qwen3 architecture at ~3.9M parameters (hidden 256, 4 layers), RANDOM INIT
(untrained: fine for speed; top-K agreement is checked on the same untrained model). Catalogue:
3,500 items, 3-level SIDs, codebook 32 (the demo preset's). 64 users, ~130-token prompts, batch 8.

    .venv/bin/python benchmarks/eval_bench.py [--users 64] [--threads 2] [--out benchmarks/out/eval_bench.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from _titles import generate_titles  # noqa: E402

from sidreasoner.config import TinyModelConfig  # noqa: E402
from sidreasoner.eval.decoder import SidDecoder  # noqa: E402
from sidreasoner.model import prompts, tiny  # noqa: E402
from sidreasoner.sid.codes import format_sid, sid_tokens  # noqa: E402
from sidreasoner.train.sft import extend_tokenizer  # noqa: E402


def build(n_items: int, codebook: int, levels: int, seed: int):
    rng = np.random.default_rng(seed)
    seen: set = set()
    while len(seen) < n_items:
        seen.add(tuple(int(x) for x in rng.integers(0, codebook, levels)))
    codes = sorted(seen)
    titles = generate_titles(n_items, seed)
    tok = tiny.train_tokenizer(list(titles) + prompts.ALL_WORDING, 2048)
    cfg = TinyModelConfig(
        hidden_size=256,
        num_layers=4,
        num_heads=4,
        num_kv_heads=2,
        head_dim=64,
        intermediate_size=768,
        vocab_size=2048,
        max_positions=2048,
    )
    model = tiny.build_model(cfg, tok, seed)
    all_codes = [sid_tokens([0] * lvl + [c])[lvl] for lvl in range(levels) for c in range(codebook)]
    ids = extend_tokenizer(model, tok, all_codes)
    with torch.no_grad():  # random (not mean) SID rows, as any trained model has: no exact logit ties
        w = model.get_input_embeddings().weight
        w[ids] = torch.randn(len(ids), w.shape[1], generator=torch.Generator().manual_seed(seed)) * 0.02
    return model.eval(), tok, [format_sid(c) for c in codes]


def hf_baseline(model, tok, prompt_texts, catalogue, beams, k, batch):
    """MiniOneRec-style: a dict from the generated prefix to its allowed next tokens."""
    sid_ids = [tok(s, add_special_tokens=False)["input_ids"] for s in catalogue]
    levels = len(sid_ids[0])
    hash_dict: dict[tuple, set] = {}
    for ids in sid_ids:
        for i in range(levels):
            hash_dict.setdefault(tuple(ids[:i]), set()).add(ids[i])
    allowed_lists = {key: sorted(v) for key, v in hash_dict.items()}
    tok.padding_side = "left"
    out, t_constraint = [], 0.0
    for s in range(0, len(prompt_texts), batch):
        enc = tok(prompt_texts[s : s + batch], return_tensors="pt", padding=True, add_special_tokens=False)
        plen = enc["input_ids"].shape[1]

        def allowed(_b, input_ids, plen=plen):
            nonlocal t_constraint
            t0 = time.perf_counter()
            r = allowed_lists.get(tuple(input_ids[plen:].tolist()), [tok.eos_token_id])
            t_constraint += time.perf_counter() - t0
            return r

        gen = model.generate(
            **enc,
            num_beams=beams,
            num_return_sequences=beams,
            max_new_tokens=levels,
            do_sample=False,
            prefix_allowed_tokens_fn=allowed,
            length_penalty=0.0,
            early_stopping=True,
            pad_token_id=tok.pad_token_id,
        )
        n = len(enc["input_ids"])
        for u in range(n):
            out.append([tok.decode(x) for x in gen[u * beams : (u + 1) * beams, plen:]][:k])
    return out, t_constraint


def timed(fn):
    t0 = time.perf_counter()
    r = fn()
    return r, time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--items", type=int, default=3500)
    ap.add_argument("--codebook", type=int, default=32)
    ap.add_argument("--users", type=int, default=64)
    ap.add_argument("--history", type=int, default=20)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--threads", type=int, default=1, help="1: the machine is shared; 2 threads on 2 busy cores thrash")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="benchmarks/out/eval_bench.json")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    model, tok, catalogue = build(args.items, args.codebook, 3, args.seed)
    n_params = sum(p.numel() for p in model.parameters())
    rng = np.random.default_rng(args.seed + 1)
    texts = [
        prompts.render_prompt(
            tok, prompts.next_sid_question([catalogue[i] for i in rng.choice(len(catalogue), args.history)])
        )
        for _ in range(args.users)
    ]
    dec = SidDecoder(model, tok, catalogue)
    ids = dec.encode(texts)
    lens = [len(x) for x in ids]
    res: dict = {
        "parameters": n_params,
        "items": len(catalogue),
        "users": args.users,
        "batch": args.batch,
        "prompt_tokens_mean": float(np.mean(lens)),
        "threads": args.threads,
        "model": "random init (untrained)",
    }
    print(json.dumps(res))

    def ours(beams, k, method="beam"):
        out = []
        for s in range(0, len(ids), args.batch):
            out.extend(r.sids for r in dec.rank(ids[s : s + args.batch], beams, k, method))
        return out

    ours(10, 10)  # warm-up
    for beams in (10, 50):
        with torch.no_grad():
            (base, t_con), t_base = timed(
                lambda beams=beams: hf_baseline(model, tok, texts, catalogue, beams, 10, args.batch)
            )
        dec.timing.__init__()
        mine, t_ours = timed(lambda beams=beams: ours(beams, 10))
        agree = sum(a == b for a, b in zip(base, mine, strict=True)) / len(base)
        row = {
            "baseline_users_per_s": args.users / t_base,
            "ours_users_per_s": args.users / t_ours,
            "speedup": t_base / t_ours,
            "identical_top10_share": agree,
            "baseline_constraint_share": t_con / t_base,
            "ours_mask_share": dec.timing.mask_s / t_ours,
            "ours_prefill_share": dec.timing.prefill_s / t_ours,
        }
        res[f"beam{beams}"] = row
        print(beams, json.dumps(row))
        if beams == 10:
            res["beam10_top10"] = mine
    dec.timing.__init__()
    exact, t_exact = timed(lambda: ours(10, 10, "exact"))
    res["exact"] = {
        "users_per_s": args.users / t_exact,
        "speedup_vs_baseline_beam50": res["beam50"]["baseline_users_per_s"]
        and (args.users / t_exact) / res["beam50"]["baseline_users_per_s"],
        "beam10_top10_differs_share": sum(a != b for a, b in zip(res["beam10_top10"], exact, strict=True)) / len(exact),
        "beam10_top1_differs_share": sum(a[:1] != b[:1] for a, b in zip(res["beam10_top10"], exact, strict=True))
        / len(exact),
        "beam10_top10_set_recall": float(
            np.mean([len(set(a) & set(b)) / 10 for a, b in zip(res["beam10_top10"], exact, strict=True)])
        ),
    }
    del res["beam10_top10"]
    print("exact", json.dumps(res["exact"]))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
