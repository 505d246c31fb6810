"""What a book's later stages will send, before anything runs (``--dry-run``
and the up-front budget check, :mod:`storyloom.planning`).

Each stage's job type answers ``planned_items(source, job)`` for a book's
first item: the outline (1), each chapter (1, plus up to ``max_rewrites``
rewrites when the job has QC), each version's QC, the export (in code: no
request). Their requests are the real ones (the same templates and
schemas), built over a stand-in book (:func:`stand_in`): the project file as
written, and where the pipeline would have generated something (sheets, an
outline, chapters, summaries, state) text of the planned size, so the
prompt estimates track ``chapter_length`` and ``chapters``.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

from storyloom.artifacts import Artifact, ProjectContext
from storyloom.job import Item, Job
from storyloom.jobtype import Planned, Result

from . import book
from .base import book_of, chapter_id, export_id, language_of, qc_id, setting, stage_names

#: Sheets a generated cast is planned with (character_generation asks for at least 3).
STAND_IN_CAST = 4
#: A summary is planned at this share of the chapter's length; a rewrite's feedback at this many lines.
SUMMARY_SHARE = 0.1
FEEDBACK_LINES = 6
_FILLER = {
    "th": "ลมทะเลพัดผ่านหมู่บ้านเงียบ ๆ ขณะที่เธอเดินกลับบ้านพร้อมความลับที่ยังไม่มีใครรู้ ",
    "en": "The wind off the sea crossed the quiet village as she walked home with a secret nobody knew yet. ",
}


@functools.lru_cache(maxsize=64)
def filler(language: str, length: int) -> str:
    """Stand-in prose of ``length`` units: characters for Thai, words otherwise."""
    thai = language.startswith("th")
    sentence = _FILLER["th" if thai else "en"]
    if thai:
        return (sentence * (length // len(sentence) + 1))[:max(1, length)]
    words = sentence.split()
    return " ".join(words[i % len(words)] for i in range(max(1, length)))


def stand_in(source: Item, job: Job) -> ProjectContext:
    """``source``'s book as the later stages would find it, generated parts stood in for."""
    project = book.project_of(source.context)
    language = language_of(source, job, project)
    book_id = book_of(source)
    length = project.get("chapter_length") if isinstance(project.get("chapter_length"), int) else 1000
    short = max(1, int(length * SUMMARY_SHARE))
    artifacts = []
    context = ProjectContext(project, [])
    if not book.characters_written_by_hand(context):
        sheets = [{"name": f"Character {n}", "role": filler(language, 4), "goals": filler(language, 12),
                   "traits": [filler(language, 2)] * 3, "voice": filler(language, 8),
                   "relationships": [{"name": f"Character {n % STAND_IN_CAST + 1}", "relation": filler(language, 3)}],
                   "arc": filler(language, 12)} for n in range(1, STAND_IN_CAST + 1)]
        artifacts.append(Artifact(book_id, "characters", "", {"characters": sheets}, version=1))
    names = [s["name"] for s in book.characters(ProjectContext(project, artifacts))]
    count = planned_count(ProjectContext(project, artifacts))
    if not project.get("outline"):
        beats = [{"chapter": n, "title": filler(language, 4), "pov": names[0] if names else "",
                  "characters": names[:2], "events": filler(language, 40), "hook": filler(language, 12)}
                 for n in range(1, count + 1)]
        artifacts.append(Artifact(book_id, "outline", "", {"arcs": [{"name": filler(language, 3),
                                                                     "summary": filler(language, 30)}],
                                                           "beats": beats}, version=1))
    for n in range(1, count + 1):
        artifacts += [
            Artifact(book_id, "chapter", str(n), {"title": filler(language, 4), "text": filler(language, length),
                                                  "rewrite": 0}, version=1, item_id=chapter_id(book_id, n)),
            Artifact(book_id, "summary", str(n), filler(language, short), version=1),
            Artifact(book_id, "character_state", str(n), {name: filler(language, 15) for name in names}, version=1),
        ]
    return ProjectContext(project, artifacts)


