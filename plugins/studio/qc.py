"""``qc_processing``: checks that read the chapter, in code first, then a model's rubric.

Input: the chapter version the item names (``source_item``: the chapter item
that wrote it), the book's bible, the beat and the previous summary. First the
code checks of :func:`storyloom.plugins.support.qccheck.check_chapter` (script
share, repeated n-grams, leftovers, length against ``chapter_length``); their
findings go into the request so the model sees them. Then the reply, a
structured rubric (a 1-10 score per criterion of :data:`.replies.CRITERIA`,
concrete fixes), is held to ``qc_threshold`` (the mean score; default 7).

Verdict ``passed``: no code finding and the mean at or over the threshold.
Otherwise ``failed``: the completion carries a rewrite (``chapter_writing``
item ``<chapter>-r<k>`` with the findings and fixes as ``feedback``) and its QC
(after the rewrite, ``takes_over`` this QC item, so the export waits for the
new QC instead), at most ``max_rewrites`` times (default 2); the last failing
QC says ``needs_review`` instead, and the chapter waits for
``storyloom approve PROJECT_ID chapter N``. Either way a ``qc`` artifact keeps
the report. The QC item itself completes: a failed verdict is a result, not an error.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from statistics import mean
from typing import Any

from storyloom import ErrorKind, ProviderError
from storyloom.artifacts import Artifact
from storyloom.job import Item, Job
from storyloom.jobtype import Planned, Result
from storyloom.plugins.support.qccheck import check_chapter
from storyloom.provider import Request, Response
from storyloom.store import Store

from . import book, planning
from .base import (StudioJobType, base_values, book_of, chapter_id, language_of, qc_id, render, result, setting,
                   stage_names, state_text)
from .chapters import chapter_number
from .replies import CRITERIA, CRITERIA_TEXT, data_of, invalid, qc_schema

DEFAULT_THRESHOLD = 7.0
DEFAULT_MAX_REWRITES = 2


def findings_of(item: Item, job: Job) -> tuple[object, str, list[dict]]:
    """The chapter artifact QC reads, its text, and the code checks' findings."""
    context = item.context
    number = chapter_number(item)
    source = item.fields.get("source_item")
    artifact = book.chapter(context, number, item_id=source) if source else None
    if artifact is None:
        artifact = book.chapter(context, number)
    if artifact is None:
        raise ProviderError(ErrorKind.INVALID_INPUT, f"no chapter {number} stored for QC to read"
                            + (f" (from item {source!r})" if source else ""))
    project = book.project_of(context)
    language = language_of(item, job, project)
    text = book.chapter_text(artifact)
    return artifact, text, [dict(f) for f in _checks(text, language, project.get("chapter_length"))]


@functools.lru_cache(maxsize=256)
def _checks(text: str, language: str, target: int | None) -> tuple[dict, ...]:
    # The request and the reply of one QC read the same text: checked once.
    return tuple({"code": f.code, "message": f.message, "detail": f.detail}
                 for f in check_chapter(text, language, target))


