"""synthesize-corpus on data that trips simple checks: variants sharing a title, and what
rejected.parquet keeps of a rejected reply."""

import pyarrow as pa
import pyarrow.parquet as pq

from sidreasoner import config
from sidreasoner.teacher import template
from sidreasoner.teacher.context import load_context
from sidreasoner.teacher.corpus import synthesize_corpus


def _share_titles_within_series(dataset):
    """Every installment of a line gets the line's title, as colour/size variants do on Amazon."""
    items = pq.read_table(dataset / "items.parquet").to_pylist()
    for item in items:
        item["title"] = item["title"].rsplit(" Vol. ", 1)[0]
    pq.write_table(pa.Table.from_pylist(items), dataset / "items.parquet")
    return sorted({item["title"] for item in items})


def test_honest_replies_about_variants_sharing_a_title_pass_the_default_budget(teacher_inputs, fake_openai, tmp_path):
    titles = _share_titles_within_series(teacher_inputs[0])
    assert titles == ["Acme Family Card Game", "Acme Gel Pen", "Globex Studio Headphones"]
    with fake_openai() as srv:  # replies recap the history by SID and title, then name the target's SID
        cfg = config.load(
            "demo",
            [
                "teacher.kind=openai",
                f"teacher.base_url={srv.base_url}",
                "teacher.model=fake-teacher",
                f"teacher.cache_dir={tmp_path / 'cache'}",
                "teacher.timeout_s=5",
                "teacher.concurrency=4",
            ],
        )
        assert cfg.teacher.failure_budget == 0.05
        m = synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
    assert (m["rejected"], m["rejected_leak_title"], m["reasoning_paths"], m["samples_narrated"]) == (0, 0, 18, 18)
    paths = pq.read_table(tmp_path / "c" / "samples.parquet")["reasoning_path"].to_pylist()
    assert paths[1].startswith(
        "The user bought <a_0><b_0><c_0> (Acme Family Card Game), then <a_0><b_1><c_0> (Acme Family Card Game)."
    )


def test_rejected_parquet_keeps_the_rejected_text(teacher_inputs, tmp_path):
    cfg = config.load(
        "demo",
        [
            "teacher.reasoning_words=[500,900]",
            "teacher.failure_budget=1",
            "teacher.item_narratives=false",
            "teacher.history_narratives=false",
        ],
    )
    synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
    rejected = pq.read_table(tmp_path / "c" / "rejected.parquet").to_pylist()
    ctx, train = load_context(*teacher_inputs)
    history, target = train["history_item_ids"][1].as_py(), train["item_id"][1].as_py()
    assert len(rejected) == 18 and rejected[1]["key"] == 1 and rejected[1]["reason"] == "too_short"
    assert rejected[1]["text"] == template.reasoning_path(ctx, history, ctx.items[target])
    assert all(r["text"] for r in rejected)


def test_a_reasoning_teachers_think_block_is_stripped_so_stage2_has_one(
    teacher_inputs, fake_openai, template_reply, tmp_path
):
    """Replies open with a think block (or, as a server whose chat template opened it writes, only close
    one); what follows it is the text. A reply that is only a think block, or that keeps think tags after
    the leading block, is rejected. Stage 2's target then holds exactly the think block the pipeline
    builds."""

    def content(messages):
        user = messages[-1]["content"]
        text = template_reply(messages)
        if "Task: item narrative." in user and "SID: <a_0><b_0><c_0>" in user:
            return "<think>\nOnly thoughts, the budget ran out.\n</think>\n"
        if "Task: item narrative." in user and "SID: <a_0><b_1><c_0>" in user:
            return f"<think>plan</think>\n{text} <think>second thoughts</think>"
        if "Task: item narrative." in user and "SID: <a_0><b_2><c_0>" in user:
            return f"The template opened the block.\n</think>\n\n{text}"
        return f"<think>\nLet me look at the history first.\n</think>\n\n{text}"

    with fake_openai(content=content) as srv:
        cfg = config.load(
            "demo",
            [
                "teacher.kind=openai",
                f"teacher.base_url={srv.base_url}",
                "teacher.model=fake-teacher",
                f"teacher.cache_dir={tmp_path / 'cache'}",
                "teacher.timeout_s=5",
                "teacher.concurrency=4",
            ],
        )
        m = synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
    assert (m["think_stripped"], m["rejected_think_only"], m["rejected_think_tags"]) == (46, 1, 1)
    assert (m["items_narrated"], m["samples_narrated"]) == (10, 18)
    rejected = pq.read_table(tmp_path / "c" / "rejected.parquet").to_pylist()
    assert sorted((r["key"], r["reason"]) for r in rejected) == [(0, "think_only"), (1, "think_tags")]
    assert rejected[0]["text"].startswith("<think>")  # kept as received
    samples = pq.read_table(tmp_path / "c" / "samples.parquet").to_pylist()
    items = pq.read_table(tmp_path / "c" / "items.parquet").to_pylist()
    texts = [s["reasoning_path"] for s in samples] + [s["history_narrative"] for s in samples]
    texts += [i["narrative"] for i in items]
    assert not [t for t in texts if "think>" in t]
    assert samples[0]["reasoning_path"].startswith("The user bought")

    from sidreasoner.train.tasks import stage2_examples

    train, valid = stage2_examples(cfg.stage2, cfg.seed, teacher_inputs[1], tmp_path / "c")
    assert len(train) + len(valid) == 18
    for ex in train + valid:
        assert ex.response.count("<think>") == 1 and ex.response.count("</think>") == 1, ex.response
