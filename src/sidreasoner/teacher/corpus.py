"""The `synthesize-corpus` step: item narratives, history narratives and reasoning paths.

Output: a `Corpus` folder (written atomically; artifacts.corpus names its files):
  item narratives    item_id, sid, narrative                       (accepted item narratives)
  samples            sample (row of the train split), user_id, history_item_ids, item_id,
                     history_narrative, reasoning_path              (accepted samples)
  rejected           kind, key, reason, detail, text                (failed requests and rejected texts)
  the record         teacher kind/model/params, `templated`, counts, metrics
  research layout    the item narratives ({"<item_id>": {title, description, sid, llm_stage2}}) and the
                     samples (user_id, history_item_id, item_id, history_item_sid, item_sid, reasoning_path,
                     integrated_narrative) as the research code reads them (artifacts.research_layout)
"""

from __future__ import annotations

import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from tqdm import tqdm

from sidreasoner.artifacts import Corpus, Dataset, SidIndex
from sidreasoner.config import Config
from sidreasoner.io import read_json
from sidreasoner.teacher import prompts, template
from sidreasoner.teacher.cache import REJECTED, ResponseCache, cache_key, resolve_dir
from sidreasoner.teacher.context import Context, load_context
from sidreasoner.teacher.openai_teacher import OpenAITeacher, Reply, Request, safe_url, zero_counts
from sidreasoner.teacher.validate import REASONS, Checked, validate_text

log = logging.getLogger(__name__)
KINDS = ("item", "history", "reasoning")


class FailureBudgetError(RuntimeError):
    """Too many failed requests or rejected texts; accepted replies stay cached so a re-run resumes."""


CUT_OFF = ("length", "content_filter")  # finish reasons of a reply the endpoint stopped before its end


@dataclass
class Task:
    kind: str  # item | history | reasoning
    key: int  # item_id, or the sample's row in the train split
    history: tuple[int, ...] = ()
    target: int | None = None

    def context(self, ctx: Context) -> list[tuple[str, str]]:
        """(title, sid) of the items the teacher was shown: candidates for SID repair."""
        if self.kind == "item":
            ids = [self.key] + [i for i, _ in ctx.top_next(self.key, 3)]
        else:
            ids = list(self.history) + ([self.target] if self.kind == "reasoning" else [])
        return [(ctx.items[i].title, ctx.items[i].sid) for i in ids]

    def messages(self, ctx: Context, cfg: Config) -> list[dict[str, str]]:
        t = cfg.teacher
        if self.kind == "item":
            return prompts.item_messages(ctx, ctx.items[self.key], t.item_words)
        if self.kind == "history":
            return prompts.history_messages(ctx, list(self.history), t.history_words)
        return prompts.reasoning_messages(ctx, list(self.history), ctx.items[self.target], t.reasoning_words)

    def template_text(self, ctx: Context) -> str:
        if self.kind == "item":
            return template.item_narrative(ctx, ctx.items[self.key])
        if self.kind == "history":
            return template.history_narrative(ctx, list(self.history))
        return template.reasoning_path(ctx, list(self.history), ctx.items[self.target])


def select_samples(n: int, max_samples: int, seed: int) -> np.ndarray:
    """All rows, or a seeded sample of `max_samples` rows in train order."""
    if max_samples <= 0 or max_samples >= n:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, size=max_samples, replace=False))


def build_tasks(cfg: Config, ctx: Context, train: pa.Table) -> tuple[list[Task], np.ndarray]:
    t = cfg.teacher
    tasks: list[Task] = []
    if t.item_narratives:
        tasks += [Task("item", it.item_id) for it in ctx.items]
    rows = select_samples(train.num_rows, t.max_samples, cfg.seed)
    if not (t.history_narratives or t.reasoning_paths):
        rows = rows[:0]
    hists = train["history_item_ids"].to_pylist()
    targets = train["item_id"].to_pylist()
    for row in rows.tolist():
        hist = tuple(int(i) for i in hists[row])
        if not hist:
            continue
        if t.history_narratives:
            tasks.append(Task("history", row, hist))
        if t.reasoning_paths:
            tasks.append(Task("reasoning", row, hist, int(targets[row])))
    return tasks, rows


