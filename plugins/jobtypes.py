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
result, atomically, from the book the result carries.
"""

from __future__ import annotations

from storyloom import hookimpl
from storyloom.outputs import job_folder, record_problem, write_output
from storyloom.plugins.studio.base import (CHAPTERS_PATTERN, ITEM_SCHEMA, MAX_CHAPTERS, expand_chapters,  # noqa: F401
                                           expand_story_item)
from storyloom.plugins.studio.chapters import ChapterWriting
from storyloom.plugins.studio.characters import CharacterGeneration
from storyloom.plugins.studio.export import Export, plain_text
from storyloom.plugins.studio.outline import PlotOutlining
from storyloom.plugins.studio.qc import QualityCheck
from storyloom.plugins.studio.single import TemplateJobType
from storyloom.plugins.support.epub import write_epub

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


def write_book(config, job_id: str, stem: str, contents: dict) -> None:
    folder = job_folder(config, job_id)
    write_output(config, job_id, folder / f"{stem}.txt", plain_text(contents))
    try:
        folder.mkdir(parents=True, exist_ok=True)
        write_epub(folder / f"{stem}.epub", identifier=contents["identifier"], title=contents["title"],
                   language=contents["language"], chapters=[tuple(c) for c in contents["chapters"]],
                   author=contents.get("author"))
    except OSError as exc:  # a full disk: the store has the book; the run says so
        record_problem(config, job_id, folder / f"{stem}.epub", exc)


@hookimpl
def loom_configure(config):
    config.register_plugin(BookWriter(config), name="jobtypes-books")
