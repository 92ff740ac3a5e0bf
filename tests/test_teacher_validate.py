"""Exact-value tests of the teacher's validation, cache key and helpers."""

import hashlib
import json

import pytest

from sidreasoner.teacher.cache import ResponseCache, cache_key
from sidreasoner.teacher.context import series_of
from sidreasoner.teacher.openai_teacher import (
    KEY_ENV_VARS,
    MalformedReply,
    Parsed,
    TeacherError,
    body_cap,
    content_cap,
    is_local_url,
    parse_reply,
    resolve_api_key,
    retry_after_seconds,
    safe_url,
    served_identity,
)
from sidreasoner.teacher.validate import check_length, check_reasoning_end, repair_sids, strip_think, validate_text

CAT = frozenset({"<a_1><b_2><c_3>", "<a_1><b_2><c_4>", "<a_7><b_0><c_0>"})
CTX = [("Acme Gel Pen Vol. 3", "<a_1><b_2><c_3>"), ("Acme Gel Pen Vol. 4", "<a_1><b_2><c_4>")]


def test_valid_sids_pass_and_spaced_tokens_are_normalised():
    r = repair_sids("Bought <a_1><b_2><c_3> and <a_7> <b_0>  <c_0>.", CAT, CTX)
    assert (r.text, r.reason, r.repaired) == ("Bought <a_1><b_2><c_3> and <a_7><b_0><c_0>.", None, 0)


def test_repair_by_adjacent_title():
    r = repair_sids(
        'First <a_1><b_2><c_3> ("Acme Gel Pen Vol. 3"), then <a_9><b_9><c_9> ("Acme Gel Pen Vol. 4").', CAT, CTX
    )
    assert r.ok and r.repaired == 1
    assert r.text == 'First <a_1><b_2><c_3> ("Acme Gel Pen Vol. 3"), then <a_1><b_2><c_4> ("Acme Gel Pen Vol. 4").'


def test_repair_by_one_code_off_and_truncation():
    assert repair_sids("see <a_7><b_0><c_1> now", CAT, [("X", "<a_7><b_0><c_0>")]).text == "see <a_7><b_0><c_0> now"
    assert repair_sids("see <a_7><b_0> now", CAT, [("X", "<a_7><b_0><c_0>")]).text == "see <a_7><b_0><c_0> now"


def test_ambiguous_or_unexplained_sid_is_rejected():
    r = repair_sids("see <a_1><b_2><c_9> now", CAT, CTX)  # one code off from both context SIDs
    assert (r.reason, r.detail) == ("invalid_sid", "<a_1><b_2><c_9> is not in the catalogue (ambiguous)")
    r = repair_sids("see <a_5><b_5><c_5> now", CAT, CTX)
    assert (r.reason, r.detail) == ("invalid_sid", "<a_5><b_5><c_5> is not in the catalogue (no candidate)")


def test_leak_check():
    target, title = "<a_1><b_2><c_4>", "Acme Gel Pen Vol. 4"
    ok = check_reasoning_end("Liked <a_1><b_2><c_3>. Recommended item: <a_1><b_2><c_4>.", target, title)
    assert ok.ok and ok.text == "Liked <a_1><b_2><c_3>. Recommended item: <a_1><b_2><c_4>"
    assert check_reasoning_end("It is <a_1><b_2><c_4>. Answer: <a_1><b_2><c_4>", target, title).reason == "leak_sid"
    assert (
        check_reasoning_end("Next is acme gel pen  vol. 4. Answer: <a_1><b_2><c_4>", target, title).reason
        == "leak_title"
    )
    assert (
        check_reasoning_end("Answer: <a_1><b_2><c_4> because it is good", target, title).reason == "missing_final_sid"
    )
    assert check_reasoning_end("Answer: <a_1><b_2><c_3>", target, title).reason == "wrong_final_sid"
    # a longer history title that contains the target title is not a leak
    longer = "Acme Gel Pen Vol. 4 Refill"
    r = check_reasoning_end(f"Bought {longer}. Answer: <a_1><b_2><c_4>", target, title, [longer])
    assert r.ok


