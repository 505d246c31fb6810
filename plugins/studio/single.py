"""The one-prompt form of the story job types, for items without a book project.

An item whose ``project_id`` names no project file (``projects/<id>.yaml``)
is run as before issue 10: one Jinja2 template over the item's fields and the
job's ``vars``, a plain-text reply as its result. With a project file the
studio job types take over (:mod:`storyloom.plugins.studio`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import jinja2

from storyloom import ErrorKind, ProviderError
from storyloom.job import Item, Job
from storyloom.jobtype import ItemSite, Result
from storyloom.plugins.support.templates import PromptSandbox
from storyloom.provider import Request, Response

from .base import ITEM_SCHEMA, SYSTEM, expand_story_item

# The bundled templates are ours, but what they render (titles, notes, vars) is
# data from job files: the sandbox keeps it so, like every prompt template.
# StrictUndefined (a missing field is a bug to see) and no autoescape come with it.
_env = PromptSandbox(
    loader=jinja2.PackageLoader("storyloom.plugins", "templates"),
    auto_reload=False,  # bundled templates never change under a run; skips a stat() per render
)

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


