"""Reports: a fixed run's Markdown against a stored file, the HTML parsed (charts,
escaping), the JSON against its schema, recommendations from the data, and
``storyloom report`` for finished, paused and running jobs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from html.parser import HTMLParser
from pathlib import Path

import pytest
import trio
from jsonschema import Draft202012Validator

from storyloom.api import add_job
from storyloom.cli import main as cli_main
from storyloom.job import Item, Job
from storyloom.plugins.reports import MODEL_COLUMNS, duration, render_html, render_json, render_md
from storyloom.report import _Tally, _timeline, build_report
from storyloom.summary import Summary
from storyloom.store import AttemptRecord, Store, StoreNotFound
from storyloom.store.protocol import AttemptRow
from storyloom.testing import Loom

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(__file__).resolve().parent / "data"
SCHEMA = json.loads((ROOT / "schemas" / "report.schema.json").read_text(encoding="utf-8"))
T = 1_736_899_200.0  # 2025-01-15T00:00:00Z
OWNER = "test-host:1:run"
SCRIPT = 'model said <script>alert("x")</script> | not valid'
EVIL_MODEL = "evil<img src=x onerror=alert(1)>"

#: (item, model, start, end, state, error kind, error, tokens in, tokens out, cost). Two runs: the
#: second starts an hour after the first (a pause and a resume), and pauses at the budget.
ATTEMPTS = [
    ("rain-ch1", "gemini", 0, 20, "completed", None, None, 1000, 2000, 0.006),
    ("rain-ch2", "gemini", 0, 30, "pending", "TIMEOUT", "no reply within timeout_per_item (30s)", 0, 0, 0.001),
    ("rain-ch3", "gemini", 0, 2, "pending", "API_RATE_LIMIT", "429 slow down", 0, 0, 0.0),
    ("rain-ch3", "gemini", 5, 7, "pending", "API_RATE_LIMIT", "429 slow down", 0, 0, 0.0),
    ("rain-ch2", "gpt-4o", 35, 50, "completed", None, None, 1200, 2500, 0.02),
    ("rain-ch3", "gemini", 3600, 3620, "completed", None, None, 900, 1800, 0.005),
    ("rain-ch4", "gpt-4o", 3600, 3601, "failed", "INVALID_INPUT", SCRIPT, 50, 0, 0.0),
    ("rain-ch6", "gemini", 3605, 3606, "pending", "API_RATE_LIMIT", "429 slow down", 0, 0, 0.0),
    ("rain-ch5", "gemini", 3605, 3630, "pending", "TIMEOUT", "no reply within timeout_per_item (25s)", 0, 0, 0.0),
    ("rain-ch6", EVIL_MODEL, 3610, 3615, "completed", None, None, 100, 100, 0.015),
    ("rain-ch5", "gemini", 3631, 3656, "failed", "TIMEOUT", "no reply within timeout_per_item (25s)", 0, 0, 0.0),
]


def fixed_job() -> Job:
    items = [Item(item_id=f"rain-ch{n}", project_id="rain", fields={"chapter_num": n}) for n in range(1, 8)]
    items.append(Item(item_id="ghost-ch1", project_id="ghost", fields={"chapter_num": 1}, status="skipped"))
    return Job(job_id="rep-1", job_type="chapter_writing", items=tuple(items), budget_usd=0.05)


async def fill(store: Store) -> None:
    """Store the fixed job and replay its attempts, claiming each item at its start."""
    await add_job(store, fixed_job())
    for item_id, model, start, end, state, kind, error, tokens_in, tokens_out, cost in ATTEMPTS:
        claimed = await store.claim("rep-1", 100, T + start, OWNER)
        attempts = {c.item_id: c.attempts for c in claimed}
        others = [c.item_id for c in claimed if c.item_id != item_id]
        await store.release("rep-1", OWNER, others)
        await store.record([AttemptRecord(
            job_id="rep-1", item_id=item_id, attempt=attempts[item_id] + 1, state=state, model=model,
            started_at=T + start, finished_at=T + end, error_kind=kind, error=error, input_tokens=tokens_in,
            output_tokens=tokens_out, cost_usd=cost, result_text="text" if state == "completed" else None)], OWNER)
    await store.set_job_state("rep-1", "paused", "budget reached")


def fixed_report(tmp_path: Path) -> dict:
    async def main():
        async with Loom(tmp_path).store(create=True) as store:
            await fill(store)
            counts = await store.counts("rep-1")
            summary = Summary(job_id="rep-1", status="paused", counts=counts, cost_usd=0.047, started_at=T,
                               finished_at=T + 3660, reason="budget reached")
            return await build_report(store, fixed_job(), summary)

    return trio.run(main)


def test_markdown_of_a_fixed_run_matches_the_stored_file(tmp_path):
    _name, text = render_md(fixed_report(tmp_path))
    expected = DATA / "report_expected.md"
    if os.environ.get("STORYLOOM_UPDATE_EXPECTED"):  # after an intended change: rerun with this set, then review
        expected.write_text(text, encoding="utf-8")
    assert text == expected.read_text(encoding="utf-8")


def test_the_fixed_run_computes_what_the_report_needs(tmp_path):
    report = fixed_report(tmp_path)
    assert report["counts"] == {"pending": 1, "running": 0, "completed": 4, "failed": 2, "skipped": 1}
    assert report["percent"]["completed"] == 50.0 and report["total"] == 8
    assert report["duration_s"] == 3660
    assert report["active_s"] == 50 + 56  # the hour between the runs is not active time
    assert report["throughput_per_min"] == pytest.approx(6 / 106 * 60, abs=0.01)
    # ch1 20 s; ch2 30 + 15 s; ch3 2 + 2 + 20 s; ch6 1 + 5 s: retries count toward an item's time.
    assert report["avg_item_s"] == pytest.approx((20 + 45 + 24 + 6) / 4)
    assert report["retries"] == 5 and report["attempts"] == 11
    gemini = next(m for m in report["models"] if m["name"] == "gemini")
    assert (gemini["items"], gemini["attempts"], gemini["timeouts"], gemini["rate_limited"]) == (2, 8, 3, 3)
    assert gemini["tokens"] == 1000 + 2000 + 900 + 1800
    assert report["errors"]["failed_by_kind"] == {"INVALID_INPUT": 1, "TIMEOUT": 1}
    assert report["errors"]["attempts_by_kind"] == {"API_RATE_LIMIT": 3, "INVALID_INPUT": 1, "TIMEOUT": 3}
    assert report["budget"]["share"] == pytest.approx(0.94)
    codes = [r["code"] for r in report["recommendations"]]
    assert codes == ["failed_items", "model_timeouts", "rate_limits", "budget", "unfixable_failures", "unfinished"]
    assert report["recommendations"][0]["text"] == (
        "2 of 8 items failed (25%): INVALID_INPUT 1 (12%), TIMEOUT 1 (12%). Run the ones another attempt may fix "
        "again with storyloom resume rep-1 --retry-failed --kind TIMEOUT; for the others, see below.")
    assert "Model gemini timed out on 3 of 8 attempts (38%)" in report["recommendations"][1]["text"]
    assert "storyloom resume rep-1 --budget-usd" in report["recommendations"][3]["text"]
    buckets = report["timeline"]["buckets"]
    assert report["timeline"]["bucket_s"] == 300 and len(buckets) == 13
    assert (buckets[0]["completed"], buckets[-1]["completed"], buckets[-1]["failed"]) == (2, 2, 2)
    assert sum(b["completed"] + b["failed"] for b in buckets[1:-1]) == 0  # the pause shows as a gap


def test_json_follows_its_schema(tmp_path):
    report = fixed_report(tmp_path)
    _name, text = render_json(report)
    data = json.loads(text)
    errors = [e.message for e in Draft202012Validator(SCHEMA).iter_errors(data)]
    assert not errors, errors
    assert data == json.loads(json.dumps(report))  # the same content as the Markdown, nothing lost


class Page(HTMLParser):
    """The report's tags and text, and per chart (an ``svg`` by id) its title and
    its shapes and texts grouped by class."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[str] = []
        self.text: list[str] = []
        self.svgs: dict[str, dict] = {}
        self.tables: dict[str, list[list[str]]] = {}
        self._svg: str | None = None
        self._open: list[tuple[str, dict]] = []  # the svg's open elements
        self._table: str | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        if tag == "svg":
            self._svg = attrs.get("id")
            self.svgs[self._svg] = {"title": None, "attrs": attrs, "shapes": []}
        elif self._svg:
            attrs["tag"], attrs["text"] = tag, ""
            self.svgs[self._svg]["shapes"].append(attrs)
            self._open.append((tag, attrs))
        elif tag == "table":
            self._table = attrs.get("id")
            self.tables[self._table] = []
        elif self._table and tag == "tr":
            self.tables[self._table].append([])
        elif self._table and tag in ("th", "td"):
            self._cell = []

    def handle_startendtag(self, tag, attrs):
        self.handle_starttag(tag, attrs)
        if self._svg and tag != "svg":
            self._open.pop()

    def handle_endtag(self, tag):
        if tag == "svg":
            self._svg = None
        elif self._svg and self._open:
            self._open.pop()
        elif tag == "table":
            self._table = None
        elif self._cell is not None and tag in ("th", "td"):
            self.tables[self._table][-1].append("".join(self._cell))
            self._cell = None

    def handle_data(self, data):
        self.text.append(data)
        if self._cell is not None:
            self._cell.append(data)
        if self._svg and self._open:
            tag, attrs = self._open[-1]
            if tag == "title" and len(self._open) == 1:
                self.svgs[self._svg]["title"] = data
            elif tag == "title":  # a shape's tooltip
                self._open[-2][1]["tooltip"] = data
            else:
                attrs["text"] += data

    def shapes(self, chart: str, cls: str) -> list[dict]:
        return [s for s in self.svgs[chart]["shapes"] if s.get("class") == cls]

    def texts(self, chart: str, cls: str) -> list[str]:
        return [s["text"] for s in self.shapes(chart, cls)]


