"""data.format=research: the research code's released bundle as the pipeline's source — download,
preprocess (the split kept exactly), SIDs and corpus imported, general-reasoning data for Stage 1."""

import json

import pytest

from sidreasoner import config
from sidreasoner.artifacts import Corpus, Dataset, Evaluation, SidIndex
from sidreasoner.data.research import ResearchDataError
from sidreasoner.runner import run_step
from sidreasoner.train.tasks import general_reasoning_file

CAT = "Office_Products"


def _cfg(source, *extra):
    return config.load(
        "demo", ["data.format=research", f"data.source={source}", f"data.category={CAT}", "data.min_samples=5", *extra]
    )


@pytest.fixture(params=[True, False], ids=["narratives_with_ids", "narratives_four_columns"])
def imported(request, tmp_path, write_research_bundle):
    bundle = write_research_bundle(tmp_path / "Amazon", CAT, n_users=12, n_items=20, narrative_ids=request.param)
    cfg = _cfg(bundle["root"])
    paths = {k: tmp_path / k for k in ("raw", "dataset", "embeddings", "sid_index", "corpus")}
    metrics = {
        step: run_step(step, cfg, paths)
        for step in ("download-data", "preprocess", "embed-items", "quantize-sids", "synthesize-corpus")
    }
    return bundle, paths, metrics


def test_a_bundle_source_takes_the_bundles_sids_and_corpus():
    cfg = config.load("office", ["data.format=research", "data.source=s3://bucket/Amazon"])
    assert (cfg.sid.method, cfg.teacher.kind, cfg.embed.model) == ("import", "import", "none")
    assert cfg.stage1.lr == 3e-4  # the rest of the preset stays
    own = config.load("office", ["data.format=research", "data.source=/b", "sid.method=rkmeans"])
    assert (own.sid.method, own.teacher.kind) == ("rkmeans", "import")
    assert config.load("office").sid.method == "rqvae"
    with pytest.raises(config.ConfigError, match="format=research reads a research data bundle"):
        config.load("demo", ["data.format=research"])


def test_the_research_split_is_kept_exactly(imported):
    bundle, paths, metrics = imported
    items = Dataset.at(paths["dataset"]).items()
    research_id = {int(a): i for i, a in zip(items.item_id, items.asin, strict=True)}
    users = Dataset.at(paths["dataset"]).read_frame(Dataset.USERS).raw_user_id.tolist()
    for split in ("train", "valid", "test"):
        table = Dataset.at(paths["dataset"]).split(split)
        want = bundle["splits"][split]
        assert len(table) == len(want) == metrics["preprocess"][f"samples_{split}"]
        assert [users[u] for u in table.user_id] == [r["user_id"] for r in want]
        assert [int(t) for t in table.item_id] == [research_id[r["item_id"]] for r in want]
        assert [list(h) for h in table.history_item_ids] == [
            [research_id[i] for i in r["history_item_ids"]] for r in want
        ]
    assert list(items.title) == [bundle["items"][int(a)]["title"] for a in items.asin]
    stats = Dataset.at(paths["dataset"]).stats()
    assert stats["format"] == "research" and stats["source"] == str(bundle["root"])


def test_sids_are_imported_with_duplicates_reported(imported):
    bundle, paths, metrics = imported
    items = Dataset.at(paths["dataset"]).items()
    index = SidIndex.at(paths["sid_index"]).read_json(SidIndex.INDEX)
    assert {int(a): index[str(i)] for i, a in zip(items.item_id, items.asin, strict=True)} == {
        i: it["codes"] for i, it in bundle["items"].items()
    }
    m = metrics["quantize-sids"]
    assert m["imported"] == 1.0 and m["items"] == len(bundle["items"])
    assert m["colliding_items"] == sum(len(v) for v in bundle["duplicates"].values())
    assert metrics["embed-items"]["skipped"] == 1.0


def test_corpus_is_imported_through_the_teachers_checks(imported):
    bundle, paths, metrics = imported
    m = metrics["synthesize-corpus"]
    assert m["requests"] == 0 and m["imported_texts"] == m["tasks"]
    expected_items = len(bundle["item_narratives"])
    assert m["items_total"] == expected_items
    items = Corpus.at(paths["corpus"]).read_table(Corpus.ITEMS)
    rejected = Corpus.at(paths["corpus"]).read_table(Corpus.REJECTED).to_pydict()
    assert items.num_rows + rejected["kind"].count("item") == expected_items
    samples = Corpus.at(paths["corpus"]).read_table(Corpus.SAMPLES).to_pydict()
    narratives = dict(enumerate(bundle["narratives"]))
    for row, history, reasoning in zip(
        samples["sample"], samples["history_narrative"], samples["reasoning_path"], strict=True
    ):
        want_history, want_reasoning = narratives[row]
        assert history == (want_history.strip() if want_history else None)
        assert reasoning == (want_reasoning.strip() if want_reasoning else None)
    meta = Corpus.at(paths["corpus"]).meta()
    assert meta["teacher"] == "import" and meta["imported_from"]["source"] == str(bundle["root"])


