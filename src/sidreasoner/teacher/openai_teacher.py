"""The `openai` teacher: any OpenAI-compatible chat-completions endpoint through the official client.

The client's own retries are off (max_retries=0); this module retries with exponential backoff and
jitter on 429 / 408 / 409 / 5xx, timeouts, connection errors and malformed replies, honouring
Retry-After. Requests run on asyncio with `concurrency` workers; every reply is written to the
response cache as soon as it arrives. The API key comes from the environment only and is never
logged or written anywhere.
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

from sidreasoner.config import TeacherConfig
from sidreasoner.teacher.cache import ResponseCache

log = logging.getLogger(__name__)

KEY_ENV_VARS = ("SIDREASONER_TEACHER_API_KEY", "OPENAI_API_KEY")
LOCAL_DUMMY_KEY = "sk-local-no-key"
RETRY_STATUSES = {408, 409, 429}


class TeacherError(RuntimeError):
    """The teacher cannot go on (no key, rejected key); the message says what to do."""


class MalformedReply(ValueError):
    pass


@dataclass(frozen=True)
class Request:
    key: str
    messages: list[dict[str, str]]


@dataclass
class Reply:
    content: str | None
    error: str | None = None
    cached: bool = False


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
        "Secret to that variable. Keys are never read from config.")


def safe_url(url: str) -> str:
    """The URL without userinfo, query or fragment (they may carry credentials)."""
    parts = urlsplit(url)
    netloc = parts.hostname or ""
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def parse_reply(body: str) -> tuple[str, int, int]:
    """Content, prompt tokens, completion tokens of a chat-completions JSON body."""
    try:
        data = json.loads(body)
        content = data["choices"][0]["message"]["content"]
    except (ValueError, KeyError, IndexError, TypeError) as err:
        raise MalformedReply(f"malformed reply ({type(err).__name__}): {body[:120]!r}") from None
    if not isinstance(content, str) or not content.strip():
        raise MalformedReply("reply has no message content")
    usage = data.get("usage") or {}
    return content, int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)


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
    """The stable fields of `model`'s entry in a /models reply ({} when it has none)."""
    entries = listing.get("data") if isinstance(listing, dict) else None
    card = next((e for e in entries or [] if isinstance(e, dict) and e.get("id") == model), None)
    if card is None:
        return {}
    identity = {k: card[k] for k in IDENTITY_FIELDS if card.get(k) is not None}
    if "root" not in card and card.get("created") is not None:
        identity["created"] = card["created"]
    return identity


class OpenAITeacher:
    def __init__(self, tcfg: TeacherConfig, cache: ResponseCache):
        self.cfg = tcfg
        self.cache = cache
        self.api_key = resolve_api_key(tcfg.base_url)
        self.counts = {"requests": 0, "cache_hits": 0, "retries": 0, "failures": 0, "tokens_in": 0, "tokens_out": 0}
        self._rng = random.Random()

    def model_identity(self, generation: int = 0) -> dict[str, Any]:
        """What names the replies' model in the cache key: the configured name and revision, the
        endpoint's own description of it (GET /models; {} when the endpoint has none or fails), and the
        step's generation."""
        import requests

        url = f"{self.cfg.base_url.rstrip('/')}/models"
        try:
            reply = requests.get(url, headers={"Authorization": f"Bearer {self.api_key}"}, timeout=self.cfg.timeout_s)
            served = served_identity(reply.json(), self.cfg.model) if reply.ok else {}
        except (requests.RequestException, ValueError) as err:
            log.warning("could not read %s (%s): the cache key names the model by its settings only",
                        safe_url(url), type(err).__name__)
            served = {}
        if not served:
            log.warning("%s does not describe model %s: set teacher.model_revision when the endpoint starts serving "
                        "other weights under that name", safe_url(url), self.cfg.model)
        return {"name": self.cfg.model, "revision": self.cfg.model_revision, "served": served,
                "generation": generation}

    @property
    def params(self) -> dict[str, Any]:
        return {"temperature": self.cfg.temperature, "max_tokens": self.cfg.max_tokens}

    def backoff(self, attempt: int, retry_after: float | None) -> float:
        if retry_after is not None:
            return min(retry_after, self.cfg.backoff_max_s)
        base = min(self.cfg.backoff_max_s, self.cfg.backoff_s * 2 ** (attempt - 1))
        return base * self._rng.uniform(0.5, 1.0)

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
            hit = self.cache.get(key)
            if hit is None:
                missing.append(req)
                continue
            self.counts["cache_hits"] += 1
            replies[key] = Reply(hit["content"], cached=True)
            if on_reply:
                on_reply(replies[key], shared[key])
        if missing:
            asyncio.run(self._run_async(missing, replies, lambda r, k: on_reply and on_reply(r, shared[k])))
        return replies

    async def _run_async(self, missing: list[Request], replies: dict[str, Reply],
                         done: Callable[[Reply, str], None]) -> None:
        from openai import AsyncOpenAI

        queue: asyncio.Queue[Request] = asyncio.Queue()
        for req in missing:
            queue.put_nowait(req)
        client = AsyncOpenAI(api_key=self.api_key, base_url=self.cfg.base_url, max_retries=0,
                             timeout=self.cfg.timeout_s)

        async def worker() -> None:
            while True:
                try:
                    req = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                reply = await self._complete(client, req)
                replies[req.key] = reply
                done(reply, req.key)

        try:
            await asyncio.gather(*(worker() for _ in range(min(self.cfg.concurrency, len(missing)))))
        finally:
            await client.close()

    async def _complete(self, client, req: Request) -> Reply:
        import openai

        last = "no attempt"
        for attempt in range(self.cfg.max_retries + 1):
            retry_after = None
            self.counts["requests"] += 1
            try:
                async with asyncio.timeout(self.cfg.timeout_s):
                    raw = await client.chat.completions.with_raw_response.create(
                        model=self.cfg.model, messages=req.messages, **self.params)
                    body = raw.text
                content, tokens_in, tokens_out = parse_reply(body)
                self.counts["tokens_in"] += tokens_in
                self.counts["tokens_out"] += tokens_out
                payload = {"content": content, "model": self.cfg.model, "usage": {
                    "prompt_tokens": tokens_in, "completion_tokens": tokens_out}}
                await asyncio.to_thread(self.cache.put, req.key, payload)
                return Reply(content)
            except (openai.AuthenticationError, openai.PermissionDeniedError) as err:
                raise TeacherError(
                    f"the teacher endpoint {safe_url(self.cfg.base_url)} refused the API key "
                    f"(HTTP {err.status_code}); check {KEY_ENV_VARS[0]} / {KEY_ENV_VARS[1]}") from None
            except openai.APIStatusError as err:
                last = f"HTTP {err.status_code}"
                if err.status_code not in RETRY_STATUSES and err.status_code < 500:
                    break
                retry_after = retry_after_seconds(err.response.headers)
            except (openai.APITimeoutError, TimeoutError):
                last = f"timeout after {self.cfg.timeout_s:g}s"
            except openai.APIConnectionError as err:
                last = f"connection error: {type(err.__cause__ or err).__name__}"
            except MalformedReply as err:
                last = str(err)
            if attempt < self.cfg.max_retries:
                delay = self.backoff(attempt + 1, retry_after)
                log.debug("teacher request failed (%s); retry %d in %.2fs", last, attempt + 1, delay)
                self.counts["retries"] += 1
                await asyncio.sleep(delay)
        self.counts["failures"] += 1
        log.warning("teacher request failed after %d attempt(s): %s", attempt + 1, last)
        return Reply(None, error=last)
