"""A book as EPUB 3, Markdown and plain text; and a structural check of an EPUB.

:func:`write_epub` writes an EPUB 3 that epubcheck accepts: the ``mimetype``
entry first and stored (not compressed), ``META-INF/container.xml``, the
package document (``dc:identifier``, ``dc:title``, ``dc:language``,
``dcterms:modified``; a manifest of every file and a spine in reading order),
a navigation document listing the chapter titles, and one XHTML content
document per chapter with ``xml:lang`` and ``lang`` from the book. All text
(titles, chapters, the author) is data: XML-escaped, with characters XML
cannot hold dropped. Paragraphs are separated by blank lines; a single line
break inside one stays a line break.

Files are written atomically (:func:`storyloom.atomic.write_atomic_bytes`):
a reader never sees half a book. :func:`check_epub` re-reads a file and
lists what is wrong with its structure (no list: fine).
"""

from __future__ import annotations

import io
import posixpath
import re
import zipfile
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from xml.etree import ElementTree
from xml.sax.saxutils import escape, quoteattr

from storyloom.atomic import write_atomic, write_atomic_bytes

__all__ = ["check_epub", "epub_bytes", "write_epub", "write_markdown", "write_text"]

MIMETYPE = b"application/epub+zip"
_OPF_NS = "http://www.idpf.org/2007/opf"
_DC_NS = "http://purl.org/dc/elements/1.1/"
_XHTML_NS = "http://www.w3.org/1999/xhtml"
_XML_LANG = "{http://www.w3.org/XML/1998/namespace}lang"
_CONTAINER_NS = "urn:oasis:names:tc:opendocument:xmlns:container"
# XML 1.0 cannot hold these at all (not even escaped): C0 controls but tab, LF, CR; lone surrogates; FFFE/FFFF.
_NOT_XML = re.compile("[\x00-\x08\x0b\x0c\x0e-\x1f\ud800-\udfff\ufffe\uffff]")
_LANGUAGE = re.compile(r"^[A-Za-z]{2,3}(?:-[A-Za-z0-9]{2,8})*$")

Chapter = tuple[str, str]  # (title, text)


def _text(value: str) -> str:
    return escape(_NOT_XML.sub("", value))


def _attr(value: str) -> str:
    return quoteattr(_NOT_XML.sub("", value))


def _paragraphs(text: str) -> list[str]:
    text = _NOT_XML.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return [p.strip("\n") for p in re.split(r"\n[ \t]*\n", text) if p.strip()]


def _chapter_xhtml(title: str, text: str, language: str) -> str:
    body = "\n".join("    <p>" + "<br/>".join(_text(line) for line in p.split("\n")) + "</p>"
                     for p in _paragraphs(text))
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html>\n'
        f'<html xmlns="{_XHTML_NS}" xmlns:epub="http://www.idpf.org/2007/ops" '
        f'xml:lang={_attr(language)} lang={_attr(language)}>\n'
        f'<head>\n  <meta charset="utf-8"/>\n  <title>{_text(title)}</title>\n</head>\n'
        f'<body>\n  <section epub:type="chapter">\n    <h1>{_text(title)}</h1>\n{body}\n  </section>\n</body>\n</html>\n'
    )


def _nav_xhtml(book_title: str, titles: list[str], files: list[str], language: str) -> str:
    entries = "\n".join(f'      <li><a href={_attr(f)}>{_text(t)}</a></li>' for t, f in zip(titles, files))
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n<!DOCTYPE html>\n'
        f'<html xmlns="{_XHTML_NS}" xmlns:epub="http://www.idpf.org/2007/ops" '
        f'xml:lang={_attr(language)} lang={_attr(language)}>\n'
        f'<head>\n  <meta charset="utf-8"/>\n  <title>{_text(book_title)}</title>\n</head>\n'
        f'<body>\n  <nav epub:type="toc" id="toc">\n    <h1>{_text(book_title)}</h1>\n    <ol>\n{entries}\n'
        '    </ol>\n  </nav>\n</body>\n</html>\n'
    )


