"""The studio's five job types: character_generation, plot_outlining,
chapter_writing, qc_processing and export (:mod:`storyloom.plugins.studio`).

An item whose book has a project file (``projects/<project_id>.yaml``) runs
in the studio form: it reads the book (``reads_project``), asks for a
structured reply, stores artifacts and makes the pipeline's next items
(docs/studio.md). Without a project file an item runs in the one-prompt form
it had before (:mod:`storyloom.plugins.studio.single`).

Defaults (used unless ``batch_limits`` or the job say otherwise) are the
seed's; plot_outlining is ours: outlines are mid-weight (one call per story,
longer than a character sheet, far shorter than a chapter), so 8 in parallel
with 180 s each.

When an export item completes, this plugin writes the book's EPUB 3
(``<project>.epub``) and plain text (``<project>.txt``) beside its Markdown
result, atomically, from the book the result carries; ``storyloom outputs
--rebuild`` makes them again, byte for byte, from the same stored result.
"""

from __future__ import annotations

from datetime import datetime, timezone

from storyloom import UsageError, hookimpl
from storyloom.artifacts import ProjectContext
from storyloom.outputs import Output, job_folder, write_output
from storyloom.plugins.studio.base import (CHAPTERS_PATTERN, ITEM_SCHEMA, MAX_CHAPTERS, expand_chapters,  # noqa: F401
                                           expand_story_item)
from storyloom.plugins.studio import book
from storyloom.plugins.studio.chapters import ChapterWriting
from storyloom.plugins.studio.characters import CharacterGeneration
from storyloom.plugins.studio.export import MODIFIED_FORMAT, Export, plain_text
from storyloom.plugins.studio.outline import PlotOutlining, gate_name
from storyloom.plugins.studio.qc import QualityCheck, review_gate
from storyloom.plugins.studio.single import TemplateJobType

JOB_TYPES = (
    CharacterGeneration("character_generation", 10, 120.0, 3000,
                        single=TemplateJobType("character_generation", 10, 120.0, 1500, "character_generation.j2")),
    PlotOutlining("plot_outlining", 8, 180.0, 6000,
                  single=TemplateJobType("plot_outlining", 8, 180.0, 3000, "plot_outlining.j2")),
    ChapterWriting("chapter_writing", 5, 300.0, 8000,
                   single=TemplateJobType("chapter_writing", 5, 300.0, 8000, "chapter_writing.j2")),
    QualityCheck("qc_processing", 20, 60.0, 1500,
                 single=TemplateJobType("qc_processing", 20, 60.0, 1000, "qc_processing.j2")),
    Export("export", 10, 180.0, 2000, single=TemplateJobType("export", 10, 180.0, 2000, "export.j2")),
)


@hookimpl
def loom_register_job_types(register):
    for job_type in JOB_TYPES:
        register(job_type)


class BookWriter:
    """Writes an export's EPUB and text once its completion is stored."""

    def __init__(self, config) -> None:
        self.config = config

    @hookimpl
    def loom_item_finished(self, job, item, outcome):
        result = outcome.result
        if outcome.state != "completed" or result is None or not isinstance(result.data, dict):
            return
        contents = result.data.get("book")
        if (item.job_type or job.job_type) != "export" or not isinstance(contents, dict):
            return
        write_book(self.config, job.job_id, result.file_name.removesuffix(".md"), contents)

    @hookimpl
    def loom_job_outputs(self, job, store):
        """Each exported book's text and EPUB, from the book its stored result
        carries (the Markdown is the result file itself), byte for byte what
        the export wrote."""
        if "export" not in job.stage_types:
            return None

        async def books() -> list[Output]:
            found = []
            for row in await store.items(job.job_id, "completed"):
                stored = await store.result(job.job_id, row.item_id)
                data = stored[1] if stored else None
                if isinstance(data, dict) and isinstance(data.get("book"), dict) and data.get("file_name"):
                    found += book_files(data["file_name"].removesuffix(".md"), data["book"])
            return found

        return books


def book_files(stem: str, contents: dict) -> list[Output]:
    """The book's text and EPUB, as the export writes them and a rebuild makes them again."""
    from storyloom.plugins.support.epub import epub_bytes  # here: the EPUB writer is only needed by an export

    epub = epub_bytes(identifier=contents["identifier"], title=contents["title"], language=contents["language"],
                      chapters=[tuple(c) for c in contents["chapters"]], author=contents.get("author"),
                      modified=modified_of(contents))
    return [Output(f"{stem}.txt", plain_text(contents)), Output(f"{stem}.epub", epub)]


def modified_of(contents: dict) -> datetime:
    """The book's ``dcterms:modified``: when it was exported (a book exported
    before that was stored gets the zip entries' fixed 1980 date, so that its
    rebuilds agree with each other)."""
    when = contents.get("modified")
    if isinstance(when, str):
        try:
            return datetime.strptime(when, MODIFIED_FORMAT).replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return datetime(1980, 1, 1, tzinfo=timezone.utc)


def write_book(config, job_id: str, stem: str, contents: dict) -> None:
    folder = job_folder(config, job_id)
    for output in book_files(stem, contents):
        write_output(config, job_id, folder / output.name, output.text)  # a full disk: recorded, exit 6


@hookimpl
def loom_project_view(project_id, project, artifacts, gates):
    if project is None and not artifacts:
        return None  # not a book we know
    context = ProjectContext(project, list(artifacts))
    opened = [gate.name for gate in gates if gate.opened_at is not None]
    view = book.book_view(context, project_id, opened)
    view["text"] = book.view_text(view)
    return view


@hookimpl
def loom_approve(project_id, target, store, config):
    what = tuple(target)
    if what == ("outline",):
        async def outline() -> str:
            released = await store.open_gate(gate_name(project_id))
            return (f"approved the outline of {project_id}: {released} chapter item(s) released"
                    + ("; `storyloom resume JOB_ID` (or a worker) writes them" if released else ""))
        return outline
    if len(what) == 2 and what[0] == "chapter":
        if not what[1].isdigit():
            raise UsageError(f"approve {project_id} chapter N: N is a chapter number, got {what[1]!r}")
        number = int(what[1])

        async def chapter() -> str:
            context = ProjectContext(config.project(project_id), await store.artifacts(project_id))
            row = book.chapter_row(context, number)
            if row["state"] != book.NEEDS_REVIEW:
                raise UsageError(f"chapter {number} of {project_id} is {row['state']}: only a chapter that needs "
                                 "review (failed QC after its rewrites) can be approved")
            await store.open_gate(review_gate(project_id, number))
            return (f"approved chapter {number} of {project_id} (version {row['version']}); "
                    "`storyloom resume JOB_ID` (or a worker) goes on to the export")
        return chapter
    raise UsageError(f"approve what? `storyloom approve {project_id} outline` or "
                     f"`storyloom approve {project_id} chapter N`; got {' '.join(what)!r}")


@hookimpl
def loom_configure(config):
    config.register_plugin(BookWriter(config), name="jobtypes-books")
