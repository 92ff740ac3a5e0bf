"""The report step on hand-made evaluation folders: the opening paragraph, the RL reward curve, the
reasoning next to what it recommended, escaping of titles and reasoning, the split it shows, and the
console line that opens it."""

import json
from pathlib import Path

import pandas as pd
import pytest

from sidreasoner import config
from sidreasoner.eval.report import headline, report

SCRIPT = "<script>alert(1)</script>"
IMG = "<img src=x onerror=alert(2)>"
SIDS = ["<a_0><b_0>", "<a_0><b_1>", "<a_1><b_0>", "<a_1><b_1>"]
TITLES = ["Blue Lamp", f"Desk {SCRIPT}", "Red [Pen](javascript:x)", "Green Mug"]


def _metrics(split: str, mode: str, hr10: float, users: int = 1) -> dict:
    return {
        f"{split}_{mode}_hr@1": hr10 / 2,
        f"{split}_{mode}_hr@10": hr10,
        f"{split}_{mode}_ndcg@10": hr10 / 3,
        f"{split}_{mode}_users": float(users),
    }


def _eval_folder(path: Path, split: str, metrics: dict, rows: list[dict], info: dict | None = None) -> Path:
    path.mkdir(parents=True)
    (path / "metrics.json").write_text(json.dumps(metrics))
    (path / "eval.json").write_text(json.dumps(info or {}))
    pd.DataFrame(
        [
            {
                "user_id": 7,
                "split": split,
                "target_item_id": 3,
                "target_sid": SIDS[3],
                "history_item_ids": [0, 1],
                "pred_scores": [0.0] * len(r["pred_sids"]),
                "pred_item_ids": [],
                "pred_titles": [],
                "hit_rank": -1,
                **r,
            }
            for r in rows
        ]
    ).to_parquet(path / "predictions.parquet")
    return path


@pytest.fixture()
def world(tmp_path):
    """A 4-item catalogue, one user (history items 0, 1; target item 3) and baselines, Stage 2 and Stage 3."""
    (tmp_path / "dataset").mkdir()
    pd.DataFrame({"item_id": range(4), "title": TITLES}).to_parquet(tmp_path / "dataset" / "items.parquet")
    (tmp_path / "sids").mkdir()
    pd.DataFrame({"item_id": range(4), "sid": SIDS}).to_parquet(tmp_path / "sids" / "sids.parquet")
    (tmp_path / "sids" / "catalogue.json").write_text(json.dumps(SIDS))

    def folders(split="test"):
        base = _eval_folder(
            tmp_path / f"base-{split}",
            split,
            {**_metrics(split, "popularity", 0.2), **_metrics(split, "random", 0.05)},
            [{"mode": "popularity", "pred_sids": SIDS[:2], "reasoning": ""}],
        )
        stage2 = _eval_folder(
            tmp_path / f"s2-{split}",
            split,
            {**_metrics(split, "nonthink", 0.5), **_metrics(split, "think", 0.25)},
            [
                {"mode": "nonthink", "pred_sids": [SIDS[1], SIDS[3]], "reasoning": ""},
                {"mode": "think", "pred_sids": [SIDS[2]], "reasoning": f"Latest {SIDS[1]}."},
            ],
        )
        stage3 = _eval_folder(
            tmp_path / f"s3-{split}",
            split,
            {**_metrics(split, "nonthink", 0.5), **_metrics(split, "think", 0.6)},
            [
                {"mode": "nonthink", "pred_sids": [SIDS[2]], "reasoning": ""},
                {"mode": "think", "pred_sids": [SIDS[3], SIDS[0]], "reasoning": f"I think {IMG} next"},
            ],
            {
                "rl_per_step": [
                    {"step": s, "reward": r}
                    for s, r in enumerate([0.0, 0.1, 0.1, 0.2, 0.3, 0.4, 0.4, 0.5, 0.6, 0.6], 1)
                ]
            },
        )
        return {"baselines": base, "stage2": stage2, "stage3": stage3}

    return tmp_path, folders


def _run(world, splits=("test",)):
    root, folders = world
    cfg = config.load("demo", [f"eval.splits={json.dumps(list(splits))}", "eval.ks=[1,10]", "eval.report_samples=1"])
    out = root / "report"
    metrics = report(cfg, folders(splits[0] if "test" not in splits else "test"), root / "dataset", root / "sids", out)
    return metrics, (out / "report.html").read_text(), (out / "report.md").read_text(), out