def parse(html: str) -> Page:
    page = Page()
    page.feed(html)
    page.close()
    return page


def axis(page: Page, chart: str, which: str, parse_label) -> tuple[float, float]:
    """The chart's value scale along an axis from its tick labels: (value at
    coordinate 0, value per unit), so that a shape's coordinate reads back as
    the value it draws."""
    coordinate = "x" if which == "x" else "y"
    ticks = [(float(s[coordinate]), parse_label(s["text"])) for s in page.shapes(chart, f"{which}-tick")]
    (c0, v0), (c1, v1) = ticks[0], ticks[-1]
    per = (v1 - v0) / (c1 - c0)
    return v0 - c0 * per, per


def points(shape: dict) -> list[tuple[float, float]]:
    return [tuple(float(v) for v in p.split(",")) for p in shape["points"].split()]


def test_html_is_one_file_with_charts_and_everything_escaped(tmp_path):
    name, html = render_html(fixed_report(tmp_path))
    assert name == "report.html"
    page = parse(html)
    # Self-contained: no scripts, no external stylesheets or images.
    assert "script" not in page.tags and "img" not in page.tags and "link" not in page.tags
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    # What a model wrote is shown as text.
    text = "".join(page.text)
    assert SCRIPT in text and EVIL_MODEL in text
    assert "&lt;script&gt;" in html and "<script>" not in html
    assert "Recommendations" in text and "Model gemini timed out" in text