def test_narrative_rows_pair_with_their_own_train_samples_and_give_the_narrated_prompts(imported):
    """The narrative file holds the train rows in order: by ids or by SIDs, row n pairs with train sample n
    (SID keys that several samples share pair up in file order); stage3.prompts=narrated takes those rows."""
    from sidreasoner.rl.data import narrated_samples, stage3_rows

    bundle, paths, metrics = imported
    train = bundle["splits"]["train"]
    by_sids = "user_id" not in bundle["paths"]["integrated_narratives"].read_text().splitlines()[0]
    sid_keys = [(tuple(r["history_sids"]), r["item_sid"]) for r in train]
    shared = sum(sid_keys.count(k) > 1 for k in sid_keys)
    m = metrics["preprocess"]
    assert (m["narrative_rows_matched"], m["narrative_rows_unmatched"]) == (len(train), 0)
    assert m["narrative_matched_by_sids"] == float(by_sids)
    assert (m["narrative_rows_ambiguous"], shared) == ((shared if by_sids else 0), 2)  # train rows 19, 41
    narrated = narrated_samples(paths["dataset"], paths["corpus"])
    assert narrated == sorted(Corpus.at(paths["corpus"]).read_table(Corpus.SAMPLES).to_pydict()["sample"])
    cfg = _cfg(bundle["root"], "stage3.prompts=narrated")
    rows, _ = stage3_rows(cfg.stage3, cfg.seed, paths["dataset"], paths["sid_index"], paths["corpus"])
    assert [r["reward_model"]["ground_truth"] for r in rows] == [train[n]["item_sid"] for n in narrated]


def test_stage1_reads_the_bundles_general_reasoning(imported):
    bundle, paths, _ = imported
    cfg = _cfg(bundle["root"])
    general = Dataset.at(paths["dataset"]).file(Dataset.BUNDLE_GENERAL)
    assert general_reasoning_file(cfg.stage1, paths["dataset"]) == str(general)
    lines = general.read_text().splitlines()
    assert [json.loads(x)["messages"] for x in lines] == [c for c in bundle["general"] if c is not None]
    own = _cfg(bundle["root"], "stage1.instruction_file=/x.jsonl")
    assert general_reasoning_file(own.stage1, paths["dataset"]) == "/x.jsonl"


# A hand-made bundle: items 0..3 with SIDs S[0..3], items 2 and 3 sharing one; its train rows 0 and 1 have
# the same history and target (users U1, U2), rows 2 and 3 the same SIDs (targets 2 and 3).
S = ["<a_0><b_0>", "<a_1><b_1>", "<a_2><b_2>", "<a_2><b_2>"]
TRAIN = [("U1", [0], 1), ("U2", [0], 1), ("U1", [0, 1], 2), ("U3", [0, 1], 3)]
# Narrative rows: train row 3's, row 0's, row 1's, a sample not in train, a second copy of row 0's.
NARRATED = [("U3", [0, 1], 3), ("U1", [0], 1), ("U2", [0], 1), ("U9", [2], 0), ("U1", [0], 1)]


def _hand_made_bundle(root, narrative_ids: bool):
    import csv

    def write(path, header, rows):
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "w", newline="", encoding="utf-8") as fh:
            csv.writer(fh).writerows([header, *rows])

    def row(user, hist, item):
        titles = [f"Item {i}" for i in hist]
        return [user, str(titles), f"Item {item}", str(hist), item, str([S[i] for i in hist]), S[item]]

    header = [
        "user_id",
        "history_item_title",
        "item_title",
        "history_item_id",
        "item_id",
        "history_item_sid",
        "item_sid",
    ]
    write(root / "train" / f"{CAT}.csv", header, [row(*r) for r in TRAIN])
    for split in ("valid", "test"):
        write(root / split / f"{CAT}.csv", header, [row("U1", [0, 1, 2], 3)])
    texts = [[f"path {n}", f"story {n}"] for n in range(len(NARRATED))]
    if narrative_ids:
        narrative_header = ["user_id", "history_item_id", "item_id", "history_item_sid", "item_sid"]
        rows = [[u, str(h), t, str([S[i] for i in h]), S[t]] for u, h, t in NARRATED]
    else:
        narrative_header = ["history_item_sid", "item_sid"]
        rows = [[str([S[i] for i in h]), S[t]] for _, h, t in NARRATED]
    write(
        root / "index" / f"{CAT}.integrated_narrative.csv",
        [*narrative_header, "reasoning_path", "integrated_narrative"],
        [r + x for r, x in zip(rows, texts, strict=True)],
    )
    return root


