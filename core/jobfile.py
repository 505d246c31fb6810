"""Stage 3c of loading a file: a job file into a :class:`~storyloom.job.Job`.

The envelope (``job.schema.json``: ids, priority, deadline, models, routing,
limits) is the kernel's. Each item entry is checked twice: its generic keys
(:data:`~storyloom.jobtype.GENERIC_ITEM_KEYS`) by the envelope, the rest by
the job type's :attr:`~storyloom.jobtype.JobType.item_schema`; the first error
in the file among both is reported. Then names are looked up, the job type
expands each entry (:meth:`~storyloom.jobtype.JobType.expand_item`) or reads
``input:`` (:meth:`~storyloom.jobtype.InputReader.read_input`, handed the
file checked and read by :func:`~storyloom.inputfile.open_input`), and the
kernel checks item ids and computes priorities.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from jsonschema import Draft202012Validator
from jsonschema.exceptions import SchemaError

from .document import Document, PathKey, duration_at, error_at, int_or_none, parse_document, value_at
from .errors import ConfigError, ConfigErrors, UsageError
from .inputfile import open_input
from .job import Item, Job, JobConfig, Priority
from .jobtype import GENERIC_ITEM_KEYS, ItemSite, JobType, identifier_problem, one_item
from .names import KnownNames, check_name
from .settings import Settings
from .settingsfile import check_settings
from .validation import MAX_ERRORS, compile_schema, describe, format_path, unknown_name, validate

__all__ = ["MAX_ITEMS", "load_job", "load_job_document"]

#: Items in one job after expanding entries (chapter ranges, say).
MAX_ITEMS = 100_000


def load_job(path: Path, settings: Settings, known: KnownNames, now: datetime | None = None) -> Job:
    """Parse, validate and build the job in ``path``; see :func:`load_job_document`."""
    return load_job_document(parse_document(path), settings, known, now)


def load_job_document(doc: Document, settings: Settings, known: KnownNames, now: datetime | None = None) -> Job:
    """Validate a parsed job against the schema, its job type's item schema, the
    settings and the registered names, and build the :class:`Job` (``source`` =
    ``doc.file``).

    ``now`` (default: the current UTC time; naive means UTC) turns deadlines into
    priorities. All datetimes in the job are timezone-aware.

    :raises ConfigError: the first problem found, in the job or in the settings.
    """
    job_type = known.job_type(doc.data.get("job_type"))
    validate(doc, "job.schema.json", _item_parts(doc, job_type))
    check_settings(settings, known)
    return _JobBuilder(doc, settings, known, job_type, _aware(now or datetime.now(timezone.utc))).build()


def _item_parts(doc: Document, job_type: JobType | None) -> list[tuple[PathKey, Draft202012Validator]]:
    """(path, validator) for each item entry the job type's schema checks."""
    entries = doc.data.get("items")
    if job_type is None or not isinstance(entries, list):
        return []
    validator = item_validator(job_type)
    return [(("items", i), validator) for i, entry in enumerate(entries) if isinstance(entry, dict)]


def item_validator(job_type: JobType) -> Draft202012Validator:
    """The job type's item schema, with the generic keys allowed (the envelope
    checks those) and, unless it says otherwise, no other keys.

    :raises UsageError: the job type declares no ``item_schema``, or an invalid one.
    """
    declared = getattr(job_type, "item_schema", None)
    if not isinstance(declared, Mapping):
        raise UsageError(f"job type {job_type.name!r} declares no item_schema (see storyloom.jobtype.JobType)")
    cached = _COMPOSED.get(id(declared))
    if cached is None or cached[0] is not declared:
        composed = {"type": "object", "additionalProperties": False, **declared}
        composed["properties"] = {**dict.fromkeys(GENERIC_ITEM_KEYS, True), **declared.get("properties", {})}
        cached = _COMPOSED[id(declared)] = (declared, composed)
    try:
        return compile_schema(cached[1], f"job type {job_type.name!r}")
    except SchemaError as err:
        raise UsageError(err.message) from None


