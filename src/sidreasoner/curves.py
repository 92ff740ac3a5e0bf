"""Self-contained loss and reward curve pages (SFT and RL): inline SVG, no scripts, no CDN."""

from __future__ import annotations

import html


def _polyline(points, sx, sy, color) -> str:
    if not points:
        return ""
    pts = " ".join(f"{sx(x):.1f},{sy(y):.1f}" for x, y in points)
    dots = (
        "".join(f'<circle cx="{sx(x):.1f}" cy="{sy(y):.1f}" r="3" fill="{color}"/>' for x, y in points)
        if len(points) < 40
        else ""
    )
    return f'<polyline fill="none" stroke="{color}" stroke-width="2" points="{pts}"/>{dots}'


def loss_curve_html(
    title: str,
    train: list[tuple[float, float]],
    valid: list[tuple[float, float]],
    summary: dict[str, float],
    labels: tuple[str, str] = ("train loss", "valid loss"),
    xlabel: str = "optimizer step",
) -> str:
    """train/valid: (step, value) pairs; `labels` name the two series."""
    w, h, m = 720, 360, 50
    xs = [x for x, _ in train + valid] or [0, 1]
    ys = [y for _, y in train + valid] or [0, 1]
    x0, x1 = min(xs), max(xs) if max(xs) > min(xs) else min(xs) + 1
    y0, y1 = min(ys), max(ys) if max(ys) > min(ys) else min(ys) + 1
    sx = lambda x: m + (x - x0) / (x1 - x0) * (w - 2 * m)  # noqa: E731
    sy = lambda y: h - m - (y - y0) / (y1 - y0) * (h - 2 * m)  # noqa: E731
    ticks = "".join(
        f'<text x="{m - 6}" y="{sy(y0 + k * (y1 - y0) / 4) + 4:.1f}" text-anchor="end" font-size="11">'
        f"{y0 + k * (y1 - y0) / 4:.3f}</text>"
        for k in range(5)
    )
    xticks = "".join(
        f'<text x="{sx(x0 + k * (x1 - x0) / 4):.1f}" y="{h - m + 16}" text-anchor="middle" font-size="11">'
        f"{x0 + k * (x1 - x0) / 4:.0f}</text>"
        for k in range(5)
    )
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" role="img">'
        f'<rect x="{m}" y="{m}" width="{w - 2 * m}" height="{h - 2 * m}" fill="none" stroke="#ccc"/>'
        f"{ticks}{xticks}"
        f'<text x="{w / 2}" y="{h - 10}" text-anchor="middle" font-size="12">{html.escape(xlabel)}</text>'
        f"{_polyline(train, sx, sy, '#1f77b4')}{_polyline(valid, sx, sy, '#d62728')}"
        f'<text x="{w - m}" y="{m - 20}" text-anchor="end" font-size="12" fill="#1f77b4">'
        f"{html.escape(labels[0])}</text>"
        f'<text x="{w - m}" y="{m - 6}" text-anchor="end" font-size="12" fill="#d62728">'
        f"{html.escape(labels[1])}</text>"
        "</svg>"
    )
    rows = "".join(f"<tr><td>{html.escape(k)}</td><td>{v:.4g}</td></tr>" for k, v in summary.items())
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title></head>"
        f"<body style='font-family:sans-serif'><h2>{html.escape(title)}</h2>{svg}"
        f"<table border='1' cellpadding='4' style='border-collapse:collapse;margin-top:12px'>{rows}</table>"
        "</body></html>\n"
    )
