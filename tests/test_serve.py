"""`sidreasoner serve`: the request contract and the batcher on hand-made inputs, then one real server process on
127.0.0.1 whose answers must equal `evaluate`'s for the same histories."""

import asyncio
import json
import socket
import subprocess
import sys
import threading
import time

import httpx
import numpy as np
import pandas as pd
import pytest
from kserve.errors import InvalidInput
from kserve.protocol.infer_type import InferInput, InferRequest

from sidreasoner import config, storage
from sidreasoner.artifacts import ModelExport
from sidreasoner.eval.catalogue import Catalogue
from sidreasoner.eval.evaluate import evaluate
from sidreasoner.serve.batcher import Batcher, group_batch
from sidreasoner.serve.predictor import (
    Query,
    ServedCatalogue,
    catalogue_dirs,
    local_model_dir,
    parse_instance,
    v1_instances,
    v2_instances,
)

from .helpers.serve import ServerProcess, add_item_ids, batches_above_one

CATALOGUE_SID_INDEX, CATALOGUE_DATASET = ModelExport.CATALOGUE_SID_INDEX, ModelExport.CATALOGUE_DATASET

# ---------------------------------------------------------------- requests, exact values


def test_an_instance_with_defaults_and_ints():
    assert parse_instance({"history": ["B1", 7]}, 0, default_k=10, max_k=60) == Query(("B1", "7"), 10, False)
    assert parse_instance({"history": ["B1"], "k": 3, "think": True}, 0, 10, 60) == Query(("B1",), 3, True)


@pytest.mark.parametrize(
    ("instance", "reason"),
    [
        (["B1"], "instance 2: expected an object"),
        ({"k": 3}, 'instance 2: no "history"'),
        ({"history": "B1"}, "instance 2: history must be a list of item ids, got 'B1'"),
        ({"history": []}, "instance 2: history is empty"),
        ({"history": ["B1", 2.5]}, "instance 2: history must hold item ids (strings or ints), got 2.5"),
        ({"history": ["B1", True]}, "instance 2: history must hold item ids (strings or ints), got True"),
        ({"history": ["B1"], "k": 0}, "instance 2: k must be a positive int, got 0"),
        ({"history": ["B1"], "k": "3"}, "instance 2: k must be a positive int, got '3'"),
        ({"history": ["B1"], "k": 61}, "instance 2: k=61 is above the catalogue's 60 items"),
        ({"history": ["B1"], "think": "yes"}, "instance 2: think must be true or false, got 'yes'"),
        ({"history": ["B1"], "histroy": []}, "instance 2: unknown field(s) histroy; allowed: history, k, think"),
    ],
)
def test_a_bad_instance_names_its_reason(instance, reason):
    with pytest.raises(InvalidInput) as err:
        parse_instance(instance, 2, 10, 60)
    assert str(err.value).startswith(reason)


def test_v1_body_needs_instances():
    assert v1_instances({"instances": [{"history": ["a"]}]}) == [{"history": ["a"]}]
    with pytest.raises(InvalidInput, match="not JSON: send it with Content-Type: application/json"):
        v1_instances(b"instances=1")
    for body in ({}, {"inputs": []}, [1]):
        with pytest.raises(InvalidInput, match='no "instances"'):
            v1_instances(body)
    with pytest.raises(InvalidInput, match='"instances" must be a non-empty list'):
        v1_instances({"instances": []})


def _v2(*tensors) -> InferRequest:
    return InferRequest("sidreasoner", [InferInput(n, [len(d)], t, d) for n, t, d in tensors])


def test_v2_tensors_become_instances():
    request = _v2(
        ("history", "BYTES", ['["B1", 2]', '["B3"]']), ("k", "INT64", [4, 1]), ("think", "BOOL", [True, False])
    )
    assert v2_instances(request) == [
        {"history": ["B1", 2], "k": 4, "think": True},
        {"history": ["B3"], "k": 1, "think": False},
    ]
    assert v2_instances(_v2(("history", "BYTES", [b'["B1"]']))) == [{"history": ["B1"]}]


@pytest.mark.parametrize(
    ("tensors", "reason"),
    [
        ([("k", "INT64", [1])], 'no "history" input'),
        ([("history", "BYTES", ["B1"])], "instance 0: history must be a JSON list of item ids"),
        ([("history", "BYTES", ['["B1"]']), ("k", "INT64", [1, 2])], "input 'k' has 2 values, history has 1"),
        ([("history", "BYTES", ['["B1"]']), ("k", "FP32", [1.0])], "input 'k' must be INT64, got FP32"),
        ([("history", "BYTES", ['["B1"]']), ("user", "BYTES", ["u"])], "unknown input 'user'"),
    ],
)
def test_a_bad_v2_request_names_its_reason(tensors, reason):
    with pytest.raises(InvalidInput) as err:
        v2_instances(_v2(*tensors))
    assert str(err.value).startswith(reason)


