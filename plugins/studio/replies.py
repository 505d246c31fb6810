"""The structured replies the studio's job types ask for, and their checks.

Every schema is written for OpenAI's strict mode, which the other providers
accept too: each object lists all its properties as ``required`` and sets
``additionalProperties: false``; no free-form maps (relationships are a list
of ``{name, relation}``). Where the names are known (the book's characters)
they are an ``enum``, so that a beat or a state update cannot name someone the
book does not have. A reply the provider parsed (``Response.data``) is checked
again here for what a schema cannot say; a failure is ``INVALID_OUTPUT``,
which the retry plugin retries a bounded number of times.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

from storyloom import ErrorKind, ProviderError

#: The rubric's criteria, each scored 1-10.
CRITERIA = ("continuity", "character_voice", "pacing", "language_quality")
CRITERIA_TEXT = {
    "continuity": "continuity with the story bible, the outline beat and the previous chapter's summary",
    "character_voice": "each character sounds like their sheet",
    "pacing": "the chapter moves, covers its beat and ends on its hook",
    "language_quality": "grammar, spelling and idiom of the book's language",
}


def _object(properties: dict[str, Any]) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(properties), "additionalProperties": False}


def _names(known: Sequence[str]) -> dict[str, Any]:
    return {"type": "string", "enum": list(dict.fromkeys(known))} if known else {"type": "string"}


# The schemas are cached, one dict per shape: a provider compiles (and checks)
# a response schema once per dict, and a book asks for the same shapes again
# and again. Callers must not change them.


@functools.lru_cache(maxsize=1024)
def characters_schema(count: int = 3) -> dict[str, Any]:
    relationship = _object({"name": {"type": "string"}, "relation": {"type": "string"}})
    character = _object({
        "name": {"type": "string"}, "role": {"type": "string"}, "goals": {"type": "string"},
        "traits": {"type": "array", "items": {"type": "string"}, "minItems": 1},
        "voice": {"type": "string"},
        "relationships": {"type": "array", "items": relationship},
        "arc": {"type": "string"},
    })
    return _object({"characters": {"type": "array", "items": character, "minItems": count}})


def outline_schema(chapters: int, names: Sequence[str]) -> dict[str, Any]:
    return _outline_schema(chapters, tuple(names))


@functools.lru_cache(maxsize=1024)
def _outline_schema(chapters: int, names: tuple[str, ...]) -> dict[str, Any]:
    beat = _object({
        "title": {"type": "string"}, "pov": {"type": "string"},
        "characters": {"type": "array", "items": _names(names), "minItems": 1},
        "events": {"type": "string"}, "hook": {"type": "string"},
    })
    arc = _object({"name": {"type": "string"}, "summary": {"type": "string"}})
    return _object({
        "arcs": {"type": "array", "items": arc, "minItems": 1},
        # One beat per planned chapter, in order: the chapter number is the position.
        "beats": {"type": "array", "items": beat, "minItems": chapters, "maxItems": chapters},
    })


def chapter_schema(names: Sequence[str]) -> dict[str, Any]:
    return _chapter_schema(tuple(names))


@functools.lru_cache(maxsize=1024)
def _chapter_schema(names: tuple[str, ...]) -> dict[str, Any]:
    update = _object({"name": _names(names), "state": {"type": "string"}})
    return _object({
        "title": {"type": "string"},
        "text": {"type": "string"},
        "summary": {"type": "string"},
        "character_state": {"type": "array", "items": update},
    })


@functools.lru_cache(maxsize=1)
def qc_schema() -> dict[str, Any]:
    score = {"type": "integer", "minimum": 1, "maximum": 10}
    return _object({
        "scores": _object({name: score for name in CRITERIA}),
        "fixes": {"type": "array", "items": {"type": "string"}},
        "comment": {"type": "string"},
    })


def invalid(message: str) -> ProviderError:
    return ProviderError(ErrorKind.INVALID_OUTPUT, message)


def data_of(response: Any, what: str) -> dict[str, Any]:
    """The parsed reply, or INVALID_OUTPUT naming what was expected."""
    data = getattr(response, "data", None)
    if not isinstance(data, dict):
        raise invalid(f"expected a structured {what} reply (a JSON object); got {type(data).__name__}")
    return data


def need(data: dict[str, Any], key: str, kind: type, what: str) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise invalid(f"the {what} reply has no {key!r} of type {kind.__name__}")
    return value