# id(declared schema) -> (that schema, the composed one); keeping it keeps the id its own.
_COMPOSED: dict[int, tuple[Mapping[str, Any], dict[str, Any]]] = {}


class _JobBuilder:
    """The semantic checks and the build of one job document, in file order."""

    def __init__(self, doc: Document, settings: Settings, known: KnownNames, job_type: JobType | None,
                 now: datetime) -> None:
        self.doc, self.settings, self.known, self.job_type, self.now = doc, settings, known, job_type, now
        self.data = doc.data

    def fail(self, path: PathKey) -> Callable[[str], ConfigError]:
        return lambda message: error_at(self.doc, path, message)

    def build(self) -> Job:
        data = self.data
        self.check_id(data["job_id"], ("job_id",))
        check_name("job_type", data["job_type"], self.known.job_types, self.fail(("job_type",)))
        models = self.models()
        routing = dict(data.get("routing", {}))
        if routing:
            strategy_path = ("routing", "strategy")
            check_name("routing strategy", routing["strategy"], self.known.strategies, self.fail(strategy_path))
        explicit = Priority[data.get("priority", "normal").upper()]
        deadline = self.when(("deadline",))
        if "input" in data:
            items = self.input_items(explicit, deadline)
        else:
            items = self.items(explicit, deadline, models or self.settings.default_models)
        return Job(
            job_id=data["job_id"],
            job_type=data["job_type"],
            items=items,
            priority=Priority.from_deadline(deadline, self.now, explicit) if deadline else explicit,
            created_at=self.when(("created_at",)),
            deadline=deadline,
            config=self.config(),
            models=models,
            routing=routing,
            budget_usd=float(data["budget_usd"]) if "budget_usd" in data else None,
            language=data.get("language"),
            source=self.doc.file,
            vars=dict(data.get("vars", {})),
        )

    def check_id(self, value: Any, path: PathKey, what: str = "") -> None:
        problem = identifier_problem(value)
        if problem:
            raise error_at(self.doc, path, what + problem)

    def models(self) -> tuple[str, ...]:
        names = tuple(self.data.get("models", ()))
        for i, name in enumerate(names):
            check_name("model", name, self.settings.models, self.fail(("models", i)))
        return names

    def when(self, path: PathKey) -> datetime | None:
        value = value_at(self.data, path)
        return None if value is None else _parse_when(value, self.doc, path)

    def config(self) -> JobConfig:
        data = self.data.get("config", {})
        if "timeout_per_item" in data and "timeout_per_item" in self.data:
            raise error_at(self.doc, ("timeout_per_item",),
                           "timeout_per_item is given twice: here and under config; keep one")
        path = ("config", "timeout_per_item") if "timeout_per_item" in data else ("timeout_per_item",)
        return JobConfig(
            max_parallel=int_or_none(data.get("max_parallel")),
            timeout_per_item=duration_at(self.doc, path, None, positive=True),
            retry_on_failure=data.get("retry_on_failure", True),
            max_retries=int_or_none(data.get("max_retries")),
            model_rotation=data.get("model_rotation", False),
            max_tokens=int_or_none(data.get("max_tokens")),
            stream=data.get("stream", False),
        )

    def items(self, job_level: Priority, job_deadline: datetime | None, models: tuple[str, ...]) -> tuple[Item, ...]:
        expand = getattr(self.job_type, "expand_item", None) or one_item
        collected = _Collector(self.doc)
        # Each entry is checked on its own: a file's bad entries are all reported.
        problems: list[ConfigError] = []
        for i, entry in enumerate(self.data["items"]):
            path: PathKey = ("items", i)
            try:
                item = self.item(entry, path, job_level, job_deadline, models)
                for expanded, id_path in expand(item, entry, ItemSite(self.doc, path)):
                    if not expanded.item_id:
                        raise error_at(self.doc, path, "missing required key 'item_id'")
                    collected.add(expanded, path + tuple(id_path))
            except ConfigErrors as many:
                problems += many.errors
            except ConfigError as problem:
                if len(collected._items) > MAX_ITEMS:
                    raise  # too many items: the rest would say the same
                problems.append(problem)
            if len(problems) > MAX_ERRORS:
                break
        if len(problems) == 1:
            raise problems[0]
        if problems:
            raise ConfigErrors(problems[:MAX_ERRORS], more=max(0, len(problems) - MAX_ERRORS))
        return collected.items()

    def input_items(self, job_level: Priority, job_deadline: datetime | None) -> tuple[Item, ...]:
        """Items from ``input:``, read by the job type (e.g. a Batch API JSONL file)."""
        reader = getattr(self.job_type, "read_input", None)
        if reader is None:
            name = self.data["job_type"]
            raise error_at(self.doc, ("input",), f"job type '{name}' reads no input: file; "
                                                 "list its items under items instead")
        level = Priority.from_deadline(job_deadline, self.now, job_level) if job_deadline else job_level
        template = Item(item_id="", priority=level, deadline=job_deadline)
        collected = _Collector(self.doc)
        source = open_input(self.data["input"], self.doc.file, self.settings.input_roots, self.fail(("input",)))
        for item in reader(source, template, ItemSite(self.doc, ("input",))):
            self.check_id(item.item_id, ("input",), what=f"item_id {item.item_id!r} from the input file: ")
            collected.add(item, ("input",))
        if not collected.first_seen:
            raise error_at(self.doc, ("input",), "the input file holds no items")
        return collected.items()

    def item(self, entry: dict[str, Any], path: PathKey, job_level: Priority, job_deadline: datetime | None,
             models: tuple[str, ...]) -> Item:
        """The entry's generic keys as an Item; every other key goes in its fields."""
        for key in ("item_id", "project_id"):
            if key in entry:
                self.check_id(entry[key], path + (key,))
        if "model" in entry and entry["model"] not in models:
            raise error_at(self.doc, path + ("model",), unknown_name("model", entry["model"], models)
                           .replace("(known:", "(the job's models:"))
        own_deadline = self.when(path + ("deadline",))
        deadline = own_deadline or job_deadline
        level = Priority[entry["priority"].upper()] if "priority" in entry else job_level
        if deadline is not None:
            level = Priority.from_deadline(deadline, self.now, level)
        return Item(
            item_id=entry.get("item_id", ""),
            project_id=entry.get("project_id"),
            status="skipped" if entry.get("status") in ("skipped", "completed") else "pending",
            priority=level,
            deadline=deadline,
            model=entry.get("model"),
            fields={key: value for key, value in entry.items() if key not in GENERIC_ITEM_KEYS},
        )


