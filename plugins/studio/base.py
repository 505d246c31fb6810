"""What the studio's job types share: their item fields, the ``chapters:``
expansion, prompts, settings, item ids and the base job type.

Items take the fields in ``schemas/story-item.schema.json`` (``chapter_num``,
``chapters``, ``genre``, ``language``, ``title``, ``prompt``, ``vars``). An
entry with ``chapters: 5-12`` (or ``1,3,5-7``, or a number) stands for one
item per chapter, ``{item_id or project_id}-ch{n}`` with that
``chapter_num``; :func:`expand_chapters` is that small language. An item
without its own ``language`` takes the job's, else its project's.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import jinja2

from storyloom import ConfigError, ErrorKind, ProviderError
from storyloom.job import Item, Job
from storyloom.jobtype import ItemSite, Result
from storyloom.plugins.support.templatefiles import render_template
from storyloom.provider import Request, Response
from storyloom.validation import schema

from . import book

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


# -------------------------------------------------------------------------
# Ids, settings, prompts
# -------------------------------------------------------------------------

def book_of(item: Item) -> str:
    """The book an item belongs to: its project_id, else its own id."""
    return item.project_id or item.item_id


def chapter_id(book: str, number: int, rewrite: int = 0) -> str:
    return f"{book}-ch{number}" + (f"-r{rewrite}" if rewrite else "")


def qc_id(book: str, number: int, rewrite: int = 0) -> str:
    return chapter_id(book, number, rewrite) + "-qc"


def export_id(book: str) -> str:
    return f"{book}-export"


def stage_names(job: Job) -> list[str]:
    """The job's stages in order (its own job type first)."""
    stages = getattr(job, "stages", None) or ()
    names = [getattr(stage, "job_type", None) for stage in stages]
    return [n for n in names if n] or [job.job_type]


def setting(job: Job, job_type: str, key: str, default: Any) -> Any:
    """A studio setting (``qc_threshold``, ``max_rewrites``...): the stage's
    ``config:`` for ``job_type``, else the job's ``vars:``, else ``default``."""
    for stage in getattr(job, "stages", None) or ():
        if getattr(stage, "job_type", None) != job_type:
            continue
        config = getattr(stage, "config", None)
        value = config.get(key) if isinstance(config, Mapping) else getattr(config, key, None)
        if value is not None:
            return value
    value = job.vars.get(key)
    return default if value is None else value


def language_of(item: Item, job: Job, project: Mapping[str, Any]) -> str:
    return str(item.fields.get("language") or project.get("language") or job.language or "en")


SYSTEM = {
    "th": "คุณเป็นนักเขียนนิยายมืออาชีพของสตูดิโอ เขียนเป็นภาษาไทย",
    "en": "You are a professional fiction writer for the studio. Write in English.",
}


def system_prompt(language: str) -> str:
    return SYSTEM.get(language.split("-")[0].lower(), SYSTEM["en"])


@dataclass(frozen=True)
class StudioJobType:
    """A studio job type: reads its book (``reads_project``), renders its
    prompt from a template, asks for a structured reply when it has a schema."""

    name: str
    max_parallel: int
    timeout_per_item: float
    max_tokens: int
    item_schema: Mapping[str, Any] = field(default_factory=lambda: ITEM_SCHEMA, compare=False, repr=False)
    #: Progress views label a running item project/chN.
    event_fields: tuple[str, ...] = ("chapter_num",)
    #: The kernel loads the item's project file and artifacts into ``item.context``.
    reads_project: bool = True

    #: The one-prompt form (:class:`.single.TemplateJobType`) for items without a project file.
    single: Any = field(default=None, compare=False, repr=False)

    def expand_item(self, item: Item, entry: Mapping[str, Any], where: ItemSite) -> list[tuple[Item, tuple]]:
        return expand_story_item(item, entry, where)

    def studio(self, item: Item) -> bool:
        """True when the item's book has a project file: the studio form; else the one-prompt form."""
        return self.single is None or bool(book.project_of(item.context))

    def build_request(self, item: Item, job: Job) -> Request:
        if not self.studio(item):
            return self.single.build_request(item, job)
        return self.studio_request(item, job)

    def handle_result(self, item: Item, job: Job, response: Response) -> Result:
        if not self.studio(item):
            return self.single.handle_result(item, job, response)
        return self.studio_result(item, job, response)

    def studio_request(self, item: Item, job: Job) -> Request:
        raise NotImplementedError

    def studio_result(self, item: Item, job: Job, response: Response) -> Result:
        raise NotImplementedError

    def request(self, item: Item, job: Job, language: str, prompt: str, *, schema: Mapping[str, Any] | None,
                schema_name: str, max_tokens: int | None = None, metadata: Mapping[str, Any] | None = None) -> Request:
        return Request(
            messages=({"role": "system", "content": system_prompt(language)}, {"role": "user", "content": prompt}),
            max_tokens=job.config.max_tokens or max_tokens or self.max_tokens,
            response_schema=schema, schema_name=schema_name, language=language, metadata=dict(metadata or {}),
        )


def templates_config(job: Job | None) -> Any:
    """What :func:`render_template` needs to find ``templates/`` beside the
    ``storyloom.yaml`` found walking up from the job file's folder (None: the bundle only)."""
    if job is None or not job.source:
        return None
    for folder in Path(job.source).resolve().parents:
        if (folder / "storyloom.yaml").is_file():
            return SimpleNamespace(settings=SimpleNamespace(path=str(folder / "storyloom.yaml")))
    return None


def render(template: str, language: str, values: Mapping[str, Any], job: Job | None = None) -> str:
    """Render a studio prompt template (``template`` is the job type's name)
    for ``language`` (:func:`storyloom.plugins.support.templatefiles.render_template`:
    a studio's own file of the same name wins over the bundled one). A
    template error is the item's INVALID_INPUT (the template is data: it
    cannot crash the batch)."""
    try:
        return render_template(template, language, dict(values), templates_config(job))
    except (jinja2.TemplateError, ConfigError) as exc:
        raise ProviderError(ErrorKind.INVALID_INPUT, f"prompt template {template} ({language}): {exc}") from None


def state_text(state: Mapping[str, str]) -> str:
    """The characters' state as the templates print it: one ``name: state`` line each."""
    return "\n".join(f"{name}: {value}" for name, value in state.items())


def base_values(item: Item, job: Job, project: Mapping[str, Any], language: str) -> dict[str, Any]:
    """What every studio template sees: the bible's fixed parts and the item's own fields."""
    return {
        "project": {**project, "title": project.get("title") or item.fields.get("title") or item.project_id},
        "genre": project.get("genre") or item.fields.get("genre"),
        "book_title": project.get("title") or item.fields.get("title"),
        "title": item.fields.get("title"), "prompt": item.fields.get("prompt"),
        "chapter_num": item.fields.get("chapter_num"), "language": language,
        "premise": project.get("premise") or "", "style": dict(project.get("style") or {}),
        "notes": project.get("notes") or "",
        **job.vars, **item.fields.get("vars", {}),
        "item_id": item.item_id, "project_id": item.project_id, "job_id": job.job_id, "job_type": job.job_type,
    }


def result(item: Item, text: str, response: Response | None, *, artifacts: tuple = (), follow_ups: tuple = (),
           data: Mapping[str, Any] | None = None, suffix: str = ".md") -> Result:
    info = {"model": getattr(response, "model", None), "finish_reason": getattr(response, "finish_reason", None),
            **(data or {})}
    return Result(text=text, file_name=f"{item.item_id}{suffix}", data=info, artifacts=tuple(artifacts),
                  follow_ups=tuple(follow_ups))
