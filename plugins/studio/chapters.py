"""``chapter_writing``: one chapter, with its summary and the characters' state after it.

Input (all read from the book, :mod:`.book`): the premise, the style guide,
the sheets of the characters the beat names, this chapter's beat, the
previous chapter's summary and last paragraphs, the characters' current
state, the target length; for a rewrite (``rewrite: k`` with ``feedback``)
also the version being rewritten and the QC findings. Output: a structured
``{title, text, summary, character_state: [{name, state}]}`` -> artifacts
``chapter``, ``summary`` and ``character_state`` (the previous state updated),
each keyed by the chapter number; every version is kept.

Chapter N waits for chapter N-1 (``after``, set by :mod:`.outline`), so its
request always finds N-1's summary. QC items follow by default chaining
(:meth:`storyloom.plugins.studio.qc.QualityCheck.items_after`).
"""

from __future__ import annotations

from dataclasses import dataclass

from storyloom import ErrorKind, ProviderError
from storyloom.artifacts import Artifact
from storyloom.job import Item, Job
from storyloom.jobtype import Planned, Result
from storyloom.provider import Request, Response

from . import book, planning
from .base import StudioJobType, base_values, book_of, language_of, render, result, state_text
from .replies import chapter_schema, data_of, invalid, need

#: Output room per unit of chapter_length: Thai characters are about one
#: token each, English words about 1.4; twice that for the summary and state.
TOKENS_PER_UNIT = {"th": 2.0, "en": 3.0}


def chapter_number(item: Item) -> int:
    number = item.fields.get("chapter_num")
    if not isinstance(number, int) or isinstance(number, bool):
        raise ProviderError(ErrorKind.INVALID_INPUT, f"item {item.item_id!r} has no chapter_num: "
                            "chapter_writing needs to know which chapter it writes")
    return number


@dataclass(frozen=True)
class ChapterWriting(StudioJobType):
    def planned_items(self, source: Item, job: Job) -> list[Planned]:
        """Before the run (dry run, budget check): what this stage sends for ``source``'s book
        (:func:`.planning.chapter_items`)."""
        if not self.studio(source):
            return planning.single_planned(self, source, job)
        return planning.chapter_items(self, source, job)

    def items_after(self, done: Item, result: Result, job: Job) -> list[Item]:
        return []  # the outline's completion makes the chapters (plot_outlining.book_items)

    def values(self, item: Item, job: Job) -> dict:
        """What the chapter's prompt carries (also what tests and docs name)."""
        context = item.context
        project = book.project_of(context)
        language = language_of(item, job, project)
        number = chapter_number(item)
        beat = book.outline(context)["beats"].get(number)
        previous = book.chapter(context, number - 1) if number > 1 else None
        summary = book.latest(context, "summary", str(number - 1)) if number > 1 else None
        rewrite = int(item.fields.get("rewrite") or 0)
        rewritten = ""
        if rewrite:
            source = book.chapter(context, number)
            rewritten = book.chapter_text(source)
        return {
            **base_values(item, job, project, language),
            "chapter_num": number, "chapters": book.planned_chapters(context),
            "chapter_length": project.get("chapter_length"),
            "length_unit": "characters" if language.startswith("th") else "words",
            "beat": beat or {},
            "characters": book.present(context, beat),
            "previous_summary": str(summary.content) if summary is not None else "",
            "last_paragraphs": book.last_paragraphs(book.chapter_text(previous)),
            "character_state": state_text(book.character_state(context, number)),
            "rewrite": rewrite, "feedback": list(item.fields.get("feedback") or ()),
            "rewritten_text": rewritten,
        }

    def studio_request(self, item: Item, job: Job) -> Request:
        values = self.values(item, job)
        language = values["language"]
        names = [s["name"] for s in book.characters(item.context)]
        length = values["chapter_length"]
        room = None
        if isinstance(length, int):
            room = int(length * TOKENS_PER_UNIT["th" if language.startswith("th") else "en"]) + 1000
        return self.request(item, job, language, render("chapter_writing", language, values, job),
                            schema=chapter_schema(names), schema_name="chapter", max_tokens=room,
                            # How long the simulated provider writes (a real model reads it in the prompt).
                            metadata={"target_length": length} if isinstance(length, int) else None)

    def studio_result(self, item: Item, job: Job, response: Response) -> Result:
        data = data_of(response, "chapter")
        number = chapter_number(item)
        text = need(data, "text", str, "chapter").strip()
        if not text:
            raise invalid("the chapter reply's text is empty")
        summary = need(data, "summary", str, "chapter").strip()
        if not summary:
            raise invalid("the chapter reply's summary is empty")
        title = str(data.get("title") or "").strip()
        beat = book.outline(item.context)["beats"].get(number) or {}
        title = beat.get("title") or title or str(number)
        state = book.character_state(item.context, number)
        for update in data.get("character_state") or ():
            if isinstance(update, dict) and str(update.get("name", "")).strip():
                state[str(update["name"])] = str(update.get("state", ""))
        book_id, key = book_of(item), str(number)
        rewrite = int(item.fields.get("rewrite") or 0)
        artifacts = (
            Artifact(book_id, "chapter", key, {"title": title, "text": text, "rewrite": rewrite}),
            Artifact(book_id, "summary", key, summary),
            Artifact(book_id, "character_state", key, state),
        )
        return result(item, f"# {title}\n\n{text}\n", response, artifacts=artifacts,
                      data={"chapter_num": number, "rewrite": rewrite})
