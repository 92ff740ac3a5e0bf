"""The `openai` teacher: any OpenAI-compatible chat-completions endpoint, spoken to with httpx.

Retries with exponential backoff and jitter on 429 / 408 / 409 / 5xx, timeouts, connection errors and
bad replies (a 200 whose body is not a usable chat completion), honouring Retry-After. Bad replies are
counted by reason. A body is read only up to a cap derived from `max_tokens`, so a runaway reply costs
no more memory or cache than a full one. Requests run on asyncio with `concurrency` workers; every reply
is written to the response cache as soon as it arrives. The API key comes from the environment only
and is never logged or written anywhere.
"""

from __future__ import annotations

import asyncio
import email.utils
import ipaddress
import json
import logging
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from sidreasoner.config import TeacherConfig
from sidreasoner.teacher.cache import ResponseCache

log = logging.getLogger(__name__)

KEY_ENV_VARS = ("SIDREASONER_TEACHER_API_KEY", "OPENAI_API_KEY")
LOCAL_DUMMY_KEY = "sk-local-no-key"
RETRY_STATUSES = {408, 409, 429}

# A BPE token of today's teachers averages about 4 bytes of English or CJK text; 8 bytes per token
# leaves twice that before a reply is judged longer than `max_tokens` could make it.
BYTES_PER_TOKEN = 8
CONTENT_SLACK = 1024
# JSON may write one content byte as six ("\u0001"); the rest of a body (ids, usage) is small.
ESCAPE_FACTOR = 6
ENVELOPE_BYTES = 16 * 1024
MODELS_CAP = 1 << 20  # a /models listing
MAX_TOKEN_COUNT = 10**9  # no context holds more; larger usage counts are garbage

BAD_REPLY_REASONS = (
    "not_json",
    "no_choices",
    "no_message",
    "no_content",
    "bad_text",
    "bad_usage",
    "bad_finish_reason",
    "too_large",
)


def content_cap(max_tokens: int) -> int:
    """The most UTF-8 bytes a reply of `max_tokens` tokens is taken to hold."""
    return max_tokens * BYTES_PER_TOKEN + CONTENT_SLACK


def body_cap(max_tokens: int) -> int:
    """The most bytes of a reply body (or of its cache file) that are read."""
    return content_cap(max_tokens) * ESCAPE_FACTOR + ENVELOPE_BYTES


def zero_counts() -> dict[str, int]:
    counts = {
        "requests": 0,
        "cache_hits": 0,
        "retries": 0,
        "failures": 0,
        "tokens_in": 0,
        "tokens_out": 0,
        "bad_replies": 0,
    }
    counts.update({f"bad_reply_{reason}": 0 for reason in BAD_REPLY_REASONS})
    return counts


class TeacherError(RuntimeError):
    """The teacher cannot go on (no key, rejected key); the message says what to do."""