class _Collector:
    """Items in job order: ids safe and unique, at most :data:`MAX_ITEMS`."""

    def __init__(self, doc: Document) -> None:
        self.doc = doc
        self.first_seen: dict[str, PathKey] = {}
        self._items: list[Item] = []

    def add(self, item: Item, id_path: PathKey) -> None:
        problem = identifier_problem(item.item_id)
        if problem:
            raise error_at(self.doc, id_path, "the item_id: " + problem)
        if item.item_id in self.first_seen:
            first = self.first_seen[item.item_id]
            line = self.doc.location(first).line
            raise error_at(self.doc, id_path, f"duplicate item_id '{item.item_id}' "
                           f"(first used at {format_path(first[:2])}, line {line})")
        self.first_seen[item.item_id] = id_path
        self._items.append(item)
        if len(self._items) > MAX_ITEMS:
            raise error_at(self.doc, id_path, f"the job has more than {MAX_ITEMS:,} items")

    def items(self) -> tuple[Item, ...]:
        return tuple(self._items)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _parse_when(text: str, doc: Document, path: PathKey) -> datetime:
    """A date-time or a date (00:00 that day); naive means UTC."""
    try:
        return _aware(datetime.fromisoformat(text))
    except (ValueError, TypeError):  # the schema has checked already; keep the promise anyway
        raise error_at(doc, path, f"expected a date-time like 2025-01-15T09:00:00Z or a date like 2025-01-15; "
                                  f"got {describe(text)}") from None