def import_tasks(
    cfg: Config, ctx: Context, train: pa.Table, dataset: Dataset | Path
) -> tuple[list[Task], np.ndarray, list[str | None]]:
    """teacher.kind=import: the texts of a research bundle (preprocess kept them, mapped to this
    dataset's items and train rows, with the dataset's bundle files), as tasks with their texts."""
    dataset = Dataset.at(dataset)
    t = cfg.teacher
    tasks: list[Task] = []
    texts: list[str | None] = []
    if t.item_narratives:
        items = pq.read_table(dataset.bundle_file(Dataset.BUNDLE_ITEM_NARRATIVES, "item narratives")).to_pydict()
        for item, text in zip(items["item_id"], items["narrative"], strict=True):
            tasks.append(Task("item", int(item)))
            texts.append(text)
    if not (t.history_narratives or t.reasoning_paths):
        return tasks, np.arange(0), texts
    samples = pq.read_table(
        dataset.bundle_file(Dataset.BUNDLE_SAMPLE_NARRATIVES, "history narratives and reasoning paths")
    ).to_pydict()
    hists, targets = train["history_item_ids"].to_pylist(), train["item_id"].to_pylist()
    rows = select_samples(len(samples["sample"]), t.max_samples, cfg.seed)
    for n in rows.tolist():
        row = int(samples["sample"][n])
        hist = tuple(int(i) for i in hists[row])
        for kind, wanted, text in (
            ("history", t.history_narratives, samples["history_narrative"][n]),
            ("reasoning", t.reasoning_paths, samples["reasoning_path"][n]),
        ):
            if wanted and text is not None:
                tasks.append(Task(kind, row, hist, int(targets[row]) if kind == "reasoning" else None))
                texts.append(text)
    return tasks, np.asarray(samples["sample"], dtype=np.int64)[rows], texts


def check(task: Task, text: str | None, ctx: Context, cfg: Config, finish_reason: str | None = None) -> Checked:
    t = cfg.teacher
    if finish_reason in CUT_OFF:
        why = f"at teacher.max_tokens={t.max_tokens}" if finish_reason == "length" else "by its content filter"
        return Checked(None, "truncated", f"the endpoint cut the reply off {why} (finish_reason={finish_reason})")
    bounds = {"item": t.item_words, "history": t.history_words, "reasoning": t.reasoning_words}[task.kind]
    if t.kind == "import":  # the research corpus is taken at the lengths its teacher wrote
        bounds = (1, sys.maxsize)
    target = None
    if task.kind == "reasoning":
        it = ctx.items[task.target]
        target = (it.sid, it.title)
    # The research corpus's reasoning paths precede the answer (training appends the target SID).
    return validate_text(
        task.kind,
        text,
        catalogue=ctx.catalogue,
        context=task.context(ctx),
        bounds=bounds,
        target=target,
        history_titles=[ctx.items[i].title for i in task.history],
        final_sid=t.kind != "import",
        history_sids=[ctx.items[i].sid for i in task.history],
    )


def _progress(total: int, desc: str) -> tqdm:
    return tqdm(total=total, desc=desc, unit="text", smoothing=0.1, mininterval=0.5)


def _run_template(tasks: list[Task], ctx: Context) -> tuple[list[str | None], list[str | None]]:
    texts = []
    with _progress(len(tasks), "template teacher") as bar:
        for task in tasks:
            texts.append(task.template_text(ctx))
            bar.update()
    return texts, [None] * len(tasks)