class MalformedReply(ValueError):
    """A reply that is not a usable chat completion; `reason` is one of BAD_REPLY_REASONS."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"bad reply ({reason}): {detail}")
        self.reason = reason


class HTTPStatus(Exception):
    def __init__(self, status: int, headers: httpx.Headers):
        super().__init__(f"HTTP {status}")
        self.status, self.headers = status, headers


@dataclass(frozen=True)
class Request:
    key: str
    messages: list[dict[str, str]]


@dataclass
class Reply:
    content: str | None
    error: str | None = None
    cached: bool = False
    finish_reason: str | None = None


@dataclass(frozen=True)
class Parsed:
    content: str
    finish_reason: str | None
    tokens_in: int
    tokens_out: int


def is_local_url(url: str) -> bool:
    """Loopback, private addresses and in-cluster service names (no dot, *.svc, *.cluster.local,
    *.local): endpoints that usually take no key (e.g. the chart's vLLM)."""
    host = (urlsplit(url).hostname or "").lower()
    if not host:
        return False
    if host == "localhost" or "." not in host or host.endswith((".svc", ".cluster.local", ".local", ".localhost")):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    return ip.is_loopback or ip.is_private or ip.is_unspecified


def resolve_api_key(base_url: str) -> str:
    for var in KEY_ENV_VARS:
        value = os.environ.get(var, "").strip()
        if value:
            return value
    if is_local_url(base_url):
        return LOCAL_DUMMY_KEY
    raise TeacherError(
        f"teacher.kind=openai with base_url {safe_url(base_url)} needs an API key: set "
        f"{KEY_ENV_VARS[0]} (or {KEY_ENV_VARS[1]}) in the environment; on a cluster, map the teacher "
        "Secret to that variable. Keys are never read from config."
    )


def safe_url(url: str) -> str:
    """The URL without userinfo, query or fragment (they may carry credentials)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def _shown(value: Any, limit: int = 60) -> str:
    """A short, escaped rendering of something a server sent."""
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)
    return ascii(text[:limit]) + ("..." if len(text) > limit else "")


def _json(body: bytes | str) -> Any:
    try:
        return json.loads(body.decode("utf-8") if isinstance(body, bytes) else body)
    except UnicodeDecodeError:
        raise MalformedReply("not_json", f"the body is not UTF-8: {_shown(body)}") from None
    except (ValueError, RecursionError) as err:
        raise MalformedReply("not_json", f"the body is not JSON ({type(err).__name__}): {_shown(body)}") from None


def _first_choice(data: Any) -> dict:
    choices = data.get("choices") if isinstance(data, dict) else None
    if not isinstance(choices, list) or not choices:
        error = data.get("error") if isinstance(data, dict) else None
        said = f" (the body has an error: {_shown(error)})" if error else ""
        raise MalformedReply("no_choices", f"no choices[0] in a {type(data).__name__} body{said}")
    choice = choices[0]
    if not isinstance(choice, dict) or not isinstance(choice.get("message"), dict):
        raise MalformedReply("no_message", f"choices[0].message is not an object: {_shown(choice)}")
    return choice


def _content(message: dict, max_tokens: int) -> str:
    content = message.get("content")
    if not isinstance(content, str) or not content.strip():
        raise MalformedReply("no_content", f"choices[0].message.content is {_shown(content)}")
    try:
        size = len(content.encode("utf-8"))
    except UnicodeEncodeError as err:
        raise MalformedReply(
            "bad_text", f"the content holds a lone surrogate ({_shown(err.object[err.start])}) at character {err.start}"
        ) from None
    if size > content_cap(max_tokens):
        raise MalformedReply(
            "too_large",
            f"the content is {size} bytes, over the {content_cap(max_tokens)} that "
            f"teacher.max_tokens={max_tokens} allows",
        )
    return content


def _token_count(usage: dict, name: str) -> int:
    value = usage.get(name)
    if value is None:
        return 0
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_TOKEN_COUNT:
        raise MalformedReply("bad_usage", f"usage.{name} is {_shown(value)}, not a token count")
    return value


def parse_reply(body: bytes | str, max_tokens: int) -> Parsed:
    """The content, finish reason and token counts of a chat-completions body; MalformedReply when any
    of them is unusable."""
    data = _json(body)
    choice = _first_choice(data)
    content = _content(choice["message"], max_tokens)
    finish = choice.get("finish_reason")
    if finish is not None and not isinstance(finish, str):
        raise MalformedReply("bad_finish_reason", f"choices[0].finish_reason is {_shown(finish)}")
    usage = data.get("usage")
    if usage is None:
        usage = {}
    if not isinstance(usage, dict):
        raise MalformedReply("bad_usage", f"usage is {_shown(usage)}, not an object")
    return Parsed(content, finish, _token_count(usage, "prompt_tokens"), _token_count(usage, "completion_tokens"))


async def read_capped(response: httpx.Response, cap: int, max_tokens: int) -> bytes:
    """The body, read as it arrives; MalformedReply (too_large) as soon as it passes `cap` bytes."""
    too_large = f"over the {cap} bytes that teacher.max_tokens={max_tokens} allows (not read further)"
    declared = response.headers.get("content-length", "")
    if declared.isascii() and declared.isdigit() and int(declared) > cap:
        raise MalformedReply("too_large", f"the body declares {declared} bytes, {too_large}")
    body = bytearray()
    async for chunk in response.aiter_bytes():
        body += chunk
        if len(body) > cap:
            raise MalformedReply("too_large", f"the body is {too_large}")
    return bytes(body)


def retry_after_seconds(headers: Any) -> float | None:
    if headers is None:
        return None
    ms = headers.get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


# What a /models entry says of the weights behind a name. vLLM and lmdeploy answer `created` with the
# time of the listing (their ModelCard's default_factory=time.time), OpenAI with the model's creation
# time: `created` counts only from a server whose entries have no `root` (vLLM's served path).
IDENTITY_FIELDS = ("id", "owned_by", "root", "parent", "max_model_len")


def served_identity(listing: Any, model: str) -> dict[str, Any]:
    """The stable fields of `model`'s entry in a /models reply ({} when it has no usable one)."""
    entries = listing.get("data") if isinstance(listing, dict) else None
    if not isinstance(entries, list):
        return {}
    card = next((e for e in entries if isinstance(e, dict) and e.get("id") == model), None)
    if card is None:
        return {}
    identity = {k: card[k] for k in IDENTITY_FIELDS if card.get(k) is not None}
    if "root" not in card and card.get("created") is not None:
        identity["created"] = card["created"]
    try:  # it becomes part of the cache key, hashed as UTF-8 JSON
        json.dumps(identity, ensure_ascii=False).encode("utf-8")
    except (TypeError, ValueError):
        return {}
    return identity


class OpenAITeacher:
    def __init__(self, tcfg: TeacherConfig, cache: ResponseCache):
        self.cfg = tcfg
        self.cache = cache
        self.api_key = resolve_api_key(tcfg.base_url)
        self.counts = zero_counts()
        self._rng = random.Random()

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}", "Accept-Encoding": "identity"}

    def _listing(self, url: str) -> Any:
        with httpx.stream(
            "GET", url, headers=self._headers, timeout=self.cfg.timeout_s, follow_redirects=True
        ) as reply:
            if not reply.is_success:
                return None
            body = bytearray()
            for chunk in reply.iter_bytes():
                body += chunk
                if len(body) > MODELS_CAP:
                    raise ValueError(f"over {MODELS_CAP} bytes")
        return json.loads(bytes(body))

    def model_identity(self, generation: int = 0) -> dict[str, Any]:
        """What names the replies' model in the cache key: the configured name and revision, the
        endpoint's own description of it (GET /models; {} when the endpoint has none or fails), and the
        step's generation."""
        url = f"{self.cfg.base_url.rstrip('/')}/models"
        try:
            served = served_identity(self._listing(url), self.cfg.model)
        except (httpx.HTTPError, ValueError, RecursionError) as err:
            log.warning(
                "could not read %s (%s): the cache key names the model by its settings only",
                safe_url(url),
                type(err).__name__,
            )
            served = {}
        if not served:
            log.warning(
                "%s does not describe model %s: set teacher.model_revision when the endpoint starts serving "
                "other weights under that name",
                safe_url(url),
                self.cfg.model,
            )
        return {"name": self.cfg.model, "revision": self.cfg.model_revision, "served": served, "generation": generation}

    @property
    def params(self) -> dict[str, Any]:
        return {"temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.cfg.backoff_max_s)
        base = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2 ** (attempt - 1))
        return base * self._rng.uniform(0.5, 1.0)

    def _cached(self, key: str) -> Reply | None:
        hit = self.cache.get(key, max_bytes=body_cap(self.cfg.max_tokens))
        if hit is None:
            return None
        try:
            oversized = len(hit["content"].encode("utf-8")) > content_cap(self.cfg.max_tokens)
        except UnicodeEncodeError:
            oversized = True
        if oversized:
            return None
        finish = hit.get("finish_reason")
        return Reply(hit["content"], cached=True, finish_reason=finish if isinstance(finish, str) else None)

    def run(self, requests: list[Request], on_reply: Callable[[Reply, int], None] | None = None) -> dict[str, Reply]:
        """Replies by key: cached ones first, then the missing ones from the endpoint.
        `on_reply(reply, n)` is called for every finished key (n = how many tasks share it)."""
        unique: dict[str, Request] = {}
        shared: dict[str, int] = {}
        for req in requests:
            unique.setdefault(req.key, req)
            shared[req.key] = shared.get(req.key, 0) + 1
        replies: dict[str, Reply] = {}
        missing: list[Request] = []
        for key, req in unique.items():
            hit = self._cached(key)
            if hit is None:
                missing.append(req)
                continue
            self.counts["cache_hits"] += 1
            replies[key] = hit
            if on_reply:
                on_reply(hit, shared[key])
        if missing:
            asyncio.run(self._run_async(missing, replies, lambda r, k: on_reply and on_reply(r, shared[k])))
        return replies

    async def _run_async(
        self, missing: list[Request], replies: dict[str, Reply], done: Callable[[Reply, str], None]
    ) -> None:
        queue: asyncio.Queue[Request] = asyncio.Queue()
        for req in missing:
            queue.put_nowait(req)
        workers = min(self.cfg.concurrency, len(missing))
        limits = httpx.Limits(max_connections=workers, max_keepalive_connections=workers)

        async def worker(client: httpx.AsyncClient) -> None:
            while True:
                try:
                    req = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                reply = await self._complete(client, req)
                replies[req.key] = reply
                done(reply, req.key)

        async with httpx.AsyncClient(timeout=self.cfg.timeout_s, limits=limits, follow_redirects=True) as client:
            await asyncio.gather(*(worker(client) for _ in range(workers)))

    async def _post(self, client: httpx.AsyncClient, req: Request) -> Parsed:
        url = f"{self.cfg.base_url.rstrip('/')}/chat/completions"
        payload = json.dumps({"model": self.cfg.model, "messages": req.messages, **self.params}).encode("utf-8")
        headers = {**self._headers, "Content-Type": "application/json"}
        async with client.stream("POST", url, content=payload, headers=headers) as response:
            if response.status_code >= 300:
                raise HTTPStatus(response.status_code, response.headers)
            body = await read_capped(response, body_cap(self.cfg.max_tokens), self.cfg.max_tokens)
        return parse_reply(body, self.cfg.max_tokens)

    async def _store(self, req: Request, parsed: Parsed) -> Reply:
        self.counts["tokens_in"] += parsed.tokens_in
        self.counts["tokens_out"] += parsed.tokens_out
        payload = {
            "content": parsed.content,
            "model": self.cfg.model,
            "finish_reason": parsed.finish_reason,
            "usage": {"prompt_tokens": parsed.tokens_in, "completion_tokens": parsed.tokens_out},
        }
        await asyncio.to_thread(self.cache.put, req.key, payload)
        return Reply(parsed.content, finish_reason=parsed.finish_reason)

    def _refused(self, status: int) -> TeacherError:
        return TeacherError(
            f"the teacher endpoint {safe_url(self.cfg.base_url)} refused the API key "
            f"(HTTP {status}); check {KEY_ENV_VARS[0]} / {KEY_ENV_VARS[1]}"
        )

    async def _complete(self, client: httpx.AsyncClient, req: Request) -> Reply:
        last = "no attempt"
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = None
            self.counts["requests"] += 1
            try:
                async with asyncio.timeout(self.cfg.timeout_s):
                    parsed = await self._post(client, req)
                return await self._store(req, parsed)
            except HTTPStatus as err:
                if err.status in (401, 403):
                    raise self._refused(err.status) from None
                last = str(err)
                if err.status not in RETRY_STATUSES and err.status < 500:
                    break
                retry_after = retry_after_seconds(err.headers)
            except (httpx.TimeoutException, TimeoutError):
                last = f"timeout after {self.cfg.timeout_s:g}s"
            except httpx.HTTPError as err:
                last = f"connection error: {type(err).__name__}"
            except MalformedReply as err:
                self.counts["bad_replies"] += 1
                self.counts[f"bad_reply_{err.reason}"] += 1
                last = str(err)
            if attempt < self.cfg.max_retries:
                delay = self.backoff(attempt + 1, retry_after)
                log.debug("teacher request failed (%s); retry %d in %.2fs", last, attempt + 1, delay)
                self.counts["retries"] += 1
                await asyncio.sleep(delay)
        self.counts["failures"] += 1
        log.warning("teacher request failed after %d attempt(s): %s", attempt + 1, last)
        return Reply(None, error=last)
