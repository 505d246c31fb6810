"""Report renderers ``md``, ``json`` and ``html``, over ``storyloom.report.build_report``.

The kernel writes each renderer named in ``reports:`` (default all three)
into ``storyloom-out/<job_id>/`` when a batch ends, as ``report.md``,
``report.json`` and ``report.html``; ``storyloom report JOB_ID --format FMT``
renders one at any time. Markdown follows the seed's Summary Report Template;
JSON is the report mapping itself (``schemas/report.schema.json``); HTML is
one self-contained file with inline SVG charts, autoescaped throughout, so a
model's ``<script>`` shows as text.
"""

from __future__ import annotations

import json
from typing import Any

import jinja2

from storyloom import hookimpl
from storyloom.plugins.support import charts


def usd(value: float | None) -> str:
    return "-" if value is None else f"${value:,.4f}"


def number(value: float | int | None) -> str:
    return "-" if value is None else f"{value:,}"


def duration(seconds: float | None) -> str:
    """``2.3s``, ``4m 05s``, ``1h 02m 03s``."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    whole = int(round(seconds))
    if whole < 3600:
        return f"{whole // 60}m {whole % 60:02d}s"
    return f"{whole // 3600}h {whole // 60 % 60:02d}m {whole % 60:02d}s"


# Mid-line (where one_line text always goes) these are all the characters that
# make Markdown syntax: links, images, emphasis, code, entities, table cells.
# < > become entities, so neither HTML nor an autolink (<javascript:...>) can
# form, nor even the text "<javascript:"; line-start syntax (#, -, 1.) cannot occur.
_MARKDOWN_ESCAPES = str.maketrans({
    **{c: "\\" + c for c in "\\`*_[]()|&"},
    "<": "&lt;", ">": "&gt;",
})


def one_line(text: Any) -> str:
    """Untrusted text (errors, model names, reasons) for a Markdown list or
    table: one line, every Markdown metacharacter escaped, so that neither a
    link (``[x](javascript:...)``, ``<javascript:...>``) nor HTML (a model's
    ``<script>``) is live in any viewer; it reads as the text it was."""
    return " ".join(str(text if text is not None else "").split()).translate(_MARKDOWN_ESCAPES)


#: The model table's columns, in the Markdown and HTML alike: every key of a
#: JSON ``models`` row, its header, and how its cells are written.
MODEL_COLUMNS = (
    ("name", "Model", "text"),
    ("items", "Items", "number"),
    ("attempts", "Attempts", "number"),
    ("input_tokens", "Input tokens", "number"),
    ("output_tokens", "Output tokens", "number"),
    ("tokens", "Tokens", "number"),
    ("cost_usd", "Cost", "usd"),
    ("timeouts", "Timeouts", "number"),
    ("rate_limited", "Rate-limited", "number"),
    ("avg_s", "Avg time", "duration"),
)


def cell(value: Any, kind: str) -> Any:
    """A model table cell: ``kind`` from MODEL_COLUMNS."""
    return {"number": number, "usd": usd, "duration": duration}.get(kind, lambda v: v)(value)


def _environment(autoescape: bool) -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("storyloom.plugins", "templates"),
        undefined=jinja2.StrictUndefined,
        autoescape=autoescape,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        auto_reload=False,
    )
    env.filters.update(usd=usd, number=number, duration=duration, one_line=one_line, cell=cell)
    env.globals["model_columns"] = MODEL_COLUMNS
    return env


_markdown = _environment(autoescape=False)  # Markdown is text; one_line keeps tables intact
_html = _environment(autoescape=True)  # everything from a model or a job file is escaped


def render_md(report: dict[str, Any]) -> tuple[str, str]:
    return "report.md", _markdown.get_template("report.md.j2").render(r=report)


def render_json(report: dict[str, Any]) -> tuple[str, str]:
    return "report.json", json.dumps(report, indent=2, ensure_ascii=False) + "\n"


def render_html(report: dict[str, Any]) -> tuple[str, str]:
    finished = bool(report["timeline"]["buckets"])  # charts over time need something finished
    figures = {
        "status": charts.status(report["counts"]),
        "throughput": charts.throughput(report["timeline"]) if finished else None,
        "spend": charts.spend(report["timeline"], report["budget"], report["cost_usd"]) if finished else None,
        "latency": charts.latency(report["latency"]) if report["latency"] else None,
    }
    return "report.html", _html.get_template("report.html.j2").render(r=report, charts=figures,
                                                                      colours=charts.COLOURS)


RENDERERS = {"md": render_md, "json": render_json, "html": render_html}


@hookimpl
def loom_register_renderers(register):
    for name, renderer in RENDERERS.items():
        register(name, renderer)