# ---------------------------------------------------------------- the catalogue's ids, exact values


def _catalogue(max_history: int = 2) -> ServedCatalogue:
    # items 0 and 2 share SID S0; item 3 has no SID
    cat = Catalogue(
        sid_of_item={0: "S0", 1: "S1", 2: "S0"},
        sid_items={"S0": [0, 2], "S1": [1]},
        catalogue=["S0", "S1"],
        titles={0: "zero", 1: "one", 2: "two", 3: "three"},
    )
    return ServedCatalogue(cat, {0: "B0", 1: "B1", 2: "B2", 3: "B3"}, max_history)


def test_unknown_ids_are_left_out_and_the_most_recent_kept():
    served = _catalogue(max_history=2)
    resolved = served.resolve(Query(("B0", "x", "B3", "B1", "B2"), 2, False))
    assert (resolved.items, resolved.used_ids, resolved.unknown_ids) == ([1, 2], ["B1", "B2"], ["x", "B3"])
    assert served.history_sids(resolved) == ["S1", "S0"]
    with pytest.raises(InvalidInput, match="instance 4: none of the history's item ids is in the catalogue: x, B3"):
        served.resolve(Query(("x", "B3"), 2, False), 4)


def test_ranked_sids_expand_to_items_with_their_sid_and_score():
    served = _catalogue()
    resolved = served.resolve(Query(("B1",), 3, False))
    answer = served.answer(Query(("B1",), 3, True), resolved, ["S0", "S1"], [-1.5, -2.0], "because")
    assert answer == {
        "item_ids": ["B0", "B2", "B1"],
        "titles": ["zero", "two", "one"],
        "sids": ["S0", "S0", "S1"],
        "scores": [-1.5, -1.5, -2.0],
        "unknown_item_ids": [],
        "history_used": ["B1"],
        "reasoning": "because",
    }
    assert "reasoning" not in served.answer(Query(("B1",), 1, False), resolved, ["S1"], [-0.1], "")


def test_catalogue_folders_default_to_the_exported_model(tmp_path):
    (tmp_path / CATALOGUE_SID_INDEX).mkdir(parents=True)
    with pytest.raises(FileNotFoundError) as err:
        catalogue_dirs(tmp_path, None, None)
    assert str(err.value) == (
        f"{tmp_path / 'catalogue/dataset'}: no such folder "
        "(the exported model's catalogue/dataset; name the folder with --dataset)"
    )
    (tmp_path / "d").mkdir()
    assert catalogue_dirs(tmp_path, None, tmp_path / "d") == (tmp_path / CATALOGUE_SID_INDEX, tmp_path / "d")


def test_the_command_names_the_missing_folder_and_exits_2(tmp_path):
    command = [sys.executable, "-m", "sidreasoner.cli", "serve", "--model", str(tmp_path), "--host", "127.0.0.1"]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert f"error: {tmp_path / CATALOGUE_SID_INDEX}: no such folder" in result.stderr


def test_a_bucket_model_is_mirrored_with_its_catalogue(moto_server, monkeypatch, tmp_path):
    monkeypatch.setenv("SIDREASONER_S3_ENDPOINT", moto_server["url"])
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", moto_server["key"])
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", moto_server["secret"])
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    from sidreasoner.storage.s3 import make_client

    client = make_client("s3")
    if not client.bucket_exists("serve"):
        client.make_bucket("serve")
    export = tmp_path / "export"
    files = {"config.json": "{}", f"{CATALOGUE_SID_INDEX}/sids.parquet": "s", f"{CATALOGUE_DATASET}/items.parquet": "i"}
    for rel, text in files.items():
        (export / rel).parent.mkdir(parents=True, exist_ok=True)
        (export / rel).write_text(text)
    storage.upload_dir(export, "s3://serve/models/m1")
    local = local_model_dir("s3://serve/models/m1")
    assert local.is_relative_to(tmp_path / "hf") and {
        p.relative_to(local).as_posix() for p in local.rglob("*") if p.is_file()
    } >= set(files)
    assert catalogue_dirs(local, None, None) == (local / CATALOGUE_SID_INDEX, local / CATALOGUE_DATASET)
    with pytest.raises(FileNotFoundError, match=f"model folder {tmp_path / 'none'} does not exist"):
        local_model_dir(tmp_path / "none")


# ---------------------------------------------------------------- the batcher, exact values


def test_group_batch_keeps_first_appearance_order():
    assert group_batch([(False, 10), (True, 10), (False, 10), (False, 20)]) == [
        ((False, 10), [0, 2]),
        ((True, 10), [1]),
        ((False, 20), [3]),
    ]


