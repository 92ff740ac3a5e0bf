"""Re-runs, code changes, image changes and config changes, replayed on the compiled office pipeline with
a model of the KFP backend's cache (tests/helpers/kfp_cache.py, which cites the backend's lines).

The outcome table is the one docs/cluster.md shows: the test fails when they differ."""

from pathlib import Path

import pytest

from sidreasoner import config
from sidreasoner.components import images
from sidreasoner.model import checkpoints
from sidreasoner.pipelines import pipeline
from sidreasoner.pipelines.compile import compile_pipeline
from sidreasoner.pipelines.submit import run_parameters
from sidreasoner.steps import STEPS, downstream

from .helpers.presets import GENERAL_DATA

ROOT = Path(__file__).resolve().parents[1]
PRESET = "office"
GENERATION = 20261206120000  # what --rerun-from would pick at that time (new_generation)


def compiled(cfg: config.Config, tmp_path: Path) -> str:
    return compile_pipeline(cfg, tmp_path / f"p{len(list(tmp_path.iterdir()))}.yaml").read_text()


def executed(results) -> list[str]:
    return [name for name in STEPS if name in results and results[name].status == "EXECUTED"]


def trained(results) -> dict[str, int]:
    return {
        name: results[name].steps_trained
        for name in ("sft-stage1", "sft-stage2", "rl-stage3")
        if results[name].status == "EXECUTED"
    }


def served(results, step: str) -> str:
    return results[step].outputs[next(iter(STEPS[step].outputs))].run


def describe(results) -> str:
    ran = executed(results)
    ran_text = "every step" if ran == [s for s in STEPS if s in results] else ", ".join(ran) if ran else "none"
    fresh = trained(results)
    training = ", ".join(f"{k} {'fresh' if v else 'resumed (0 steps)'}" for k, v in fresh.items()) or "-"
    return f"{ran_text} | {training} | {served(results, 'rl-stage3')} | {served(results, 'report')}"


@pytest.fixture(scope="module")
def table(tmp_path_factory, request, kfp_backend):
    tmp = tmp_path_factory.mktemp("kfp-cache")
    mp = pytest.MonkeyPatch()
    request.addfinalizer(mp.undo)
    backend = kfp_backend()
    base = config.load(PRESET, [GENERAL_DATA])
    kept = config.load(PRESET, [GENERAL_DATA, f"generations.rl-stage3={GENERATION}"])
    rows = []

    def run(label, cfg, parameters=None, yaml_text=None):
        results = backend.run(
            yaml_text or compiled(cfg, tmp), run_parameters(cfg) if parameters is None else parameters
        )
        rows.append((label, results))
        return results

    run("1. first run", base)
    run("2. `submit --rerun-from rl-stage3` (generation G)", kept)
    run("3. plain run", base)
    run("4. run with `--set generations.rl-stage3=G`", kept)
    run(
        "5. UI: uploaded pipeline, run parameter `generation_rl_stage3=G`",
        base,
        parameters={**run_parameters(base), "generation_rl_stage3": GENERATION},
    )
    run(
        "6. `--set stage2.lr=2e-5` (one section changed), generation G kept",
        config.load(PRESET, [GENERAL_DATA, f"generations.rl-stage3={GENERATION}", "stage2.lr=2e-5"]),
    )
    new_code = "0.1.0+srcffffffffffff"
    mp.setattr(pipeline, "code_version", lambda: new_code)
    mp.setattr(checkpoints, "code_version", lambda: new_code)
    run("7. code change (new `code_version`)", base)
    mp.setitem(images.IMAGES, "train", "registry.example/sidreasoner-train@sha256:" + "e" * 64)
    run("8. training image changed (digest)", base)
    run(
        "9. `submit --no-cache` (generation G of download-data)",
        config.load(PRESET, [GENERAL_DATA, f"generations.download-data={GENERATION}"]),
    )
    return rows


def markdown(rows) -> str:
    lines = [
        "| run | executed (all others cached) | training | rl-stage3 result from | report from |",
        "|---|---|---|---|---|",
    ]
    lines += [f"| {label} | {describe(results)} |" for label, results in rows]
    return "\n".join(lines)


def test_scenarios(table):
    by_label = {label.split(".")[0]: results for label, results in table}
    after_rl = downstream("rl-stage3")
    assert executed(by_label["1"]) == [s for s in STEPS if s in by_label["1"]]
    assert set(trained(by_label["1"]).values()) == {1}
    # A re-run executes exactly the step and what follows, with fresh training.
    assert executed(by_label["2"]) == [s for s in after_rl if s in by_label["2"]]
    assert trained(by_label["2"]) == {"rl-stage3": 1}
    # A plain run keeps generation 0: run 1's results; given G, run 2's; the UI's run parameter the same.
    assert executed(by_label["3"]) == [] and served(by_label["3"], "rl-stage3") == "run-1"
    assert executed(by_label["4"]) == [] and served(by_label["4"], "report") == "run-2"
    assert executed(by_label["5"]) == [] and served(by_label["5"], "report") == "run-2"
    # One section: its step and what follows, trained afresh.
    assert executed(by_label["6"]) == [s for s in downstream("sft-stage2") if s in by_label["6"]]
    assert trained(by_label["6"]) == {"sft-stage2": 1, "rl-stage3": 1}
    # New code: every key changes, every training starts over.
    assert executed(by_label["7"]) == [s for s in STEPS if s in by_label["7"]]
    assert set(trained(by_label["7"]).values()) == {1}
    # A new training image: the steps in it and what follows.
    office = config.load(PRESET).cluster
    in_train = {d for s in STEPS.values() if pipeline.step_image(s, office) == "train" for d in downstream(s.name)}
    in_train = [s for s in STEPS if s in in_train and s in by_label["8"]]
    assert executed(by_label["8"]) == in_train
    assert executed(by_label["9"]) == [s for s in STEPS if s in by_label["9"]]
    assert set(trained(by_label["9"]).values()) == {1}


def test_docs_show_the_computed_table(table):
    doc = (ROOT / "docs" / "cluster.md").read_text()
    assert markdown(table) in doc, "docs/cluster.md differs from the computed table:\n" + markdown(table)


def test_a_retried_task_resumes_its_checkpoint(tmp_path, kfp_backend):
    """A retry replays the same task with the same inputs: the same checkpoint folder, resumed."""
    backend = kfp_backend()
    cfg = config.load(PRESET, [GENERAL_DATA])
    text, parameters = compiled(cfg, tmp_path), run_parameters(cfg)
    first = backend.run(text, parameters)
    assert first["sft-stage1"].steps_trained == 1
    assert backend.retry(text, parameters, first, "sft-stage1").steps_trained == 0