def _opf(identifier: str, title: str, language: str, author: str | None, modified: str, files: list[str]) -> str:
    creator = f"    <dc:creator>{_text(author)}</dc:creator>\n" if author else ""
    items = "\n".join(f'    <item id="ch{i + 1:04d}" href={_attr(f)} media-type="application/xhtml+xml"/>'
                      for i, f in enumerate(files))
    spine = "\n".join(f'    <itemref idref="ch{i + 1:04d}"/>' for i in range(len(files)))
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f'<package xmlns="{_OPF_NS}" version="3.0" unique-identifier="bookid" xml:lang={_attr(language)}>\n'
        f'  <metadata xmlns:dc="{_DC_NS}">\n'
        f'    <dc:identifier id="bookid">{_text(identifier)}</dc:identifier>\n'
        f'    <dc:title>{_text(title)}</dc:title>\n'
        f'    <dc:language>{_text(language)}</dc:language>\n'
        f'{creator}'
        f'    <meta property="dcterms:modified">{modified}</meta>\n'
        '  </metadata>\n  <manifest>\n'
        '    <item id="nav" href="nav.xhtml" media-type="application/xhtml+xml" properties="nav"/>\n'
        f'{items}\n  </manifest>\n  <spine>\n{spine}\n  </spine>\n</package>\n'
    )


_CONTAINER = (
    '<?xml version="1.0" encoding="utf-8"?>\n'
    f'<container version="1.0" xmlns="{_CONTAINER_NS}">\n'
    '  <rootfiles>\n    <rootfile full-path="OEBPS/content.opf" media-type="application/oebps-package+xml"/>\n'
    '  </rootfiles>\n</container>\n'
)


def _check_args(identifier: str, title: str, language: str, chapters: Sequence[Chapter]) -> None:
    if not _NOT_XML.sub("", identifier).strip():
        raise ValueError("an EPUB needs a non-empty identifier")
    if not _NOT_XML.sub("", title).strip():
        raise ValueError("an EPUB needs a non-empty title")
    if not _LANGUAGE.match(language):
        raise ValueError(f"expected a language tag like th or en-GB, got {language!r}")
    if not chapters:
        raise ValueError("an EPUB needs at least one chapter")


def epub_bytes(*, identifier: str, title: str, language: str, chapters: Sequence[Chapter],
               author: str | None = None, modified: datetime | None = None) -> bytes:
    """The EPUB file :func:`write_epub` writes, as bytes."""
    _check_args(identifier, title, language, chapters)
    when = (modified or datetime.now(timezone.utc)).astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    titles = [(t if _NOT_XML.sub("", t or "").strip() else f"{i + 1}") for i, (t, _) in enumerate(chapters)]
    files = [f"chapter-{i + 1:04d}.xhtml" for i in range(len(chapters))]
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as book:
        # First and stored, so a reader can find "application/epub+zip" at byte 38.
        book.writestr(zipfile.ZipInfo("mimetype", date_time=(1980, 1, 1, 0, 0, 0)), MIMETYPE,
                      compress_type=zipfile.ZIP_STORED)

        def add(name: str, text: str) -> None:
            info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))  # the same book, the same bytes
            book.writestr(info, text.encode("utf-8"), compress_type=zipfile.ZIP_DEFLATED)

        add("META-INF/container.xml", _CONTAINER)
        add("OEBPS/content.opf", _opf(identifier, title, language, author, when, files))
        add("OEBPS/nav.xhtml", _nav_xhtml(title, titles, files, language))
        for name, chapter_title, (_, text) in zip(files, titles, chapters):
            add(f"OEBPS/{name}", _chapter_xhtml(chapter_title, text or "", language))
    return buffer.getvalue()