def _run_openai(tasks: list[Task], ctx: Context, cfg: Config, teacher: OpenAITeacher) -> tuple[list[str], list[Reply]]:
    """The cache key and the reply of every task."""
    t = cfg.teacher
    identity = teacher.model_identity(cfg.generations.get("synthesize-corpus", 0))
    requests = []
    for task in tasks:
        messages = task.messages(ctx, cfg)
        requests.append(Request(cache_key(task.kind, messages, identity, teacher.params), messages))
    with _progress(len(tasks), f"teacher {t.model}") as bar:

        def on_reply(reply: Reply, n: int) -> None:
            bar.update(n)
            c = teacher.counts
            bar.set_postfix(
                hits=c["cache_hits"], req=c["requests"], retries=c["retries"], failed=c["failures"], refresh=False
            )

        replies = teacher.run(requests, on_reply)
    return [r.key for r in requests], [replies[r.key] for r in requests]


def _settle_cache(
    cache: ResponseCache, keys: list[str], replies: list[Reply], results: list[Checked]
) -> tuple[int, int]:
    """Moves the rejected replies out of the cache, so that a re-run asks for them again. Returns how many
    requests a re-run sends (the failed and rejected ones) and how many accepted replies stay cached."""
    bad = {k for k, res in zip(keys, results, strict=True) if not res.ok}
    for key, reply, res in zip(keys, replies, results, strict=True):
        if not res.ok and res.reason != "request_failed":
            cache.set_aside(key, res.reason, res.detail)
        elif res.ok and not reply.cached and key not in bad:
            cache.forget_rejection(key)
    return len(bad), len(set(keys) - bad)


def _write_outputs(
    out: Corpus,
    cfg: Config,
    ctx: Context,
    train: pa.Table,
    tasks: list[Task],
    texts: list[str | None],
    results: list[Checked],
    meta: dict,
) -> dict[str, int]:
    """`texts` are the replies as received: the rejected table keeps the rejected ones verbatim."""
    by_kind: dict[str, dict[int, Checked]] = {k: {} for k in KINDS}
    for task, res in zip(tasks, results, strict=True):
        by_kind[task.kind][task.key] = res
    # items
    item_rows = [(i, ctx.items[i].sid, r.text) for i, r in sorted(by_kind["item"].items()) if r.ok]
    out.write_items(
        pa.table(
            {
                "item_id": pa.array([r[0] for r in item_rows], pa.int64()),
                "sid": pa.array([r[1] for r in item_rows], pa.string()),
                "narrative": pa.array([r[2] for r in item_rows], pa.string()),
            }
        )
    )
    # samples: accepted only when every enabled text of the sample is accepted
    sample_keys = sorted(set(by_kind["history"]) | set(by_kind["reasoning"]))
    good = [
        k for k in sample_keys if all(by_kind[kind][k].ok for kind in ("history", "reasoning") if k in by_kind[kind])
    ]
    users = train["user_id"].to_pylist()
    hists = train["history_item_ids"].to_pylist()
    targets = train["item_id"].to_pylist()

    def text(kind: str, k: int) -> str | None:
        r = by_kind[kind].get(k)
        return r.text if r is not None else None

    hist_text = [text("history", k) for k in good]
    path_text = [text("reasoning", k) for k in good]
    out.write_samples(
        pa.table(
            {
                "sample": pa.array(good, pa.int64()),
                "user_id": pa.array([users[k] for k in good], pa.int64()),
                "history_item_ids": pa.array([hists[k] for k in good], pa.list_(pa.int64())),
                "item_id": pa.array([targets[k] for k in good], pa.int64()),
                "history_narrative": pa.array(hist_text, pa.string()),
                "reasoning_path": pa.array(path_text, pa.string()),
            }
        )
    )
    # rejected (a failed request has no text)
    rej = [
        (task.kind, task.key, res.reason, res.detail, received)
        for task, received, res in zip(tasks, texts, results, strict=True)
        if not res.ok
    ]
    out.write_rejected(
        pa.table(
            {
                "kind": pa.array([r[0] for r in rej], pa.string()),
                "key": pa.array([r[1] for r in rej], pa.int64()),
                "reason": pa.array([r[2] for r in rej], pa.string()),
                "detail": pa.array([r[3] for r in rej], pa.string()),
                "text": pa.array([r[4] for r in rej], pa.string()),
            }
        )
    )
    # research-code layout
    enhanced = {
        str(i): {
            "title": ctx.items[i].title,
            "description": ctx.items[i].description,
            "sid": sid,
            "llm_stage2": narrative,
        }
        for i, sid, narrative in item_rows
    }
    out.write_research_item_narratives(ctx.category, enhanced)
    out.write_research_integrated(
        ctx.category,
        (
            [
                users[k],
                repr([int(i) for i in hists[k]]),
                targets[k],
                repr([ctx.items[i].sid for i in hists[k]]),
                ctx.items[targets[k]].sid,
                p or "",
                h or "",
            ]
            for k, h, p in zip(good, hist_text, path_text, strict=True)
        ),
    )
    counts = {
        "items_narrated": len(item_rows),
        "samples_narrated": len(good),
        "history_narratives": sum(1 for x in hist_text if x is not None),
        "reasoning_paths": sum(1 for x in path_text if x is not None),
        "samples_rejected": len(sample_keys) - len(good),
    }
    meta["counts"] = {**meta["counts"], **counts}
    out.write_meta(meta)
    return counts