def test_every_chart_has_a_title_axis_labels_and_units(tmp_path):
    page = parse(render_html(fixed_report(tmp_path))[1])
    assert set(page.svgs) == {"chart-status", "chart-throughput", "chart-spend", "chart-latency"}
    expected = {  # title, x label, y label, a unit every x tick has, a unit every y tick has
        "chart-status": ("Items by state (of 8)", "Share of the job's items", None, "%", None),
        "chart-throughput": ("Throughput (moving average over 25m)", "Time since start", "Items per minute",
                             None, "/min"),
        "chart-spend": ("Spend over time against the $0.0500 budget", "Time since start", "Spent (USD)", None, "$"),
        "chart-latency": ("Reply time per model (completed attempts)", "Reply time (seconds)", "Model", "s", None),
    }
    for chart, (title, x_label, y_label, x_unit, y_unit) in expected.items():
        assert page.svgs[chart]["title"] == title
        assert page.texts(chart, "chart-title") == [title]  # shown, not only a tooltip
        assert page.texts(chart, "x-label") == [x_label]
        assert page.texts(chart, "y-label") == ([y_label] if y_label else [])
        if x_unit:
            assert all(t.endswith(x_unit) for t in page.texts(chart, "x-tick")), page.texts(chart, "x-tick")
        if y_unit:
            ticks = page.texts(chart, "y-tick")
            assert ticks and all(y_unit in t for t in ticks), ticks
    # Time axes read as times from the start: 0s, then minutes (a 61-minute run).
    assert page.texts("chart-throughput", "x-tick")[:3] == ["0s", "15m", "30m"]
    assert page.texts("chart-spend", "x-tick") == page.texts("chart-throughput", "x-tick")
    assert "cost" not in " ".join(page.svgs) and "tokens" not in " ".join(page.svgs)  # the tables show those


