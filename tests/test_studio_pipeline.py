"""The studio pipeline end to end: a job with then: stages, run against the fake
OpenAI server on 127.0.0.1 (real HTTP, structured replies computed from each
request), asserting what the requests carry; gates and approvals; a book's
chapters in order while books interleave; a kill mid-pipeline and a resume."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import shutil
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest
import trio
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from storyloom import api
from storyloom.plugins.support.epub import check_epub
from storyloom.plugins.support.prose import prose
from storyloom.testing import Loom

from test_epub import finish_epubcheck, start_epubcheck

PREMISE = "A keeper hears Morse from a trawler that sank in 1974."
PROJECT = f"""\
project_id: {{pid}}
title: Salt & Signal {{pid}}
language: en
genre: mystery
premise: "{PREMISE}"
style: {{{{tone: brooding, pov: first person, tense: past}}}}
chapters: {{chapters}}
chapter_length: 60
{{extra}}"""
PIPELINE = """\
job_id: {job_id}
job_type: character_generation
models: [{models}]
then:
  - {{job_type: plot_outlining}}
  - {{job_type: chapter_writing}}
  - {{job_type: qc_processing}}
  - {{job_type: export}}
vars: {{max_rewrites: {max_rewrites}}}
items:
{items}"""
SHEETS = [
    {"name": "Ada", "role": "keeper", "goals": "find the sender", "traits": ["stubborn"], "voice": "clipped",
     "relationships": [{"name": "Tom", "relation": "brother"}], "arc": "believes herself"},
    {"name": "Tom", "role": "island policeman", "goals": "keep the peace", "traits": ["kind"], "voice": "slow",
     "relationships": [], "arc": "doubts, then helps"},
    {"name": "Vell", "role": "widow", "goals": "silence", "traits": ["proud"], "voice": "formal",
     "relationships": [], "arc": "confesses"},
]
BEAT_CAST = {1: ["Ada"], 2: ["Ada", "Tom"], 3: ["Vell"]}


def prompt(body) -> str:
    """The user message (the system message comes first)."""
    return body["messages"][-1]["content"]


def schema_name(body) -> str:
    return (body.get("response_format") or {}).get("json_schema", {}).get("name", "")


def chapter_of(text: str) -> int:
    return int(re.search(r"Write chapter (\d+)", text).group(1))


def is_rewrite(text: str) -> bool:
    return "This is a rewrite" in text


class Studio:
    """The fake model's answers: a valid reply for each schema, made from the request.

    Chapter N's text carries ``TEXT-N`` (a rewrite ``REWRITE-N``), its summary
    ``SUMMARY-N``; the QC of each chapter in ``fail`` fails (low scores and the
    fix ``FIX-N``) unless it reads a rewrite, or always for ``always_fail``."""

    def __init__(self, fail=(), always_fail=()):
        self.fail, self.always_fail = set(fail), set(always_fail)

    def __call__(self, kind, body):
        name, text = schema_name(body), prompt(body)
        if name == "character_sheets":
            return {"characters": SHEETS}
        if name == "plot_outline":
            count = body["response_format"]["json_schema"]["schema"]["properties"]["beats"]["minItems"]
            return {"arcs": [{"name": "the signal", "summary": "who sends it"}],
                    "beats": [{"title": f"Beat title {n}", "pov": "Ada", "characters": BEAT_CAST.get(n, ["Ada"]),
                               "events": f"EVENTS-{n}", "hook": f"HOOK-{n}"} for n in range(1, count + 1)]}
        if name == "chapter":
            n = chapter_of(text)
            marker = f"REWRITE-{n}" if is_rewrite(text) else f"TEXT-{n}"
            body_text = f"{marker} " + prose(random.Random(f"{n}{marker}"), "en", 58)
            return {"title": f"Chapter {n}", "text": body_text, "summary": f"SUMMARY-{n}: Ada learns more.",
                    "character_state": [{"name": "Ada", "state": f"STATE-{n}"}]}
        if name == "qc_rubric":
            n = int(re.search(r"(?:TEXT|REWRITE)-(\d+)", text).group(1))
            failing = n in self.always_fail or (n in self.fail and f"REWRITE-{n}" not in text)
            score = 3 if failing else 9
            return {"scores": {c: score for c in ("continuity", "character_voice", "pacing", "language_quality")},
                    "fixes": [f"FIX-{n}: give Tom a line"] if failing else [], "comment": "ok"}
        raise AssertionError(f"unexpected request {name!r}")


def studio_folder(loom, fake, books, chapters=3, extra="", latency=0.0):
    fake.configure("m1", latency=latency, output_tokens=400)
    loom.write("storyloom.yaml", f"models:\n  m1: {{provider: openai, model: m1, base_url: '{fake.base_url('openai')}', "
                                 f"api_key_env: {fake.key_env('openai')}}}\nprogress: []\n"
                                 "retry_config: {max_retries: 2, retry_delay: {initial: 0.05s, max: 0.1s}}\n")
    for pid in books:
        loom.write(f"projects/{pid}.yaml", PROJECT.format(pid=pid, chapters=chapters, extra=extra))


def pipeline(job_id, books, models="m1", max_rewrites=2):
    items = "".join(f"  - {{item_id: {pid}, project_id: {pid}}}\n" for pid in books)
    return PIPELINE.format(job_id=job_id, models=models, max_rewrites=max_rewrites, items=items)


def bodies(fake, name):
    return [r.body for r in fake.requests if schema_name(r.body) == name]


def run_in(loom, job_yaml):
    # projects/ beside storyloom.yaml (the loom fixture works in that folder)
    return loom.run(job_yaml, settings_file=str(loom.path / "storyloom.yaml"))


@pytest.mark.slow
def test_a_book_from_premise_to_epub_with_what_each_request_carries(loom, fake_provider):
    studio_folder(loom, fake_provider, ["bk"])
    fake_provider.configure("m1", data=Studio(fail={2}))
    result = run_in(loom, pipeline("studio", ["bk"]))
    result.assert_outcomes(completed=11)  # characters, outline, 3 chapters, 3 QCs, 1 rewrite + its QC, export

    chapter_requests = {chapter_of(prompt(b)): prompt(b) for b in bodies(fake_provider, "chapter")
                        if not is_rewrite(prompt(b))}
    second = chapter_requests[2]
    assert PREMISE in second
    assert "Tom" in second and "island policeman" in second and "widow" not in second  # the characters present
    assert "Beat title 2" in second and "EVENTS-2" in second and "HOOK-2" in second  # its beat
    assert "SUMMARY-1" in second and "STATE-1" in second  # chapter 1's summary and the state after it
    assert "TEXT-1" in second  # chapter 1's last paragraphs
    assert "brooding" in second and "first person" in second

    qc = [prompt(b) for b in bodies(fake_provider, "qc_rubric")]
    assert any("TEXT-1" in p and "SUMMARY-1" not in p for p in qc)  # chapter 1's text itself (not its summary)

    (rewrite,) = [prompt(b) for b in bodies(fake_provider, "chapter") if is_rewrite(prompt(b))]
    assert "FIX-2: give Tom a line" in rewrite and "continuity scored 3" in rewrite and "TEXT-2" in rewrite

    folder = loom.out_dir / "studio"
    epub = folder / "bk.epub"
    assert check_epub(epub) == []
    checked = loom.path / "bk-checked.epub"  # a copy: the rebuild below replaces bk.epub meanwhile
    shutil.copyfile(epub, checked)
    epubcheck = start_epubcheck([checked])  # runs while the rest is checked
    with zipfile.ZipFile(epub) as book:
        xhtml = "".join(book.read(n).decode() for n in book.namelist() if n.endswith(".xhtml"))
    assert "REWRITE-2" in xhtml and "TEXT-2" not in xhtml  # the version that passed
    assert 'xml:lang="en"' in xhtml and "Beat title 3" in xhtml
    assert (folder / "bk.md").read_text().startswith("# Salt &amp; Signal bk") is False  # Markdown is not escaped
    assert (folder / "bk.md").read_text().startswith("# Salt & Signal bk\n")
    assert "REWRITE-2" in (folder / "bk.txt").read_text()
    text = (folder / "bk.txt").read_text()
    (folder / "bk.txt").unlink()
    assert loom.outputs("studio")["bk.txt"] == "missing"
    assert loom.outputs("studio", rebuild=True)["bk.txt"] == "rebuilt"
    assert (folder / "bk.txt").read_text() == text
    # the EPUB comes back from the store byte for byte (its dcterms:modified is
    # stored with the result), so epubcheck's verdict on the copy holds for it
    written = epub.read_bytes()
    epub.write_bytes(written[:100])
    assert loom.outputs("studio")["bk.epub"] == "partial"
    epub.unlink()
    assert loom.outputs("studio")["bk.epub"] == "missing"
    assert loom.outputs("studio", rebuild=True)["bk.epub"] == "rebuilt"
    assert epub.read_bytes() == written

    view = trio.run(lambda: api.book("bk", options=loom.options(settings_file=str(loom.path / "storyloom.yaml"))))
    rows = {r["chapter"]: r for r in view["chapters"]}
    assert rows[2]["state"] == "passed" and rows[2]["version"] == 2 and rows[2]["versions"] == 2
    assert rows[1]["qc_score"] == 9.0 and view["characters_source"] == "generated"
    code, out = finish_epubcheck(epubcheck)[checked]
    assert code == 0, out


@pytest.mark.slow
def test_a_chapter_failing_every_rewrite_needs_review_and_its_approval_lets_the_export_run(loom, fake_provider,
                                                                                          capsys):
    studio_folder(loom, fake_provider, ["bk"], chapters=2)
    fake_provider.configure("m1", data=Studio(always_fail={1}))
    options = dict(settings_file=str(loom.path / "storyloom.yaml"))
    result = run_in(loom, pipeline("review", ["bk"], max_rewrites=1))
    assert result.summary.status == "paused" and "bk:chapter-1" in (result.summary.reason or "")
    assert result.items["bk-export"].state == "pending" and result.items["bk-ch1-review"].state == "pending"
    view = trio.run(lambda: api.book("bk", options=loom.options(**options)))
    assert view["chapters"][0]["state"] == "needs_review"
    assert any("storyloom approve bk chapter 1" in line for line in view["text"])
    flagged = [{"project_id": "bk", "what": "chapter 1", "chapter": 1, "approve": "storyloom approve bk chapter 1"}]
    assert trio.run(lambda: api.job_status("review", options=loom.options(**options)))["needs_review"] == flagged
    from storyloom import cli as storyloom_cli
    assert storyloom_cli.main(["status", "review", "--state-dir", str(loom.state_dir),
                               "--settings", options["settings_file"], "-p", "no:progress"]) == 0
    shown = capsys.readouterr().out
    assert "  needs_review 1\n    bk chapter 1: `storyloom approve bk chapter 1`\n" in shown, shown
    reports = {f: trio.run(lambda: api.render_report("review", f, options=loom.options(**options)))[1]
               for f in ("json", "md", "html")}
    assert json.loads(reports["json"])["needs_review"] == flagged
    assert "| Needs review | 1 | - |" in reports["md"]
    assert "- Needs review: bk chapter 1 (`storyloom approve bk chapter 1`)" in reports["md"]
    assert re.search(r"<td>Needs review</td><td class=\"n\">1</td>", reports["html"])
    assert "<li>bk chapter 1: <code>storyloom approve bk chapter 1</code></li>" in reports["html"]
    with pytest.raises(api.UsageError if hasattr(api, "UsageError") else Exception, match="is passed"):
        trio.run(lambda: api.approve("bk", ["chapter", "2"], options=loom.options(**options)))
    said = trio.run(lambda: api.approve("bk", ["chapter", "1"], options=loom.options(**options)))
    assert "approved chapter 1 of bk" in said
    assert trio.run(lambda: api.job_status("review", options=loom.options(**options)))["needs_review"] == []
    resumed = loom.resume("review", **options)
    assert resumed.summary.status == "completed"
    assert (loom.out_dir / "review" / "bk.epub").exists()
    view = trio.run(lambda: api.book("bk", options=loom.options(**options)))
    assert view["chapters"][0]["state"] == "approved"
    assert json.loads(trio.run(lambda: api.render_report("review", "json", options=loom.options(**options)))[1]
                      )["needs_review"] == []


@pytest.mark.slow
def test_an_outline_gate_holds_the_chapters_until_approved(loom, fake_provider):
    studio_folder(loom, fake_provider, ["bk"], chapters=2, extra="review: [outline]\n")
    fake_provider.configure("m1", data=Studio())
    options = dict(settings_file=str(loom.path / "storyloom.yaml"))
    result = run_in(loom, pipeline("gated", ["bk"]))
    assert result.summary.status == "paused" and "bk:outline" in (result.summary.reason or "")
    assert not bodies(fake_provider, "chapter")  # no chapter was asked for
    view = trio.run(lambda: api.book("bk", options=loom.options(**options)))
    assert view["outline_review"] and not view["outline_approved"] and len(view["outline"]) == 2
    said = trio.run(lambda: api.approve("bk", ["outline"], options=loom.options(**options)))
    assert "2 chapter item(s) released" in said
    assert loom.resume("gated", **options).summary.status == "completed"
    assert len(bodies(fake_provider, "chapter")) == 2


@pytest.mark.slow
def test_a_job_may_ask_for_the_outline_gate_too(loom, fake_provider):
    studio_folder(loom, fake_provider, ["bk"], chapters=2)  # the project asks for no review
    fake_provider.configure("m1", data=Studio())
    job = pipeline("job-gated", ["bk"]).replace("vars: {max_rewrites: 2}", "vars: {max_rewrites: 2, review: [outline]}")
    result = run_in(loom, job)
    assert result.summary.status == "paused" and "bk:outline" in (result.summary.reason or "")
    assert not bodies(fake_provider, "chapter")


def test_approve_refuses_what_it_does_not_know(loom):
    loom.write("storyloom.yaml", "progress: []\n")
    loom.write("projects/bk.yaml", PROJECT.format(pid="bk", chapters=2, extra=""))

    trio.run(lambda: api.book("bk", options=loom.options()))  # creates the store; nothing stored yet
    for target, message in ((["cover"], "approve what"), (["chapter", "x"], "a chapter number")):
        with pytest.raises(Exception, match=message):
            trio.run(lambda: api.approve("bk", target, options=loom.options()))


# -- order, interleaving, crashes (the simulated provider, with latency) -----


def simulated_folder(loom, books, chapters, latency_ms=20, seed=1, extra=""):
    loom.write("storyloom.yaml", f"models:\n  sim: {{provider: simulated, latency_ms: {latency_ms}, seed: {seed}, "
                                 f"fail_qc_rate: 0.3}}\nprogress: []\nreports: []\n{extra}"
                                 "batch_limits: {chapter_writing: {max_parallel: 8}, qc_processing: {max_parallel: 8}}\n")
    for pid in books:
        loom.write(f"projects/{pid}.yaml", PROJECT.format(pid=pid, chapters=chapters, extra="").replace(
            "chapter_length: 60", "chapter_length: 80"))


def chapter_spans(loom, job_id):
    async def read(store):
        return await store.attempts(job_id)
    spans = {}
    for a in loom.read(read):
        spans.setdefault(a.item_id, []).append(a)
    return spans


def assert_in_order(spans, books, chapters):
    for pid in books:
        for n in range(2, chapters + 1):
            before = [a for a in spans[f"{pid}-ch{n - 1}"] if a.state == "completed"]
            assert len(before) == 1
            started = min(a.started_at for a in spans[f"{pid}-ch{n}"])
            assert started >= before[0].finished_at, f"{pid} chapter {n} started before chapter {n - 1} completed"


@pytest.mark.slow
@settings(max_examples=5, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(books=st.integers(2, 4), chapters=st.integers(1, 4), seed=st.integers(0, 10_000))
def test_a_books_chapters_run_in_order_while_books_interleave(tmp_path_factory, books, chapters, seed):
    loom = Loom(tmp_path_factory.mktemp("order"))
    ids = [f"b{i}" for i in range(books)]
    simulated_folder(loom, ids, chapters, seed=seed)
    result = loom.run(pipeline("order", ids, models="sim", max_rewrites=6), settings_file=str(loom.path / "storyloom.yaml"))
    # A chapter whose QC failed 1 + max_rewrites times in a row (drawn at 0.3 each: about 2 in 10,000,
    # and hypothesis finds such seeds, e.g. 255) rightly waits for review: not this test's subject.
    assume(not (result.summary.status == "paused" and "chapter-" in (result.summary.reason or "")))
    assert result.summary.status == "completed"
    spans = chapter_spans(loom, "order")
    assert_in_order(spans, ids, chapters)
    # Books interleave: every book's items run while another book's do (not one book after the other).
    windows = {pid: (min(a.started_at for i, attempts in spans.items() if i == pid or i.startswith(f"{pid}-")
                         for a in attempts),
                     max(a.finished_at for i, attempts in spans.items() if i == pid or i.startswith(f"{pid}-")
                         for a in attempts)) for pid in ids}
    assert all(any(windows[a][0] < windows[b][1] and windows[b][0] < windows[a][1] for b in ids if b != a)
               for a in ids)
    for pid in ids:
        assert (loom.out_dir / "order" / f"{pid}.epub").exists()


@pytest.mark.slow
def test_a_kill_mid_pipeline_then_resume_loses_and_repeats_nothing(loom):
    ids = ["k0", "k1"]
    # a 2 s lease: the resume gets the killed run's items back within 2s + 2s/3, not 30s + 10s
    simulated_folder(loom, ids, chapters=4, latency_ms=150, seed=4, extra="queue: {lease: 2s}\n")
    job = loom.write("job.yaml", pipeline("killed", ids, models="sim", max_rewrites=6))
    env = {**os.environ, "STORYLOOM_HOME": str(loom.state_dir)}
    command = [sys.executable, "-m", "storyloom.cli", "run", str(job), "-q", "--out-dir", str(loom.out_dir)]
    proc = subprocess.Popen(command, cwd=loom.path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:  # kill once some chapters are in and the books are not done
            time.sleep(0.2)
            if loom.state_dir.exists() and _completed_chapters(loom, "killed") >= 3:
                break
        else:
            pytest.fail("no chapter completed within 60 s")
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    before = _completed(loom, "killed")
    assert not {"k0-export", "k1-export"} <= before  # killed mid-pipeline

    resumed = loom.resume("killed", settings_file=str(loom.path / "storyloom.yaml"))
    assert resumed.summary.status == "completed", resumed.summary
    spans = chapter_spans(loom, "killed")
    # Nothing completed twice; nothing completed before the kill ran again.
    for item_id, attempts in spans.items():
        assert sum(a.state == "completed" for a in attempts) == 1, item_id
    for item_id in before:
        assert all(a.finished_at <= max(b.finished_at for b in spans[item_id] if b.state == "completed")
                   for a in spans[item_id]), item_id
    assert_in_order(spans, ids, 4)
    # Every chapter version is one completed chapter item: no artifact lost or made twice.
    async def read(store):
        return {pid: await store.artifacts(pid, ["chapter"]) for pid in ids}
    for pid, chapters in loom.read(read).items():
        written = {item_id for item_id in spans if re.fullmatch(rf"{pid}-ch\d+(-r\d+)?", item_id)}
        assert sorted(a.item_id for a in chapters) == sorted(written)
        for key in {a.key for a in chapters}:
            assert sorted(a.version for a in chapters if a.key == key) == list(
                range(1, 1 + sum(a.key == key for a in chapters)))
        assert (loom.out_dir / "killed" / f"{pid}.epub").exists()


def _completed(loom, job_id) -> set[str]:
    async def read(store):
        if await store.get_job(job_id) is None:
            return set()
        return {row.item_id for row in await store.items(job_id, "completed")}
    try:
        return loom.read(read)
    except Exception:  # the store is still being created by the child
        return set()


def _completed_chapters(loom, job_id) -> int:
    return sum(bool(re.fullmatch(r"k\d-ch\d+", i)) for i in _completed(loom, job_id))


def test_the_html_report_lang_follows_the_jobs_language(loom):
    loom.write("storyloom.yaml", "models:\n  sim: {provider: simulated, latency_ms: 0}\nprogress: []\n")
    result = loom.run("job_id: th\njob_type: chapter_writing\nlanguage: th\nmodels: [sim]\n"
                      "items: [{item_id: a, project_id: none-here}]\n",
                      settings_file=str(loom.path / "storyloom.yaml"))
    assert result.summary.status == "completed"
    html = (loom.out_dir / "th" / "report.html").read_text(encoding="utf-8")
    assert html.startswith('<!DOCTYPE html>\n<html lang="th">')
    assert json.loads((loom.out_dir / "th" / "report.json").read_text())["language"] == "th"


REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_the_shipped_studio_example_ends_with_two_epubs_that_pass_epubcheck(tmp_path):
    """`storyloom run jobs/studio-book.yaml`, as the README says, on the simulated provider."""
    env = {**os.environ, "STORYLOOM_HOME": str(tmp_path / "state")}
    env.pop("STORYLOOM_STORE", None)
    done = subprocess.run([sys.executable, "-m", "storyloom.cli", "run", "jobs/studio-book.yaml", "-q",
                           "--out-dir", str(tmp_path / "out")], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    folder = tmp_path / "out" / "studio-book"
    assert sorted(p.name for p in folder.glob("*.epub")) == ["ruen-mai-hom.epub", "salt-and-signal.epub"]
    assert list(folder.glob("*-r1.md")), "no rewrite: the example's injected QC failures did not show"
    with zipfile.ZipFile(folder / "ruen-mai-hom.epub") as book:
        chapter = next(book.read(n).decode() for n in book.namelist() if n.endswith(".xhtml") and "nav" not in n)
    assert 'xml:lang="th"' in chapter and re.search("[\u0e00-\u0e7f]", chapter)
    epubs = sorted(folder.glob("*.epub"))
    for epub in epubs:
        assert check_epub(epub) == []
    epubcheck = start_epubcheck(epubs)  # both at once, while `book` runs
    shown = subprocess.run([sys.executable, "-m", "storyloom.cli", "book", "ruen-mai-hom"], cwd=REPO, env=env,
                           capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert "เรือนไม้หอม" in shown.stdout and "characters (project file): มะปราง" in shown.stdout
    for epub, (code, out) in finish_epubcheck(epubcheck).items():
        assert code == 0, (epub, out)