def test_batcher_gathers_concurrent_submits_into_one_call_per_group():
    calls = []

    def decode(key, items):
        calls.append((key, list(items)))
        return [f"{key}:{item}" for item in items]

    async def main():
        batcher = Batcher(decode, max_batch=4, max_wait_s=0.5)
        results = await asyncio.gather(
            batcher.submit([("a", 1), ("b", 2)]), batcher.submit([("a", 3)]), batcher.submit([("a", 4), ("a", 5)])
        )
        batcher.close()
        return results

    results = asyncio.run(main())
    assert results == [["a:1", "b:2"], ["a:3"], ["a:4", "a:5"]]
    # 4 instances fill the first batch at once (one call per key), the fifth waits for its own
    assert calls == [("a", [1, 3, 4]), ("b", [2]), ("a", [5])]


def test_a_flush_stops_waiting_and_a_failed_decode_fails_only_its_group():
    def decode(key, items):
        if key == "bad":
            raise RuntimeError("boom")
        return items

    async def main():
        batcher = Batcher(decode, max_batch=8, max_wait_s=30.0)
        waiting = asyncio.ensure_future(
            asyncio.gather(batcher.submit([("ok", 1)]), batcher.submit([("bad", 2)]), return_exceptions=True)
        )
        await asyncio.sleep(0.05)
        start = time.monotonic()
        batcher.flush()
        results = await waiting
        batcher.close()
        return results, time.monotonic() - start

    (ok, bad), seconds = asyncio.run(main())
    assert ok == [1] and isinstance(bad, RuntimeError) and str(bad) == "boom"
    assert seconds < 5


# ---------------------------------------------------------------- the real server

N_ITEMS = 60
EVAL_SETS = ["eval.think_max_tokens=8", "eval.ks=[1,5,10]"]
MAX_WAIT_MS = 1500
MAX_BATCH = 8


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory, random_codes, write_sid_index, write_dataset, build_tiny_model):
    """A real server on the folders, the evaluation of the same folders, and the test histories as ids."""
    root = tmp_path_factory.mktemp("serve")
    codes = random_codes(N_ITEMS, 3, 5, seed=2, collide=3)  # 3 items share a SID with another
    write_sid_index(root / "sid_index", np.arange(N_ITEMS), codes)
    write_dataset(root / "dataset", N_ITEMS, 12)
    ids = add_item_ids(root / "dataset")
    build_tiny_model(root / "model", codes, 5, seed=2)
    folders = [root / "model", root / "dataset", root / "sid_index"]
    args = ["--model", str(root / "model"), "--sid-index", str(root / "sid_index"), "--dataset", str(root / "dataset")]
    sets = [*EVAL_SETS, f"serve.max_wait_ms={MAX_WAIT_MS}", f"serve.max_batch={MAX_BATCH}"]
    server = ServerProcess(
        [*args, "--name", "recs", *(a for s in sets for a in ("--set", s))], _free_port(), "recs", root / "server.log"
    )
    try:
        evaluate(config.load("demo", EVAL_SETS), *folders, root / "evaluation")  # while the server loads
        server.wait_ready()
        preds = pd.read_parquet(root / "evaluation" / "predictions.parquet")
        expected = {
            mode: [
                {
                    "history": [ids[i] for i in row.history_item_ids],
                    "item_ids": [ids[i] for i in row.pred_item_ids],
                    "reasoning": row.reasoning,
                }
                for row in preds[preds["mode"] == mode].itertuples()
            ]
            for mode in ("nonthink", "think")
        }
        yield {"server": server, "expected": expected, "ids": ids, "root": root}
    finally:
        server.stop()


def _check(answers, expected, think):
    assert [a["item_ids"] for a in answers] == [e["item_ids"] for e in expected]
    assert [a["history_used"] for a in answers] == [e["history"] for e in expected]
    if think:
        assert [a["reasoning"] for a in answers] == [e["reasoning"] for e in expected]
    for a in answers:
        assert len(a["item_ids"]) == len(a["sids"]) == len(a["scores"]) == len(a["titles"]) == 10
        assert a["scores"] == sorted(a["scores"], reverse=True) and a["unknown_item_ids"] == []


def test_v1_answers_equal_the_evaluation_without_thinking(served):
    server, expected = served["server"], served["expected"]["nonthink"]
    response = server.predict([{"history": e["history"]} for e in expected])
    assert response.status_code == 200, response.text
    _check(response.json()["predictions"], expected, think=False)


def test_v2_answers_equal_the_evaluation_with_thinking(served):
    server, expected = served["server"], served["expected"]["think"]
    n = len(expected)
    response = server.infer(
        [
            {
                "name": "history",
                "shape": [n],
                "datatype": "BYTES",
                "data": [json.dumps(e["history"]) for e in expected],
            },
            {"name": "think", "shape": [n], "datatype": "BOOL", "data": [True] * n},
        ]
    )
    assert response.status_code == 200, response.text
    (output,) = response.json()["outputs"]
    assert output["name"] == "recommendations" and output["shape"] == [n]
    _check([json.loads(x) for x in output["data"]], expected, think=True)


