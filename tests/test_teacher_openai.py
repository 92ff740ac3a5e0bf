"""The `openai` teacher against a local OpenAI-compatible server on 127.0.0.1 (the fake_openai fixture)."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from sidreasoner import config
from sidreasoner.teacher.cache import ResponseCache
from sidreasoner.teacher.corpus import FailureBudgetError, synthesize_corpus

UNIQUE_REQUESTS = 30  # 12 items + 9 distinct histories + 9 distinct (history, target): two users share each walk
TASKS = 48
SECRET = "sk-test-SECRET-0123456789abcdef"


def cfg_for(server, tmp_path: Path, *extra: str) -> config.Config:
    return config.load("demo", [
        "teacher.kind=openai", f"teacher.base_url={server.base_url}", "teacher.model=fake-teacher",
        f"teacher.cache_dir={tmp_path / 'cache'}", "teacher.timeout_s=0.5", "teacher.backoff_s=0.01",
        "teacher.concurrency=4", *extra])


def test_corpus_complete_with_faults_and_second_run_is_free(teacher_inputs, fake_openai, tmp_path):
    with fake_openai(faults=["429", "500", "slow", "malformed", "500"]) as srv:
        cfg = cfg_for(srv, tmp_path)
        m = synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
        assert srv.received == UNIQUE_REQUESTS + 5
        assert (m["requests"], m["retries"], m["failures"], m["cache_hits"]) == (UNIQUE_REQUESTS + 5, 5, 0, 0)
        assert (m["items_narrated"], m["samples_narrated"], m["reasoning_paths"], m["rejected"]) == (12, 18, 18, 0)
        assert m["tokens_in"] > 0 and m["tokens_out"] > 0
        assert len(ResponseCache(tmp_path / "cache")) == UNIQUE_REQUESTS
        first = pq.read_table(tmp_path / "c" / "samples.parquet")
        meta = json.loads((tmp_path / "c" / "meta.json").read_text())
        assert meta["templated"] is False and meta["model"] == "fake-teacher" and meta["teacher"] == "openai"

        srv.reset_counts()
        m2 = synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
        assert srv.received == 0
        assert (m2["requests"], m2["cache_hits"], m2["tokens_in"]) == (0, UNIQUE_REQUESTS, 0)
        assert pq.read_table(tmp_path / "c" / "samples.parquet").equals(first)

        # a changed model or temperature is a different cache key: everything is asked again
        m3 = synthesize_corpus(cfg_for(srv, tmp_path, "teacher.temperature=0.2"), *teacher_inputs, tmp_path / "c3")
        assert (m3["requests"], m3["cache_hits"]) == (UNIQUE_REQUESTS, 0)


def test_new_weights_under_the_same_name_are_asked_again(teacher_inputs, fake_openai, tmp_path):
    """The cache key holds what /v1/models says of the model, teacher.model_revision and the step's
    generation: any of them changing is a new corpus; nothing changing replays the cache."""
    card = {"id": "fake-teacher", "object": "model", "created": 1, "owned_by": "vllm", "root": "/models/v1"}
    with fake_openai(models=[card]) as srv:
        cfg = cfg_for(srv, tmp_path)
        assert synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c1")["requests"] == UNIQUE_REQUESTS
        card["created"] = 2  # vLLM answers the listing's time: not part of the identity
        assert synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c2")["cache_hits"] == UNIQUE_REQUESTS
        card["root"] = "/models/v2"  # the endpoint now serves other weights under the same name
        assert synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c3")["cache_hits"] == 0
        revised = cfg_for(srv, tmp_path, "teacher.model_revision=2026-12-01")
        assert synthesize_corpus(revised, *teacher_inputs, tmp_path / "c4")["cache_hits"] == 0
        regenerated = cfg_for(srv, tmp_path, "generations.synthesize-corpus=2")
        assert synthesize_corpus(regenerated, *teacher_inputs, tmp_path / "c5")["cache_hits"] == 0
        assert synthesize_corpus(regenerated, *teacher_inputs, tmp_path / "c6")["cache_hits"] == UNIQUE_REQUESTS


def test_retry_after_is_respected(teacher_inputs, fake_openai, tmp_path):
    with fake_openai(faults=["429"], retry_after="1") as srv:
        cfg = cfg_for(srv, tmp_path, "teacher.concurrency=1", "teacher.item_narratives=true",
                      "teacher.history_narratives=false", "teacher.reasoning_paths=false")
        start = time.monotonic()
        m = synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
        assert m["retries"] == 1 and m["items_narrated"] == 12
        assert time.monotonic() - start >= 1.0


def test_failure_budget_keeps_cache_and_rerun_resumes(teacher_inputs, fake_openai, tmp_path):
    broken = {"on": True}

    def status(messages):  # reasoning prompts fail while the server is "broken"
        return 503 if broken["on"] and "Task: reasoning path." in messages[-1]["content"] else 200

    with fake_openai(status_for=status) as srv:
        cfg = cfg_for(srv, tmp_path, "teacher.max_retries=1")
        with pytest.raises(FailureBudgetError) as err:
            synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
        msg = str(err.value)
        assert "18 failed request(s) + 0 rejected text(s) = 18 of 48 (37.5%)" in msg
        assert "teacher.failure_budget=5.0%" in msg and str(tmp_path / "cache") in msg
        assert not (tmp_path / "c").exists()
        assert srv.received == 12 + 9 + 9 * 2  # items + histories answered; 9 distinct reasoning prompts tried twice
        broken["on"] = False
        srv.reset_counts()
        m = synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
        assert srv.received == 9 and (m["cache_hits"], m["requests"]) == (21, 9)
        assert m["samples_narrated"] == 18


def test_leaky_and_invalid_replies_are_rejected(teacher_inputs, fake_openai, template_reply, tmp_path):
    def content(messages):
        user = messages[-1]["content"]
        text = template_reply(messages)
        if "Target SID (hidden guidance): <a_0><b_2><c_0>" in user:  # leaks the target's title
            text = text.replace("The user bought", "Clearly Acme Family Card Game Vol. 3 is next. The user bought")
        if "SID: <a_2><b_3><c_0>" in user and "item narrative" in user:  # a SID nobody can explain
            text += " Compare <a_9><b_9><c_9>."
        if "SID: <a_2><b_2><c_0>" in user and "item narrative" in user:  # one code off: repaired
            text = text.replace("<a_2><b_2><c_0>", "<a_2><b_2><c_7>")
        return text

    with fake_openai(content=content) as srv:
        m = synthesize_corpus(cfg_for(srv, tmp_path, "teacher.failure_budget=0.2"), *teacher_inputs, tmp_path / "c")
    assert (m["rejected_leak_title"], m["rejected_invalid_sid"], m["repaired_sids"]) == (2, 1, 1)
    assert (m["items_narrated"], m["samples_narrated"]) == (11, 16)
    rejected = pq.read_table(tmp_path / "c" / "rejected.parquet").to_pylist()
    assert sorted((r["kind"], r["reason"]) for r in rejected) == [
        ("item", "invalid_sid"), ("reasoning", "leak_title"), ("reasoning", "leak_title")]
    items = {r["item_id"]: r["narrative"] for r in pq.read_table(tmp_path / "c" / "items.parquet").to_pylist()}
    assert items[10].startswith("<a_2><b_2><c_0> is Globex") and 11 not in items


def test_api_key_is_used_but_never_written_or_logged(teacher_inputs, fake_openai, tmp_path, monkeypatch, caplog, capfd):
    monkeypatch.setenv("SIDREASONER_TEACHER_API_KEY", SECRET)
    caplog.set_level(logging.DEBUG)
    with fake_openai(faults=["500", "429"]) as srv:
        synthesize_corpus(cfg_for(srv, tmp_path), *teacher_inputs, tmp_path / "c")
    assert srv.auth_headers == {f"Bearer {SECRET}"}
    captured = capfd.readouterr()
    assert SECRET not in caplog.text and SECRET not in captured.out and SECRET not in captured.err
    for root in (tmp_path / "c", tmp_path / "cache"):
        for path in root.rglob("*"):
            if path.is_file():
                assert SECRET.encode() not in path.read_bytes(), path


def test_missing_key_for_remote_endpoint_fails_clearly(teacher_inputs, tmp_path, monkeypatch):
    monkeypatch.delenv("SIDREASONER_TEACHER_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    cfg = config.load("demo", ["teacher.kind=openai", "teacher.base_url=https://api.example.com/v1",
                               f"teacher.cache_dir={tmp_path / 'cache'}"])
    with pytest.raises(RuntimeError, match="SIDREASONER_TEACHER_API_KEY.*OPENAI_API_KEY"):
        synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")


CHILD = """
import json, sys
from pathlib import Path
from sidreasoner import config
from sidreasoner.teacher.corpus import synthesize_corpus
cfg = config.validate(json.loads(sys.argv[1]))
synthesize_corpus(cfg, Path(sys.argv[2]), Path(sys.argv[3]), Path(sys.argv[4]))
"""


def test_sigkill_midway_then_rerun_loses_nothing(teacher_inputs, fake_openai, tmp_path):
    answered_before_kill = 10
    with fake_openai(block_after=answered_before_kill) as srv:
        cfg = cfg_for(srv, tmp_path)
        args = [sys.executable, "-c", CHILD, json.dumps(config.to_params(cfg)), *map(str, teacher_inputs),
                str(tmp_path / "c")]
        child = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env={**os.environ, "SIDREASONER_TEACHER_API_KEY": SECRET})
        try:
            deadline = time.monotonic() + 30
            while not (len(srv.answered) >= answered_before_kill and srv.waiting >= 1):
                assert child.poll() is None, "the step ended before it was killed"
                assert time.monotonic() < deadline, "the step never reached the kill point"
                time.sleep(0.05)
            time.sleep(0.5)  # replies already received are being written to the cache
            child.send_signal(signal.SIGKILL)
            child.wait(10)
        finally:
            if child.poll() is None:
                child.kill()
        assert not (tmp_path / "c").exists()
        answered = set(srv.answered)
        assert len(answered) == answered_before_kill
        assert len(ResponseCache(tmp_path / "cache")) == answered_before_kill

        srv.block_after = None
        srv.release()
        srv.reset_counts()
        m = synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
        resent = answered & set(srv.received_hashes)
        assert not resent, f"{len(resent)} answered request(s) were sent again"
        assert srv.received == UNIQUE_REQUESTS - answered_before_kill
        assert (m["cache_hits"], m["requests"]) == (answered_before_kill, UNIQUE_REQUESTS - answered_before_kill)
        assert (m["items_narrated"], m["samples_narrated"]) == (12, 18)