def planned_count(context: ProjectContext) -> int:
    from .outline import DEFAULT_CHAPTERS  # here: outline imports this module's users

    return book.planned_chapters(context) or DEFAULT_CHAPTERS


def rewrites(job: Job) -> int:
    """How many rewrites a chapter may take: ``max_rewrites`` when the job has QC, else none."""
    if "qc_processing" not in stage_names(job):
        return 0
    from .qc import DEFAULT_MAX_REWRITES

    return int(setting(job, "qc_processing", "max_rewrites", DEFAULT_MAX_REWRITES))


def feedback(language: str) -> list[str]:
    return [filler(language, 20) for _ in range(FEEDBACK_LINES)]


def with_book(item: Item, context: ProjectContext) -> Item:
    return dataclasses.replace(item, context=context)


def carried(source: Item) -> dict[str, Any]:
    return {k: source.fields[k] for k in ("language", "genre", "vars") if k in source.fields}


def single_planned(job_type: Any, source: Item, job: Job) -> list[Planned]:
    """A source without a project file (the one-prompt form): the items this
    stage chains to it (``items_after``, as the run would) when it is the
    stage right after the source's; a stage further on is not planned (it
    is chained from items that do not exist yet)."""
    stages = stage_names(job)
    if len(stages) < 2 or stages[1] != job_type.name:
        return []
    made = job_type.items_after(source, Result(text="", file_name=""), job)
    return [Planned(item.item_id, job_type.single.build_request(item, job)) for item in made]


def outline_items(job_type: Any, source: Item, job: Job) -> list[Planned]:
    context = stand_in(source, job)
    item = Item(item_id=f"{book_of(source)}-outline", project_id=source.project_id, fields=carried(source),
                job_type=job_type.name, context=context)
    return [Planned(item.item_id, job_type.studio_request(item, job))]


def _alike(book_id: str, count: int, make: Any) -> list[tuple[int, int, str]]:
    """``(chapter, how many it stands for, row name)``: chapter 1 (no previous
    chapter), and chapter 2 for chapters 2..N, whose stand-in requests are
    the same size (one render instead of N-1: the plan is made on every
    run with a budget)."""
    rows = [(1, 1, make(book_id, 1))] if count >= 1 else []
    if count >= 2:
        rows.append((2, count - 1, make(book_id, 2) + (f"..{count}" if count > 2 else "")))
    return rows


def chapter_items(job_type: Any, source: Item, job: Job) -> list[Planned]:
    context = stand_in(source, job)
    book_id, language = book_of(source), language_of(source, job, book.project_of(context))
    most = rewrites(job)
    out = []
    for n, alike, name in _alike(book_id, planned_count(context), chapter_id):
        first = Item(item_id=chapter_id(book_id, n), project_id=source.project_id, job_type=job_type.name,
                     fields={"chapter_num": n, **carried(source)}, context=context)
        out.append(Planned(name, job_type.studio_request(first, job), expected=alike, worst=alike))
        if most:
            again = dataclasses.replace(first, item_id=chapter_id(book_id, n, 1),
                                        fields={**first.fields, "rewrite": 1, "feedback": feedback(language)})
            out.append(Planned(f"{name}-r1", job_type.studio_request(again, job), expected=0, worst=most * alike))
    return out


def qc_items(job_type: Any, source: Item, job: Job) -> list[Planned]:
    context = stand_in(source, job)
    book_id = book_of(source)
    most = rewrites(job)
    out = []
    for n, alike, name in _alike(book_id, planned_count(context), chapter_id):
        item = Item(item_id=qc_id(book_id, n), project_id=source.project_id, job_type=job_type.name,
                    fields={"chapter_num": n, "source_item": chapter_id(book_id, n), "rewrite": 0,
                            **carried(source)}, context=context)
        # Each version's QC reads a chapter of the same planned length: one request stands for all.
        out.append(Planned(f"{name}-qc", job_type.studio_request(item, job), expected=alike,
                           worst=(1 + most) * alike))
    return out


def export_items(job_type: Any, source: Item, job: Job) -> list[Planned]:
    return [Planned(export_id(book_of(source)), None)]