def usd_label(text: str) -> float:
    return float(text.lstrip("$"))


def test_the_charts_draw_the_runs_numbers(tmp_path):
    report = fixed_report(tmp_path)
    page = parse(render_html(report)[1])
    # Throughput: a dot per bucket where something ran; the hour's pause is a gap in the line.
    y_at, per = axis(page, "chart-throughput", "y", lambda t: float(t.removesuffix("/min")))
    dots = page.shapes("chart-throughput", "mark")
    assert [round(y_at + float(d["cy"]) * per, 2) for d in dots] == [2.4, 4.29]  # items/min of active time
    assert len(page.shapes("chart-throughput", "series-finished")) == 2  # two runs: two pieces of line
    assert [round(y_at + points(line)[0][1] * per, 2) for line in page.shapes("chart-throughput", "series-failed")] \
        == [0.0, 2.14]
    assert "2 completed, 2 failed" in dots[1]["tooltip"]
    # Spend: it climbs to what the attempts cost and stays under the dashed budget line.
    y_at, per = axis(page, "chart-spend", "y", usd_label)
    (spend_line,) = page.shapes("chart-spend", "series-spend")
    spent = [round(y_at + y * per, 4) for _x, y in points(spend_line)]
    assert spent[0] == 0 and spent[-1] == pytest.approx(0.047) and spent == sorted(spent)
    assert pytest.approx(0.027) in spent  # after the first run
    (budget,) = page.shapes("chart-spend", "budget")
    assert budget["stroke-dasharray"] and {round(y_at + y * per, 4) for _x, y in points(budget)} == {0.05}
    # Latency: one box per model, named on the axis, with the median where the data puts it.
    x_at, per = axis(page, "chart-latency", "x", lambda t: float(t.removesuffix("s")))
    names = page.texts("chart-latency", "y-tick")
    assert names == ["evil<img src=x onerror=…", "gemini", "gpt-4o"]  # escaped, and cut to fit
    medians = [x_at + points(line)[0][0] * per for line in page.shapes("chart-latency", "median")]
    assert medians == pytest.approx([5.0, 20.0, 15.0], abs=0.01)
    boxes = page.shapes("chart-latency", "box")
    assert EVIL_MODEL in boxes[0]["tooltip"] and "1 replies" in boxes[0]["tooltip"]
    # Status: one segment per state with items, as wide as its share.
    segments = page.shapes("chart-status", "segment")
    assert [s["fill"] for s in segments] == ["#2e7d32", "#c62828", "#9e9e9e", "#f9a825"]  # running is empty
    widths = [float(s["width"]) for s in segments]
    assert widths[0] == pytest.approx(4 * widths[2], rel=0.01)  # 4 completed, 1 skipped


