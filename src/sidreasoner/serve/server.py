"""Running the predictor in kserve's ModelServer: REST v1 and v2 on one port, liveness (`GET /`,
`/v2/health/live`), readiness (`GET /v1/models/<name>`, `/v2/models/<name>/ready`) and `/metrics` as kserve
serves them; no gRPC port.

Shutdown (SIGTERM, SIGINT): uvicorn catches the signal, stops accepting connections and waits (kserve's grace
period, 30 s) for the requests in flight; the batcher then stops waiting for batches to fill and decodes what is
queued at once, so every accepted request gets its answer before the process exits (0)."""

from __future__ import annotations

import os

from sidreasoner.config import Config
from sidreasoner.serve.predictor import SidRecommender, kserve

ALL_INTERFACES = "0.0.0.0"


class ModelServer(kserve.ModelServer):
    """kserve's ModelServer with the listening address as an option (kserve 0.21's REST server always binds
    0.0.0.0: kserve/protocol/rest/server.py) and a hook that runs when uvicorn receives a shutdown signal."""

    def __init__(self, host: str, on_shutdown, **kwargs):
        super().__init__(**kwargs)
        self.host, self.on_shutdown = host, on_shutdown

    def register_signal_handler(self):
        # start() calls this after creating the REST server and before running it: its uvicorn config is not
        # loaded yet, and uvicorn installs `handle_exit` as its signal handler when it starts serving.
        super().register_signal_handler()
        self._rest_server.config.host = self.host
        uvicorn_server = self._rest_server._server
        handle_exit = uvicorn_server.handle_exit

        def on_signal(sig, frame):
            self.on_shutdown()
            handle_exit(sig, frame)

        uvicorn_server.handle_exit = on_signal


def load_recommender(
    cfg: Config,
    model: str | os.PathLike,
    sid_index: str | os.PathLike | None = None,
    dataset: str | os.PathLike | None = None,
    name: str | None = None,
) -> SidRecommender:
    """The loaded predictor (model, decoder, catalogue): errors name the missing folder or file."""
    recommender = SidRecommender(cfg, model, sid_index, dataset, name)
    recommender.load()
    return recommender


def run_server(recommender: SidRecommender, port: int, host: str = ALL_INTERFACES) -> None:
    """Serve until a shutdown signal, then drain the requests in flight."""
    server = ModelServer(host, recommender.batcher.flush, http_port=port, enable_grpc=False, workers=1)
    server.start([recommender])
