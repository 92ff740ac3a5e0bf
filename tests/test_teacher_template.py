"""The template teacher on a tiny hand-made fixture: exact, deterministic output; artifacts; budget."""

import csv
import json
from collections import Counter

import pyarrow.parquet as pq
import pytest

from sidreasoner import config
from sidreasoner.teacher import template
from sidreasoner.teacher.context import load_context
from sidreasoner.teacher.corpus import FailureBudgetError, select_samples, synthesize_corpus


def test_template_texts_are_exact(teacher_inputs):
    ctx, _ = load_context(*teacher_inputs)
    assert template.item_narrative(ctx, ctx.items[1]) == (
        '<a_0><b_1><c_0> is "Acme Family Card Game Vol. 2", made by Acme. It is listed under Board Games > '
        "Family Card Game. Part 2 of the Acme Family Card Game series. In the training interactions it was bought "
        '2 times. Shoppers who buy <a_0><b_1><c_0> often go on to <a_0><b_2><c_0> ("Acme Family Card Game Vol. 3"). '
        'It is most often bought right after <a_0><b_0><c_0> ("Acme Family Card Game Vol. 1"). It belongs to the '
        '"Acme Family Card Game" line.'
    )
    assert template.history_narrative(ctx, [0, 1, 4]) == (
        'The user\'s purchases, oldest first: first <a_0><b_0><c_0> ("Acme Family Card Game Vol. 1", an Acme Board '
        'Games item), then <a_0><b_1><c_0> ("Acme Family Card Game Vol. 2", an Acme Board Games item), and most '
        'recently <a_1><b_0><c_0> ("Acme Gel Pen Vol. 1", an Acme Office Writing item). 2 of the 3 items are Board '
        "Games items, across 2 categories in all. The most frequent brand is Acme (3 of 3). The user follows the "
        '"Acme Family Card Game" line through 2 installments.'
    )
    assert template.reasoning_path(ctx, [0, 1], ctx.items[2]) == (
        'The user is walking a line; its latest installment is <a_0><b_1><c_0> ("Acme Family Card Game Vol. 2"). '
        "The next one, number 3, is in the catalogue. Recommended item: <a_0><b_2><c_0>"
    )


def test_reasoning_paths_are_written_before_the_purchase(teacher_inputs):
    """Only the closing SID depends on the target: the steps come from the history, the catalogue's series
    and the training data's follow-up counts, so the model can walk them at inference."""
    ctx, _ = load_context(*teacher_inputs)
    for history in ([0, 1], [0, 1, 8], [3], [4]):
        paths = {template.reasoning_path(ctx, history, it).rsplit(" ", 1)[0] for it in ctx.items}
        assert len(paths) == 1, history
    # a line bought twice wins over a later one-off purchase
    assert template.reasoning_path(ctx, [0, 1, 8], ctx.items[2]).startswith(
        'The user is walking a line; its latest installment is <a_0><b_1><c_0> ("Acme Family Card Game Vol. 2"). '
        "The next one, number 3, is in the catalogue."
    )
    # the line is complete and nothing follows its last installment in the training data
    assert template.reasoning_path(ctx, [2, 3], ctx.items[8]) == (
        'Latest: <a_0><b_3><c_0> ("Acme Family Card Game Vol. 4"); the catalogue has no next installment of its '
        "line. Nothing follows it often in the training data, so a popular item is the best guess. "
        "Recommended item: <a_2><b_0><c_0>"
    )
    ctx.next_counts[3] = Counter({8: 2, 5: 1})
    assert template.reasoning_path(ctx, [2, 3], ctx.items[8]) == (
        'Latest: <a_0><b_3><c_0> ("Acme Family Card Game Vol. 4"); the catalogue has no next installment of its '
        'line. Shoppers who buy it most often go on to number 1 of the "Globex Studio Headphones" line. '
        "Recommended item: <a_2><b_0><c_0>"
    )