@pytest.mark.parametrize(
    "narrative_ids, samples, texts, ambiguous",
    [
        # by ids: each row finds its own sample; the sample not in train and the second copy are unmatched
        (True, [0, 1, 3], [1, 2, 0], 0),
        # by SIDs: rows 0 and 1, and rows 2 and 3, are alike; the rows pair with them in file order
        (False, [0, 1, 2], [1, 2, 0], 3),
    ],
)
def test_narrative_rows_pair_with_train_samples_by_ids_or_by_sids(tmp_path, narrative_ids, samples, texts, ambiguous):
    import pyarrow.parquet as pq

    from sidreasoner.data.from_research import dataset_from_bundle

    root = _hand_made_bundle(tmp_path / "Amazon", narrative_ids)
    cfg = _cfg(root, "data.min_samples=1")
    metrics = dataset_from_bundle(cfg, root, CAT, str(root), Dataset.at(tmp_path / "dataset"))
    got = pq.read_table(Dataset.at(tmp_path / "dataset").file(Dataset.BUNDLE_SAMPLE_NARRATIVES)).to_pydict()
    assert got == {
        "sample": samples,
        "history_narrative": [f"story {n}" for n in texts],
        "reasoning_path": [f"path {n}" for n in texts],
    }
    assert {k: v for k, v in metrics.items() if k.startswith("narrative_rows") or k.startswith("narrative_m")} == {
        "narrative_rows": 5.0,
        "narrative_rows_read": 5.0,
        "narrative_rows_matched": 3.0,
        "narrative_rows_unmatched": 2.0,
        "narrative_rows_ambiguous": float(ambiguous),
        "narrative_matched_by_sids": float(not narrative_ids),
    }


@pytest.mark.parametrize(
    "kind, words",
    [
        ("missing_split", ["no valid split CSV"]),
        ("missing_column", ["item_sid"]),
        ("item_not_in_index", ["row", "item_id", "item 2 is not in"]),
        ("sid_wrong_levels", ["item 3"]),
    ],
)
def test_a_bad_bundle_is_a_clear_error_and_nothing_is_half_written(
    kind, words, tmp_path, write_research_bundle, break_research_bundle
):
    bundle = write_research_bundle(tmp_path / "Amazon", CAT, n_users=12, n_items=20)
    damage = break_research_bundle(bundle, kind)
    cfg = _cfg(bundle["root"])
    paths = {"raw": tmp_path / "raw", "dataset": tmp_path / "dataset"}
    with pytest.raises((ResearchDataError, ValueError, RuntimeError)) as err:
        run_step("download-data", cfg, paths)
        run_step("preprocess", cfg, paths)
    message = str(err.value)
    for word in words + ([damage["file"]] if damage.get("file") else []):
        assert word in message, (word, message)
    assert not paths["dataset"].exists()


@pytest.mark.slow
def test_the_projects_own_export_imports_back_unchanged(tmp_path):
    """Round trip: the research layout the pipeline exports, read back as a bundle, gives the same
    dataset, SIDs and corpus."""
    import shutil

    small = ["data.demo.num_items=60", "data.demo.num_users=120", "sid.codebook_size=8", "teacher.max_samples=80"]
    cfg = config.load("demo", small)
    own = {k: tmp_path / "own" / k for k in ("raw", "dataset", "embeddings", "sid_index", "corpus")}
    for step in ("download-data", "preprocess", "embed-items", "quantize-sids", "synthesize-corpus"):
        run_step(step, cfg, own)
    bundle = tmp_path / "Amazon"
    shutil.copytree(own["sid_index"] / "research", bundle)
    for name in ("item_enhanced_v2.json", "integrated_narrative.csv"):
        shutil.copy(own["corpus"] / "research" / "index" / f"Demo.{name}", bundle / "index")
    back = {k: tmp_path / "back" / k for k in own}
    cfg_back = config.load("demo", small + ["data.format=research", f"data.source={bundle}", "data.category=Demo"])
    for step in ("download-data", "preprocess", "embed-items", "quantize-sids", "synthesize-corpus"):
        run_step(step, cfg_back, back)

    items, items_back = (Dataset.at(p["dataset"]).items() for p in (own, back))
    assert list(items_back.asin) == [str(i) for i in items.item_id]
    assert list(items_back.title) == list(items.title) and list(items_back.description) == list(items.description)
    users_back = Dataset.at(back["dataset"]).read_frame(Dataset.USERS).raw_user_id.tolist()
    for split in ("train", "valid", "test"):
        a, b = (Dataset.at(p["dataset"]).split(split) for p in (own, back))
        assert [users_back[u] for u in b.user_id] == [str(u) for u in a.user_id]
        assert b.item_id.tolist() == a.item_id.tolist()
        assert [list(h) for h in b.history_item_ids] == [list(h) for h in a.history_item_ids]
    assert SidIndex.at(back["sid_index"]).read_json(SidIndex.INDEX) == SidIndex.at(own["sid_index"]).read_json(
        SidIndex.INDEX
    )
    for name, columns in (
        (Corpus.ITEMS, ["item_id", "narrative"]),
        (Corpus.SAMPLES, ["sample", "history_narrative", "reasoning_path"]),
    ):
        a, b = (Corpus.at(p["corpus"]).read_table(name, columns) for p in (own, back))
        assert b.equals(a), name


