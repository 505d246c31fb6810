"""The seed's five job types, each a Jinja2 prompt template over an item's fields.

Defaults (used unless ``batch_limits`` or the job say otherwise) are the
seed's; plot_outlining is ours: outlines are mid-weight (one call per story,
longer than a character sheet, far shorter than a chapter), so 8 in parallel
with 180 s each.
"""

from __future__ import annotations

from dataclasses import dataclass

import jinja2

from storyloom import ErrorKind, ProviderError, hookimpl
from storyloom.job import Item, Job
from storyloom.jobtype import Result
from storyloom.provider import Request, Response

_env = jinja2.Environment(
    loader=jinja2.PackageLoader("storyloom.plugins", "templates"),
    undefined=jinja2.StrictUndefined,  # a template naming a missing field is a bug to see, not a blank
    keep_trailing_newline=True,
    auto_reload=False,  # bundled templates never change under a run; skips a stat() per render
    autoescape=False,  # prompts are plain text, not HTML
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

    def build_request(self, item: Item, job: Job) -> Request:
        language = item.fields.get("language") or job.language or "en"
        values = {
            "genre": None, "title": None, "prompt": None, "language": language,
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
