"""Geometry for the HTML report's inline SVG charts.

Each function turns report numbers into shapes (plain dicts of coordinates
and labels); ``plugins/templates/report.html.j2`` draws them, so every label passes
through the template's autoescaping and no markup is built here.
"""

from __future__ import annotations

from typing import Any

#: One colour per item state, shared by the charts and the legend.
COLOURS = {"completed": "#2e7d32", "failed": "#c62828", "skipped": "#9e9e9e", "pending": "#f9a825",
           "running": "#1565c0"}


def _nice_max(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten that is at least ``value``."""
    if value <= 0:
        return 1.0
    step = 1.0
    while step * 10 <= value:
        step *= 10
    while step > value:
        step /= 10
    for factor in (1, 2, 5, 10):
        if step * factor >= value:
            return step * factor
    return step * 10


def _clock(seconds: float) -> str:
    """An axis label: ``45s``, ``10m``, ``2m30s``, ``1h``, ``1h05m``."""
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m" + (f"{seconds % 60:02d}s" if seconds % 60 else "")
    return f"{seconds // 3600}h" + (f"{seconds // 60 % 60:02d}m" if seconds // 60 % 60 else "")


def throughput(timeline: dict[str, Any], width: int = 640, height: int = 220) -> dict[str, Any]:
    """Columns of items finished per minute over time, completed below failed."""
    left, bottom, top = 48, 28, 12
    plot_w, plot_h = width - left - 8, height - bottom - top
    buckets = timeline["buckets"]
    peak = _nice_max(max((b["per_min"] for b in buckets), default=0))
    bars, ticks = [], []
    n = max(1, len(buckets))
    slot = plot_w / n
    scale = 60 / timeline["bucket_s"] if timeline["bucket_s"] else 0
    for i, b in enumerate(buckets):
        x = left + i * slot + slot * 0.1
        base = top + plot_h
        for state in ("completed", "failed"):
            h = b[state] * scale / peak * plot_h
            if h > 0:
                bars.append({"x": round(x, 1), "y": round(base - h, 1), "w": round(slot * 0.8, 1),
                             "h": round(h, 1), "fill": COLOURS[state],
                             "title": f"{_clock(b['offset_s'])}: {b[state]} {state}"})
                base -= h
        if i % max(1, n // 6) == 0:
            ticks.append({"x": round(left + i * slot, 1), "label": _clock(b["offset_s"])})
    return {"width": width, "height": height, "left": left, "top": top, "plot_w": plot_w, "plot_h": plot_h,
            "bars": bars, "ticks": ticks, "peak": f"{peak:g}", "baseline": top + plot_h}


def status(counts: dict[str, int], width: int = 640, height: int = 70) -> dict[str, Any]:
    """One bar split by item state, with a legend."""
    total = sum(counts.values())
    segments, legend = [], []
    x = 0.0
    for i, state in enumerate(COLOURS):
        n = counts.get(state, 0)
        legend.append({"x": 8 + i * 124, "state": state, "count": n, "fill": COLOURS[state]})
        if not n:
            continue
        w = n / total * (width - 16)
        segments.append({"x": round(8 + x, 1), "w": round(w, 1), "fill": COLOURS[state], "title": f"{state}: {n}"})
        x += w
    return {"width": width, "height": height, "segments": segments, "legend": legend}


def per_model(models: list[dict[str, Any]], key: str, unit: str, width: int = 640) -> dict[str, Any]:
    """Horizontal bars of ``models[i][key]`` (cost_usd or tokens), one row per model."""
    label_w, row_h = 160, 26
    peak = max((m[key] for m in models), default=0) or 1
    rows = []
    for i, m in enumerate(models):
        value = m[key]
        text = f"${value:.4f}" if unit == "usd" else f"{value:,}"
        rows.append({"y": 8 + i * row_h, "label": m["name"], "w": round(value / peak * (width - label_w - 90), 1),
                     "value": text})
    return {"width": width, "height": 16 + max(1, len(models)) * row_h, "label_w": label_w, "rows": rows,
            "row_h": row_h}
