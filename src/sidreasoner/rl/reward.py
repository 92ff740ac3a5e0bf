"""Stage 3 rewards, implemented once and used by every RL backend.

`compute_score(data_source, solution_str, ground_truth, extra_info=None, **kwargs)` has verl's
custom-reward signature; `trl_reward(completions, ground_truth, **kwargs)` is a TRL reward function.

For rule, format and ranking (the strict parse), the answer is the text after the LAST `</think>` of
the whole reply, stripped of whitespace and trailing end-of-turn markers. It must be exactly one SID
with the target's number of levels (`parse_sid`, strict): surrounding words, several SIDs, a partial
SID (fewer levels) or a malformed one all count as "no SID" and score 0. A response with an opened
`<think>` and no `</think>` (reasoning cut off) has no answer; a response with no think tags at all
is its own answer (the non-thinking format). The research kind parses as the research code did.

Reward kinds:
  research the research code's reward as it ran (the paper presets' default). It reads only the last
           50 characters of the reply (`RESEARCH_WINDOW`, after dropping end-of-turn markers, which
           verl's and TRL's decoding already skip) and needs a `</think>` there: no `</think>` in the
           window (no think block, reasoning cut off, or more than 50 characters of answer) scores 0.
           After the FIRST `</think>` in the window, the first L `<…>` tokens (regex `<[^>]+>`, L = the
           target's level count, 3 in the paper) are the answer; other text around or between them is
           ignored, a second SID is ignored, fewer than L tokens score 0. Score: the prefix rule on
           the tokens compared as strings (0.25 / 0.5 / 1.0 at L = 3; a mismatch at level 1 gives 0
           whatever follows) plus 0.1 when the L tokens form a catalogue SID (the research checks the
           two prefix steps against its item list, which is the same as catalogue membership).
  rule     the paper's prefix rule on the strict parse (the demo's default): m leading levels matching
           the target out of L give 2**(m - L) (0.25 / 0.5 / 1.0 for m = 1 / 2 / 3 when L = 3, the
           paper's values; L = 4 gives 0.125 / 0.25 / 0.5 / 1.0; m = 0 gives 0), plus 0.1 when the
           generated SID exists in the catalogue (the run's SID index's catalogue). 0 when no SID parses.
  format   1.0 when the response is `<think>…</think>` followed by exactly one well-formed SID with
           the target's level count, else 0.0 (no target match, no catalogue).
  ranking  MiniOneRec's ranking-aware reward (its `rule_reward` + `ndcg_rule_reward`): 1.0 for an
           exact match; within a group of G completions of the same prompt that holds at least one
           hit, the completion at group position i that misses gets -(1/log2(i+2)) / sum_j 1/log2(j+2)
           (groups without a hit get 0). MiniOneRec's group positions are beam ranks; under sampled
           rollouts (what TRL and verl do here) the position is the sampling order. `compute_score`
           sees one response at a time, so there it returns only the exact-match part; the group
           penalty needs the whole group (`trl_reward` and `ranking_penalties`).
"""

from __future__ import annotations

import functools
import json
import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

from sidreasoner.artifacts import SidIndex
from sidreasoner.sid.codes import parse_sid, sid_tokens

THINK_OPEN, THINK_CLOSE = "<think>", "</think>"
END_MARKERS = ("<|im_end|>", "<|endoftext|>")
IN_CATALOGUE_BONUS = 0.1
KINDS = ("research", "rule", "format", "ranking")
CATALOGUE_KINDS = ("research", "rule")  # kinds that need the SID catalogue
RESEARCH_WINDOW = 50  # characters of the reply the research reward reads
_ANGLE_TOKEN = re.compile(r"<[^>]+>")
CATALOGUE_ENV = "SIDREASONER_CATALOGUE"  # path of a SID index folder or of its catalogue file


# ---------------------------------------------------------------- catalogue


@functools.lru_cache(maxsize=8)
def _load_catalogue(path: str) -> frozenset[str]:
    p = Path(path)
    if p.is_dir():
        p = SidIndex(p).catalogue_path()
    if not p.exists():
        raise FileNotFoundError(f"SID catalogue not found: {p} (give a SID index folder or its {SidIndex.CATALOGUE})")
    return frozenset(json.loads(p.read_text()))