def test_concurrent_clients_are_batched_and_answered_as_evaluated(served):
    server, expected = served["server"], served["expected"]
    before = batches_above_one(httpx.get(f"{server.url}/metrics").text)
    jobs = [(mode, i) for i in range(len(expected["nonthink"])) for mode in ("nonthink", "think")]
    answers = {}

    def ask(mode, i):
        instance = {"history": expected[mode][i]["history"], "think": mode == "think"}
        answers[mode, i] = server.predict([instance])

    threads = [threading.Thread(target=ask, args=job) for job in jobs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.status_code == 200 for r in answers.values()), [r.text for r in answers.values()]
    for mode in ("nonthink", "think"):
        got = [answers[mode, i].json()["predictions"][0] for i in range(len(expected[mode]))]
        _check(got, expected[mode], think=mode == "think")
    metrics = httpx.get(f"{server.url}/metrics").text
    assert batches_above_one(metrics) > before
    assert 'sidreasoner_serve_requests_total{model_name="recs",protocol="v1"}' in metrics


def test_unknown_ids_are_listed_and_only_the_most_recent_ten_used(served):
    server, ids = served["server"], served["ids"]
    history = [ids[i] for i in range(15)]
    long, recent = server.predict(
        [{"history": ["nope", *history, 12345], "k": 3}] + [{"history": history[-10:], "k": 3}] * 7
    ).json()["predictions"][:2]
    assert long["unknown_item_ids"] == ["nope", "12345"] and long["history_used"] == history[-10:]
    assert long["item_ids"] == recent["item_ids"] and len(long["item_ids"]) == 3


def test_bad_requests_get_400_with_their_reason_and_the_server_keeps_answering(served):
    server, ids = served["server"], served["ids"]
    good = [{"history": [ids[1], ids[2]], "k": 2}] * MAX_BATCH  # a full batch: answered without waiting
    cases = [
        ({"inputs": []}, 'no "instances"'),
        ({"instances": ["B1"]}, "instance 0: expected an object"),
        ({"instances": [{"history": []}]}, "instance 0: history is empty"),
        ({"instances": [{"history": {"a": 1}}]}, "instance 0: history must be a list of item ids"),
        ({"instances": [{"history": [ids[1], None]}]}, "instance 0: history must hold item ids (strings or ints)"),
        (
            {"instances": [{"history": ["x1", "x2"]}]},
            "instance 0: none of the history's item ids is in the catalogue: x1, x2",
        ),
        ({"instances": [{"history": [ids[1]], "k": -1}]}, "instance 0: k must be a positive int"),
        (
            {"instances": [{"history": [ids[1]], "k": N_ITEMS + 1}]},
            f"k={N_ITEMS + 1} is above the catalogue's {N_ITEMS} items",
        ),
        ({"instances": [{"history": [ids[1]], "think": 1}]}, "instance 0: think must be true or false"),
    ]
    for body, reason in cases:
        response = httpx.post(f"{server.url}/v1/models/recs:predict", json=body, timeout=60)
        assert response.status_code == 400 and reason in response.json()["error"], (body, response.text)
        after = server.predict(good)
        assert after.status_code == 200 and len(after.json()["predictions"]) == MAX_BATCH
    metrics = httpx.get(f"{server.url}/metrics").text
    assert f'sidreasoner_serve_errors_total{{kind="invalid_input",model_name="recs"}} {float(len(cases))}' in metrics


def test_liveness_and_readiness(served):
    url = served["server"].url
    assert httpx.get(f"{url}/").json() == {"status": "alive"}
    assert httpx.get(f"{url}/v1/models/recs").json() == {"name": "recs", "ready": True}
    assert httpx.get(f"{url}/v2/health/ready").status_code == 200
    assert httpx.get(f"{url}/v2/models/recs/ready").json()["ready"] is True
    assert httpx.get(f"{url}/v1/models/other").status_code == 404


def test_sigterm_answers_the_waiting_request_then_exits_0(served):
    """Last in this module: it stops the module's server."""
    server, expected = served["server"], served["expected"]["nonthink"]
    answers = []
    client = threading.Thread(target=lambda: answers.append(server.predict([{"history": expected[0]["history"]}])))
    client.start()
    time.sleep(0.5)  # the request now waits in the batcher (max_wait_ms 1500)
    server.terminate()
    client.join(60)
    assert server.proc.wait(60) == 0
    assert answers[0].status_code == 200, answers[0].text
    _check(answers[0].json()["predictions"], expected[:1], think=False)
