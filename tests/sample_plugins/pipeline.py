"""A small book pipeline of job types, for the kernel's pipeline tests.

Four stages: ``pipe_plan -> pipe_write -> pipe_qc -> pipe_export``.

- ``pipe_plan`` (one item per book, field ``chapters: N``, optional ``gate``,
  ``fail_qc: [chapter numbers]``): completes with an ``outline`` artifact and
  follow-ups: chapter items ``<book>-ch1..N`` (``pipe_write``), each after the
  previous one's QC, gated by ``gate`` if given, and one ``<book>-export``
  (``pipe_export``) after every chapter's QC.
- ``pipe_write`` reads its project (``reads_project``): it records the
  artifacts it saw and stores a ``chapter`` artifact. It is chained to QC by
  ``pipe_qc.items_after``: ``<chapter>-qc``.
- ``pipe_qc``: a chapter listed in ``fail_qc`` fails its first QC; the QC
  then completes with a rewrite ``<ch>-r1`` and its QC ``<ch>-r1-qc``, which
  takes over this QC's waiters. Otherwise it adds a ``qc`` artifact.
- ``pipe_export`` makes nothing after it (``items_after`` returns none).

``LOG`` records, per built request, the item and what its context held.
"""

from __future__ import annotations

from dataclasses import dataclass

import storyloom
from storyloom.artifacts import Artifact
from storyloom.job import Item
from storyloom.jobtype import Result
from storyloom.provider import Request

#: (job_type, item_id, [(kind, key, version), ...] seen in item.context) per built request.
LOG: list[tuple[str, str, list[tuple[str, str, int]] | None]] = []


def reset() -> None:
    LOG.clear()


ANY = {"type": "object", "additionalProperties": True}


@dataclass
class _Base:
    name: str
    max_parallel: int = 8
    timeout_per_item: float = 30.0
    item_schema = ANY
    reads_project = False

    def build_request(self, item: Item, job) -> Request:
        seen = None
        if item.context is not None:
            seen = [(a.kind, a.key, a.version) for a in item.context.artifacts]
        LOG.append((self.name, item.item_id, seen))
        return Request(messages=({"role": "user", "content": f"{self.name} {item.item_id}"},), max_tokens=50)

    def handle_result(self, item: Item, job, response) -> Result:
        return Result(text=response.text, file_name=f"{item.item_id}.md")


class Plan(_Base):
    def handle_result(self, item, job, response):
        book = item.project_id or item.item_id
        count = int(item.fields.get("chapters", 2))
        gate = item.fields.get("gate")
        fail = list(item.fields.get("fail_qc", []))
        chapters = []
        for n in range(1, count + 1):
            after = (f"{book}-ch{n - 1}-qc",) if n > 1 else ()
            chapters.append(Item(item_id=f"{book}-ch{n}", project_id=book, job_type="pipe_write", after=after,
                                 gate=gate, fields={"chapter": n, "fail_qc": n in fail}))
        export = Item(item_id=f"{book}-export", project_id=book, job_type="pipe_export",
                      after=tuple(f"{book}-ch{n}-qc" for n in range(1, count + 1)))
        return Result(text=response.text, file_name=f"{item.item_id}.md", follow_ups=(*chapters, export),
                      artifacts=(Artifact(book, "outline", "", {"chapters": count}),))


class Write(_Base):
    reads_project = True
    event_fields = ("chapter",)

    def handle_result(self, item, job, response):
        key = str(item.fields.get("chapter", 0))
        return Result(text=response.text, file_name=f"{item.item_id}.md",
                      artifacts=(Artifact(item.project_id, "chapter", key, response.text),))


class QC(_Base):
    def items_after(self, done, result, job):
        return [Item(item_id=f"{done.item_id}-qc", project_id=done.project_id,
                     after=(done.item_id,), fields=dict(done.fields, source_item=done.item_id))]

    def handle_result(self, item, job, response):
        if item.fields.get("fail_qc") and not item.fields.get("rewrite"):
            chapter = item.fields["source_item"]
            rewrite = f"{chapter}-r1"
            return Result(text="failed", file_name=f"{item.item_id}.md", follow_ups=(
                Item(item_id=rewrite, project_id=item.project_id, job_type="pipe_write",
                     fields={"chapter": item.fields["chapter"], "rewrite": True}),
                Item(item_id=f"{rewrite}-qc", project_id=item.project_id, job_type="pipe_qc", after=(rewrite,),
                     takes_over=item.item_id, fields={"chapter": item.fields["chapter"], "rewrite": True,
                                                      "source_item": rewrite}),
            ))
        return Result(text="passed", file_name=f"{item.item_id}.md",
                      artifacts=(Artifact(item.project_id, "qc", str(item.fields.get("chapter")), "pass"),))


class Export(_Base):
    def items_after(self, done, result, job):
        return []


JOB_TYPES = (Plan("pipe_plan", max_parallel=4), Write("pipe_write"), QC("pipe_qc"), Export("pipe_export"))


@storyloom.hookimpl
def loom_register_job_types(register):
    for job_type in JOB_TYPES:
        register(job_type)
