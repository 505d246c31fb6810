"""EPUB 3 books (plugins/support/epub.py): real epubcheck on a Thai and an
English book, the structural self-check, escaping, the nav's chapter titles;
the Markdown and plain-text books."""

from __future__ import annotations

import os
import shutil
import subprocess
import zipfile
from datetime import datetime, timezone
from pathlib import Path
from xml.etree import ElementTree

import pytest

from storyloom.plugins.support.epub import check_epub, epub_bytes, write_epub, write_markdown, write_text

EPUBCHECK = Path("/usr/share/java/epubcheck.jar")
XHTML = "{http://www.w3.org/1999/xhtml}"
WHEN = datetime(2025, 1, 15, 9, 30, tzinfo=timezone.utc)

THAI = dict(identifier="urn:storyloom:lantern-th", title="ถนนโคมไฟ <ภาคหนึ่ง> & เพื่อน", language="th",
            author="สตูดิโอ <ทดลอง>", modified=WHEN, chapters=[
                ("บทที่ ๑: ประตู <เก่า>", "มะลิเดินไปที่ประตู & หยุด\n\nน้ำค้าง <b>เย็น</b> บนใบไม้\nบรรทัดใหม่"),
                ("บทที่ ๒: แม่น้ำ", "เรือลำเล็ก\x07ลอยไป \"อย่างช้า ๆ\" 'ใต้' สะพาน"),
                ("บทที่ ๓: โคมไฟ", "แสงสุดท้าย]]> ของคืน"),
            ])
ENGLISH = dict(identifier="urn:uuid:8c1f5e36-6a4b-4b55-9b38-0a1d2c3e4f50", title="The Lantern Road: <Part One> & More",
               language="en-GB", modified=WHEN, chapters=[
                   ("Chapter 1 — The Gate <&>", "Mali stood at the gate & waited.\n\n<script>alert(1)</script>"),
                   ("Chapter 2", "The river ran <fast>.\r\n\r\nThen slow."),
               ])


def epubcheck_command() -> list[str] | None:
    """The epubcheck command, or None (then the test skips, unless
    STORYLOOM_REQUIRE_EPUBCHECK is set: CI installs it and must not skip)."""
    java = shutil.which("java")
    if java and EPUBCHECK.is_file():
        # A quick-starting JVM: epubcheck's work is small, start-up is most of it.
        return [java, "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-jar", str(EPUBCHECK)]
    if os.environ.get("STORYLOOM_REQUIRE_EPUBCHECK"):
        pytest.fail(f"STORYLOOM_REQUIRE_EPUBCHECK is set but java ({java}) or {EPUBCHECK} is missing")
    pytest.skip(f"epubcheck needs java and {EPUBCHECK} (Debian package epubcheck)")