def test_opening_paragraph_says_what_the_run_shows(world):
    _, page, md, out = _run(world)
    text = (
        "On the test split (1 user), the best recommender is Stage 3 in thinking mode: HR@10 0.600, 3.0x the "
        "popularity baseline (0.200). At Stage 3, reasoning before the answer helps: HR@10 0.600 thinking "
        "against 0.500 non-thinking, HR@1 0.300 against 0.250. Thinking mode went from 0.250 at Stage 2 to 0.600 "
        "(2.4x)."
    )
    assert f"<p class='lead'>{text}</p>" in page
    assert md.splitlines()[2] == text
    assert json.loads((out / "headline.json").read_text()) == {"split": "test", "text": text}


def test_headline_when_reasoning_trails():
    series = [
        ("popularity", "popularity", {"hr@10": 0.25, "users": 9}),
        ("stage1 (nonthink)", "nonthink", {"hr@10": 0.5, "users": 9}),
        ("stage1 (think)", "think", {"hr@10": 0.1, "users": 9}),
    ]
    assert headline(series, "valid", 10) == (
        "On the valid split (9 users), the best recommender is Stage 1 in non-thinking mode: HR@10 0.500, 2.0x the "
        "popularity baseline (0.250). At Stage 1, reasoning before the answer does not help yet: HR@10 0.100 "
        "thinking against 0.500 non-thinking."
    )


def test_reward_curve_of_the_rl_stage(world):
    _, page, md, _ = _run(world)
    assert "<h2>stage3: RL reward per step</h2>" in page and page.count("<polyline") == 1
    sentence = "10 steps; mean reward 0.050 over the first 2 steps, 0.600 over the last 2."
    assert sentence in page and sentence in md
    assert "stage2: RL reward" not in page


def test_reasoning_sits_next_to_what_it_recommended(world):
    _, page, _, _ = _run(world)
    row = page.split("<td class='l'>stage3 (think)</td>")[-1].split("</tr>")[0]
    assert "I think &lt;img src=x onerror=alert(2)&gt; next" in row
    assert "<li class='hit'>Green Mug <code>&lt;a_1&gt;&lt;b_1&gt;</code> ✔ hit</li>" in row
    assert "Blue Lamp" in row
    stage2 = page.split("<td class='l'>stage2 (think)</td>")[-1].split("</tr>")[0]
    assert "Latest &lt;a_0&gt;&lt;b_1&gt; [Desk &lt;script&gt;" in stage2


def test_titles_and_reasoning_are_escaped(world):
    _, page, md, _ = _run(world)
    for text in (page, md):
        assert "<script" not in text and "<img" not in text
    assert "Desk &lt;script&gt;alert(1)&lt;/script&gt;" in md
    assert "I think &lt;img src=x onerror=alert(2)&gt; next" in md
    assert r"Red \[Pen\](javascript:x)" in md  # no link either
    assert "Desk &lt;script&gt;alert(1)&lt;/script&gt;" in page


def test_valid_split_when_test_is_not_evaluated(world):
    metrics, page, _, out = _run(world, splits=("valid",))
    assert json.loads((out / "headline.json").read_text())["split"] == "valid"
    assert "On the valid split (1 user)" in page and metrics["stage3_think_hr@10"] == 0.6


def test_console_prints_a_link_that_opens_the_page(world, capsys):
    from sidreasoner.cli import _print_headline

    metrics, _, _, out = _run(world)
    task = {"metrics": metrics, "outputs": {"report": str(out), "report_html": str(out.parent / "report_html")}}
    _print_headline(task)
    lines = capsys.readouterr().out.splitlines()
    url = next(line.split()[-1] for line in lines if "file://" in line)
    assert url == (out / "report.html").resolve().as_uri()
    assert any(line.startswith("On the test split") for line in lines)
    assert any("stage3_think" in line and "HR@10 0.600  (3.0x popularity)" in line for line in lines)


def test_an_evaluation_without_metrics_is_named(world):
    from sidreasoner.artifacts import ArtifactFileMissing, Evaluation

    root, folders = world
    evaluations = folders()
    Evaluation.at(evaluations["stage2"]).file(Evaluation.METRICS).unlink()
    cfg = config.load("demo", ["eval.ks=[1,10]"])
    with pytest.raises(ArtifactFileMissing, match=r"evaluation .*s2-test: metrics\.json .*evaluate-stageN"):
        report(cfg, evaluations, root / "dataset", root / "sids", root / "report")
    assert not (root / "report").exists()
