"""The seed's five story job types, each a Jinja2 prompt template over an item's fields.

Their items take the fields in ``schemas/story-item.schema.json``
(``chapter_num``, ``chapters``, ``genre``, ``language``, ``title``,
``prompt``, ``vars``). The schema is a JSON file rather than a dict here so
that it is a contract like the job and settings schemas beside it: editors
can validate job files with it, it carries the same ``description`` and
``x-message`` conventions, and the schema tests check it with the others.

An entry with ``chapters: 5-12`` (or ``1,3,5-7``, or a number) stands for one
item per chapter, ``{item_id or project_id}-ch{n}`` with that ``chapter_num``;
:func:`expand_chapters` is that small language. An item without its own
``language`` takes the job's.

Defaults (used unless ``batch_limits`` or the job say otherwise) are the
seed's; plot_outlining is ours: outlines are mid-weight (one call per story,
longer than a character sheet, far shorter than a chapter), so 8 in parallel
with 180 s each.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jinja2

from storyloom import ErrorKind, ProviderError, hookimpl
from storyloom.job import Item, Job
from storyloom.jobtype import ItemSite, Result
from storyloom.plugins.support.templates import PromptSandbox
from storyloom.provider import Request, Response
from storyloom.validation import schema

#: The item fields these job types take (package data: storyloom.schemas).
ITEM_SCHEMA = schema("story-item.schema.json")

#: ``"5-12"``, ``"1,3,5-7"``; spaces allowed around ``,`` and ``-``.
CHAPTERS_PATTERN = r"^\s*\d+(?:\s*-\s*\d+)?(?:\s*,\s*\d+(?:\s*-\s*\d+)?)*\s*$"
_PART_RE = re.compile(r"\s*(\d+)\s*(?:-\s*(\d+)\s*)?")

#: One ``chapters:`` entry expands to at most this many items.
MAX_CHAPTERS = 10_000
_MAX_DIGITS = 9  # beyond this int() itself may refuse, and no serial is that long



def expand_chapters(spec: int | str) -> list[int]:
    """The chapter numbers ``spec`` names, in the order written.

    ``spec`` is one chapter (``7``) or a string of numbers and inclusive ranges
    (``"5-12"``, ``"1,3,5-7"``).

    :raises ValueError: with a message for the user: malformed, empty,
        reversed (``"12-5"``), a chapter listed twice, or more than
        :data:`MAX_CHAPTERS` chapters.
    """
    if isinstance(spec, bool) or not isinstance(spec, (int, str)):
        raise ValueError(f"expected a chapter number or a range like '5-12' or '1,3,5-7'; got {spec!r}")
    if isinstance(spec, int):
        if spec < 0:
            raise ValueError(f"chapter numbers start at 0; got {spec}")
        return [spec]
    if not spec.strip():
        raise ValueError("empty chapter range; write it like '5-12' or '1,3,5-7'")
    chapters: list[int] = []
    seen: set[int] = set()
    for part in spec.split(","):
        low, high = _range_part(part)
        if len(chapters) + (high - low + 1) > MAX_CHAPTERS:
            raise ValueError(f"chapter range {spec!r} has more than {MAX_CHAPTERS:,} chapters")
        for number in range(low, high + 1):
            if number in seen:
                raise ValueError(f"chapter {number} is listed twice in {spec!r}")
            seen.add(number)
            chapters.append(number)
    return chapters


def _range_part(part: str) -> tuple[int, int]:
    match = _PART_RE.fullmatch(part)
    if match is None:
        raise ValueError(f"bad chapter range part {part.strip()!r}; write it like '5-12' or '1,3,5-7'")
    if any(len(digits) > _MAX_DIGITS for digits in match.groups() if digits):
        raise ValueError(f"chapter number in {part.strip()!r} is too large")
    low = int(match[1])
    high = int(match[2]) if match[2] is not None else low
    if high < low:
        raise ValueError(f"reversed chapter range '{low}-{high}'; did you mean '{high}-{low}'?")
    return low, high


def expand_story_item(item: Item, entry: Mapping[str, Any], where: ItemSite) -> list[tuple[Item, tuple]]:
    """One item, or one per chapter for an entry with ``chapters``."""
    fields = dict(item.fields)
    if "language" not in fields and "language" in where.job:
        fields["language"] = where.job["language"]
    if "chapter_num" in fields:
        fields["chapter_num"] = int(fields["chapter_num"])  # the schema's "integer" also admits 5.0
    spec = fields.pop("chapters", None)
    if spec is None:
        return [(replace(item, fields=fields), ("item_id",))]
    try:
        numbers = expand_chapters(spec)
    except ValueError as err:
        raise where.error(("chapters",), str(err)) from None
    prefix = item.item_id or item.project_id
    # The ids differ only in their number, so the longest one stands for all
    # (the kernel checks each id again as it collects them).
    where.check_id(f"{prefix}-ch{max(numbers, key=lambda n: len(str(n)))}", ("chapters",),
                   what="the expanded item_id: ")
    out = []
    for number in numbers:
        item_id = f"{prefix}-ch{number}"
        out.append((replace(item, item_id=item_id, fields={**fields, "chapter_num": number}), ("chapters",)))
    return out

# The bundled templates are ours, but what they render (titles, notes, vars) is
# data from job files: the sandbox keeps it so, like every prompt template.
# StrictUndefined (a missing field is a bug to see) and no autoescape come with it.
_env = PromptSandbox(
    loader=jinja2.PackageLoader("storyloom.plugins", "templates"),
    auto_reload=False,  # bundled templates never change under a run; skips a stat() per render
)

SYSTEM = {
    "th": "คุณเป็นนักเขียนนิยายมืออาชีพของสตูดิโอ เขียนเป็นภาษาไทย",
    "en": "You are a professional fiction writer for the studio. Write in English.",
}


@dataclass(frozen=True)
class TemplateJobType:
    name: str
    max_parallel: int
    timeout_per_item: float
    max_tokens: int
    template: str
    item_schema: Mapping[str, Any] = field(default_factory=lambda: ITEM_SCHEMA, compare=False, repr=False)
    #: Progress views label a running item project/chN.
    event_fields: tuple[str, ...] = ("chapter_num",)

    def expand_item(self, item: Item, entry: Mapping[str, Any], where: ItemSite) -> list[tuple[Item, tuple]]:
        return expand_story_item(item, entry, where)

    def build_request(self, item: Item, job: Job) -> Request:
        language = item.fields.get("language") or job.language or "en"
        values = {
            "genre": None, "title": None, "prompt": None, "chapter_num": None, "language": language,
            **job.vars, **item.fields.get("vars", {}), **item.as_template_vars(),
            "job_id": job.job_id, "job_type": job.job_type,
        }
        try:
            prompt = _env.get_template(self.template).render(values)
        except jinja2.TemplateError as exc:
            raise ProviderError(ErrorKind.INVALID_INPUT, f"prompt template {self.template}: {exc}") from None
        return Request(
            messages=({"role": "system", "content": SYSTEM.get(language, SYSTEM["en"])},
                      {"role": "user", "content": prompt}),
            max_tokens=job.config.max_tokens or self.max_tokens,
        )

    def handle_result(self, item: Item, job: Job, response: Response) -> Result:
        if not response.text.strip():
            raise ProviderError(ErrorKind.TEMPORARY_ERROR, "the model returned an empty reply")
        return Result(text=response.text, file_name=f"{item.item_id}.md",
                      data={"model": response.model, "finish_reason": response.finish_reason})


JOB_TYPES = (
    TemplateJobType("character_generation", 10, 120.0, 1500, "character_generation.j2"),
    TemplateJobType("plot_outlining", 8, 180.0, 3000, "plot_outlining.j2"),
    TemplateJobType("chapter_writing", 5, 300.0, 8000, "chapter_writing.j2"),
    TemplateJobType("qc_processing", 20, 60.0, 1000, "qc_processing.j2"),
    TemplateJobType("export", 10, 180.0, 2000, "export.j2"),
)


@hookimpl
def loom_register_job_types(register):
    for job_type in JOB_TYPES:
        register(job_type)
