"""Geometry for the HTML report's inline SVG charts.

Each function turns report numbers into one chart: a plain dict of a title,
axis labels with their units, ticks and shapes (coordinates and labels).
``plugins/templates/report.html.j2`` draws every chart with one macro, so every
label passes through the template's autoescaping and no markup is built here.
"""

from __future__ import annotations

from typing import Any

#: One colour per item state, shared by the charts and the legend.
COLOURS = {"completed": "#2e7d32", "failed": "#c62828", "skipped": "#9e9e9e", "pending": "#f9a825",
           "running": "#1565c0"}
LINE = "#1565c0"
BUDGET = "#c62828"
WIDTH = 640


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


def _seconds(value: float) -> str:
    return f"{round(value, 3):g}s"


def _usd(value: float) -> str:
    return f"${value:,.4f}" if value < 1 else f"${value:,.2f}"


def _frame(chart_id: str, title: str, x_label: str, y_label: str, *, height: int = 240,
           bottom: int = 44, top: int = 44, left: int = 76) -> dict[str, Any]:
    """An empty chart: the plot area is x0..x1 by y0 (top) .. y1 (the baseline)."""
    return {"id": chart_id, "title": title, "x_label": x_label, "y_label": y_label, "width": WIDTH,
            "height": height, "x0": left, "x1": WIDTH - 12, "y0": top, "y1": height - bottom,
            "x_ticks": [], "y_ticks": [], "bars": [], "lines": [], "marks": [], "legend": []}


#: Steps between time ticks, in seconds.
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, 86400)


def _time_axis(chart: dict[str, Any], span: float, count: int = 6) -> None:
    """Ticks along x for 0..span seconds since the start."""
    width = chart["x1"] - chart["x0"]
    step = next((s for s in _TIME_STEPS if s * count >= span), _TIME_STEPS[-1])
    tick = 0.0
    while tick <= span + 1e-9:
        chart["x_ticks"].append({"x": round(chart["x0"] + tick / (span or 1) * width, 1), "label": _clock(tick)})
        tick += step


def _value_axis(chart: dict[str, Any], peak: float, label) -> None:
    """Ticks along y at 0, half and ``peak``, labelled with ``label(value)``."""
    for share in (0.0, 0.5, 1.0):
        y = chart["y1"] - share * (chart["y1"] - chart["y0"])
        chart["y_ticks"].append({"y": round(y, 1), "label": label(peak * share)})


def _polylines(points: list[tuple[float, float] | None]) -> list[str]:
    """SVG ``points`` strings, one per run of points between Nones (gaps)."""
    runs, current = [], []
    for point in points + [None]:
        if point is None:
            if current:
                runs.append(" ".join(f"{x:.1f},{y:.1f}" for x, y in current))
            current = []
        else:
            current.append(point)
    return runs


def throughput(timeline: dict[str, Any]) -> dict[str, Any]:
    """Items finished per minute over time, smoothed over ``timeline["window_s"]``:
    one line for all finished items, one for the failed ones; gaps where
    nothing ran (a pause)."""
    window = timeline["window_s"]
    chart = _frame("chart-throughput", f"Throughput (moving average over {_clock(window)})",
                   "Time since start", "Items per minute")
    buckets, bucket = timeline["buckets"], timeline["bucket_s"] or 1
    span = len(buckets) * bucket
    peak = _nice_max(max((b["smoothed_per_min"] or 0 for b in buckets), default=0))
    _time_axis(chart, span)
    _value_axis(chart, peak, lambda v: f"{v:g}/min")
    width, height = chart["x1"] - chart["x0"], chart["y1"] - chart["y0"]
    series = {"finished": [], "failed": []}
    for b in buckets:
        x = chart["x0"] + (b["offset_s"] + bucket / 2) / span * width
        if b["smoothed_per_min"] is None:
            for points in series.values():
                points.append(None)
            continue
        failed = b["smoothed_failed_per_min"] or 0.0
        for name, value in (("finished", b["smoothed_per_min"]), ("failed", failed)):
            series[name].append((x, chart["y1"] - value / peak * height))
        chart["marks"].append({"x": round(x, 1), "y": round(chart["y1"] - b["smoothed_per_min"] / peak * height, 1),
                               "fill": COLOURS["completed"],
                               "title": f"{_clock(b['offset_s'])}: {b['smoothed_per_min']:g} items/min "
                                        f"({b['completed']} completed, {b['failed']} failed in this {_clock(bucket)})"})
    for name, colour in (("finished", COLOURS["completed"]), ("failed", COLOURS["failed"])):
        for points in _polylines(series[name]):
            chart["lines"].append({"class": f"series-{name}", "points": points, "stroke": colour, "dash": None})
    chart["legend"] = [{"label": "finished (completed and failed)", "colour": COLOURS["completed"]},
                       {"label": "failed", "colour": COLOURS["failed"]}]
    return chart


