"""Stage 3d of loading a file: a book project (``projects/<project_id>.yaml``).

A project file is the story bible of one book: title, language, premise,
style, planned chapters and their length, and optionally characters and an
outline written by hand. It lives in ``projects/`` beside ``storyloom.yaml``
(:func:`find_projects_dir`); items name it with ``project_id``.

:func:`load_project` runs the same stages as a job file (positions from
:mod:`storyloom.document`, ``schemas/project.schema.json`` through
:mod:`storyloom.validation`), then the checks a schema cannot say: the
``project_id`` is the file's name, and outline chapters and character names
are each written once. Every problem is a ConfigError at ``file:line:col``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .document import Document, error_at, parse_document
from .validation import validate

__all__ = ["PROJECTS_DIR", "find_projects_dir", "load_project", "project_from_document", "project_path"]

#: The folder beside ``storyloom.yaml`` that holds the project files.
PROJECTS_DIR = "projects"


def find_projects_dir(settings_dir: str | os.PathLike | None) -> Path:
    """``projects/`` in ``settings_dir`` (the folder of ``storyloom.yaml``);
    with no settings file, ``projects/`` in the working folder."""
    return Path(settings_dir if settings_dir is not None else ".") / PROJECTS_DIR


def project_path(projects_dir: Path, project_id: str) -> Path | None:
    """Where project ``project_id``'s file would be: ``<id>.yaml``, else
    ``<id>.yml`` or ``<id>.json`` if one of those exists; None if the id is
    not a plain file name (it could point outside the folder)."""
    if not project_id or project_id in (".", "..") or "/" in project_id or "\\" in project_id or "\0" in project_id:
        return None
    for suffix in (".yaml", ".yml", ".json"):
        candidate = projects_dir / f"{project_id}{suffix}"
        if candidate.exists():
            return candidate
    return projects_dir / f"{project_id}.yaml"


def load_project(path: str | os.PathLike) -> dict[str, Any]:
    """Parse and validate one project file; return its plain values.

    :raises ConfigError: unreadable, malformed or invalid, at its file:line:col.
    """
    return project_from_document(parse_document(Path(path)))


def project_from_document(doc: Document) -> dict[str, Any]:
    """Validate a parsed project document (see :func:`load_project`)."""
    validate(doc, "project.schema.json")
    data = doc.data
    stem = Path(doc.file).stem
    if data["project_id"] != stem:
        raise error_at(doc, ("project_id",), f"project_id {data['project_id']!r} is not the file's name "
                                             f"({stem!r}): name the file {data['project_id']}.yaml, or fix the id")
    _once(doc, "outline", "chapter", "chapter")
    _once(doc, "characters", "name", "character")
    chapters = data.get("chapters")
    for i, beat in enumerate(data.get("outline", ())):
        if chapters is not None and beat["chapter"] > chapters:
            raise error_at(doc, ("outline", i, "chapter"),
                           f"chapter {beat['chapter']} is past the planned chapters ({chapters})")
    return data


def _once(doc: Document, list_key: str, key: str, what: str) -> None:
    seen: dict[Any, int] = {}
    for i, entry in enumerate(doc.data.get(list_key, ())):
        value = entry[key]
        if value in seen:
            first = doc.location((list_key, seen[value], key))
            raise error_at(doc, (list_key, i, key), f"{what} {value!r} is written twice (first at line {first.line})")
        seen[value] = i