def test_leak_check_judges_by_item_when_variants_share_a_title():
    # Two colours of one pen: the history holds the black one, the target is the blue one.
    black, blue, title = "<a_1><b_2><c_3>", "<a_1><b_2><c_4>", "Acme Gel Pen"
    honest = f'The user bought {black} ("Acme Gel Pen") and likes the line. Recommended item: {blue}'
    assert check_reasoning_end(honest, blue, title, [title]).ok
    # Without a history item of that title, naming it still gives the answer away.
    assert check_reasoning_end(honest, blue, title, ["Globex Headphones"]).reason == "leak_title"
    # A repeat purchase: the target is in the history, so recapping the history names its SID.
    again = f"The user bought {blue} and {black}, and rebuys what runs out. Recommended item: {blue}"
    assert check_reasoning_end(again, blue, title, [title, title], history_sids=[blue, black]).ok
    assert check_reasoning_end(again, blue, title, [title], history_sids=[black]).reason == "leak_sid"
    r = validate_text(
        "reasoning",
        honest,
        catalogue=CAT,
        context=[(title, black), (title, blue)],
        bounds=(2, 50),
        target=(blue, title),
        history_titles=[title],
        history_sids=[black],
    )
    assert (r.reason, r.text) == (None, honest)


def test_a_short_title_inside_another_word_is_no_leak():
    target = "<a_1><b_2><c_4>"
    honest = f"I think the user writes a lot and will want more of it. Recommended item: {target}"
    assert check_reasoning_end(honest, target, "Ink").ok
    assert check_reasoning_end(f"More ink, surely. Recommended item: {target}", target, "Ink").reason == "leak_title"
    # nor does a history title's longer word hide it: "Inkjet Paper" does not contain the title "Ink"
    said = f"After the Inkjet Paper comes ink. Recommended item: {target}"
    assert check_reasoning_end(said, target, "Ink", ["Inkjet Paper"]).reason == "leak_title"


def test_repair_next_to_a_shared_title_needs_the_codes_to_pick_the_item():
    ctx = [("Acme Gel Pen", "<a_1><b_2><c_3>"), ("Acme Gel Pen", "<a_1><b_2><c_4>")]
    # The title fits both variants; the written SID is one code off from the second only.
    r = repair_sids('He bought <a_1><b_9><c_4> ("Acme Gel Pen").', CAT, ctx)
    assert (r.reason, r.text, r.repaired) == (None, 'He bought <a_1><b_2><c_4> ("Acme Gel Pen").', 1)
    # Nothing but the title: either variant could be meant, so nothing is guessed.
    r = repair_sids('He bought <a_5><b_5><c_5> ("Acme Gel Pen").', CAT, ctx)
    assert (r.reason, r.detail) == ("invalid_sid", "<a_5><b_5><c_5> is not in the catalogue (ambiguous)")


def test_length_bounds_and_full_validation():
    assert check_length("one two three", (3, 5)).ok
    assert (check_length("one two", (3, 5)).reason, check_length("one two", (3, 5)).detail) == (
        "too_short",
        "2 words < 3",
    )
    assert check_length("a b c d e f", (3, 5)).reason == "too_long"
    r = validate_text(
        "reasoning",
        " Liked <a_1><b_2> <c_3>, so: <a_1><b_2><c_4> ",
        catalogue=CAT,
        context=CTX,
        bounds=(2, 50),
        target=("<a_1><b_2><c_4>", "Acme Gel Pen Vol. 4"),
    )
    assert (r.text, r.reason) == ("Liked <a_1><b_2><c_3>, so: <a_1><b_2><c_4>", None)
    assert validate_text("item", "  ", catalogue=CAT, context=CTX, bounds=(1, 9)).reason == "empty"


def test_cache_key_is_content_addressed():
    msgs = [{"role": "user", "content": "hi <a_1>"}]
    params = {"temperature": 0.7, "max_tokens": 512}
    m1 = {"name": "m1", "revision": "", "served": {}, "generation": 0}
    key = cache_key("item", msgs, m1, params)
    blob = json.dumps(
        {"kind": "item", "messages": msgs, "model": m1, "params": params},
        sort_keys=True,
        ensure_ascii=False,
        separators=(",", ":"),
    )
    assert key == hashlib.sha256(blob.encode()).hexdigest()
    assert key == cache_key("item", [dict(m) for m in msgs], dict(reversed(m1.items())), dict(reversed(params.items())))
    for changed in ({"name": "m2"}, {"revision": "2026-12"}, {"served": {"root": "/w/v2"}}, {"generation": 1}):
        assert key != cache_key("item", msgs, {**m1, **changed}, params), changed
    assert key != cache_key("item", msgs, m1, {**params, "temperature": 0.2})
    assert key != cache_key("history", msgs, m1, params)
    assert key != cache_key("item", [{"role": "user", "content": "hi <a_2>"}], m1, params)