def write_epub(path: str | Path, *, identifier: str, title: str, language: str, chapters: Sequence[Chapter],
               author: str | None = None, modified: datetime | None = None) -> Path:
    """Write the book as an EPUB 3 at ``path``, atomically; ``chapters`` are
    ``(title, text)`` in reading order. ``modified`` (default now) becomes
    ``dcterms:modified``. Returns the path.

    :raises ValueError: no chapters, an empty identifier or title, or a language that is not a tag.
    """
    data = epub_bytes(identifier=identifier, title=title, language=language, chapters=chapters, author=author,
                      modified=modified)
    write_atomic_bytes(Path(path), data)
    return Path(path)


_MD_ESCAPES = str.maketrans({c: "\\" + c for c in "\\`*_[]<>&|"})
_MD_LINE_START = re.compile(r"^(\s*)(?:([#>+=~-])|(\d+)([.)]))", re.MULTILINE)


def _markdown(text: str) -> str:
    """Prose as Markdown that renders as the same prose: no link, HTML,
    emphasis or heading can form from a model's text."""
    def escaped(m: re.Match[str]) -> str:
        if m.group(2):
            return f"{m.group(1)}\\{m.group(2)}"  # \# \- \>: not a heading, list or quote
        return f"{m.group(1)}{m.group(3)}\\{m.group(4)}"  # 12\. : not an ordered list

    return _MD_LINE_START.sub(escaped, text.translate(_MD_ESCAPES))


def write_markdown(path: str | Path, *, title: str, chapters: Sequence[Chapter], author: str | None = None) -> Path:
    """The book as one Markdown file: a title, then ``##`` per chapter; all text escaped."""
    out = [f"# {_markdown(title)}\n"]
    if author:
        out.append(f"{_markdown(author)}\n")
    for i, (chapter_title, text) in enumerate(chapters):
        out.append(f"## {_markdown(chapter_title or str(i + 1))}\n")
        out.extend(_markdown(p) + "\n" for p in _paragraphs(text or ""))
    write_atomic(Path(path), "\n".join(out))
    return Path(path)


def write_text(path: str | Path, *, title: str, chapters: Sequence[Chapter], author: str | None = None) -> Path:
    """The book as plain UTF-8 text: the title, then each chapter's title and paragraphs."""
    out = [title, *([author] if author else []), ""]
    for i, (chapter_title, text) in enumerate(chapters):
        out += ["", chapter_title or str(i + 1), ""]
        out += [p + "\n" for p in _paragraphs(text or "")]
    write_atomic(Path(path), "\n".join(out).rstrip("\n") + "\n")
    return Path(path)


# ---------------------------------------------------------------------------
# The structural check
# ---------------------------------------------------------------------------


def check_epub(path: str | Path) -> list[str]:
    """What is wrong with the EPUB's structure: ``mimetype`` first, stored and
    exact; the container and its package document; identifier, title,
    language and modified; manifest and spine consistent with the files;
    one navigation document; every XHTML document well-formed with
    ``xml:lang`` and ``lang``. An empty list: nothing found."""
    try:
        book = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as err:
        return [f"not a ZIP file: {err}"]
    with book:
        problems: list[str] = []
        infos = book.infolist()
        first = infos[0] if infos else None
        if first is None or first.filename != "mimetype":
            problems.append("the first entry is not mimetype")
        elif first.compress_type != zipfile.ZIP_STORED:
            problems.append("mimetype is compressed (it must be stored)")
        elif book.read("mimetype") != MIMETYPE:
            problems.append("mimetype does not say application/epub+zip")
        elif first.extra:
            problems.append("mimetype has an extra field")
        names = {i.filename for i in infos}
        if "META-INF/container.xml" not in names:
            return problems + ["no META-INF/container.xml"]
        try:
            container = ElementTree.fromstring(book.read("META-INF/container.xml"))
        except ElementTree.ParseError as err:
            return problems + [f"META-INF/container.xml is not well-formed: {err}"]
        rootfile = container.find(f".//{{{_CONTAINER_NS}}}rootfile")
        opf_path = rootfile.get("full-path") if rootfile is not None else None
        if not opf_path or opf_path not in names:
            return problems + [f"the container's package document {opf_path!r} is missing"]
        try:
            opf = ElementTree.fromstring(book.read(opf_path))
        except ElementTree.ParseError as err:
            return problems + [f"{opf_path} is not well-formed: {err}"]
        problems += _check_package(book, opf, opf_path, names)
        return problems