def start_epubcheck(paths) -> dict:
    """epubcheck started on each of ``paths`` (it checks one file per run), in
    parallel: one JVM start each is most of the time, so a test starts them
    as soon as its books exist and collects them with finish_epubcheck."""
    command = epubcheck_command()
    return {path: subprocess.Popen([*command, str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for path in paths}


def finish_epubcheck(running: dict) -> dict:
    """{path: (exit code, output)} of what start_epubcheck started."""
    results = {}
    for path, process in running.items():
        out, _ = process.communicate(timeout=300)
        results[path] = (process.returncode, out)
    return results


@pytest.fixture(scope="module")
def epubcheck_results(tmp_path_factory):
    """epubcheck's (exit code, output) for the Thai, the English and a broken
    book, run in parallel: one JVM start each is most of the time."""
    folder = tmp_path_factory.mktemp("books")
    books = {"thai": write_epub(folder / "thai.epub", **THAI), "english": write_epub(folder / "english.epub", **ENGLISH)}
    broken = folder / "broken.epub"
    with zipfile.ZipFile(books["english"]) as good, zipfile.ZipFile(broken, "w") as bad:
        for info in good.infolist():
            data = good.read(info)
            if info.filename.endswith("chapter-0002.xhtml"):
                data = data.replace(b"</p>", b"", 1)  # not well-formed any more
            bad.writestr(info.filename, data, compress_type=zipfile.ZIP_DEFLATED)  # mimetype compressed too
    books["broken"] = broken
    results = finish_epubcheck(start_epubcheck(books.values()))
    return {name: results[path] for name, path in books.items()}


@pytest.mark.slow
@pytest.mark.parametrize("book", ["thai", "english"])
def test_epubcheck_accepts_the_book(book, epubcheck_results):
    code, out = epubcheck_results[book]
    assert code == 0, out
    assert "No errors or warnings detected" in out, out


@pytest.mark.slow
def test_epubcheck_can_fail(epubcheck_results):
    code, out = epubcheck_results["broken"]
    assert code != 0
    assert "ERROR" in out or "FATAL" in out


@pytest.mark.parametrize("book", [THAI, ENGLISH], ids=["thai", "english"])
def test_the_structural_check_passes_a_written_book(book, tmp_path):
    assert check_epub(write_epub(tmp_path / "b.epub", **book)) == []


def test_mimetype_is_first_stored_and_exact(tmp_path):
    path = write_epub(tmp_path / "b.epub", **THAI)
    raw = path.read_bytes()
    assert raw[30:38] == b"mimetype" and raw[38:58] == b"application/epub+zip"
    with zipfile.ZipFile(path) as book:
        first = book.infolist()[0]
        assert first.filename == "mimetype" and first.compress_type == zipfile.ZIP_STORED
        assert book.namelist() == ["mimetype", "META-INF/container.xml", "OEBPS/content.opf", "OEBPS/nav.xhtml",
                                   "OEBPS/chapter-0001.xhtml", "OEBPS/chapter-0002.xhtml", "OEBPS/chapter-0003.xhtml"]


def read(path: Path, name: str) -> ElementTree.Element:
    with zipfile.ZipFile(path) as book:
        return ElementTree.fromstring(book.read(name))


def test_the_package_document_has_the_metadata(tmp_path):
    path = write_epub(tmp_path / "b.epub", **THAI)
    opf = read(path, "OEBPS/content.opf")
    dc, o = "{http://purl.org/dc/elements/1.1/}", "{http://www.idpf.org/2007/opf}"
    assert opf.find(f"{o}metadata/{dc}identifier").text == "urn:storyloom:lantern-th"
    assert opf.find(f"{o}metadata/{dc}title").text == "ถนนโคมไฟ <ภาคหนึ่ง> & เพื่อน"
    assert opf.find(f"{o}metadata/{dc}language").text == "th"
    assert opf.find(f"{o}metadata/{dc}creator").text == "สตูดิโอ <ทดลอง>"
    (modified,) = [m.text for m in opf.iter(f"{o}meta") if m.get("property") == "dcterms:modified"]
    assert modified == "2025-01-15T09:30:00Z"
    spine = [r.get("idref") for r in opf.iter(f"{o}itemref")]
    assert spine == ["ch0001", "ch0002", "ch0003"]


def test_the_nav_lists_the_chapter_titles_in_order(tmp_path):
    path = write_epub(tmp_path / "b.epub", **ENGLISH)
    nav = read(path, "OEBPS/nav.xhtml")
    links = [(a.text, a.get("href")) for a in nav.iter(f"{XHTML}a")]
    assert links == [("Chapter 1 — The Gate <&>", "chapter-0001.xhtml"), ("Chapter 2", "chapter-0002.xhtml")]


def test_chapters_carry_the_language_and_escaped_text(tmp_path):
    path = write_epub(tmp_path / "b.epub", **THAI)
    with zipfile.ZipFile(path) as book:
        raw = book.read("OEBPS/chapter-0001.xhtml").decode()
    assert 'xml:lang="th" lang="th"' in raw
    assert "<b>" not in raw and "&lt;b&gt;เย็น&lt;/b&gt;" in raw
    assert "ประตู &amp; หยุด" in raw
    root = ElementTree.fromstring(raw)
    paragraphs = ["".join(p.itertext()) for p in root.iter(f"{XHTML}p")]
    assert paragraphs == ["มะลิเดินไปที่ประตู & หยุด", "น้ำค้าง <b>เย็น</b> บนใบไม้บรรทัดใหม่"]
    assert root.find(f".//{XHTML}h1").text == "บทที่ ๑: ประตู <เก่า>"
    second = read(path, "OEBPS/chapter-0002.xhtml")
    assert "".join(second.find(f".//{XHTML}p").itertext()) == "เรือลำเล็กลอยไป \"อย่างช้า ๆ\" 'ใต้' สะพาน"  # BEL dropped
    third = read(path, "OEBPS/chapter-0003.xhtml")
    assert "".join(third.find(f".//{XHTML}p").itertext()) == "แสงสุดท้าย]]> ของคืน"


def test_a_script_in_the_text_stays_text(tmp_path):
    path = write_epub(tmp_path / "b.epub", **ENGLISH)
    root = read(path, "OEBPS/chapter-0001.xhtml")
    assert not list(root.iter(f"{XHTML}script"))
    assert "<script>alert(1)</script>" in "".join(root.itertext())


def test_the_same_book_is_the_same_bytes():
    assert epub_bytes(**THAI) == epub_bytes(**THAI)
    assert epub_bytes(**THAI) != epub_bytes(**{**THAI, "title": "อื่น"})


@pytest.mark.parametrize("change,message", [
    ({"chapters": []}, "at least one chapter"),
    ({"language": "Thai language"}, "language tag"),
    ({"identifier": " "}, "identifier"),
    ({"title": "\x00"}, "title"),
])
def test_a_book_that_cannot_be_an_epub_is_refused_and_nothing_written(change, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        write_epub(tmp_path / "b.epub", **{**ENGLISH, **change})
    assert list(tmp_path.iterdir()) == []


def test_a_failed_write_leaves_the_old_book(tmp_path):
    path = write_epub(tmp_path / "b.epub", **ENGLISH)
    before = path.read_bytes()
    with pytest.raises(ValueError):
        write_epub(path, **{**ENGLISH, "chapters": []})
    assert path.read_bytes() == before


def rewrite(source: Path, target: Path, *, drop: str = "", change: tuple[str, bytes, bytes] | None = None,
            mimetype_deflated: bool = False, add: str = "") -> Path:
    with zipfile.ZipFile(source) as good, zipfile.ZipFile(target, "w") as bad:
        for info in good.infolist():
            if info.filename == drop:
                continue
            data = good.read(info)
            if change and info.filename == change[0]:
                data = data.replace(change[1], change[2])
            stored = info.filename == "mimetype" and not mimetype_deflated
            bad.writestr(info.filename, data, compress_type=zipfile.ZIP_STORED if stored else zipfile.ZIP_DEFLATED)
        if add:
            bad.writestr(add, b"stray")
    return target


@pytest.mark.parametrize("kwargs,problem", [
    ({"mimetype_deflated": True}, "mimetype is compressed"),
    ({"drop": "OEBPS/chapter-0002.xhtml"}, "the manifest lists OEBPS/chapter-0002.xhtml"),
    ({"add": "OEBPS/extra.css"}, "OEBPS/extra.css is in the file but not in the manifest"),
    ({"change": ("OEBPS/content.opf", b'idref="ch0002"', b'idref="ch0009"')}, "the spine names 'ch0009'"),
    ({"change": ("OEBPS/content.opf", b' properties="nav"', b"")}, 'properties="nav", got 0'),
    ({"change": ("OEBPS/content.opf", b"<dc:language>en-GB</dc:language>", b"")}, "no dc:language"),
    ({"change": ("OEBPS/content.opf", b"2025-01-15T09:30:00Z", b"yesterday")}, "dcterms:modified"),
    ({"change": ("OEBPS/chapter-0001.xhtml", b"</h1>", b"")}, "chapter-0001.xhtml is not well-formed"),
    ({"change": ("OEBPS/chapter-0001.xhtml", b' lang="en-GB"', b"")}, "needs both xml:lang and lang"),
    ({"drop": "META-INF/container.xml"}, "no META-INF/container.xml"),
], ids=["mimetype", "missing-file", "stray-file", "spine", "nav", "language", "modified", "xhtml", "lang",
        "container"])
def test_the_structural_check_finds(kwargs, problem, tmp_path):
    good = write_epub(tmp_path / "good.epub", **ENGLISH)
    problems = check_epub(rewrite(good, tmp_path / "bad.epub", **kwargs))
    assert any(problem in p for p in problems), problems


def test_a_file_that_is_no_zip(tmp_path):
    (tmp_path / "x.epub").write_text("not a zip")
    assert check_epub(tmp_path / "x.epub")[0].startswith("not a ZIP file")


def test_the_markdown_book_escapes_markup(tmp_path):
    path = write_markdown(tmp_path / "b.md", title="The *Lantern* <Road>", chapters=[
        ("One [draft](javascript:alert(1))", "# not a heading\n\nA <b>bold</b> & _odd_ line.\n- not a list\n"
                                              "12. not numbered"),
        ("สอง", "น้ำค้าง")])
    text = path.read_text(encoding="utf-8")
    assert text.startswith("# The \\*Lantern\\* \\<Road\\>\n")
    assert "## One \\[draft\\](javascript:alert(1))" in text
    assert "\\# not a heading" in text and "\\- not a list" in text and "12\\. not numbered" in text
    assert "A \\<b\\>bold\\</b\\> \\& \\_odd\\_ line." in text
    assert "## สอง\n\nน้ำค้าง\n" in text


def test_the_plain_text_book(tmp_path):
    path = write_text(tmp_path / "b.txt", title="ถนนโคมไฟ", author="สตูดิโอ",
                      chapters=[("บทที่ ๑", "ย่อหน้าแรก\n\nย่อหน้าสอง"), ("บทที่ ๒", "จบ")])
    assert path.read_text(encoding="utf-8") == (
        "ถนนโคมไฟ\nสตูดิโอ\n\n\nบทที่ ๑\n\nย่อหน้าแรก\n\nย่อหน้าสอง\n\n\nบทที่ ๒\n\nจบ\n")


def test_an_exported_books_files_are_made_again_the_same_from_what_the_result_stores(tmp_path):
    from storyloom.plugins.jobtypes import book_files

    contents = {"identifier": "urn:storyloom:bk", "title": "Salt & Signal", "language": "en", "author": None,
                "chapters": [["One", "First."], ["Two", "Second."]], "versions": {"1": 1, "2": 2},
                "modified": "2026-03-04T05:06:07Z"}
    txt, epub = book_files("bk", contents)
    assert (txt.name, epub.name) == ("bk.txt", "bk.epub") and "Second." in txt.text
    assert book_files("bk", dict(contents))[1].data() == epub.data()  # the same result, the same bytes
    (tmp_path / "bk.epub").write_bytes(epub.data())
    assert check_epub(tmp_path / "bk.epub") == []
    with zipfile.ZipFile(tmp_path / "bk.epub") as book:
        assert "<meta property=\"dcterms:modified\">2026-03-04T05:06:07Z</meta>" in book.read("OEBPS/content.opf").decode()
    # a result stored before the export kept its time: a fixed date, still the same bytes each time
    older = {k: v for k, v in contents.items() if k != "modified"}
    assert book_files("bk", older)[1].data() == book_files("bk", older)[1].data() != epub.data()