def test_template_step_artifacts(teacher_inputs, tmp_path):
    cfg = config.load("demo")
    m = synthesize_corpus(cfg, *teacher_inputs, tmp_path / "corpus")
    out = tmp_path / "corpus"
    assert (m["items_narrated"], m["samples_narrated"], m["reasoning_paths"], m["rejected"], m["requests"]) == (
        12,
        18,
        18,
        0,
        0,
    )
    items = pq.read_table(out / "items.parquet").to_pylist()
    assert [r["item_id"] for r in items] == list(range(12)) and items[0]["sid"] == "<a_0><b_0><c_0>"
    samples = pq.read_table(out / "samples.parquet")
    assert samples.column_names == [
        "sample",
        "user_id",
        "history_item_ids",
        "item_id",
        "history_narrative",
        "reasoning_path",
    ]
    rows = samples.to_pylist()
    assert rows[1]["sample"] == 1 and rows[1]["history_item_ids"] == [0, 1] and rows[1]["item_id"] == 2
    assert all(r["reasoning_path"].endswith(f"<a_{r['item_id'] // 4}><b_{r['item_id'] % 4}><c_0>") for r in rows)
    assert pq.read_table(out / "rejected.parquet").num_rows == 0
    meta = json.loads((out / "meta.json").read_text())
    assert meta["teacher"] == "template" and meta["templated"] is True and meta["model"] is None
    assert meta["counts"]["tasks"] == 48 and meta["category"] == "Tiny"
    enhanced = json.loads((out / "research/index/Tiny.item_enhanced_v2.json").read_text())
    assert (
        enhanced["1"]["llm_stage2"] == items[1]["narrative"]
        and enhanced["1"]["title"] == "Acme Family Card Game Vol. 2"
    )
    with open(out / "research/index/Tiny.integrated_narrative.csv", newline="") as fh:
        csv_rows = list(csv.DictReader(fh))
    assert list(csv_rows[0]) == [
        "user_id",
        "history_item_id",
        "item_id",
        "history_item_sid",
        "item_sid",
        "reasoning_path",
        "integrated_narrative",
    ]
    assert csv_rows[1]["history_item_sid"] == "['<a_0><b_0><c_0>', '<a_0><b_1><c_0>']"
    assert csv_rows[1]["history_item_id"] == "[0, 1]" and csv_rows[1]["item_id"] == "2"
    assert csv_rows[1]["user_id"] == str(rows[1]["user_id"])
    assert csv_rows[1]["item_sid"] == "<a_0><b_2><c_0>" and csv_rows[1]["reasoning_path"] == rows[1]["reasoning_path"]
    # deterministic: a second run writes identical tables
    synthesize_corpus(cfg, *teacher_inputs, tmp_path / "again")
    for name in ("items.parquet", "samples.parquet"):
        assert pq.read_table(out / name).equals(pq.read_table(tmp_path / "again" / name))


def test_max_samples_is_a_seeded_sample(teacher_inputs, tmp_path):
    assert select_samples(10, 0, 0).tolist() == list(range(10))
    assert select_samples(10, 4, 0).tolist() == select_samples(10, 4, 0).tolist()
    assert len(select_samples(10, 4, 0)) == 4 and select_samples(10, 4, 0).tolist() != select_samples(10, 4, 1).tolist()
    cfg = config.load("demo", ["teacher.max_samples=5", "teacher.item_narratives=false"])
    m = synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
    assert (m["tasks"], m["samples_narrated"], m["items_narrated"]) == (10, 5, 0)
    keys = pq.read_table(tmp_path / "c" / "samples.parquet")["sample"].to_pylist()
    assert keys == select_samples(18, 5, cfg.seed).tolist()


def test_failure_budget(teacher_inputs, tmp_path):
    # reasoning paths of >= 500 words cannot be met: 18 of 48 texts are rejected (37.5%)
    cfg = config.load("demo", ["teacher.reasoning_words=[500,900]", "teacher.failure_budget=0.3"])
    with pytest.raises(FailureBudgetError) as err:
        synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
    msg = str(err.value)
    assert "0 failed request(s) + 18 rejected text(s) = 18 of 48 (37.5%)" in msg
    assert "teacher.failure_budget=30.0%" in msg and "too_short=18" in msg
    assert not (tmp_path / "c").exists()
    cfg = config.load("demo", ["teacher.reasoning_words=[500,900]", "teacher.failure_budget=0.4"])
    m = synthesize_corpus(cfg, *teacher_inputs, tmp_path / "c")
    assert (m["rejected_too_short"], m["samples_narrated"], m["items_narrated"]) == (18, 0, 12)
    rejected = pq.read_table(tmp_path / "c" / "rejected.parquet").to_pylist()
    assert len(rejected) == 18 and {r["kind"] for r in rejected} == {"reasoning"}
    assert rejected[0]["reason"] == "too_short" and rejected[0]["detail"].endswith("words < 500")