def test_charts_over_time_wait_for_something_to_finish(tmp_path):
    report = fixed_report(tmp_path)
    report.update(timeline={"bucket_s": 0, "window_s": 0, "buckets": []}, latency=[])  # nothing finished yet
    page = parse(render_html(report)[1])
    assert set(page.svgs) == {"chart-status"}


def bursts(slots: int, took: float, rounds: int) -> list[AttemptRow]:
    """Every slot finishing at once, round after round: the case one-bucket counts saw on."""
    return [AttemptRow(f"i{r}-{s}", 1, "completed", "m", T + r * took, T + (r + 1) * took, cost_usd=0.001)
            for r in range(rounds) for s in range(slots)]


def test_throughput_in_bursts_is_smoothed_to_the_true_rate():
    # 8 slots, 3 s an item, 10 rounds: 160 items/min. Counted per 1 s bucket it
    # swings between 0 and 480/min; spread over each attempt and windowed, it stays at 160.
    tally = _Tally(bursts(8, 3.0, 10))
    timeline = _timeline(tally, T)
    assert timeline["bucket_s"] == 1 and timeline["window_s"] == 5
    raw = {b["per_min"] for b in timeline["buckets"]}
    assert raw == {0.0, 480.0}
    smoothed = [b["smoothed_per_min"] for b in timeline["buckets"]]
    assert smoothed == pytest.approx([160.0] * 30)
    spent = [b["spent_usd"] for b in timeline["buckets"]]  # a round's cost lands as it ends, at 3 s, 6 s, ...
    assert spent[:3] == [0, 0, 0] and spent[3:6] == pytest.approx([0.008] * 3) and spent[-1] == pytest.approx(0.08)


def test_latency_quantiles_per_model():
    rows = [AttemptRow(f"i{n}", 1, "completed", "m", T, T + n) for n in range(1, 11)]  # 1 s to 10 s
    rows.append(AttemptRow("slow", 1, "failed", "m", T, T + 99, "TIMEOUT"))  # no reply: not a reply time
    (latency,) = _Tally(rows).latency()
    assert latency == {"name": "m", "count": 10, "min_s": 1.0, "p25_s": 3.25, "p50_s": 5.5, "p75_s": 7.75,
                       "p90_s": 9.1, "max_s": 10.0}


def test_the_model_table_has_the_same_columns_in_every_format(tmp_path):
    report = fixed_report(tmp_path)
    json_columns = set(json.loads(render_json(report)[1])["models"][0])
    headers = {key: header for key, header, _kind in MODEL_COLUMNS}
    assert set(headers) == json_columns  # every JSON key has a column, and no column lacks one
    html = parse(render_html(report)[1]).tables["models"]
    lines = render_md(report)[1].split("## Model Usage\n", 1)[1].splitlines()
    markdown = [[cell.strip() for cell in line.strip("|").split(" | ")] for line in lines if line.startswith("|")]
    assert html[0] == markdown[0] == list(headers.values())
    assert {"Attempts", "Timeouts", "Rate-limited"} <= set(markdown[0])
    # The same cells too: gemini made 8 attempts, 3 timed out, 3 were rate-limited.
    gemini_html = next(row for row in html if row[0] == "gemini")
    gemini_md = next(row for row in markdown if row[0] == "gemini")
    assert gemini_html == gemini_md
    assert [gemini_md[list(headers).index(k)] for k in ("attempts", "timeouts", "rate_limited")] == ["8", "3", "3"]


def test_durations_read_well():
    assert [duration(s) for s in (None, 2.34, 65, 3725.4)] == ["-", "2.3s", "1m 05s", "1h 02m 05s"]


# -- at the end of a batch, and from the command line


