"""What a job type is: which item fields it takes, how an entry becomes items,
how an item becomes a request, and a reply a result.

The kernel knows no concrete job type: a job file's generic keys (the
envelope, ``schemas/job.schema.json``) are the kernel's; everything an item
says beyond :data:`GENERIC_ITEM_KEYS` belongs to the job type named by
``job_type``, which declares it with :attr:`JobType.item_schema` and may turn
one entry into several items (:meth:`JobType.expand_item`) or read its items
from a file (:meth:`InputReader.read_input`).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Protocol

from .contracts import Result  # noqa: F401 - plugins import it from here
from .document import Document, PathKey, error_at
from .errors import ConfigError
from .job import Item
from .validation import describe, schema

if TYPE_CHECKING:
    from .inputfile import InputFile
    from .job import Job
    from .provider import Request, Response

#: The item keys the kernel reads itself; every other key of an item entry is
#: the job type's, kept in ``Item.fields``. (The same as the properties of
#: ``$defs/item`` in ``job.schema.json``; a test keeps them identical.)
GENERIC_ITEM_KEYS = ("item_id", "project_id", "status", "priority", "deadline", "model")


class JobType(Protocol):
    name: str
    #: Defaults used when neither settings (``batch_limits``) nor the job set them.
    max_parallel: int
    timeout_per_item: float
    #: The JSON Schema (draft 2020-12) of an item entry's own fields: an object
    #: schema whose ``properties`` are the fields beyond :data:`GENERIC_ITEM_KEYS`
    #: (which the kernel validates; they may still appear in ``required`` or
    #: ``allOf``). Unless the schema says otherwise, a field it does not list is
    #: an error. Errors point into the job file (``items[3].chapter_num``).
    item_schema: Mapping[str, Any]

    def expand_item(self, item: "Item", entry: Mapping[str, Any], where: "ItemSite") -> Iterable[tuple["Item", PathKey]]:
        """The item(s) one entry of ``items:`` stands for (optional: without
        it each entry is one item, :func:`one_item`).

        Called after the entry passed both schemas. ``item`` is built from the
        generic keys (priority and deadline resolved), its ``fields`` hold the
        entry's other keys as written. Return each item with the path, relative
        to the entry, where its id came from (``("item_id",)``), for duplicate-id
        errors. Raise ``where.error(...)`` for a problem the schema cannot see.
        The kernel then checks every id is a safe name and unique in the job.
        """

    def build_request(self, item: "Item", job: "Job") -> "Request":
        """Turn an item into a request. Raise ProviderError(INVALID_INPUT) if it cannot."""

    def handle_result(self, item: "Item", job: "Job", response: "Response") -> "Result":
        """Turn a reply into the item's result. Raise ProviderError to fail the attempt."""


class InputReader(Protocol):
    """Optional, for a job type that can read a job's ``input:`` file instead of ``items:``.

    Without ``read_input`` a job of that type giving ``input:`` is an error
    naming the job type.
    """

    def read_input(self, source: "InputFile", template: "Item", where: "ItemSite") -> Iterable["Item"]:
        """The items in ``source``: the ``input:`` file, already checked and
        read by the kernel (:func:`storyloom.inputfile.open_input`: a regular
        file under the job file's folder or an ``input_roots`` folder, within
        the size limit). Parse ``source.data`` (bytes); name ``source.name``
        in messages.

        ``template`` carries the job-level priority and deadline: make items with
        ``dataclasses.replace(template, item_id=..., fields=...)``. ``where.path``
        is ``("input",)``: use ``where.error((), ...)`` for the file as a whole
        (unreadable, empty) and a ``ConfigError`` at the file's own line for a bad
        line. The kernel checks ids and the item limit as for ``items:``.
        """


class ChainsItems(Protocol):
    """Optional, for a job type that is a later stage of a pipeline (``then:``).

    When an item of the stage before completes with no ``Result.follow_ups``,
    the kernel asks this stage's job type which items it makes; without
    ``items_after`` that is :func:`default_items_after`. The items are
    follow-ups of the completion: stored in its transaction, idempotent on
    item_id, given the job's level. An item whose ``job_type`` is None joins
    this stage.
    """

    def items_after(self, done: "Item", result: "Result", job: "Job") -> Iterable["Item"]:
        """The items ``done``'s completion (with ``result``) makes for this stage."""


def default_items_after(done: "Item", next_job_type: str) -> list["Item"]:
    """One item ``<done>-<next_job_type>`` of the same project, with ``fields={"source_item": <done>}``."""
    return [Item(item_id=f"{done.item_id}-{next_job_type}", project_id=done.project_id,
                 fields={"source_item": done.item_id}, job_type=next_job_type)]


