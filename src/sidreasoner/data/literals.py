"""Fields the research code writes as Python literals or JSON, read without ever calling eval."""

from __future__ import annotations

import ast
from typing import Any

import orjson

SNIPPET_CHARS = 80


def snippet(value: Any, chars: int = SNIPPET_CHARS) -> str:
    """`value` as at most `chars` characters, repr-escaped, for an error message."""
    text = value if isinstance(value, str) else repr(value)
    return repr(text[:chars] + ("..." if len(text) > chars else ""))


def json_or_literal(text: str) -> Any:
    """A field the research code writes as JSON or as a Python literal (a chat's `messages`): JSON first,
    then `ast.literal_eval`, never eval. ValueError when it is neither."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        pass
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise ValueError(f"neither JSON nor a Python literal: {snippet(text)}") from None