def cli(*args: str, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    env["STORYLOOM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    return subprocess.run([sys.executable, "-m", "storyloom.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=120, **kwargs)


SETTINGS = """
models:
  sim: {{provider: simulated, latency_ms: {latency}, output_tokens: 40, seed: 2, price: {{input: 1.0, output: 2.0}}}}
default_models: [sim]
"""
JOB = "job_id: {job_id}\njob_type: qc_processing\nconfig: {{max_parallel: 2}}\nitems:\n  - {{project_id: p, chapters: 1-{n}}}\n"


@pytest.mark.slow
def test_reports_are_written_when_a_batch_ends_and_the_command_renders_them_again(tmp_path):
    (tmp_path / "storyloom.yaml").write_text(SETTINGS.format(latency=1))
    (tmp_path / "job.yaml").write_text(JOB.format(job_id="done-job", n=5))
    assert cli("run", "job.yaml", "-q", cwd=tmp_path).returncode == 0
    folder = tmp_path / "storyloom-out" / "done-job"
    written = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    assert written["status"] == "completed" and written["counts"]["completed"] == 5
    assert (folder / "report.md").read_text(encoding="utf-8").startswith("# Batch Processing Report")
    assert "<svg" in (folder / "report.html").read_text(encoding="utf-8")

    again = cli("report", "done-job", "--format", "json", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    rendered = json.loads(again.stdout)
    timing = {"started", "finished", "duration_s", "active_s", "throughput_per_min", "timeline"}
    assert {k: v for k, v in rendered.items() if k not in timing} == {
        k: v for k, v in written.items() if k not in timing}
    out = cli("report", "done-job", "--format", "html", "--out", "copy.html", cwd=tmp_path)
    assert out.returncode == 0 and out.stdout == ""
    assert (tmp_path / "copy.html").read_text(encoding="utf-8").startswith("<!DOCTYPE html>")


@pytest.mark.slow
def test_report_of_a_paused_job_and_bad_input(tmp_path):
    (tmp_path / "storyloom.yaml").write_text(SETTINGS.format(latency=1))
    (tmp_path / "job.yaml").write_text(JOB.format(job_id="cheap", n=30).replace(
        "config:", "budget_usd: 0.004\nconfig:"))  # one item's worst case is about $0.0021
    assert cli("run", "job.yaml", "-q", cwd=tmp_path).returncode == 3
    md = cli("report", "cheap", cwd=tmp_path)
    assert md.returncode == 0, md.stderr
    assert "- **Status:** paused (budget reached: spent $" in md.stdout
    assert "continue it with storyloom resume cheap" in md.stdout
    bad = cli("report", "cheap", "--format", "pdf", cwd=tmp_path)
    assert bad.returncode == 2 and "unknown report format 'pdf' (known: html, json, md)" in bad.stderr
    missing = cli("report", "nope", cwd=tmp_path)
    assert missing.returncode == 2 and "no job 'nope'" in missing.stderr


def completed(job_id: str):
    """``await completed(job_id)(store)``: the job's completed items, 0 until it is stored."""
    async def read(store: Store) -> int:
        return (await store.counts(job_id))["completed"] if await store.get_job(job_id) else 0

    return read


@pytest.mark.slow
def test_report_of_a_running_job(tmp_path):
    (tmp_path / "storyloom.yaml").write_text(SETTINGS.format(latency=150))
    (tmp_path / "job.yaml").write_text(JOB.format(job_id="busy", n=400))  # a minute: it is stopped below
    env = {k: v for k, v in os.environ.items() if not k.startswith("STORYLOOM_")}
    env["STORYLOOM_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    proc = subprocess.Popen([sys.executable, "-m", "storyloom.cli", "run", "job.yaml", "-q"], cwd=tmp_path,
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        done = 0
        while time.monotonic() < deadline and done < 4:
            time.sleep(0.05)
            try:
                done = Loom(tmp_path).read(completed("busy"))
            except StoreNotFound:
                pass  # not created yet
        out = cli("report", "busy", "--format", "json", cwd=tmp_path)
        assert out.returncode == 0, out.stderr
        report = json.loads(out.stdout)
        assert report["status"] == "running"
        assert 4 <= report["counts"]["completed"] < 400 and report["counts"]["pending"] > 0
        assert report["throughput_per_min"] > 0
        assert proc.poll() is None  # it read a running job without disturbing it
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGINT)
        proc.wait(timeout=60)
    assert proc.returncode == 130  # stopped cleanly by the test


def test_a_failed_items_row_shows_the_fields_its_job_type_names(loom):
    loom.write("storyloom.yaml", """
        models:
          broken: {provider: simulated, latency_ms: 0, seed: 3, errors: {INVALID_INPUT: 1.0}}
        default_models: [broken]
        reports: [json, html]
    """)
    loom.run("job_id: story\njob_type: qc_processing\nitems:\n  - {project_id: rain, chapters: 4-5}\n")
    loom.run("job_id: plain\njob_type: prompts\nitems:\n  - {item_id: p1, prompt: hello}\n", name="plain.yaml")
    story = json.loads((loom.out_dir / "story" / "report.json").read_text(encoding="utf-8"))
    assert [(f["item_id"], f["project_id"], f["fields"]) for f in story["failed_items"]] == [
        ("rain-ch4", "rain", {"chapter_num": 4}), ("rain-ch5", "rain", {"chapter_num": 5})]
    assert "rain / chapter_num 5" in (loom.out_dir / "story" / "report.html").read_text(encoding="utf-8")
    plain = json.loads((loom.out_dir / "plain" / "report.json").read_text(encoding="utf-8"))
    assert [(f["item_id"], f["fields"]) for f in plain["failed_items"]] == [("p1", {})]
    validator = Draft202012Validator(SCHEMA)
    assert not list(validator.iter_errors(story)) and not list(validator.iter_errors(plain))


def test_a_run_with_40_percent_failed_names_the_kinds_and_the_command_that_reruns_them(loom, fake_provider,
                                                                                       monkeypatch):
    # Five models in turn (round_robin): three answer, one is down (503), one refuses (400).
    fake_provider.configure("down", fail_status=503)
    fake_provider.configure("refuses", fail_status=400)
    names = ("ok1", "ok2", "ok3", "down", "refuses")
    models = "".join(f"  {name}: {{provider: openai, model: {name}, base_url: '{fake_provider.base_url('openai')}', "
                     f"api_key_env: {fake_provider.key_env('openai')}}}\n" for name in names)
    loom.write("storyloom.yaml", "models:\n" + models + f"default_models: [{', '.join(names)}]\n"
               "progress: []\nreports: [json, md]\nretry_config: {max_retries: 0}\n")
    items = "".join(f"  - {{item_id: p{n}, prompt: 'Line {n}.'}}\n" for n in range(10))
    loom.run("job_id: mixed\njob_type: prompts\nitems:\n" + items).assert_outcomes(completed=6, failed=4)
    report = json.loads((loom.out_dir / "mixed" / "report.json").read_text(encoding="utf-8"))
    first = report["recommendations"][0]
    assert first["code"] == "failed_items"
    assert first["text"].startswith("4 of 10 items failed (40%): INVALID_INPUT 2 (20%), TEMPORARY_ERROR 2 (20%). ")
    command = "storyloom resume mixed --retry-failed --kind TEMPORARY_ERROR"
    assert command in first["text"]
    markdown = (loom.out_dir / "mixed" / "report.md").read_text(encoding="utf-8")
    assert "nothing in this run needs attention" not in markdown and "4 of 10 items failed" in markdown
    # The command does what it says: once the server is back, it runs the two that met it down.
    fake_provider.configure("down", fail_status=None)
    monkeypatch.setenv("STORYLOOM_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert cli_main([*command.split()[1:], "-q"]) == 1  # the refused ones still fail the job
    states = {item_id: row.state for item_id, row in loom.items("mixed").items()}
    failed = sorted(item_id for item_id, state in states.items() if state == "failed")
    assert len(failed) == 2 and list(states.values()).count("completed") == 8
    assert {row.error_kind for item_id, row in loom.items("mixed").items() if item_id in failed} == {"INVALID_INPUT"}
