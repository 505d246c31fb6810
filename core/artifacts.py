"""What a book project accumulates: artifacts, each version kept with its provenance.

A job type returns artifacts with its :class:`~storyloom.contracts.Result`
(``Result.artifacts``); the store commits them in the transaction that
completes the item, numbering versions per ``(project_id, kind, key)`` and
stamping where each came from (:meth:`storyloom.store.Store.artifacts` reads
them back). A job type with ``reads_project = True`` gets a
:class:`ProjectContext` as ``item.context`` before ``build_request``.

Data only: this module imports nothing of storyloom.
"""

from __future__ import annotations

import json
from dataclasses import KW_ONLY, dataclass, field
from typing import Any

# Compact and byte-exact (Thai stays Thai); NaN and infinities are not JSON.
_encode = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode


@dataclass(frozen=True)
class Artifact:
    """One version of one thing a project holds: the outline, chapter 3, ...

    ``content`` is JSON-able (text, or a mapping or list of JSON values).
    ``key`` tells artifacts of one kind apart (a chapter's number as text;
    ``""`` for a kind with one artifact per project). The provenance fields
    are the store's to set: a job type leaves them at their defaults.
    """

    project_id: str
    kind: str
    key: str
    content: Any
    _: KW_ONLY
    #: 1 for the first of ``(project_id, kind, key)``, then previous max + 1.
    version: int = 0
    job_id: str = ""
    item_id: str = ""
    attempt: int = 0
    model: str | None = None
    created_at: float = 0.0


@dataclass(frozen=True)
class ProjectContext:
    """What a ``reads_project`` job type sees of its item's project.

    ``project`` is the project file as loaded (None when there is none);
    ``artifacts`` every stored version, oldest first."""

    project: dict[str, Any] | None
    artifacts: list[Artifact] = field(default_factory=list)

    def latest(self, kind: str, key: str | None = None) -> Artifact | None:
        """The newest of ``kind`` (and ``key``, if given): the last stored, or None."""
        found = None
        for artifact in self.artifacts:  # oldest first
            if artifact.kind == kind and (key is None or artifact.key == key):
                found = artifact
        return found

    def newest(self, kind: str) -> dict[str, Artifact]:
        """key -> the newest version, for every key of ``kind``."""
        out: dict[str, Artifact] = {}
        for artifact in self.artifacts:
            if artifact.kind == kind and (artifact.key not in out or artifact.version > out[artifact.key].version):
                out[artifact.key] = artifact
        return out


def check_artifact(artifact: Any) -> str:
    """``artifact``'s content as the JSON text a store keeps, once it is an
    :class:`Artifact` with a non-empty ``project_id`` and ``kind``, a string
    ``key`` and JSON content (no NaN).

    The one check: the pipeline calls it before a completion reaches the
    store, and every store before it writes.

    :raises ValueError: saying what is wrong; callers prefix where.
    """
    if not isinstance(artifact, Artifact):
        raise ValueError(f"an artifact must be a storyloom.artifacts.Artifact, not {type(artifact).__name__}")
    for name in ("project_id", "kind"):
        value = getattr(artifact, name)
        if not isinstance(value, str) or not value:
            raise ValueError(f"artifact {artifact.kind!r}: {name} must be a non-empty string, not {value!r}")
    if not isinstance(artifact.key, str):
        raise ValueError(f"artifact {artifact.kind!r}: key must be a string, not {artifact.key!r}")
    try:
        return _encode(artifact.content)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"artifact {artifact.kind}/{artifact.key}: content is not JSON ({exc})") from None
