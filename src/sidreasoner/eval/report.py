"""The `report` step: a self-contained HTML page (inline CSS + inline SVG, no scripts, no remote
resources: it renders inside the KFP UI's iframe) and its Markdown twin, comparing every evaluated
label in every mode, with sample users (history titles, the reasoning with each SID decoded to its
item title, and the top-K with hits marked)."""

from __future__ import annotations

import html
import os
import re
import time

import pandas as pd

from sidreasoner.artifacts import Dataset, Evaluation, ReportPages, SidIndex
from sidreasoner.config import Config
from sidreasoner.eval.catalogue import Catalogue

_SID_RE = re.compile(r"(?:<[a-z]_\d+>)+")
COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]
BASELINE_MODES = ("popularity", "random")


def _series(evaluations: dict[str, Evaluation], split: str) -> list[tuple[str, str, dict]]:
    """[(row label, mode, {metric: value})] for every label and mode found in its evaluation's metrics."""
    out = []
    for label, evaluation in evaluations.items():
        metrics = evaluation.metrics()
        modes = sorted(
            {k[len(split) + 1 :].split("_")[0] for k in metrics if k.startswith(f"{split}_") and "hr@" in k},
            key=lambda m: (
                ("nonthink", "think", "popularity", "random").index(m)
                if m in ("nonthink", "think", "popularity", "random")
                else 9
            ),
        )
        for mode in modes:
            vals = {k[len(f"{split}_{mode}_") :]: v for k, v in metrics.items() if k.startswith(f"{split}_{mode}_")}
            name = mode if mode in BASELINE_MODES else f"{label} ({mode})"
            out.append((name, mode, vals))
    return out


def decode_sids(text: str, cat: Catalogue) -> str:
    """Every SID in `text` followed by its item title(s): '<a_1><b_2><c_3> [Blue Lamp]'."""

    def sub(m: re.Match) -> str:
        items = cat.sid_items.get(m.group(0))
        return (
            f"{m.group(0)} [{' / '.join(cat.title(i) for i in items)}]" if items else f"{m.group(0)} [not in catalogue]"
        )

    return _SID_RE.sub(sub, text)


