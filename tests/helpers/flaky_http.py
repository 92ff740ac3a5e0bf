"""A 127.0.0.1 HTTP file server that misbehaves on request, for download tests.

Each GET is served in one of these modes (`server.mode`, or the next entry of `server.plan`, or a random
pick from `server.random_modes`):
  normal        Content-Length, whole body (206 with Content-Range for a Range request)
  truncate      Content-Length of the whole body, half of it sent, connection closed
  ignore_range  200 and the whole body, whatever Range asks
  no_length     no Content-Length, no Range support: whole body, then close (read until close)
  no_length_cut no Content-Length, no Range support: half the body, then close
  stall         half the body, `stall_s` of silence (or until `end_stalls` is set), the rest
  stall_cut     half the body, `stall_s` of silence (or until `end_stalls` is set), connection closed
  html          200 text/html "please log in" page for any path
Bodies go out in `piece` byte pieces with `piece_delay_s` between them (slow links keep runs overlapping).
`headers[path]` adds response headers (published digests). `requests` records (path, Range header, mode).
"""

from __future__ import annotations

import http.server
import random
import threading
import time

LOGIN_PAGE = b"<!DOCTYPE html><html><body><form action='/login'>Please log in</form></body></html>\n"
MODES = ("normal", "truncate", "ignore_range", "no_length", "no_length_cut", "stall", "stall_cut", "html")


class FlakyServer:
    def __init__(self, files: dict[str, bytes], seed: int = 0):
        self.files = dict(files)
        self.mode, self.plan, self.random_modes = "normal", [], ()
        self.headers: dict[str, dict[str, str]] = {}
        self.piece, self.piece_delay_s, self.stall_s = 1 << 16, 0.0, 1.0
        self.end_stalls = threading.Event()
        self.requests: list[tuple[str, str | None, str]] = []
        self._rng, self._lock = random.Random(seed), threading.Lock()
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    def count(self, path: str) -> int:
        return sum(1 for p, _, _ in self.requests if p == path)

    def _next_mode(self, path: str, rng: str | None) -> str:
        with self._lock:
            if self.plan:
                mode = self.plan.pop(0)
            elif self.random_modes:
                mode = self._rng.choice(self.random_modes)
            else:
                mode = self.mode
            self.requests.append((path, rng, mode))
            return mode

    def _handler(self):
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404)
                    return
                mode = outer._next_mode(self.path, self.headers.get("Range"))
                try:
                    self._serve(body, mode)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up: a timeout or a killed process
                self.close_connection = True

            def _serve(self, body: bytes, mode: str) -> None:
                if mode == "html":
                    self._head(
                        200, {"Content-Type": "text/html; charset=utf-8", "Content-Length": str(len(LOGIN_PAGE))}
                    )
                    self.wfile.write(LOGIN_PAGE)
                    return
                start, rng = 0, self.headers.get("Range")
                ranged = rng and mode in ("normal", "truncate", "stall", "stall_cut")
                if ranged:
                    start = int(rng.removeprefix("bytes=").split("-")[0])
                    if start >= len(body):
                        self._head(416, {"Content-Range": f"bytes */{len(body)}", "Content-Length": "0"})
                        return
                chunk = body[start:]
                headers = {"Content-Type": "application/octet-stream", **outer.headers.get(self.path, {})}
                if not mode.startswith("no_length"):
                    headers["Content-Length"] = str(len(chunk))
                if ranged:
                    headers["Content-Range"] = f"bytes {start}-{len(body) - 1}/{len(body)}"
                self._head(206 if ranged else 200, headers)
                half = len(chunk) // 2
                if mode in ("truncate", "no_length_cut"):
                    self._send(chunk[:half])
                elif mode.startswith("stall"):
                    self._send(chunk[:half])
                    outer.end_stalls.wait(outer.stall_s)
                    if mode == "stall":
                        self._send(chunk[half:])
                else:
                    self._send(chunk)

            def _head(self, status: int, headers: dict[str, str]) -> None:
                self.send_response(status)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()

            def _send(self, data: bytes) -> None:
                for at in range(0, len(data), outer.piece):
                    self.wfile.write(data[at : at + outer.piece])
                    self.wfile.flush()
                    if outer.piece_delay_s:
                        time.sleep(outer.piece_delay_s)

        return Handler