@dataclass(frozen=True)
class QualityCheck(StudioJobType):
    def planned_items(self, source: Item, job: Job) -> list[Planned]:
        """Before the run (dry run, budget check): what this stage sends for ``source``'s book
        (:func:`.planning.qc_items`)."""
        if not self.studio(source):
            return planning.single_planned(self, source, job)
        return planning.qc_items(self, source, job)

    def items_after(self, done: Item, result: Result, job: Job) -> list[Item]:
        """After a chapter (or a rewrite) completes: its QC item."""
        number = done.fields.get("chapter_num")
        rewrite = int(done.fields.get("rewrite") or 0)
        if not isinstance(number, int):
            return []
        return [Item(item_id=f"{done.item_id}-qc", project_id=done.project_id, job_type="qc_processing",
                     fields={"chapter_num": number, "source_item": done.item_id, "rewrite": rewrite,
                             **{k: done.fields[k] for k in ("language", "genre", "vars") if k in done.fields}})]

    async def needs_review(self, job: Job, store: Store) -> list[dict[str, Any]]:
        """The job's chapters whose newest QC says ``needs_review`` (this
        job's QC, for the chapter version it read) and that no approval let
        go since (an opened review gate is an approval on its way):
        ``storyloom status`` and the report list them."""
        books = dict.fromkeys(row.definition.get("project_id") for row in await store.items(job.job_id))
        opened = {gate.name for gate in await store.gates() if gate.opened_at is not None}
        out = []
        for book_id in (b for b in books if isinstance(b, str)):
            newest: dict[str, Any] = {}
            for artifact in await store.artifacts(book_id, kinds=("qc", "approval")):  # oldest first
                newest[(artifact.kind, artifact.key)] = artifact
            flagged = []
            for (kind, key), artifact in newest.items():
                report = artifact.content
                if (kind != "qc" or artifact.job_id != job.job_id or not isinstance(report, dict)
                        or report.get("verdict") != book.NEEDS_REVIEW):
                    continue
                approval = newest.get(("approval", key))
                if approval is not None and isinstance(approval.content, dict) and \
                        approval.content.get("chapter_item") in (None, report.get("chapter_item")):
                    continue
                if key.isdigit() and review_gate(book_id, int(key)) not in opened:
                    flagged.append(int(key))
            out += [{"project_id": book_id, "what": f"chapter {n}", "chapter": n,
                     "approve": f"storyloom approve {book_id} chapter {n}"} for n in sorted(flagged)]
        return out

    def perform(self, item: Item, job: Job) -> Result | None:
        """A review item (``review: true``), once its gate is opened: the
        approval, in code. Any other item asks its model (None)."""
        if not item.fields.get("review") or not self.studio(item):
            return None
        number = chapter_number(item)
        approval = {"approved": True, "chapter_item": item.fields.get("source_item")}
        return result(item, f"chapter {number} approved by an editor\n", None,
                      artifacts=(Artifact(book_of(item), "approval", str(number), approval),),
                      data={"chapter_num": number, "verdict": "approved"})

    def studio_request(self, item: Item, job: Job) -> Request:
        artifact, text, findings = findings_of(item, job)
        context = item.context
        project = book.project_of(context)
        language = language_of(item, job, project)
        number = chapter_number(item)
        beat = book.outline(context)["beats"].get(number) or {}
        summary = book.latest(context, "summary", str(number - 1)) if number > 1 else None
        values = {
            **base_values(item, job, project, language),
            "chapter_num": number, "chapter_text": text, "beat": beat,
            "characters": book.present(context, beat),
            "previous_summary": str(summary.content) if summary is not None else "",
            "character_state": state_text(book.character_state(context, number)),
            "findings": findings, "feedback": [f"{f['code']}: {f['message']}" for f in findings],
            "rubric": [{"name": c, "description": CRITERIA_TEXT[c]} for c in CRITERIA],
            "threshold": float(setting(job, "qc_processing", "qc_threshold", DEFAULT_THRESHOLD)),
        }
        return self.request(item, job, language, render("qc_processing", language, values, job), schema=qc_schema(),
                            schema_name="qc_rubric")

    def studio_result(self, item: Item, job: Job, response: Response) -> Result:
        data = data_of(response, "QC rubric")
        scores_raw = data.get("scores")
        if not isinstance(scores_raw, dict):
            raise invalid("the QC rubric reply has no 'scores' object")
        scores = {}
        for name in CRITERIA:
            value = scores_raw.get(name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or not 1 <= value <= 10:
                raise invalid(f"the QC rubric's score for {name!r} is not a number from 1 to 10: {value!r}")
            scores[name] = float(value)
        fixes = [str(f) for f in data.get("fixes") or () if str(f).strip()]
        artifact, _text, findings = findings_of(item, job)
        threshold = float(setting(job, "qc_processing", "qc_threshold", DEFAULT_THRESHOLD))
        max_rewrites = int(setting(job, "qc_processing", "max_rewrites", DEFAULT_MAX_REWRITES))
        score = round(mean(scores.values()), 2)
        passed = not findings and score >= threshold
        rewrite = int(item.fields.get("rewrite") or 0)
        number = chapter_number(item)
        if passed:
            verdict = book.PASSED
        elif rewrite < max_rewrites:
            verdict = book.FAILED
        else:
            verdict = book.NEEDS_REVIEW
        report = {
            "verdict": verdict, "score": score, "scores": scores, "threshold": threshold,
            "findings": findings, "fixes": fixes, "comment": str(data.get("comment") or ""),
            "chapter_item": artifact.item_id, "chapter_version": artifact.version,
            "rewrite": rewrite, "max_rewrites": max_rewrites,
        }
        book_id = book_of(item)
        follow_ups: tuple[Item, ...] = ()
        if verdict == book.FAILED:
            follow_ups = rewrite_items(item, book_id, number, rewrite + 1, feedback(report))
        elif verdict == book.NEEDS_REVIEW and "export" in stage_names(job):
            # The export waits on the review (taking this item's place) until
            # `storyloom approve BOOK chapter N` opens its gate.
            follow_ups = (Item(item_id=review_id(book_id, number), project_id=item.project_id,
                               job_type="qc_processing", gate=review_gate(book_id, number), takes_over=item.item_id,
                               fields={"chapter_num": number, "review": True, "source_item": artifact.item_id}),)
        lines = [f"# QC: chapter {number} ({verdict}, score {score:g} / threshold {threshold:g})", ""]
        lines += [f"- {name}: {value:g}" for name, value in scores.items()]
        lines += [f"- finding {f['code']}: {f['message']}" for f in findings]
        lines += [f"- fix: {fix}" for fix in fixes]
        return result(item, "\n".join(lines) + "\n", response,
                      artifacts=(Artifact(book_id, "qc", str(number), report),), follow_ups=follow_ups,
                      data={"chapter_num": number, "verdict": verdict, "score": score})


def review_id(book_id: str, number: int) -> str:
    return f"{book_id}-ch{number}-review"


def review_gate(book_id: str, number: int) -> str:
    """The gate ``storyloom approve BOOK chapter N`` opens."""
    return f"{book_id}:chapter-{number}"


def feedback(report: dict) -> list[str]:
    """What a rewrite is told: each code finding, each low score, each fix."""
    out = [f"{f['code']}: {f['message']}" for f in report["findings"]]
    out += [f"{name} scored {value:g} (needs {report['threshold']:g}): {CRITERIA_TEXT[name]}"
            for name, value in report["scores"].items() if value < report["threshold"]]
    out += list(report["fixes"])
    return out


def rewrite_items(item: Item, book_id: str, number: int, rewrite: int, notes: list[str]) -> tuple[Item, Item]:
    carried = {k: item.fields[k] for k in ("language", "genre", "vars") if k in item.fields}
    writing = Item(item_id=chapter_id(book_id, number, rewrite), project_id=item.project_id,
                   job_type="chapter_writing",
                   fields={"chapter_num": number, "rewrite": rewrite, "feedback": notes, **carried})
    check = Item(item_id=qc_id(book_id, number, rewrite), project_id=item.project_id, job_type="qc_processing",
                 fields={"chapter_num": number, "source_item": writing.item_id, "rewrite": rewrite, **carried},
                 after=(writing.item_id,), takes_over=item.item_id)
    return writing, check