def test_served_identity_keeps_the_stable_fields():
    vllm = {
        "object": "list",
        "data": [
            {"id": "other", "root": "/x"},
            {
                "id": "teacher",
                "object": "model",
                "created": 1796551234,
                "owned_by": "vllm",
                "root": "/models/qwen-v2",
                "parent": None,
                "max_model_len": 32768,
                "permission": [{"id": "modelperm-1", "created": 1796551234}],
            },
        ],
    }
    assert served_identity(vllm, "teacher") == {
        "id": "teacher",
        "owned_by": "vllm",
        "root": "/models/qwen-v2",
        "max_model_len": 32768,
    }
    openai = {"data": [{"id": "gpt-4o-mini", "object": "model", "created": 1721172741, "owned_by": "system"}]}
    assert served_identity(openai, "gpt-4o-mini") == {"id": "gpt-4o-mini", "owned_by": "system", "created": 1721172741}
    assert served_identity(openai, "absent") == {}
    assert served_identity({"error": "x"}, "teacher") == {} and served_identity([], "teacher") == {}


def test_cache_roundtrip_and_sharding(tmp_path):
    cache = ResponseCache(tmp_path)
    key = "ab" + "0" * 62
    assert cache.get(key) is None
    cache.put(key, {"content": "x", "usage": {}})
    assert cache.get(key) == {"content": "x", "usage": {}}
    assert (tmp_path / "ab" / f"{key}.json").is_file() and len(cache) == 1
    (tmp_path / "ab" / f"{key}.json").write_text("{truncated")
    assert cache.get(key) is None


def test_series_and_reply_parsing():
    assert series_of("Acme Gel Pen Vol. 3") == "Acme Gel Pen"
    assert series_of("Hooli Retro Adventure Game Core Chapter 6") == "Hooli Retro Adventure Game Core"
    assert series_of("Plain Stapler") is None
    body = '{"choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":3,"completion_tokens":1}}'
    assert parse_reply(body, 512) == Parsed("hi", None, 3, 1)
    for bad in ('{"choices": [', '{"choices": []}', '{"choices":[{"message":{"content":""}}]}'):
        with pytest.raises(MalformedReply):
            parse_reply(bad, 512)
    assert retry_after_seconds({"retry-after": "2"}) == 2.0
    assert retry_after_seconds({"retry-after-ms": "250"}) == 0.25
    assert retry_after_seconds({}) is None


def test_api_key_resolution(monkeypatch):
    for var in KEY_ENV_VARS:
        monkeypatch.delenv(var, raising=False)
    assert is_local_url("http://127.0.0.1:8000/v1") and is_local_url("http://vllm-teacher:8000/v1")
    assert not is_local_url("https://api.openai.com/v1")
    assert resolve_api_key("http://localhost:8000/v1")  # a dummy for local servers
    with pytest.raises(TeacherError) as err:
        resolve_api_key("https://api.openai.com/v1")
    assert "SIDREASONER_TEACHER_API_KEY" in str(err.value) and "OPENAI_API_KEY" in str(err.value)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-b")
    assert resolve_api_key("https://api.openai.com/v1") == "sk-b"
    monkeypatch.setenv("SIDREASONER_TEACHER_API_KEY", "sk-a")
    assert resolve_api_key("https://api.openai.com/v1") == "sk-a"
    assert safe_url("https://user:pw@host.example:8443/v1?key=x") == "https://host.example:8443/v1"


def test_a_reply_is_capped_by_max_tokens():
    assert (content_cap(512), body_cap(512)) == (5120, 47104)
    fits = "é" * (content_cap(512) // 2)  # two bytes each in UTF-8
    assert parse_reply(json.dumps({"choices": [{"message": {"content": fits}}]}), 512).content == fits
    with pytest.raises(MalformedReply, match=r"too_large.*5121 bytes, over the 5120 that teacher.max_tokens=512"):
        parse_reply(json.dumps({"choices": [{"message": {"content": fits + "x"}}]}), 512)


def test_a_leading_think_block_is_stripped_and_stray_tags_are_rejected():
    assert (strip_think("<think>\nplan\n</think>\n\nThe answer.").text, strip_think("x").think_stripped) == (
        "The answer.",
        False,
    )
    assert strip_think("plan, opened by the template</think> The answer.").text == "The answer."
    assert strip_think("<THINK>plan</Think >The answer.").think_stripped
    for text, reason in (
        ("<think>only a plan</think>  ", "think_only"),
        ("<think>cut off", "think_only"),
        ("<think>a<think>b</think>", "think_only"),
        ("<think>a</think> b <think>c</think>", "think_tags"),
        ("b </think> c <think>", "think_tags"),
        ("The answer <think>late</think> more", "think_tags"),
    ):
        got = strip_think(text)
        assert (got.text, got.reason) == (None, reason), text