def _svg_chart(series, ks, metric: str = "hr") -> str:
    width, height, left, bottom, top = 760, 300, 50, 40, 20
    vals = [[s[2].get(f"{metric}@{k}", 0.0) for k in ks] for s in series]
    vmax = max([v for row in vals for v in row] + [1e-9])
    vmax = min(1.0, vmax * 1.15) if vmax > 0 else 1.0
    plot_w, plot_h = width - left - 10, height - bottom - top
    group_w = plot_w / max(1, len(ks))
    bar_w = group_w * 0.8 / max(1, len(series))
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height + 24 * ((len(series) + 2) // 3)}" '
        f'role="img" aria-label="{metric.upper()}@K by model and mode">'
    ]
    for i in range(5):
        y = top + plot_h - plot_h * i / 4
        parts.append(
            f'<line x1="{left}" y1="{y:.1f}" x2="{width - 10}" y2="{y:.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">{vmax * i / 4:.2f}</text>'
        )
    for gi, k in enumerate(ks):
        x0 = left + gi * group_w + group_w * 0.1
        for si, row in enumerate(vals):
            h = plot_h * row[gi] / vmax
            x = x0 + si * bar_w
            parts.append(
                f'<rect x="{x:.1f}" y="{top + plot_h - h:.1f}" width="{bar_w * 0.9:.1f}" height="{h:.1f}" '
                f'fill="{COLORS[si % len(COLORS)]}">'
                f"<title>{html.escape(series[si][0])} {metric}@{k} = {row[gi]:.4f}</title></rect>"
            )
        parts.append(
            f'<text x="{left + gi * group_w + group_w / 2:.1f}" y="{top + plot_h + 18}" font-size="12" '
            f'text-anchor="middle">{metric.upper()}@{k}</text>'
        )
    for si, s in enumerate(series):
        lx, ly = left + (si % 3) * 240, height + 4 + 24 * (si // 3)
        parts.append(
            f'<rect x="{lx}" y="{ly - 10}" width="12" height="12" fill="{COLORS[si % len(COLORS)]}"/>'
            f'<text x="{lx + 18}" y="{ly}" font-size="12">{html.escape(s[0])}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _samples(evaluations: dict[str, Evaluation], split: str, n: int) -> list[tuple[str, str, pd.DataFrame]]:
    """Sample users: the first n test users (same users across labels), per model label and mode."""
    out = []
    users = None
    for label, evaluation in evaluations.items():
        preds = evaluation.predictions()
        preds = preds[preds["split"] == split]
        if users is None and len(preds):
            users = list(dict.fromkeys(preds["user_id"].tolist()))[:n]
        for mode in sorted(set(preds["mode"])):
            part = preds[(preds["mode"] == mode) & preds["user_id"].isin(users or [])].drop_duplicates("user_id")
            out.append((mode if mode in BASELINE_MODES else f"{label} ({mode})", mode, part))
    return out


CSS = """body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px;color:#222;max-width:1100px}
h1{font-size:22px}h2{font-size:18px;margin-top:28px;border-bottom:1px solid #ddd}h3{font-size:15px}
table{border-collapse:collapse;font-size:13px;margin:8px 0}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}
th{background:#f3f3f3}td.l,th.l{text-align:left}tr.best td{font-weight:bold}
.user{border:1px solid #ddd;border-radius:6px;padding:10px 14px;margin:12px 0;background:#fafafa}
.hit{background:#d8f5d0;font-weight:bold}\
.reason{white-space:pre-wrap;background:#fff;border-left:3px solid #4e79a7;padding:6px 10px;font-size:13px}
ol{margin:4px 0 4px 20px;font-size:13px}.muted{color:#777;font-size:12px}code{font-size:12px}
p.lead{font-size:16px;line-height:1.45;background:#f3f7fb;border-left:4px solid #4e79a7;padding:10px 14px}
table.samples{width:100%}table.samples td{vertical-align:top}table.samples td:nth-child(2){width:45%}"""


MODE_WORDS = {"nonthink": "non-thinking", "think": "thinking"}
_MD_SPECIAL = re.compile(r"([\\`*_\[\]|#])")


def _md(text: str) -> str:
    """Text for the Markdown page: HTML escaped (viewers that render HTML run no tag from a title or a reasoning)
    and Markdown's markup characters backslash-escaped (no link or emphasis either)."""
    return _MD_SPECIAL.sub(r"\\\1", html.escape(str(text), quote=False))


def report_split(splits: list[str]) -> str:
    """The split the report shows: test when evaluated, else the first evaluated one (valid)."""
    return "test" if "test" in splits else splits[0]


MODEL_LABEL = "model"  # the evaluate pipeline's one model


def _display(name: str) -> str:
    """A series name without its mode: 'stage3 (think)' -> 'Stage 3', 'model (think)' -> 'the model'; other
    labels as they are."""
    label = name.rsplit(" (", 1)[0]
    return "the model" if label == MODEL_LABEL else re.sub(r"^stage(\d+)$", r"Stage \1", label)


def headline(series: list[tuple[str, str, dict]], split: str, k: int) -> str:
    """The report's first paragraph in plain words, from the metrics: the best stage and mode and its margin
    over popularity, then what reasoning does at the last stage and against the stage before it."""
    metric = f"hr@{k}"
    models = [(name, mode, vals) for name, mode, vals in series if mode in MODE_WORDS and metric in vals]
    if not models:
        return f"No model was evaluated on the {split} split."
    name, mode, vals = max(models, key=lambda s: s[2][metric])
    label = _display(name)
    users = int(vals.get("users", 0))
    people = f"{users} user" + ("" if users == 1 else "s")
    text = (
        f"On the {split} split ({people}), the best recommender is {label} in {MODE_WORDS[mode]} mode: "
        f"HR@{k} {vals[metric]:.3f}"
    )
    popularity = next((v[metric] for n, m, v in series if m == "popularity" and metric in v), None)
    if popularity:
        text += f", {vals[metric] / popularity:.1f}x the popularity baseline ({popularity:.3f})."
    elif popularity == 0:
        text += ", where the popularity baseline hits nothing."
    else:
        text += "."
    by_model = {(_display(n), m): v for n, m, v in models}
    labels = list(dict.fromkeys(label for label, _ in by_model))
    last = labels[-1]
    if (last, "think") in by_model and (last, "nonthink") in by_model:
        think, plain = by_model[(last, "think")][metric], by_model[(last, "nonthink")][metric]
        verdict = "helps" if think > plain else "does not help yet" if think < plain else "neither helps nor hurts"
        text += (
            f" At {last}, reasoning before the answer {verdict}: HR@{k} {think:.3f} thinking against "
            f"{plain:.3f} non-thinking"
        )
        top1 = [by_model[(last, mode)].get("hr@1") for mode in ("think", "nonthink")]
        if k != 1 and None not in top1:
            text += f", HR@1 {top1[0]:.3f} against {top1[1]:.3f}"
        text += "."
        if len(labels) > 1 and (labels[-2], "think") in by_model:
            before = by_model[(labels[-2], "think")][metric]
            change = f"{think / before:.1f}x" if before > 0 else "up from 0"
            text += f" Thinking mode went from {before:.3f} at {labels[-2]} to {think:.3f} ({change})."
    return text


def rl_rewards(evaluations: dict[str, Evaluation]) -> list[tuple[str, list[tuple[float, float]]]]:
    """[(label, [(step, mean reward)])] for every evaluated model trained by RL (its evaluation's record carries
    the steps)."""
    out = []
    for label, evaluation in evaluations.items():
        points = [
            (float(p["step"]), float(p["reward"]))
            for p in evaluation.rl_per_step()
            if p.get("reward") is not None and p.get("step") is not None
        ]
        if points:
            out.append((label, points))
    return out


def _svg_reward(points: list[tuple[float, float]]) -> str:
    """Inline SVG line chart of the mean reward per optimizer step (y from 0)."""
    width, height, left, bottom, top, right = 760, 260, 50, 36, 14, 14
    x0, x1 = points[0][0], max(points[-1][0], points[0][0] + 1)
    ymax = max(max(y for _, y in points), 1e-9) * 1.1
    sx = lambda x: left + (x - x0) / (x1 - x0) * (width - left - right)  # noqa: E731
    sy = lambda y: top + (1 - y / ymax) * (height - top - bottom)  # noqa: E731
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        'aria-label="Stage 3 mean reward per step">'
    ]
    for i in range(5):
        y = ymax * i / 4
        parts.append(
            f'<line x1="{left}" y1="{sy(y):.1f}" x2="{width - right}" y2="{sy(y):.1f}" stroke="#ddd"/>'
            f'<text x="{left - 6}" y="{sy(y) + 4:.1f}" font-size="11" text-anchor="end">{y:.2f}</text>'
        )
    for i in range(5):
        x = x0 + (x1 - x0) * i / 4
        parts.append(
            f'<text x="{sx(x):.1f}" y="{height - bottom + 16}" font-size="11" text-anchor="middle">{x:.0f}</text>'
        )
    parts.append(
        f'<text x="{(left + width - right) / 2:.0f}" y="{height - 4}" font-size="12" '
        'text-anchor="middle">optimizer step</text>'
    )
    line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    parts.append(f'<polyline fill="none" stroke="{COLORS[0]}" stroke-width="1.5" points="{line}"/>')
    window = max(1, len(points) // 10)
    trailing = [[y for _, y in points[max(0, i - window + 1) : i + 1]] for i in range(len(points))]
    smooth = [(x, sum(ys) / len(ys)) for (x, _), ys in zip(points, trailing, strict=True)]
    if window > 1:
        line = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in smooth)
        parts.append(
            f'<polyline fill="none" stroke="{COLORS[1]}" stroke-width="2.5" points="{line}"/>'
            f'<text x="{width - right}" y="{top + 12}" font-size="12" text-anchor="end" fill="{COLORS[1]}">'
            f"mean of the last {window} steps</text>"
        )
    parts.append("</svg>")
    return "".join(parts)


def _reward_sentence(points: list[tuple[float, float]]) -> str:
    k = max(1, min(10, len(points) // 5))
    first = sum(y for _, y in points[:k]) / k
    last = sum(y for _, y in points[-k:]) / k
    return (
        f"{len(points)} steps; mean reward {first:.3f} over the first {k} step{'s' if k > 1 else ''}, "
        f"{last:.3f} over the last {k}."
    )


def report(
    cfg: Config,
    eval_dirs: dict[str, Evaluation | os.PathLike],
    dataset_dir: Dataset | os.PathLike,
    sid_index_dir: SidIndex | os.PathLike,
    out_dir: ReportPages | os.PathLike,
) -> dict[str, float]:
    """The report of the evaluations `eval_dirs` (row label -> evaluation), in their order."""
    start = time.time()
    evaluations = {label: Evaluation.at(folder) for label, folder in eval_dirs.items()}
    cat = Catalogue.load(sid_index_dir, dataset_dir)
    ks = cfg.eval.reported_ks
    kmax = max(ks)
    split = report_split(cfg.eval.splits)
    series = _series(evaluations, split)
    cols = [f"hr@{k}" for k in ks] + [f"ndcg@{k}" for k in ks]
    item_cols = [f"item_hr@{k}" for k in ks] + [f"item_ndcg@{k}" for k in ks]
    best = max(series, key=lambda s: s[2].get(f"hr@{kmax}", 0.0))[0] if series else None
    summary_text = headline(series, split, kmax)
    rewards = rl_rewards(evaluations)

    def table_html(columns):
        head = "".join(f"<th>{c}</th>" for c in columns)
        rows = []
        for name, _, vals in series:
            cls = ' class="best"' if name == best else ""
            rows.append(
                f"<tr{cls}><td class='l'>{html.escape(name)}</td>"
                + "".join(f"<td>{vals[c]:.4f}</td>" if c in vals else "<td>–</td>" for c in columns)
                + f"<td>{int(vals.get('users', 0))}</td></tr>"
            )
        return f"<table><tr><th class='l'>model (mode)</th>{head}<th>users</th></tr>{''.join(rows)}</table>"

    def table_md(columns):
        lines = ["| model (mode) | " + " | ".join(columns) + " | users |", "|---" * (len(columns) + 2) + "|"]
        for name, _, vals in series:
            cells = [f"{vals[c]:.4f}" if c in vals else "–" for c in columns]
            b = "**" if name == best else ""
            lines.append(f"| {b}{_md(name)}{b} | " + " | ".join(cells) + f" | {int(vals.get('users', 0))} |")
        return "\n".join(lines)

    h = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>SIDReasoner evaluation</title>"
        f"<style>{CSS}</style></head><body>",
        "<h1>SIDReasoner evaluation report</h1>",
        f"<p class='lead'>{html.escape(summary_text)}</p>",
        f"<p class='muted'>{split} split · {len(cat.catalogue)} valid SIDs for {len(cat.sid_of_item)} items · "
        f"decoding: {cfg.eval.decoding}, {cfg.eval.beams} constrained beams · NDCG uses 1/log2(rank+2). "
        "SID level as in the paper; item level counts a colliding SID once per item.</p>",
        "<h2>HR@K</h2>",
        _svg_chart(series, ks, "hr"),
    ]
    md = [
        "# SIDReasoner evaluation report",
        "",
        _md(summary_text),
        "",
        f"{split} split · {len(cat.catalogue)} valid SIDs for {len(cat.sid_of_item)} items · "
        f"decoding: {cfg.eval.decoding}, "
        f"{cfg.eval.beams} constrained beams.",
        "",
    ]
    for label, points in rewards:
        h += [
            f"<h2>{html.escape(label)}: RL reward per step</h2>",
            _svg_reward(points),
            f"<p class='muted'>{html.escape(_reward_sentence(points))}</p>",
        ]
        md += [f"## {_md(label)}: RL reward per step", "", _md(_reward_sentence(points)), ""]
    h += [
        "<h2>NDCG@K</h2>",
        _svg_chart(series, ks, "ndcg"),
        "<h2>SID-level metrics</h2>",
        table_html(cols),
        "<h2>Item-level metrics</h2>",
        table_html(item_cols),
    ]
    md += ["## SID-level metrics", "", table_md(cols), "", "## Item-level metrics", "", table_md(item_cols), ""]

    samples = _samples(evaluations, split, cfg.eval.report_samples)
    h.append(
        "<h2>Sample users</h2><p class='muted'>Each model's reasoning (thinking mode; every SID followed by "
        "its item's title) next to what it recommended; the target is highlighted where it was found.</p>"
    )
    md += ["## Sample users", ""]
    by_user: dict = {}
    for name, mode, part in samples:
        for r in part.itertuples(index=False):
            by_user.setdefault(r.user_id, []).append((name, mode, r))
    for uid, entries in by_user.items():
        h.append(_user_html(uid, entries, cat, kmax))
        md += _user_md(uid, entries, cat, kmax)
    h.append("</body></html>")
    with ReportPages.writing(out_dir) as pages:
        pages.write(
            html="\n".join(h),
            markdown="\n".join(md) + "\n",
            summary={name: vals for name, _, vals in series},
            headline={"split": split, "text": summary_text},
        )
    out: dict[str, float] = {
        "labels": float(len(evaluations)),
        "sample_users": float(len(by_user)),
        "wall_seconds": time.time() - start,
    }
    for name, _, vals in series:
        key = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
        out[f"{key}_hr@{kmax}"] = float(vals.get(f"hr@{kmax}", 0.0))
    return out


def _recommended(r, cat: Catalogue, kmax: int) -> list[tuple[str, str, bool]]:
    """(titles, sid, hit) of each recommended SID, best first."""
    return [
        (" / ".join(cat.title(i) for i in cat.sid_items.get(sid, [])), sid, sid == r.target_sid)
        for sid in r.pred_sids[:kmax]
    ]


def _user_html(uid, entries, cat: Catalogue, kmax: int) -> str:
    first = entries[0][2]
    hist = "".join(f"<li>{html.escape(cat.title(i))}</li>" for i in first.history_item_ids)
    rows = []
    for name, mode, r in entries:
        if mode in BASELINE_MODES:
            continue
        reasoning = (
            f"<div class='reason'>{html.escape(decode_sids(r.reasoning, cat))}</div>"
            if r.reasoning
            else "<span class='muted'>answers without reasoning</span>"
        )
        recs = "".join(
            f"<li class='{'hit' if hit else ''}'>{html.escape(titles)} <code>{html.escape(sid)}</code>"
            f"{' ✔ hit' if hit else ''}</li>"
            for titles, sid, hit in _recommended(r, cat, kmax)
        )
        rows.append(
            f"<tr><td class='l'>{html.escape(name)}</td><td class='l'>{reasoning}</td>"
            f"<td class='l'><ol>{recs}</ol></td></tr>"
        )
    return (
        f"<div class='user'><h3>user {html.escape(str(uid))}</h3><b>history</b><ol>{hist}</ol>"
        f"<b>next item (target)</b>: {html.escape(cat.title(first.target_item_id))} "
        f"<code>{html.escape(first.target_sid)}</code>"
        "<table class='samples'><tr><th class='l'>model (mode)</th><th class='l'>reasoning</th>"
        f"<th class='l'>recommended (top {kmax})</th></tr>{''.join(rows)}</table></div>"
    )


def _user_md(uid, entries, cat: Catalogue, kmax: int) -> list[str]:
    first = entries[0][2]
    md = [
        f"### user {_md(uid)}",
        "",
        "History: " + "; ".join(_md(cat.title(i)) for i in first.history_item_ids),
        "",
        f"Target: **{_md(cat.title(first.target_item_id))}** {_md(first.target_sid)}",
        "",
    ]
    for name, mode, r in entries:
        if mode in BASELINE_MODES:
            continue
        md.append(f"**{_md(name)}**")
        if r.reasoning:
            md += ["", "> " + _md(decode_sids(r.reasoning, cat)).replace("\n", "\n> "), ""]
        for rank, (titles, sid, hit) in enumerate(_recommended(r, cat, kmax), start=1):
            mark = "**" if hit else ""
            md.append(f"{rank}. {mark}{_md(titles)}{' ✔' if hit else ''}{mark} {_md(sid)}")
        md.append("")
    return md


def report_stages(
    cfg: Config,
    baselines_dir: Evaluation | os.PathLike,
    stage1_eval_dir: Evaluation | os.PathLike,
    stage2_eval_dir: Evaluation | os.PathLike,
    stage3_eval_dir: Evaluation | os.PathLike,
    dataset_dir: Dataset | os.PathLike,
    sid_index_dir: SidIndex | os.PathLike,
    out_dir: ReportPages | os.PathLike,
) -> dict[str, float]:
    """The pipeline's `report` step: the baselines and every stage on one page."""
    return report(
        cfg,
        {
            "baselines": baselines_dir,
            "stage1": stage1_eval_dir,
            "stage2": stage2_eval_dir,
            "stage3": stage3_eval_dir,
        },
        dataset_dir,
        sid_index_dir,
        out_dir,
    )


def report_model(
    cfg: Config,
    baselines_dir: Evaluation | os.PathLike,
    model_eval_dir: Evaluation | os.PathLike,
    dataset_dir: Dataset | os.PathLike,
    sid_index_dir: SidIndex | os.PathLike,
    out_dir: ReportPages | os.PathLike,
) -> dict[str, float]:
    """The evaluate pipeline's `report-model` step: the baselines and the model model.base names on one page."""
    return report(cfg, {"baselines": baselines_dir, MODEL_LABEL: model_eval_dir}, dataset_dir, sid_index_dir, out_dir)