def load_catalogue(path: str | Path | SidIndex) -> frozenset[str]:
    """The set of valid SIDs from a SID index folder or the catalogue file itself, loaded once per path."""
    return _load_catalogue(str(Path(path).expanduser().resolve()))


def _resolve_catalogue(catalogue, extra_info: dict | None) -> frozenset[str] | None:
    if catalogue is not None and not isinstance(catalogue, (str, os.PathLike)):
        return frozenset(catalogue)
    path = catalogue or (extra_info or {}).get("catalogue_path") or os.environ.get(CATALOGUE_ENV)
    return load_catalogue(path) if path else None


# ---------------------------------------------------------------- parsing


def extract_answer(solution_str: str) -> str | None:
    """The answer text: after the last `</think>`; None when reasoning was opened and never closed."""
    if not isinstance(solution_str, str):
        return None
    if THINK_CLOSE in solution_str:
        answer = solution_str.rsplit(THINK_CLOSE, 1)[1]
    elif THINK_OPEN in solution_str:
        return None
    else:
        answer = solution_str
    answer = answer.strip()
    changed = True
    while changed:
        changed = False
        for marker in END_MARKERS:
            if answer.endswith(marker):
                answer = answer[: -len(marker)].rstrip()
                changed = True
    return answer


def parse_answer(solution_str: str, levels: int | None) -> list[int] | None:
    answer = extract_answer(solution_str)
    return None if answer is None else parse_sid(answer, levels=levels)


def research_answer(solution_str: str, levels: int) -> list[str] | None:
    """The research reward's answer: the first `levels` `<…>` tokens after the first `</think>` in the
    reply's last RESEARCH_WINDOW characters; None when there is no `</think>` there or fewer tokens."""
    if not isinstance(solution_str, str):
        return None
    for marker in END_MARKERS:
        solution_str = solution_str.replace(marker, "")
    window = solution_str[-RESEARCH_WINDOW:]
    if THINK_CLOSE not in window:
        return None
    tokens = _ANGLE_TOKEN.findall(window.split(THINK_CLOSE, 1)[1])[:levels]
    return tokens if len(tokens) == levels else None


def prefix_score(matched: int, levels: int) -> float:
    """2**(matched - levels) for matched >= 1 (0.25/0.5/1.0 at 3 levels), 0 for matched == 0."""
    return 0.0 if matched <= 0 else 2.0 ** (matched - levels)


def _matched_prefix(pred: Sequence, target: Sequence) -> int:
    m = 0
    for p, t in zip(pred, target, strict=False):
        if p != t:
            break
        m += 1
    return m


def _well_formed_think(solution_str: str) -> bool:
    s = solution_str.lstrip()
    return (
        s.startswith(THINK_OPEN)
        and s.count(THINK_OPEN) == 1
        and s.count(THINK_CLOSE) == 1
        and s.index(THINK_OPEN) < s.index(THINK_CLOSE)
    )


# ---------------------------------------------------------------- scores


def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: str,
    extra_info: dict | None = None,
    kind: str | None = None,
    catalogue=None,
    **_: object,
) -> dict:
    """verl's custom reward signature. Returns {"score", "parsed", "matched_levels", "prefix",
    "in_catalogue", "exact"} (numbers only, so verl can aggregate them).

    The catalogue: `catalogue` (a set of SIDs, or a path given through verl's
    `custom_reward_function.reward_kwargs`), else `extra_info["catalogue_path"]`, else
    $SIDREASONER_CATALOGUE. The research and rule rewards require one. `kind` likewise: argument, else
    `extra_info["reward_kind"]`, else "rule"."""
    kind = kind or (extra_info or {}).get("reward_kind") or "rule"
    if kind not in KINDS:
        raise ValueError(f"unknown reward kind {kind!r}; allowed: {', '.join(KINDS)}")
    target = parse_sid(ground_truth)
    if target is None:
        raise ValueError(f"ground truth {ground_truth!r} is not a SID")
    if kind == "research":
        return _research_score(solution_str, target, _require_catalogue(kind, catalogue, extra_info))
    pred = parse_answer(solution_str, levels=len(target))
    matched = _matched_prefix(pred, target) if pred is not None else 0
    exact = float(pred is not None and matched == len(target))
    out = {
        "parsed": float(pred is not None),
        "matched_levels": float(matched),
        "prefix": prefix_score(matched, len(target)),
        "in_catalogue": 0.0,
        "exact": exact,
    }
    if kind == "format":
        out["score"] = float(pred is not None and _well_formed_think(solution_str))
        return out
    if kind == "ranking":
        out["score"] = exact
        return out
    cat = _require_catalogue(kind, catalogue, extra_info)
    if pred is not None:
        answer = extract_answer(solution_str)
        out["in_catalogue"] = float(answer in cat)
    out["score"] = out["prefix"] + IN_CATALOGUE_BONUS * out["in_catalogue"] if pred is not None else 0.0
    return out


