"""For the teacher tests: a tiny hand-made dataset + SID index, and a local OpenAI-compatible
chat-completions server on 127.0.0.1 that answers from templates and injects faults on request."""

from __future__ import annotations

import hashlib
import json
import re
import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

SERIES = [  # (brand, main category, line name)
    ("Acme", "Board Games", "Family Card Game"),
    ("Acme", "Office Writing", "Gel Pen"),
    ("Globex", "Audio", "Studio Headphones"),
]
PER_SERIES = 4


def make_fixture(root: Path, category: str = "Tiny") -> tuple[Path, Path]:
    """12 items (3 series x 4 installments), 6 users walking a series each -> 18 train samples."""
    data, sid = Path(root) / "dataset", Path(root) / "sid_index"
    data.mkdir(parents=True)
    sid.mkdir(parents=True)
    items = []
    for _s, (brand, cat, line) in enumerate(SERIES):
        for k in range(1, PER_SERIES + 1):
            items.append(
                {
                    "item_id": len(items),
                    "asin": f"B{len(items):09d}",
                    "title": f"{brand} {line} Vol. {k}",
                    "description": f"Part {k} of the {brand} {line} series.",
                    "brand": brand,
                    "categories": [category, cat, line],
                }
            )
    pq.write_table(pa.Table.from_pylist(items), data / "items.parquet")
    rows = []
    ts = 1_500_000_000
    for user in range(6):
        seq = [(user % 3) * PER_SERIES + k for k in range(PER_SERIES)]
        for pos in range(1, PER_SERIES):
            ts += 86_400
            rows.append({"user_id": user, "history_item_ids": seq[:pos], "item_id": seq[pos], "timestamp": ts})
    schema = pa.schema(
        [
            ("user_id", pa.int64()),
            ("history_item_ids", pa.list_(pa.int64())),
            ("item_id", pa.int64()),
            ("timestamp", pa.int64()),
        ]
    )
    for split in ("train", "valid", "test"):
        part = rows if split == "train" else rows[:2]
        pq.write_table(pa.Table.from_pylist(part, schema=schema), data / f"{split}.parquet")
    (data / "stats.json").write_text(json.dumps({"category": category}))
    index = {str(i): [f"<a_{i // PER_SERIES}>", f"<b_{i % PER_SERIES}>", "<c_0>"] for i in range(len(items))}
    (sid / "index.json").write_text(json.dumps(index))
    (sid / "catalogue.json").write_text(json.dumps(sorted("".join(v) for v in index.values())))
    pq.write_table(
        pa.table(
            {
                "item_id": list(range(len(items))),
                "codes": [[i // PER_SERIES, i % PER_SERIES, 0] for i in range(len(items))],
                "sid": ["".join(index[str(i)]) for i in range(len(items))],
            }
        ),
        sid / "sids.parquet",
    )
    return data, sid


# ---------------------------------------------------------------- fake OpenAI server

SID = r"(?:<[a-z]_\d+>)+"
FILLER = (
    "It is a dependable choice that shoppers in this category come back to, and it fits well with the "
    "other items of the same brand and line that people tend to collect over time."
)


def template_reply(messages: list[dict]) -> str:
    """What a well-behaved teacher would write for our prompts (parsed back from the prompt text)."""
    user = messages[-1]["content"]
    history = re.findall(rf"^\d+\. ({SID}) \| ([^|\n]+)", user, re.M)
    if "Task: item narrative." in user:
        sid = re.search(rf"^SID: ({SID})", user, re.M).group(1)
        title = re.search(r"^Title: (.+)$", user, re.M).group(1)
        return f"{sid} is {title}. {FILLER}"
    told = ", then ".join(f"{s} ({t.strip()})" for s, t in history)
    if "Task: history narrative." in user:
        return f"The user first bought {told}. {FILLER}"
    target = re.search(rf"Target SID \(hidden guidance\): ({SID})", user).group(1)
    return (
        f"The user bought {told}. The purchases stay within one line, so the next step is the following "
        f"installment of that line from the same brand.\nRecommended item: {target}"
    )


def body_hash(messages: list[dict]) -> str:
    return hashlib.sha256(json.dumps(messages, sort_keys=True).encode()).hexdigest()


class Big:
    """A 200 body of `prefix + chunk * count + suffix`, written chunk by chunk through a small send buffer,
    with a Content-Length header or (`length_header=False`) delimited by closing the connection."""

    def __init__(self, prefix: bytes, chunk: bytes, count: int, suffix: bytes, length_header: bool = True):
        self.prefix, self.chunk, self.count, self.suffix = prefix, chunk, count, suffix
        self.length_header = length_header

    def __len__(self) -> int:
        return len(self.prefix) + len(self.chunk) * self.count + len(self.suffix)

    def parts(self):
        yield self.prefix
        for _ in range(self.count):
            yield self.chunk
        yield self.suffix


def big_reply(size: int, length_header: bool = True) -> Big:
    """A well-formed chat-completions body whose content is about `size` bytes of words."""
    chunk = b"word " * 13107  # 64 KiB
    return Big(
        b'{"choices": [{"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "',
        chunk,
        max(1, size // len(chunk)),
        b'end"}}]}',
        length_header,
    )


def completion_body(text: str, *, finish_reason: str | None = "stop", usage: object = None) -> bytes:
    """A chat-completions body carrying `text` (usage: the `usage` value, default small counts)."""
    return json.dumps(
        {
            "id": "chatcmpl-test",
            "object": "chat.completion",
            "created": 0,
            "model": "fake-teacher",
            "choices": [
                {"index": 0, "finish_reason": finish_reason, "message": {"role": "assistant", "content": text}}
            ],
            "usage": usage if usage is not None else {"prompt_tokens": 3, "completion_tokens": len(text.split())},
        }
    ).encode()


class FakeOpenAI:
    """POST /v1/chat/completions on 127.0.0.1.

    faults: consumed in arrival order, one per request: "429" (Retry-After: `retry_after`), "500",
    "slow" (sleeps `slow_s`, beyond the client's timeout), "malformed" (invalid JSON, HTTP 200), bytes or
    a `Big` (sent as the HTTP 200 body as it is), None or "" (answered normally).
    block_after: after that many answered requests, further requests hang until `release()`.
    content: messages -> reply text (default `template_reply`).
    body_for: messages -> bytes or a `Big` to send as the HTTP 200 body instead, or None (answer normally).
    hung_up / sent_bytes: `Big` bodies the client stopped reading (it closed the connection), and how
    many bytes of them were written before it did.
    """

    def __init__(
        self,
        *,
        delay: float = 0.0,
        faults: list[str] | None = None,
        retry_after: str = "0",
        slow_s: float = 1.0,
        block_after: int | None = None,
        content: Callable[[list[dict]], str] = template_reply,
        status_for: Callable[[list[dict]], int] | None = None,
        models: list[dict] | None = None,
        body_for: Callable[[list[dict]], bytes | Big | None] | None = None,
    ):
        self.body_for = body_for
        self.hung_up = 0
        self.sent_bytes: list[int] = []
        self.delay, self.faults, self.retry_after, self.slow_s = delay, list(faults or []), retry_after, slow_s
        self.block_after, self.content, self.status_for = block_after, content, status_for
        self.models = models  # GET /v1/models entries; None: answer 404 as servers without the route do
        self.lock = threading.Lock()
        self.unblock = threading.Event()
        self.received = 0
        self.answered: list[str] = []  # body hashes of requests answered with 200 + valid JSON
        self.received_hashes: list[str] = []
        self.waiting = 0
        self.admitted = 0  # requests let through before block_after is reached (decided under the lock)
        self.auth_headers: set[str] = set()
        self.fault_times: list[tuple[str, float]] = []
        self._server: ThreadingHTTPServer | None = None

    def release(self) -> None:
        self.unblock.set()

    def reset_counts(self) -> None:
        with self.lock:
            self.received, self.answered, self.received_hashes = 0, [], []

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(body)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(body)
                except OSError:
                    pass

            def _send_big(self, big: Big) -> None:
                """Chunk by chunk through a small send buffer, so a client that stops reading is noticed."""
                self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
                self.close_connection = True
                sent = 0
                try:
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    if big.length_header:
                        self.send_header("Content-Length", str(len(big)))
                    else:
                        self.send_header("Connection", "close")
                    self.end_headers()
                    for part in big.parts():
                        self.wfile.write(part)
                        sent += len(part)
                except OSError:
                    with fake.lock:
                        fake.hung_up += 1
                with fake.lock:
                    fake.sent_bytes.append(sent)

            def _send_raw(self, body) -> None:
                if isinstance(body, Big):
                    return self._send_big(body)
                return self._send(200, body)

            def do_GET(self):  # noqa: N802  (GET /stats: counters, for a server in another process)
                if self.path.rstrip("/").endswith("/v1/models"):
                    if fake.models is None:
                        return self._send(404, b'{"error": {"message": "not found"}}')
                    return self._send(200, json.dumps({"object": "list", "data": fake.models}).encode())
                with fake.lock:
                    body = json.dumps({"received": fake.received, "answered": len(fake.answered)}).encode()
                self._send(200, body)

            def do_POST(self):  # noqa: N802
                length = int(self.headers.get("Content-Length", 0))
                req = json.loads(self.rfile.read(length))
                messages = req["messages"]
                h = body_hash(messages)
                with fake.lock:
                    fake.received += 1
                    fake.received_hashes.append(h)
                    fake.auth_headers.add(self.headers.get("Authorization", ""))
                    fault = fake.faults.pop(0) if fake.faults else None
                    if fault:
                        fake.fault_times.append((fault, time.monotonic()))
                    # Counted when admitted, not when answered: concurrent requests all checking
                    # `answered` before any was recorded would let more than block_after through.
                    block = fake.block_after is not None and fake.admitted >= fake.block_after
                    if block:
                        fake.waiting += 1
                    else:
                        fake.admitted += 1
                if block:
                    fake.unblock.wait()
                    self.close_connection = True
                    return
                if fake.delay:
                    time.sleep(fake.delay)
                if fault == "429":
                    return self._send(429, b'{"error": {"message": "rate limited"}}', {"Retry-After": fake.retry_after})
                if fault == "500":
                    return self._send(500, b'{"error": {"message": "boom"}}')
                if fault == "slow":
                    time.sleep(fake.slow_s)
                    self.close_connection = True
                    return self._send(200, b"{}")
                if fault == "malformed":
                    return self._send(200, b'{"choices": [{"message": {"content": "trunc')
                if isinstance(fault, (bytes, Big)):
                    return self._send_raw(fault)
                raw = fake.body_for(messages) if fake.body_for is not None else None
                if raw is not None:
                    return self._send_raw(raw)
                if fake.status_for is not None:
                    status = fake.status_for(messages)
                    if status != 200:
                        return self._send(status, b'{"error": {"message": "injected"}}')
                text = fake.content(messages)
                body = json.dumps(
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "created": 0,
                        "model": req.get("model"),
                        "choices": [
                            {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": text}}
                        ],
                        "usage": {
                            "prompt_tokens": len(messages[-1]["content"].split()),
                            "completion_tokens": len(text.split()),
                            "total_tokens": len(messages[-1]["content"].split()) + len(text.split()),
                        },
                    }
                ).encode()
                self._send(200, body)
                with fake.lock:
                    fake.answered.append(h)

        ThreadingHTTPServer.request_queue_size = 1024  # the default backlog (5) drops bursts of connects
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.unblock.set()
        self._server.shutdown()
        self._server.server_close()


if __name__ == "__main__":  # serve in its own process (benchmarks): prints the base URL, then serves
    import argparse
    import sys

    ap = argparse.ArgumentParser()
    ap.add_argument("--delay", type=float, default=0.0)
    a = ap.parse_args()
    with FakeOpenAI(delay=a.delay) as server:
        print(server.base_url, flush=True)
        sys.stdin.read()  # until the parent closes stdin
