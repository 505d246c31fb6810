"""Stage 3a of loading a file: the names plugins registered, to check files against.

Job and settings files name job types, providers, strategies, retry policies,
progress sinks and report renderers; :class:`KnownNames` holds what the loaded
plugins registered, and :func:`check_name` refuses the rest with a suggestion.
:func:`peek_plugins` reads a file's ``plugins:`` before anything else, so that
those plugins can register their names first.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .document import Document, error_at
from .errors import ConfigError, Location
from .validation import describe, schema, unknown_name

if TYPE_CHECKING:
    from .jobtype import JobType

__all__ = ["KnownNames", "check_name", "peek_plugins"]


@dataclass(frozen=True)
class KnownNames:
    """The names registered by the loaded plugins, to check files against.

    A field left as None is not checked (a partial registry, or a test); an
    empty collection means nothing of that kind is registered.

    ``job_types`` is best a mapping of name to the registered
    :class:`~storyloom.jobtype.JobType`: the loader then validates and expands
    a job's items the way its job type declares. Given only names, a job's
    item fields are not checked beyond the generic ones and each entry is one
    item, as with None.
    """

    job_types: Mapping[str, JobType] | Collection[str] | None = None
    providers: Collection[str] | None = None
    strategies: Collection[str] | None = None
    retry_policies: Collection[str] | None = None
    sinks: Collection[str] | None = None
    renderers: Collection[str] | None = None

    def job_type(self, name: Any) -> JobType | None:
        """The registered job type called ``name``, if ``job_types`` maps names to them."""
        if isinstance(self.job_types, Mapping) and isinstance(name, str):
            return self.job_types.get(name)
        return None


def check_name(kind: str, name: str, known: Collection[str] | None, fail: Callable[[str], ConfigError]) -> None:
    """Raise ``fail(message)`` if ``name`` is not in ``known`` (None: not checked)."""
    if known is not None and name not in known:
        raise fail(unknown_name(kind, name, known))


def peek_plugins(doc: Document) -> list[tuple[str, Location]]:
    """The module names under ``plugins:`` in a job or settings document, with
    where each is written, checked only enough to import them.

    :raises ConfigError: ``plugins`` is not a list of module names.
    """
    modules = doc.data.get("plugins", [])
    if not isinstance(modules, list):
        raise error_at(doc, ("plugins",), f"expected a list of module names, got {describe(modules)}")
    module_schema = schema("job.schema.json")["$defs"]["moduleList"]["items"]
    found = []
    for i, name in enumerate(modules):
        if not isinstance(name, str) or not re.fullmatch(module_schema["pattern"], name):
            raise error_at(doc, ("plugins", i), module_schema["x-message"].replace("{got}", describe(name)))
        found.append((name, doc.location(("plugins", i))))
    return found