def _require_catalogue(kind: str, catalogue, extra_info: dict | None) -> frozenset[str]:
    cat = _resolve_catalogue(catalogue, extra_info)
    if cat is None:
        raise ValueError(
            f"the {kind} reward needs the SID catalogue: pass catalogue=, extra_info['catalogue_path'] "
            f"or set ${CATALOGUE_ENV}"
        )
    return cat


def _research_score(solution_str: str, target: Sequence[int], cat: frozenset[str]) -> dict:
    levels = len(target)
    answer = research_answer(solution_str, levels)
    if answer is None:
        return {"score": 0.0, "parsed": 0.0, "matched_levels": 0.0, "prefix": 0.0, "in_catalogue": 0.0, "exact": 0.0}
    matched = _matched_prefix(answer, sid_tokens(target))
    prefix = prefix_score(matched, levels)
    in_catalogue = float("".join(answer) in cat)
    return {
        "score": prefix + IN_CATALOGUE_BONUS * in_catalogue,
        "parsed": 1.0,
        "matched_levels": float(matched),
        "prefix": prefix,
        "in_catalogue": in_catalogue,
        "exact": float(matched == levels),
    }


def ranking_penalties(group_size: int) -> list[float]:
    """MiniOneRec's per-position penalty for a miss: -(1/log2(i+2)) / sum_j 1/log2(j+2)."""
    w = [1.0 / math.log2(i + 2) for i in range(group_size)]
    return [-x / sum(w) for x in w]


def _groups(prompts: Sequence | None, n: int) -> list[range]:
    """Consecutive runs of the same prompt (TRL's sampler puts a prompt's G completions together)."""
    if prompts is None:
        return [range(n)]
    out, start = [], 0
    for i in range(1, n + 1):
        if i == n or str(prompts[i]) != str(prompts[start]):
            out.append(range(start, i))
            start = i
    return out


def completion_text(completion) -> str:
    """TRL passes a string (plain prompts) or a list of messages (conversational prompts)."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    if isinstance(completion, dict):
        return completion.get("content", "")
    return str(completion)


def make_trl_reward(kind: str = "rule", catalogue=None):
    """A TRL reward function bound to a reward kind and catalogue."""
    if kind not in KINDS:
        raise ValueError(f"unknown reward kind {kind!r}; allowed: {', '.join(KINDS)}")
    cat = _resolve_catalogue(catalogue, None) if kind in CATALOGUE_KINDS else None

    def sid_reward(completions, ground_truth, prompts=None, **kwargs) -> list[float]:
        texts = [completion_text(c) for c in completions]
        parts = [
            compute_score("sidreasoner", t, g, kind=kind, catalogue=cat)
            for t, g in zip(texts, ground_truth, strict=True)
        ]
        scores = [p["score"] for p in parts]
        if kind == "ranking":
            for group in _groups(prompts, len(texts)):
                if any(parts[i]["exact"] for i in group):
                    pen = ranking_penalties(len(group))
                    for pos, i in enumerate(group):
                        if not parts[i]["exact"]:
                            scores[i] = pen[pos]
        log_metric = kwargs.get("log_metric")
        if callable(log_metric) and parts:
            for key in ("parsed", "exact", "in_catalogue", "matched_levels"):
                log_metric(f"sid/{key}", sum(p[key] for p in parts) / len(parts))
        return scores

    sid_reward.__name__ = f"sid_{kind}_reward"
    return sid_reward


def trl_reward(completions, ground_truth, **kwargs) -> list[float]:
    """TRL reward function with the rule reward; the catalogue from $SIDREASONER_CATALOGUE (or
    `catalogue_path` among the dataset columns). Prefer `make_trl_reward(kind, catalogue)`."""
    paths = kwargs.get("catalogue_path")
    catalogue = paths[0] if paths else None
    return make_trl_reward("rule", catalogue)(completions, ground_truth, **kwargs)