def spend(timeline: dict[str, Any], budget: dict[str, Any] | None, total_usd: float) -> dict[str, Any]:
    """Money spent so far over time, with the budget as a dashed line when the job has one."""
    title = "Spend over time" + (f" against the {_usd(budget['budget_usd'])} budget" if budget else "")
    chart = _frame("chart-spend", title, "Time since start", "Spent (USD)")
    buckets, bucket = timeline["buckets"], timeline["bucket_s"] or 1
    span = len(buckets) * bucket
    limit = budget["budget_usd"] if budget else 0.0
    peak = _nice_max(max([limit, total_usd] + [b["spent_usd"] for b in buckets]))
    _time_axis(chart, span)
    _value_axis(chart, peak, _usd)
    width, height = chart["x1"] - chart["x0"], chart["y1"] - chart["y0"]

    def y(value: float) -> float:
        return chart["y1"] - value / peak * height

    points, before = [(chart["x0"], chart["y1"])], 0.0
    for b in buckets:  # a step at each bucket's end: spend only grows when attempts finish
        x_end = chart["x0"] + (b["offset_s"] + bucket) / span * width
        x_start = chart["x0"] + b["offset_s"] / span * width
        points += [(x_start, y(before)), (x_end, y(b["spent_usd"]))]
        before = b["spent_usd"]
        chart["marks"].append({"x": round(x_end, 1), "y": round(y(b["spent_usd"]), 1), "fill": "transparent",
                               "title": f"{_clock(b['offset_s'] + bucket)}: {_usd(b['spent_usd'])} spent"})
    chart["lines"] += [{"class": "series-spend", "points": p, "stroke": LINE, "dash": None}
                       for p in _polylines(points)]
    chart["legend"].append({"label": "spent", "colour": LINE})
    if budget:
        chart["lines"].append({"class": "budget", "points": _polylines([(chart["x0"], y(limit)),
                                                                       (chart["x1"], y(limit))])[0],
                               "stroke": BUDGET, "dash": "6 4"})
        chart["legend"].append({"label": f"budget {_usd(limit)}", "colour": BUDGET})
    return chart


def latency(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Per model, a box of its completed attempts' durations: the whisker from
    the fastest to the slowest, the box from the 25th to the 75th percentile,
    a bar at the median and a tick at the 90th."""
    row_h = 28
    chart = _frame("chart-latency", "Reply time per model (completed attempts)", "Reply time (seconds)", "Model",
                   height=44 + 44 + max(1, len(rows)) * row_h, left=196)
    peak = _nice_max(max((r["max_s"] for r in rows), default=0))
    width = chart["x1"] - chart["x0"]

    def x(value: float) -> float:
        return round(chart["x0"] + value / peak * width, 1)

    for share in (0.0, 0.25, 0.5, 0.75, 1.0):
        chart["x_ticks"].append({"x": x(peak * share), "label": _seconds(peak * share)})
    for i, r in enumerate(rows):
        top = chart["y0"] + i * row_h
        mid = round(top + row_h / 2, 1)
        chart["y_ticks"].append({"y": mid, "label": r["name"]})
        chart["bars"].append({"class": "box", "x": x(r["p25_s"]), "y": top + 6, "w": round(x(r["p75_s"]) - x(r["p25_s"]), 1),
                              "h": row_h - 12, "fill": "#90caf9",
                              "title": (f"{r['name']}: {r['count']} replies; fastest {_seconds(r['min_s'])}, "
                                        f"median {_seconds(r['p50_s'])}, 90th percentile {_seconds(r['p90_s'])}, "
                                        f"slowest {_seconds(r['max_s'])}")})
        chart["lines"] += [
            {"class": "whisker", "points": f"{x(r['min_s'])},{mid} {x(r['max_s'])},{mid}", "stroke": "#424242",
             "dash": None},
            {"class": "median", "points": f"{x(r['p50_s'])},{top + 4} {x(r['p50_s'])},{top + row_h - 4}",
             "stroke": "#0d47a1", "dash": None},
            {"class": "p90", "points": f"{x(r['p90_s'])},{top + 8} {x(r['p90_s'])},{top + row_h - 8}",
             "stroke": BUDGET, "dash": None},
        ]
    chart["legend"] = [{"label": "25th–75th percentile", "colour": "#90caf9"},
                       {"label": "median", "colour": "#0d47a1"}, {"label": "90th percentile", "colour": BUDGET}]
    return chart


def status(counts: dict[str, int]) -> dict[str, Any]:
    """One bar split by item state, as shares of all items."""
    total = sum(counts.values())
    chart = _frame("chart-status", f"Items by state (of {total:,})", "Share of the job's items", "",
                   height=44 + 32 + 44, left=12)
    width = chart["x1"] - chart["x0"]
    x = float(chart["x0"])
    for state, colour in COLOURS.items():
        n = counts.get(state, 0)
        chart["legend"].append({"label": f"{state} {n:,}", "colour": colour})
        if not n:
            continue
        w = n / total * width
        chart["bars"].append({"class": "segment", "x": round(x, 1), "y": chart["y0"] + 4, "w": round(w, 1),
                              "h": 24, "fill": colour, "title": f"{state}: {n:,} ({n / total:.0%})"})
        x += w
    for share in (0.0, 0.5, 1.0):
        chart["x_ticks"].append({"x": round(chart["x0"] + share * width, 1), "label": f"{share:.0%}"})
    return chart
