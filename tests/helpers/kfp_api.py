"""A small HTTP server on 127.0.0.1 that speaks the part of the KFP v2beta1 REST API that
`kfp.Client` uses to create experiments and runs, to upload pipelines and their versions and to
list a pipeline's versions (paged, as the server pages them). It records every request so tests
can check what the client really sent."""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlparse

API = "/apis/v2beta1"


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    body: bytes
    headers: dict[str, str]  # names in lower case

    def json(self):
        return json.loads(self.body)


@dataclass
class FakeKFP:
    requests: list[Recorded] = field(default_factory=list)
    experiments: dict[str, dict] = field(default_factory=dict)
    runs: dict[str, dict] = field(default_factory=dict)
    pipelines: dict[str, dict] = field(default_factory=dict)
    versions: list[dict] = field(default_factory=list)
    final_state: str = "SUCCEEDED"
    required_token: str | None = None  # when set, a request without `Authorization: Bearer <it>` gets 401
    # (method, path after /apis/v2beta1) -> a JSON answer given instead of the API's (a server that only looks like KFP)
    answers: dict[tuple[str, str], dict] = field(default_factory=dict)

    def calls(self, method: str, suffix: str) -> list[Recorded]:
        return [r for r in self.requests if r.method == method and r.path == API + suffix]


def _filter_name(query: dict[str, list[str]]) -> str | None:
    if "filter" not in query:
        return None
    predicates = json.loads(query["filter"][0]).get("predicates", [])
    return next((p.get("stringValue") or p.get("string_value") for p in predicates), None)


def _handler(state: FakeKFP):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args):  # keep test output clean
            pass

        def _reply(self, obj, status: int = 200):
            data = json.dumps(obj).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _record(self) -> Recorded:
            length = int(self.headers.get("Content-Length") or 0)
            url = urlparse(self.path)
            rec = Recorded(
                self.command,
                url.path,
                parse_qs(url.query),
                self.rfile.read(length),
                {key.lower(): value for key, value in self.headers.items()},
            )
            state.requests.append(rec)
            return rec

        def _refused(self, rec: Recorded) -> bool:
            if (rec.method, rec.path.removeprefix(API)) in state.answers:
                self._reply(state.answers[rec.method, rec.path.removeprefix(API)])
                return True
            if state.required_token and rec.headers.get("authorization") != f"Bearer {state.required_token}":
                self._reply({"error": "unauthenticated", "code": 16}, 401)
                return True
            return False

        def do_GET(self):
            rec = self._record()
            if self._refused(rec):
                return
            if rec.path == f"{API}/healthz":
                return self._reply({"multi_user": False})
            if rec.path == f"{API}/experiments":
                name = _filter_name(rec.query)
                found = [e for e in state.experiments.values() if name in (None, e["display_name"])]
                return self._reply({"experiments": found, "total_size": len(found)} if found else {})
            if rec.path.startswith(f"{API}/runs/"):
                run = state.runs[rec.path.rsplit("/", 1)[1]]
                return self._reply({**run, "state": state.final_state})
            if rec.path == f"{API}/pipelines":
                # As the server lists them: the namespace's own pipelines, or the shared ones.
                name, namespace = _filter_name(rec.query), rec.query.get("namespace", [""])[0]
                found = [
                    p
                    for p in state.pipelines.values()
                    if name in (None, p["display_name"]) and p.get("namespace", "") == namespace
                ]
                return self._reply({"pipelines": found, "total_size": len(found)} if found else {})
            if rec.path.startswith(f"{API}/pipelines/") and rec.path.endswith("/versions"):
                pipeline_id = rec.path.split("/")[-2]
                name = _filter_name(rec.query)
                found = [
                    v for v in state.versions if v["pipeline_id"] == pipeline_id and name in (None, v["display_name"])
                ]
                start = int(rec.query.get("page_token", ["0"])[0] or 0)
                size = int(rec.query.get("page_size", ["20"])[0])
                page = found[start : start + size]
                reply = {"pipeline_versions": page, "total_size": len(found)} if page else {}
                if start + size < len(found):
                    reply["next_page_token"] = str(start + size)
                return self._reply(reply)
            self._reply({"error": f"not found: {rec.path}"}, 404)

        def do_POST(self):
            rec = self._record()
            if self._refused(rec):
                return
            if rec.path == f"{API}/experiments":
                exp = {**rec.json(), "experiment_id": str(uuid.uuid4())}
                state.experiments[exp["experiment_id"]] = exp
                return self._reply(exp)
            if rec.path == f"{API}/runs":
                run = {**rec.json(), "run_id": str(uuid.uuid4()), "state": "PENDING"}
                state.runs[run["run_id"]] = run
                return self._reply(run)
            if rec.path == f"{API}/pipelines/upload":
                name = rec.query.get("name", ["pipeline"])[0]
                description = rec.query.get("description", [""])[0]
                pipeline = {
                    "pipeline_id": str(uuid.uuid4()),
                    "display_name": name,
                    "description": description,
                    "namespace": rec.query.get("namespace", [""])[0],
                }
                state.pipelines[pipeline["pipeline_id"]] = pipeline
                # As the server does: the pipeline's first version, named after it.
                state.versions.append(
                    {
                        "pipeline_version_id": str(uuid.uuid4()),
                        "pipeline_id": pipeline["pipeline_id"],
                        "display_name": name,
                        "description": description,
                    }
                )
                return self._reply(pipeline)
            if rec.path == f"{API}/pipelines/upload_version":
                version = {
                    "pipeline_version_id": str(uuid.uuid4()),
                    "pipeline_id": rec.query["pipelineid"][0],
                    "display_name": rec.query["name"][0],
                    "description": rec.query.get("description", [""])[0],
                }
                state.versions.append(version)
                return self._reply(version)
            self._reply({"error": f"not found: {rec.path}"}, 404)

    return Handler


class KFPServer:
    """Context manager: `with KFPServer() as (url, state): ...`."""

    def __init__(self):
        self.state = FakeKFP()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self.state))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_port}", self.state

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


class NotKFPServer:
    """Context manager: a server on 127.0.0.1 that answers every request 200 with the same body (`OK` as
    text/plain, `{}` as JSON: a web app or a mock that is not the KFP API). `with NotKFPServer(b"OK") as url`."""

    def __init__(self, body: bytes, content_type: str = "text/plain"):
        self.requests: list[str] = []
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def _answer(self):
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                server.requests.append(f"{self.command} {urlparse(self.path).path}")
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def __enter__(self):
        self.thread.start()
        return f"http://127.0.0.1:{self.httpd.server_port}"

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()