def _check_package(book: zipfile.ZipFile, opf: ElementTree.Element, opf_path: str, names: set[str]) -> list[str]:
    problems: list[str] = []
    o, dc = f"{{{_OPF_NS}}}", f"{{{_DC_NS}}}"
    if opf.tag != f"{o}package" or opf.get("version") != "3.0":
        problems.append(f"{opf_path}: not an EPUB 3 package document")
    metadata = opf.find(f"{o}metadata")
    if metadata is None:
        return problems + [f"{opf_path}: no metadata"]
    unique = opf.get("unique-identifier")
    ids = [e for e in metadata.findall(f"{dc}identifier") if (e.text or "").strip()]
    if not any(e.get("id") == unique for e in ids):
        problems.append(f"{opf_path}: no dc:identifier with the id {unique!r} (unique-identifier)")
    for what in ("title", "language"):
        if not any((e.text or "").strip() for e in metadata.findall(f"{dc}{what}")):
            problems.append(f"{opf_path}: no dc:{what}")
    modified = [e.text or "" for e in metadata.findall(f"{o}meta") if e.get("property") == "dcterms:modified"]
    if len(modified) != 1 or not re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", modified[0]):
        problems.append(f"{opf_path}: expected one dcterms:modified like 2025-01-15T09:00:00Z, got {modified}")
    base = posixpath.dirname(opf_path)
    manifest: dict[str, tuple[str, str, str]] = {}
    for item in opf.iterfind(f"{o}manifest/{o}item"):
        href = posixpath.normpath(posixpath.join(base, item.get("href") or ""))
        manifest[item.get("id") or ""] = (href, item.get("media-type") or "", item.get("properties") or "")
        if href not in names:
            problems.append(f"{opf_path}: the manifest lists {href}, which is not in the file")
    listed = {href for href, _, _ in manifest.values()}
    for name in sorted(names - listed - {"mimetype", opf_path}):
        if not name.startswith("META-INF/") and not name.endswith("/"):
            problems.append(f"{name} is in the file but not in the manifest")
    navs = [i for i, (_, _, props) in manifest.items() if "nav" in props.split()]
    if len(navs) != 1:
        problems.append(f"{opf_path}: expected one manifest item with properties=\"nav\", got {len(navs)}")
    spine = [ref.get("idref") for ref in opf.iterfind(f"{o}spine/{o}itemref")]
    if not spine:
        problems.append(f"{opf_path}: the spine is empty")
    for idref in spine:
        if idref not in manifest:
            problems.append(f"{opf_path}: the spine names {idref!r}, which is not in the manifest")
    for href, media, _ in manifest.values():
        if media == "application/xhtml+xml" and href in names:
            problems += _check_xhtml(book, href)
    return problems


def _check_xhtml(book: zipfile.ZipFile, name: str) -> list[str]:
    try:
        root = ElementTree.fromstring(book.read(name))
    except ElementTree.ParseError as err:
        return [f"{name} is not well-formed XHTML: {err}"]
    if root.tag != f"{{{_XHTML_NS}}}html":
        return [f"{name}: the root is not an XHTML html element"]
    if not root.get(_XML_LANG) or not root.get("lang"):
        return [f"{name}: the html element needs both xml:lang and lang"]
    if root.get(_XML_LANG) != root.get("lang"):
        return [f"{name}: xml:lang and lang differ"]
    return []