def _import_source(dataset: Dataset) -> dict:
    record = read_json(dataset.bundle_file(Dataset.BUNDLE_RECORD, "the bundle's record"))
    return {"source": record.get("source"), "category": record.get("category"), "files": record.get("files")}


@dataclass
class Taught:
    tasks: list[Task]
    rows: np.ndarray
    texts: list[str | None]  # as received (the rejected table keeps the rejected ones verbatim)
    results: list[Checked]
    counts: dict[str, int]
    cache_dir: Path | None = None
    resend: int = 0  # requests a re-run sends again: the failed and the rejected ones
    accepted: int = 0  # accepted replies of this run, in the cache


def _budget_error(t, taught: Taught, reasons: Counter) -> FailureBudgetError:
    failed = reasons.get("request_failed", 0)
    rejected = sum(reasons.values()) - failed
    bad, total = failed + rejected, len(taught.tasks)
    if taught.cache_dir is not None:
        where = (
            f"{taught.accepted} accepted replies are cached in {taught.cache_dir}; a re-run sends only the "
            f"{taught.resend} request(s) that failed or were rejected (rejected replies are kept for "
            f"inspection in {taught.cache_dir / REJECTED})."
        )
    elif t.kind == "import":
        where = (
            "The imported texts were checked like a teacher's replies (reasons above); raise "
            "teacher.failure_budget to keep the ones that pass."
        )
    else:
        where = "The template teacher has no cache; check the inputs."
    by_reason = ", ".join(f"{k}={v}" for k, v in sorted(reasons.items()))
    return FailureBudgetError(
        f"synthesize-corpus: {failed} failed request(s) + {rejected} rejected text(s) = {bad} of "
        f"{total} ({bad / total:.1%}) exceeds teacher.failure_budget={t.failure_budget:.1%} "
        f"(by reason: {by_reason}). {where}"
    )


def _metrics(taught: Taught, reasons: Counter) -> dict[str, float]:
    tasks, results = taught.tasks, taught.results
    metrics: dict[str, float] = {k: float(v) for k, v in taught.counts.items()}
    for reason in REASONS:
        if reason != "request_failed":
            metrics[f"rejected_{reason}"] = float(reasons.get(reason, 0))
    metrics.update(
        tasks=float(len(tasks)),
        rejected=float(sum(reasons.values()) - reasons.get("request_failed", 0)),
        repaired_sids=float(sum(r.repaired for r in results if r.ok)),
        think_stripped=float(sum(r.think_stripped for r in results)),
        items_total=float(sum(1 for x in tasks if x.kind == "item")),
        samples_total=float(len({x.key for x in tasks if x.kind != "item"})),
    )
    return metrics