class ReadsProject(Protocol):
    """Optional: ``reads_project = True`` makes the kernel load the item's
    project (the project file, if the config has a loader for it, and every
    stored artifact) as a :class:`storyloom.artifacts.ProjectContext` and
    pass it as ``item.context`` to ``build_request``. Items without a
    ``project_id`` get ``ProjectContext(None, [])``."""

    reads_project: bool


def reads_project(job_type: object) -> bool:
    return bool(getattr(job_type, "reads_project", False))


class EventFields(Protocol):
    """Optional: ``event_fields`` names item fields (``chapter_num``) that the
    ``item_started`` event and a report's failed-item rows show besides
    ``project_id``, for progress views and reports."""

    event_fields: tuple[str, ...]


def event_fields(job_type: object) -> tuple[str, ...]:
    """The job type's :class:`EventFields`, or none."""
    return tuple(getattr(job_type, "event_fields", ()))


@dataclass(frozen=True)
class Planned:
    """Items of one later stage that an item of the job file is expected to
    lead to, alike enough to share one request's estimate (a chapter and its
    rewrites; the QC of each version).

    ``request`` is what each of them sends (None: done in code, sends
    nothing); ``expected`` how many a run makes with nothing failing,
    ``worst`` at most (every rewrite taken). ``item_id`` names the row in
    the dry run (``bk-ch3``)."""

    item_id: str
    request: "Request | None"
    expected: int = 1
    worst: int = 1


class PlansItems(Protocol):
    """Optional, for a later stage of a pipeline: what it will send for one
    item of the job file, before anything runs (``--dry-run`` and the
    up-front budget check, :mod:`storyloom.planning`). A stage without it is
    left out of both, and the dry run names it."""

    def planned_items(self, source: "Item", job: "Job") -> Iterable[Planned]:
        """This stage's items that ``source`` (a pending item of the job
        file, its project in ``source.context`` when the job type
        ``reads_project``) leads to. Raise ProviderError(INVALID_INPUT) for
        a source it cannot plan (the dry run fails with it)."""


class FlagsForReview(Protocol):
    """Optional, for a job type whose items can end needing a person: a
    chapter that failed QC ``1 + max_rewrites`` times. ``storyloom status``
    and the report list them (:func:`storyloom.report.needs_review`)."""

    async def needs_review(self, job: "Job", store: Any) -> list[dict[str, Any]]:
        """What of ``job`` waits for a person now, read from ``store``: each
        ``{"project_id", "what", "approve"}`` (``"chapter 3"``, the command
        that lets it go on), JSON-able, in a stable order."""


@dataclass(frozen=True)
class ItemSite:
    """Where an item entry (or the ``input:`` key) is in its job file, so a job
    type can raise errors located like the loader's own."""

    doc: Document
    #: ``("items", 3)`` or ``("input",)``.
    path: PathKey
    #: The run's :class:`storyloom.settings.Settings` (its ``models:``), for a
    #: job type that maps what an entry names onto configured models; None
    #: when the caller has none.
    settings: Any = None

    @property
    def job(self) -> Mapping[str, Any]:
        """The whole job document as plain values (job-level ``language``, ``vars``...)."""
        return self.doc.data

    def error(self, path: PathKey, message: str) -> ConfigError:
        """A ConfigError at ``path`` under this entry: ``file:line:col: at items[3].chapters: ...``."""
        return error_at(self.doc, self.path + tuple(path), message)

    def check_id(self, value: str, path: PathKey, what: str = "") -> None:
        """Refuse an id that is not a safe name (it becomes a file name).

        :raises ConfigError: at ``path`` under this entry; ``what`` prefixes the message.
        """
        problem = identifier_problem(value)
        if problem:
            raise self.error(path, what + problem)


def identifier_problem(value: Any) -> str:
    """Why ``value`` is not a safe name (``$defs/identifier`` in job.schema.json), or ""."""
    if isinstance(value, str) and _identifier_pattern().fullmatch(value):
        return ""
    return schema("job.schema.json")["$defs"]["identifier"]["x-message"].replace("{got}", describe(value))


@functools.cache
def _identifier_pattern() -> re.Pattern[str]:
    # Compiled once: every item id of a job passes here. The schema's pattern
    # ends in `$`, which Python also matches before a final newline; the
    # caller's fullmatch does not.
    return re.compile(schema("job.schema.json")["$defs"]["identifier"]["pattern"])


def one_item(item: "Item", entry: Mapping[str, Any], where: ItemSite) -> list[tuple["Item", PathKey]]:
    """The default expansion: the entry is one item, as written."""
    return [(replace(item, fields=dict(item.fields)), ("item_id",))]


