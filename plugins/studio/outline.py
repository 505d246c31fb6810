"""``plot_outlining``: arcs and one beat per planned chapter, stored as the ``outline`` artifact;
then the book's chapters, their QC and its export join the queue.

Input: the project and the book's character sheets (the beat's ``characters``
must be among them: the reply schema makes them an ``enum``). Output: a
structured ``{arcs, beats}`` with exactly ``chapters`` beats (title, point of
view, characters present, events, ending hook) -> one ``outline`` artifact.

Its completion carries the follow-ups (committed with it, so a crash makes
none twice): one ``chapter_writing`` item per chapter, chapter N ``after``
chapter N-1 (books run in parallel, a book's chapters in order), each behind
the gate ``<project>:outline`` when the project asks for ``review: [outline]``;
and one ``export`` item after every chapter's QC item (which default chaining
creates when each chapter completes; a failed QC's rewrite takes its place).
"""

from __future__ import annotations

from dataclasses import dataclass

from storyloom.artifacts import Artifact
from storyloom.job import Item, Job
from storyloom.jobtype import Planned, Result
from storyloom.provider import Request, Response

from . import book, planning
from .base import (StudioJobType, base_values, book_of, chapter_id, export_id, language_of, qc_id, render, result,
                   setting, stage_names)
from .replies import data_of, invalid, need, outline_schema

#: A project without ``chapters`` and without a hand-written outline gets this many.
DEFAULT_CHAPTERS = 12


def gate_name(book_id: str) -> str:
    return f"{book_id}:outline"


@dataclass(frozen=True)
class PlotOutlining(StudioJobType):
    def planned_items(self, source: Item, job: Job) -> list[Planned]:
        """Before the run (dry run, budget check): what this stage sends for ``source``'s book
        (:func:`.planning.outline_items`)."""
        if not self.studio(source):
            return planning.single_planned(self, source, job)
        return planning.outline_items(self, source, job)

    def items_after(self, done: Item, result: Result, job: Job) -> list[Item]:
        """After the characters: the book's one outline item."""
        book_id = book_of(done)
        return [Item(item_id=f"{book_id}-outline", project_id=done.project_id,
                     fields={"source_item": done.item_id, **_carried(done)})]

    def studio_request(self, item: Item, job: Job) -> Request:
        project = book.project_of(item.context)
        language = language_of(item, job, project)
        count = _chapters(item)
        sheets = book.characters(item.context)
        written = book.outline(item.context)["beats"] if project.get("outline") else {}
        values = {**base_values(item, job, project, language), "characters": sheets, "chapters": count,
                  "outline": list(written.values())}
        prompt = render("plot_outlining", language, values, job)
        return self.request(item, job, language, prompt, schema=outline_schema(count, [s["name"] for s in sheets]),
                            schema_name="plot_outline")

    def studio_result(self, item: Item, job: Job, response: Response) -> Result:
        data = data_of(response, "outline")
        count = _chapters(item)
        raw = [b for b in need(data, "beats", list, "outline") if isinstance(b, dict)]
        if len(raw) != count:
            raise invalid(f"the outline has {len(raw)} beat(s); the book plans {count} chapter(s)")
        beats = [{"chapter": n, "title": str(b.get("title") or f"{n}"), "pov": str(b.get("pov") or ""),
                  "characters": [str(c) for c in b.get("characters") or ()], "events": str(b.get("events") or ""),
                  "hook": str(b.get("hook") or "")} for n, b in enumerate(raw, 1)]
        arcs = [{"name": str(a.get("name", "")), "summary": str(a.get("summary", ""))}
                for a in data.get("arcs") or () if isinstance(a, dict)]
        book_id = book_of(item)
        content = {"arcs": arcs, "beats": beats}
        text = "\n".join([*(f"- {a['name']}: {a['summary']}" for a in arcs), "",
                          *(f"{b['chapter']}. {b['title']}: {b['events']} ({b['hook']})" for b in beats)]) + "\n"
        return result(item, text, response, artifacts=(Artifact(book_id, "outline", "", content),),
                      follow_ups=tuple(book_items(item, job, count)), data={"beats": count})


def _chapters(item: Item) -> int:
    return book.planned_chapters(item.context) or DEFAULT_CHAPTERS


def _carried(item: Item) -> dict:
    """The item fields a book's later items keep (its language, genre, editor's notes)."""
    return {k: item.fields[k] for k in ("language", "genre", "vars") if k in item.fields}


def book_items(item: Item, job: Job, count: int) -> list[Item]:
    """The chapters, and the export waiting for all of them, for the stages the job has."""
    stages = stage_names(job)
    book_id = book_of(item)
    project = book.project_of(item.context)
    # A human gate on the outline, asked for by the project file or the job (``vars: {review: [outline]}``).
    review = [*(project.get("review") or ()), *(setting(job, "plot_outlining", "review", None) or ())]
    gate = gate_name(book_id) if "outline" in review else None
    out: list[Item] = []
    if "chapter_writing" in stages:
        for n in range(1, count + 1):
            out.append(Item(item_id=chapter_id(book_id, n), project_id=item.project_id,
                            fields={"chapter_num": n, **_carried(item)}, job_type="chapter_writing",
                            after=(chapter_id(book_id, n - 1),) if n > 1 else (), gate=gate))
    if "export" in stages:
        last = "qc_processing" if "qc_processing" in stages else "chapter_writing"
        wait = tuple(qc_id(book_id, n) if last == "qc_processing" else chapter_id(book_id, n)
                     for n in range(1, count + 1))
        out.append(Item(item_id=export_id(book_id), project_id=item.project_id, fields=_carried(item),
                        job_type="export", after=wait))
    return out
