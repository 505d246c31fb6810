"""``export``: the book as EPUB 3, Markdown and plain text, written by code, not a model.

Input: the book's newest chapter versions, the outline's chapter titles and
the project's title and language. Only chapters whose newest version passed
QC or was approved (``storyloom approve PROJECT_ID chapter N``) go in; if any
planned chapter is not, the export fails (``INVALID_INPUT``, not retried)
naming each blocking chapter and its state, and ``storyloom resume JOB_ID
--retry-failed`` runs it again after the approval.

Output: the Markdown as the item's result (``<project>.md``, rebuilt from the
store like every result); the EPUB (``<project>.epub``) and the text
(``<project>.txt``) are written by the plugin when the item completes, from
the book the result carries (:func:`storyloom.plugins.jobtypes.write_book`),
and rebuilt from it byte for byte (its export time is stored with it).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from storyloom import ErrorKind, ProviderError
from storyloom.job import Item, Job
from storyloom.jobtype import Planned, Result
from storyloom.provider import Request

from . import book, planning
from .base import StudioJobType, book_of, language_of


#: How the book's ``modified`` (its EPUB's ``dcterms:modified``) is stored in the result.
MODIFIED_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def identifier(book_id: str) -> str:
    """The same book keeps the same identifier across exports (a reader's library matches it)."""
    return f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, 'storyloom:book:' + book_id)}"


def book_contents(item: Item, job: Job) -> dict[str, Any]:
    """What goes into the book files; ProviderError naming the chapters that block it."""
    context = item.context
    book_id = book_of(item)
    project = book.project_of(context)
    rows = book.chapters(context)
    if not rows:
        raise ProviderError(ErrorKind.INVALID_INPUT, f"book {book_id!r} has no chapters to export "
                            "(no project file with chapters, no outline)")
    blocked = book.blocking(rows)
    if blocked:
        raise ProviderError(ErrorKind.INVALID_INPUT, f"export of {book_id!r} is blocked by chapter(s) "
                            f"{', '.join(blocked)}: only chapters that passed QC or were approved go in "
                            f"(`storyloom approve {book_id} chapter N`, then `storyloom resume {job.job_id} "
                            "--retry-failed`)")
    chapters = []
    for row in rows:
        artifact = book.chapter(context, row["chapter"])
        chapters.append([row["title"] or str(row["chapter"]), book.chapter_text(artifact)])
    return {"identifier": identifier(book_id), "title": project.get("title") or item.fields.get("title") or book_id,
            "language": language_of(item, job, project), "author": project.get("author"), "chapters": chapters,
            "versions": {str(r["chapter"]): r["version"] for r in rows},
            # stored with the result, so a rebuild of the EPUB is byte for byte the one written
            "modified": datetime.now(timezone.utc).strftime(MODIFIED_FORMAT)}


def markdown(contents: dict[str, Any]) -> str:
    parts = [f"# {contents['title']}", ""]
    for number, (title, text) in enumerate(contents["chapters"], 1):
        parts += [f"## {number}. {title}", "", text.strip(), ""]
    return "\n".join(parts)


def plain_text(contents: dict[str, Any]) -> str:
    parts = [contents["title"], "", ""]
    for number, (title, text) in enumerate(contents["chapters"], 1):
        parts += [f"{number}. {title}", "", text.strip(), "", ""]
    return "\n".join(parts).rstrip() + "\n"


@dataclass(frozen=True)
class Export(StudioJobType):
    def planned_items(self, source: Item, job: Job) -> list[Planned]:
        """Before the run (dry run, budget check): what this stage sends for ``source``'s book
        (:func:`.planning.export_items`)."""
        if not self.studio(source):
            return planning.single_planned(self, source, job)
        return planning.export_items(self, source, job)

    def items_after(self, done: Item, result: Result, job: Job) -> list[Item]:
        return []  # the outline's completion makes the one export item per book

    def studio_request(self, item: Item, job: Job) -> Request:
        raise ProviderError(ErrorKind.INVALID_INPUT, "export is done in code: it sends no request")

    def perform(self, item: Item, job: Job) -> Result | None:
        """The export, in code (the kernel calls it instead of a provider); None
        for an item without a project file, which asks a model as before."""
        if not self.studio(item):
            return None
        contents = book_contents(item, job)
        return Result(text=markdown(contents), file_name=f"{book_of(item)}.md",
                      data={"book": contents, "chapters": len(contents["chapters"])})
