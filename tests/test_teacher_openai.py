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
    return config.load(
        "demo",
        [
            "teacher.kind=openai",
            f"teacher.base_url={server.base_url}",
            "teacher.model=fake-teacher",
            f"teacher.cache_dir={tmp_path / 'cache'}",
            "teacher.timeout_s=0.5",
            "teacher.backoff_s=0.01",
            "teacher.concurrency=4",
            *extra,
        ],
    )


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
        cfg = cfg_for(
            srv,
            tmp_path,
            "teacher.concurrency=1",
            "teacher.item_narratives=true",
            "teacher.history_narratives=false",
            "teacher.reasoning_paths=false",
        )
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
        ("item", "invalid_sid"),
        ("reasoning", "leak_title"),
        ("reasoning", "leak_title"),
    ]
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
    cfg = config.load(
        "demo",
        [
            "teacher.kind=openai",
            "teacher.base_url=https://api.example.com/v1",
            f"teacher.cache_dir={tmp_path / 'cache'}",
        ],
    )
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
        args = [
            sys.executable,
            "-c",
            CHILD,
            json.dumps(config.to_params(cfg)),
            *map(str, teacher_inputs),
            str(tmp_path / "c"),
        ]
        child = subprocess.Popen(
            args,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env={**os.environ, "SIDREASONER_TEACHER_API_KEY": SECRET},
        )
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


# Replies with HTTP 200 that are not a usable chat completion, and the reason each is counted under.
CONTENT = '"content": "<a_0><b_0><c_0> is a fine item."'
BAD_BODIES = [
    (b'{"choices": [{"message": {' + CONTENT.encode() + b'}}], "usage": "lots"}', "bad_usage"),
    (b'{"choices": [{"message": {' + CONTENT.encode() + b'}}], "usage": {"prompt_tokens": "many"}}', "bad_usage"),
    (b'{"choices": [{"message": {' + CONTENT.encode() + b'}}], "usage": {"prompt_tokens": 1e999}}', "bad_usage"),
    (b'{"choices": [{"message": {' + CONTENT.encode() + b'}}], "usage": {"completion_tokens": NaN}}', "bad_usage"),
    (b'{"choices": [{"message": {' + CONTENT.encode() + b'}}], "usage": {"completion_tokens": -3}}', "bad_usage"),
    (b'{"choices": [{"message": {' + CONTENT.encode() + b'}}], "usage": {"prompt_tokens": true}}', "bad_usage"),
    (
        b'{"choices": [{"message": {' + CONTENT.encode() + b'}}], "usage": {"prompt_tokens": 1' + b"0" * 40 + b"}}",
        "bad_usage",
    ),
    (b'{"choices": [{"message": {"content": "\\ud800 lone surrogate"}}]}', "bad_text"),
    (b'{"object": "chat.completion"}', "no_choices"),
    (b'{"choices": []}', "no_choices"),
    (b'{"choices": "abc"}', "no_choices"),
    (b"[1, 2]", "no_choices"),
    (b'{"error": {"message": "overloaded"}}', "no_choices"),
    (b'{"choices": [null]}', "no_message"),
    (b'{"choices": [{"message": "hi"}]}', "no_message"),
    (b'{"choices": [{"message": {"content": null}}]}', "no_content"),
    (b'{"choices": [{"message": {"content": ["a", "b"]}}]}', "no_content"),
    (b'{"choices": [{"message": {"content": "  "}}]}', "no_content"),
    (b'{"choices": [{"finish_reason": 7, "message": {' + CONTENT.encode() + b"}}]}", "bad_finish_reason"),
    (b"Internal Server Error", "not_json"),
    (b"\xff\xfe{}", "not_json"),
    (b"[" * 5000 + b"]" * 5000, "not_json"),
]


def test_malformed_replies_are_counted_retried_and_within_budget(teacher_inputs, fake_openai, tmp_path):
    """Every bad shape is answered once, then the retry gets a good reply: nothing escapes the retry loop,
    each bad reply is counted under its reason, and the corpus is complete."""
    faults = [f for body, _ in BAD_BODIES for f in (body, None)]
    with fake_openai(faults=faults) as srv:
        cfg = cfg_for(srv, tmp_path, "teacher.concurrency=1", "teacher.max_retries=1", "teacher.timeout_s=5")
        m = synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
    n = len(BAD_BODIES)
    assert (m["requests"], m["retries"], m["failures"], m["bad_replies"]) == (UNIQUE_REQUESTS + n, n, 0, n)
    expected = {}
    for _, reason in BAD_BODIES:
        expected[reason] = expected.get(reason, 0) + 1
    assert {k[len("bad_reply_") :]: v for k, v in m.items() if k.startswith("bad_reply_") and v} == expected
    assert (m["items_narrated"], m["samples_narrated"], m["rejected"]) == (12, 18, 0)
    assert len(ResponseCache(tmp_path / "cache")) == UNIQUE_REQUESTS


def test_an_endpoint_that_always_answers_a_lone_surrogate_spends_budget_not_the_step(
    teacher_inputs, fake_openai, tmp_path
):
    def body_for(messages):
        if "Task: item narrative." in messages[-1]["content"] and "SID: <a_0><b_0><c_0>" in messages[-1]["content"]:
            return b'{"choices": [{"message": {"content": "<a_0><b_0><c_0> is \\udcff here."}}]}'
        return None

    with fake_openai(body_for=body_for) as srv:
        cfg = cfg_for(srv, tmp_path, "teacher.max_retries=2")
        m = synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
        assert (m["failures"], m["bad_reply_bad_text"], m["items_narrated"]) == (1, 3, 11)
        rejected = pq.read_table(tmp_path / "c" / "rejected.parquet").to_pylist()
        assert [(r["key"], r["reason"]) for r in rejected] == [(0, "request_failed")]
        assert "surrogate" in rejected[0]["detail"]
        srv.reset_counts()  # never cached: a re-run asks again
        m2 = synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
        assert (srv.received, m2["cache_hits"], m2["failures"]) == (3, UNIQUE_REQUESTS - 1, 1)


