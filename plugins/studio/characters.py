"""``character_generation``: the book's character sheets, stored as its ``characters`` artifact.

Input: the project (title, genre, premise, style, notes; sheets written by
hand, which the request passes on so the model keeps them). Output: a
structured list of sheets (name, role, goals, traits, voice, relationships,
arc) -> one ``characters`` artifact. Sheets written in the project file still
win when later stages read the book (:func:`.book.characters`).
"""

from __future__ import annotations

from dataclasses import dataclass

from storyloom.artifacts import Artifact
from storyloom.job import Item, Job
from storyloom.jobtype import Result
from storyloom.provider import Request, Response

from . import book
from .base import StudioJobType, base_values, book_of, language_of, render, result
from .replies import characters_schema, data_of, invalid, need


#: At least this many sheets when the project names none.
MIN_CHARACTERS = 3


@dataclass(frozen=True)
class CharacterGeneration(StudioJobType):
    def studio_request(self, item: Item, job: Job) -> Request:
        project = book.project_of(item.context)
        language = language_of(item, job, project)
        written = book.characters(item.context) if book.characters_written_by_hand(item.context) else []
        values = {**base_values(item, job, project, language), "characters": written}
        prompt = render("character_generation", language, values, job)
        return self.request(item, job, language, prompt, schema=characters_schema(max(1, len(written) or MIN_CHARACTERS)),
                            schema_name="character_sheets")

    def studio_result(self, item: Item, job: Job, response: Response) -> Result:
        data = data_of(response, "character sheets")
        sheets = [book.sheet(c) for c in need(data, "characters", list, "character sheets") if isinstance(c, dict)]
        sheets = [s for s in sheets if s["name"].strip()]
        if not sheets:
            raise invalid("the character sheets reply names no character")
        names = [s["name"] for s in sheets]
        if len(set(n.casefold() for n in names)) != len(names):
            raise invalid(f"the character sheets reply names a character twice: {', '.join(names)}")
        content = {"characters": sheets}
        text = "\n\n".join(_sheet_text(s) for s in sheets) + "\n"
        # Not <item_id>.md: the first item of a book is often named like the book, whose Markdown that is.
        return result(item, text, response, artifacts=(Artifact(book_of(item), "characters", "", content),),
                      data={"characters": len(sheets)}, suffix=".characters.md")


def _sheet_text(sheet: dict) -> str:
    lines = [f"## {sheet['name']}", ""]
    for key in ("role", "goals", "voice", "arc"):
        if sheet[key]:
            lines.append(f"- {key}: {sheet[key]}")
    if sheet["traits"]:
        lines.append(f"- traits: {', '.join(sheet['traits'])}")
    for other, relation in sheet["relationships"].items():
        lines.append(f"- {other}: {relation}")
    return "\n".join(lines)