def _teach(cfg: Config, ctx: Context, train: pa.Table, dataset: Dataset) -> Taught:
    t = cfg.teacher
    if t.kind == "import":
        tasks, rows, texts = import_tasks(cfg, ctx, train, dataset)
        results = [check(task, text, ctx, cfg) for task, text in zip(tasks, texts, strict=True)]
        return Taught(tasks, rows, texts, results, {**zero_counts(), "imported_texts": len(tasks)})
    tasks, rows = build_tasks(cfg, ctx, train)
    if t.kind == "template":
        texts, _ = _run_template(tasks, ctx)
        return Taught(
            tasks,
            rows,
            texts,
            [check(task, text, ctx, cfg) for task, text in zip(tasks, texts, strict=True)],
            zero_counts(),
        )
    cache_dir = resolve_dir(t.cache_dir)
    cache = ResponseCache(cache_dir)
    teacher = OpenAITeacher(t, cache)
    keys, replies = _run_openai(tasks, ctx, cfg, teacher)
    results = [
        Checked(None, "request_failed", r.error)
        if r.error is not None
        else check(task, r.content, ctx, cfg, r.finish_reason)
        for task, r in zip(tasks, replies, strict=True)
    ]
    resend, accepted = _settle_cache(cache, keys, replies, results)
    return Taught(tasks, rows, [r.content for r in replies], results, dict(teacher.counts), cache_dir, resend, accepted)


def synthesize_corpus(
    cfg: Config, dataset: Dataset | Path, sid_index: SidIndex | Path, out: Corpus | Path
) -> dict[str, float]:
    """Write the teacher corpus for `dataset` + `sid_index` into `out` (atomically)."""
    dataset, sid_index, out = Dataset.at(dataset), SidIndex.at(sid_index), Corpus.at(out)
    started = time.perf_counter()
    t = cfg.teacher
    ctx, train = load_context(dataset, sid_index)
    taught = _teach(cfg, ctx, train, dataset)
    tasks, rows, texts, results = taught.tasks, taught.rows, taught.texts, taught.results
    reasons = Counter(r.reason for r in results if not r.ok)
    metrics = _metrics(taught, reasons)
    if tasks and sum(reasons.values()) / len(tasks) > t.failure_budget:
        raise _budget_error(t, taught, reasons)
    meta = {
        "teacher": t.kind,
        "templated": t.kind == "template",
        "imported_from": _import_source(dataset) if t.kind == "import" else None,
        "model": t.model if t.kind == "openai" else None,
        "base_url": safe_url(t.base_url) if t.kind == "openai" else None,
        "params": (
            {
                "temperature": t.temperature,
                "max_tokens": t.max_tokens,
                "concurrency": t.concurrency,
                "timeout_s": t.timeout_s,
                "max_retries": t.max_retries,
            }
            if t.kind == "openai"
            else {}
        ),
        "prompt_version": prompts.PROMPT_VERSION,
        "category": ctx.category,
        "seed": cfg.seed,
        "max_samples": t.max_samples,
        "word_bounds": {
            "item": list(t.item_words),
            "history": list(t.history_words),
            "reasoning": list(t.reasoning_words),
        },
        "counts": {
            "items": len(ctx.items),
            "train_samples": train.num_rows,
            "samples_selected": len(rows),
            "tasks": len(tasks),
            "rejected_by_reason": dict(sorted(reasons.items())),
        },
    }
    with Corpus.writing(out) as tmp:
        counts_written = _write_outputs(tmp, cfg, ctx, train, tasks, texts, results, meta)
        metrics.update({k: float(v) for k, v in counts_written.items()})
        metrics["wall_seconds"] = round(time.perf_counter() - started, 3)
        meta["metrics"] = metrics
        tmp.write_meta(meta)
    return metrics