def test_rejected_replies_are_set_aside_and_asked_again_once_the_endpoint_is_fixed(
    teacher_inputs, fake_openai, template_reply, tmp_path
):
    broken = {"on": True}

    def content(messages):  # while broken, reasoning paths stop before the answer: missing_final_sid
        text = template_reply(messages)
        if broken["on"] and "Task: reasoning path." in messages[-1]["content"]:
            return text.rsplit("\n", 1)[0]
        return text

    with fake_openai(content=content) as srv:
        cfg = cfg_for(srv, tmp_path)
        with pytest.raises(FailureBudgetError) as err:
            synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
        msg = str(err.value)
        assert "0 failed request(s) + 18 rejected text(s) = 18 of 48" in msg
        assert (
            f"21 accepted replies are cached in {tmp_path / 'cache'}; a re-run sends only the 9 request(s) "
            f"that failed or were rejected (rejected replies are kept for inspection in "
            f"{tmp_path / 'cache' / 'rejected'})"
        ) in msg
        assert len(ResponseCache(tmp_path / "cache")) == 21
        aside = [json.loads(p.read_text()) for p in (tmp_path / "cache" / "rejected").rglob("*.json")]
        assert len(aside) == 9 and {a["reason"] for a in aside} == {"missing_final_sid"}
        assert all(a["content"].startswith("The user bought") for a in aside)

        broken["on"] = False
        srv.reset_counts()
        m = synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
        assert srv.received == 9 and (m["cache_hits"], m["requests"], m["rejected"]) == (21, 9, 0)
        assert m["samples_narrated"] == 18
        assert not list((tmp_path / "cache" / "rejected").rglob("*.json"))  # accepted now: nothing left aside


def test_replies_far_over_max_tokens_are_cut_off_and_counted(teacher_inputs, fake_openai, tmp_path):
    """10 MB replies to two item prompts (one with Content-Length, one closed-delimited): the client stops
    reading at the cap, counts each as too_large, retries, and caches nothing of them."""
    from tests.helpers.teacher import big_reply

    def body_for(messages):
        user = messages[-1]["content"]
        if "Task: item narrative." not in user:
            return None
        if "SID: <a_0><b_0><c_0>" in user:
            return big_reply(10 << 20)
        if "SID: <a_0><b_1><c_0>" in user:
            return big_reply(10 << 20, length_header=False)
        return None

    with fake_openai(body_for=body_for) as srv:
        cfg = cfg_for(srv, tmp_path, "teacher.max_retries=1", "teacher.timeout_s=5")
        m = synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
        assert (m["failures"], m["bad_reply_too_large"], m["items_narrated"]) == (2, 4, 10)
        assert srv.hung_up == 4 and max(srv.sent_bytes) < 2 << 20, srv.sent_bytes
    rejected = pq.read_table(tmp_path / "c" / "rejected.parquet").to_pylist()
    assert sorted(r["key"] for r in rejected) == [0, 1]
    assert all("teacher.max_tokens=512" in r["detail"] for r in rejected)
    sizes = [p.stat().st_size for p in (tmp_path / "cache").rglob("*.json")]
    assert len(sizes) == UNIQUE_REQUESTS - 2 and max(sizes) < 4096


def test_an_oversized_cached_reply_is_asked_again(teacher_inputs, fake_openai, tmp_path):
    """A cache written before replies were capped may hold huge replies: they are not read, but asked again."""
    with fake_openai() as srv:
        cfg = cfg_for(srv, tmp_path)
        synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
        victim = next((tmp_path / "cache").rglob("*.json"))
        entry = json.loads(victim.read_text())
        victim.write_text(json.dumps({**entry, "content": entry["content"] + " word" * 200_000}))
        srv.reset_counts()
        m = synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
        assert (srv.received, m["cache_hits"]) == (1, UNIQUE_REQUESTS - 1)
        assert victim.stat().st_size < 4096


def test_a_reply_cut_off_at_max_tokens_is_rejected_as_truncated(teacher_inputs, fake_openai, template_reply, tmp_path):
    from tests.helpers.teacher import completion_body

    def body_for(messages):  # a narrative that reads fine but was stopped by max_tokens
        user = messages[-1]["content"]
        if "Task: item narrative." in user and "SID: <a_1><b_0><c_0>" in user:
            return completion_body(template_reply(messages), finish_reason="length")
        return None

    with fake_openai(body_for=body_for) as srv:
        m = synthesize_corpus(cfg_for(srv, tmp_path), *teacher_inputs, tmp_path / "c")
    assert (m["rejected_truncated"], m["rejected"], m["items_narrated"], m["bad_replies"]) == (1, 1, 11, 0)
    rejected = pq.read_table(tmp_path / "c" / "rejected.parquet").to_pylist()
    assert [(r["key"], r["reason"]) for r in rejected] == [(4, "truncated")]
    assert rejected[0]["detail"] == "the endpoint cut the reply off at teacher.max_tokens=512 (finish_reason=length)"
    assert len(list((tmp_path / "cache" / "rejected").rglob("*.json"))) == 1