@pytest.mark.slow
@pytest.mark.parametrize("narrative_ids", [True, False], ids=["narratives_with_ids", "narratives_four_columns"])
def test_the_whole_dag_runs_from_a_bundle_and_evaluates_its_test_rows(tmp_path, write_research_bundle, narrative_ids):
    """The narrative file with only the four columns the research code reads (its rows paired with train
    samples by SIDs; Stage 3 then trains on the narrated prompts, as the paper presets do) runs to the report;
    the file with ids through the import and Stage 1's training (the steps after read the same artifacts, and
    a DAG run costs over a minute of CI)."""
    import subprocess
    import sys

    bundle = write_research_bundle(tmp_path / "Amazon", CAT, n_users=30, n_items=24, narrative_ids=narrative_ids)
    sets = [
        "data.format=research",
        f"data.source={bundle['root']}",
        f"data.category={CAT}",
        "data.min_samples=5",
        "teacher.failure_budget=0.5",
        "stage1.epochs=1",
        "stage1.max_per_task=40",
        "stage1.hr_samples=8",
        "stage1.valid_samples=8",
        "stage2.epochs=1",
        "stage2.max_samples=16",
        "stage2.valid_samples=4",
        "stage2.reasoning_holdout=4",
        "stage3.max_steps=1",
        "stage3.max_samples=4",
        "stage3.valid_samples=2",
        "stage3.max_response_length=16",
        "eval.max_users=0",
        "eval.think_max_tokens=8",
        "stage1.instruction_samples=3",
        *([] if narrative_ids else ["stage3.prompts=narrated"]),
    ]
    summary = tmp_path / "summary.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "sidreasoner.cli",
            "run",
            "--pipeline-root",
            str(tmp_path / "root"),
            "--summary",
            str(summary),
            *(["--until", "sft-stage1"] if narrative_ids else []),
            *sum((["--set", s] for s in sets), []),
        ],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    tasks = json.loads(summary.read_text())["tasks"]
    assert all(t["status"] == "SUCCEEDED" for t in tasks.values())
    assert tasks["quantize-sids"]["metrics"]["imported"] == 1.0
    assert tasks["embed-items"]["metrics"]["skipped"] == 1.0
    assert tasks["sft-stage1"]["metrics"]["steps"] > 0
    matched = tasks["preprocess"]["metrics"]
    assert (matched["narrative_rows_matched"], matched["narrative_matched_by_sids"]) == (
        len(bundle["splits"]["train"]),
        float(not narrative_ids),
    )
    if narrative_ids:
        assert "evaluate-stage1" not in tasks  # it stopped after sft-stage1
        return
    test_rows = len(bundle["splits"]["test"])
    for stage in ("evaluate-stage1", "evaluate-stage2", "evaluate-stage3"):
        assert tasks[stage]["metrics"]["test_nonthink_users"] == test_rows
    predictions = Evaluation.at(tasks["evaluate-stage1"]["outputs"]["evaluation"]).predictions()
    test = predictions[(predictions.split == "test") & (predictions["mode"] == "nonthink")]
    items = Dataset.at(tasks["preprocess"]["outputs"]["dataset"]).items()
    research_id = {i: int(a) for i, a in zip(items.item_id, items.asin, strict=True)}
    assert [research_id[int(i)] for i in test.target_item_id] == [r["item_id"] for r in bundle["splits"]["test"]]
