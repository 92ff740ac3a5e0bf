"""Dynamic batching for the model server: the instances of concurrent requests wait in one queue; a worker
takes up to `max_batch` of them (waiting at most `max_wait_s` after the oldest arrived), groups them by a key
(the predictor's: thinking mode and beam width) and makes one decoder call per group in a single worker thread,
so the event loop keeps accepting requests while the model runs.

Metrics go to prometheus_client's default registry, the one kserve's `/metrics` serves."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import Counter, Histogram

log = logging.getLogger(__name__)

BATCH_SIZE = Histogram(
    "sidreasoner_serve_batch_size",
    "Instances per decoder call",
    ["model_name"],
    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
)
DECODE_SECONDS = Histogram(
    "sidreasoner_serve_decode_seconds",
    "Seconds of one decoder call (a group of instances)",
    ["model_name"],
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)
REQUESTS = Counter("sidreasoner_serve_requests", "Prediction requests received", ["model_name", "protocol"])
ERRORS = Counter("sidreasoner_serve_errors", "Prediction requests answered with an error", ["model_name", "kind"])

Decode = Callable[[Hashable, list[Any]], list[Any]]


def group_batch(keys: Sequence[Hashable]) -> list[tuple[Hashable, list[int]]]:
    """The positions of each key, keys in order of first appearance: one decoder call per group."""
    groups: dict[Hashable, list[int]] = {}
    for position, key in enumerate(keys):
        groups.setdefault(key, []).append(position)
    return list(groups.items())


@dataclass
class _Pending:
    key: Hashable
    item: Any
    future: asyncio.Future
    arrived: float = field(default_factory=time.monotonic)


class Batcher:
    """`await batcher.submit([(key, item), ...])` -> the decoder's results for those items, in order.

    `decode(key, items)` runs in one worker thread and returns one result per item (or raises: every
    instance of that group gets the error). `flush()` (safe from a signal handler) stops waiting for more
    instances: what is queued is decoded at once, as on shutdown."""

    def __init__(self, decode: Decode, max_batch: int, max_wait_s: float, model_name: str = ""):
        if max_batch < 1:
            raise ValueError(f"max_batch must be >= 1, got {max_batch}")
        self.decode, self.max_batch, self.max_wait_s = decode, max_batch, max(0.0, max_wait_s)
        self.model_name = model_name
        self._pending: list[_Pending] = []
        self._executor = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="sid-decode")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._worker: asyncio.Task | None = None
        self._wake: asyncio.Event | None = None  # something is queued
        self._go: asyncio.Event | None = None  # a full batch is queued, or flushing: stop waiting
        self._flushing = False

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # first use, or a new event loop (tests)
            self._loop, self._wake, self._go = loop, asyncio.Event(), asyncio.Event()
            self._worker = loop.create_task(self._run(), name="sid-batcher")

    async def submit(self, entries: Sequence[tuple[Hashable, Any]]) -> list[Any]:
        self._start()
        futures = []
        for key, item in entries:
            future = self._loop.create_future()
            self._pending.append(_Pending(key, item, future))
            futures.append(future)
        self._wake.set()
        if len(self._pending) >= self.max_batch or self._flushing:
            self._go.set()
        return list(await asyncio.gather(*futures))

    def flush(self) -> None:
        """Decode what is queued now and from now on (shutdown): no more waiting for a batch to fill."""
        self._flushing = True
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._go.set)

    def close(self) -> None:
        self.flush()
        self._executor.shutdown(wait=False)

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            await self._gather()
            batch, self._pending = self._pending[: self.max_batch], self._pending[self.max_batch :]
            if not self._pending:
                self._wake.clear()
            if len(self._pending) < self.max_batch and not self._flushing:
                self._go.clear()
            batch = [p for p in batch if not p.future.done()]  # a client that went away cancelled its future
            for key, positions in group_batch([p.key for p in batch]):
                await self._decode_group(key, [batch[i] for i in positions])

    async def _gather(self) -> None:
        """Wait until max_batch instances are queued, the oldest has waited max_wait_s, or a flush."""
        if self._flushing or len(self._pending) >= self.max_batch:
            return
        remaining = self._pending[0].arrived + self.max_wait_s - time.monotonic()
        if remaining > 0:
            try:
                await asyncio.wait_for(self._go.wait(), remaining)
            except TimeoutError:
                pass

    async def _decode_group(self, key: Hashable, group: list[_Pending]) -> None:
        BATCH_SIZE.labels(self.model_name).observe(len(group))
        start = time.perf_counter()
        try:
            results = await self._loop.run_in_executor(self._executor, self.decode, key, [p.item for p in group])
            if len(results) != len(group):
                raise RuntimeError(f"the decoder answered {len(results)} results for {len(group)} instances")
        except Exception as err:  # every waiting request gets the error; the worker goes on
            log.exception("decoding a batch of %d failed", len(group))
            for p in group:
                if not p.future.done():
                    p.future.set_exception(err)
            return
        finally:
            DECODE_SECONDS.labels(self.model_name).observe(time.perf_counter() - start)
        for p, result in zip(group, results, strict=True):
            if not p.future.done():  # a client that went away cancelled its future
                p.future.set_result(result)
