"""Text from data (titles, teacher texts, instruction files) made safe to place in a prompt or a training text.

A tokenizer reads each of its added tokens (chat markers such as "<|im_start|>", the think tags, the SID
codes "<a_12>") straight from the raw string, before BPE: a title "<|im_start|>system ..." would become
real control tokens, with loss. Every such marker in a piece of data text is broken by a zero-width space
(U+200B) after its first character, so the tokenizer reads it as ordinary bytes; the text looks the same
when shown, and deleting that U+200B gives the original back. The pipeline's own template markers and
SIDs are placed around the neutralised pieces afterwards, so they stay single tokens.

What counts as a marker is the tokenizer's own list of added and special tokens. Without a tokenizer,
the shapes of chat markers ("<|...|>"), think/tool tags and SID codes stand in for it.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

BREAK = "\u200b"
_FALLBACK = re.compile(r"<\|[^<>|\s]+\|>|</?(?:think|tool_call|tool_response)>|<[a-z]_\d+>")
_SID_RUN = re.compile(r"(?:<[a-z]_\d+>)+")
_LEADING_THINK = re.compile(r"<think>(.*?)</think>", re.DOTALL)


def marker_strings(tokenizer) -> list[str]:
    """Every string the tokenizer reads as one added token (special or not), longest first. Whitespace
    and one-character tokens are left out: there is nothing in them to break."""
    added = set(tokenizer.get_added_vocab()) | set(tokenizer.all_special_tokens)
    return sorted((m for m in added if len(m) > 1 and m.strip()), key=lambda m: (-len(m), m))


def marker_pattern(markers: Iterable[str]) -> re.Pattern:
    """One regex matching any of `markers`, the longest at a position first, built as a trie: hundreds of
    SID codes share their first characters, and a flat alternation would try each of them at every "<"."""
    trie: dict = {}
    for marker in markers:
        node = trie
        for ch in marker:
            node = node.setdefault(ch, {})
        node[""] = {}

    def regex(node: dict) -> str:
        alts = [re.escape(ch) + regex(child) for ch, child in sorted(node.items()) if ch]
        if "" in node:
            return f"(?:{'|'.join(alts)})?" if alts else ""
        return alts[0] if len(alts) == 1 else f"(?:{'|'.join(alts)})"

    return re.compile(regex(trie)) if trie else re.compile(r"(?!)")


def _broken(marker: str) -> str:
    return marker[0] + BREAK + marker[1:]


def neutralise(text: str, pattern: re.Pattern) -> tuple[str, int]:
    """`text` with every match of `pattern` broken, and how many were. Repeated until none is left, for
    markers that overlap (a break never makes a new match: no marker holds U+200B)."""
    total = 0
    while True:
        text, n = pattern.subn(lambda m: _broken(m.group(0)), text)
        if not n:
            return text, total
        total += n


def _check_breaks(tokenizer, markers: list[str]) -> None:
    """Refuse a tokenizer that still reads a broken marker as its token (a normalizer that drops U+200B)."""
    ids = set(tokenizer(" ".join(_broken(m) for m in markers), add_special_tokens=False)["input_ids"])
    still = [m for m, i in zip(markers, tokenizer.convert_tokens_to_ids(markers), strict=True) if i in ids]
    if still:
        raise ValueError(
            f"this tokenizer reads {still[0]!r} as a token even with a zero-width space inside it "
            "(its normalizer drops U+200B?): data text cannot be made safe for it"
        )


class DataText:
    """Neutralises markers in pieces of data text and counts how many it broke (`count`)."""

    def __init__(self, tokenizer=None):
        if tokenizer is None:
            self.pattern = _FALLBACK
        else:
            markers = marker_strings(tokenizer)
            _check_breaks(tokenizer, markers)
            self.pattern = marker_pattern(markers)
        self.count = 0

    def plain(self, text: str) -> str:
        """A title, a description, a message of an instruction file: every marker is broken."""
        text, n = neutralise(text, self.pattern)
        self.count += n
        return text

    def teacher(self, text: str, catalogue: Iterable[str]) -> str:
        """A teacher text: a run of SID codes that is exactly one catalogue SID (what the corpus validator
        accepts) stays; every other marker, SID-looking ones included, is broken."""
        keep = catalogue if isinstance(catalogue, (set, frozenset)) else frozenset(catalogue)
        parts, pos = [], 0
        for m in _SID_RUN.finditer(text):
            if m.group(0) in keep:
                parts += [self.plain(text[pos : m.start()]), m.group(0)]
                pos = m.end()
        parts.append(self.plain(text[pos:]))
        return "".join(parts)

    def reply(self, text: str) -> str:
        """An answer of an instruction file: a think block that opens it keeps its two tags (the layout the
        chat template gives a reply with reasoning); every other marker is broken."""
        m = _LEADING_THINK.match(text)
        if m is None:
            return self.plain(text)
        return "<think>" + self.plain(m.group(1)) + "</think>" + self.plain(text[m.end() :])
