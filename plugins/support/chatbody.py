"""Checks an OpenAI Batch API line's ``body`` before anything is stored.

The Batch API input format is OpenAI's, so OpenAI's published request schema
is the contract of the file, whichever provider the job's models use: a body
is checked against ``CreateChatCompletionRequest`` (shipped beside the openai
provider as ``openai-chat-request.schema.json``, extracted from the published
OpenAPI spec by ``tests/openai_schema.py``), then against :data:`LIMITS`, what
storyloom itself can send: ``max_tokens`` / ``max_completion_tokens`` of at
least 1, ``n`` of 1, text messages in the roles :data:`ROLES`, and no field
the request schema does not know (OpenAI refuses those; the schema alone
allows them).

``model`` need not be given (the job's models and routing choose the model,
so a body's ``model`` is ignored); when given it must be what the schema
allows, a string.
"""

from __future__ import annotations

import copy
import importlib.resources
import json
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from storyloom import ConfigError
from storyloom.document import parse_json_text
from storyloom.errors import Location
from storyloom.validation import compile_schema, format_path, validate_parts

__all__ = ["LIMITS", "REQUEST_SCHEMA", "ROLES", "check_body"]

#: OpenAI's CreateChatCompletionRequest, with its $defs (package data).
REQUEST_SCHEMA: dict[str, Any] = json.loads(
    importlib.resources.files("storyloom.plugins.providers").joinpath("openai-chat-request.schema.json")
    .read_text(encoding="utf-8"))
#: The message roles storyloom sends (tool and function messages need tool calls, which it does not make).
ROLES = ("system", "developer", "user", "assistant")


def _known_fields(schema: dict[str, Any]) -> list[str]:
    """Every top-level body field the request schema names (through its allOf and $refs)."""
    names: list[str] = []
    pending = [schema]
    while pending:
        node = pending.pop()
        if "$ref" in node:
            pending.append(schema["$defs"][node["$ref"].removeprefix("#/$defs/")])
        names.extend(name for name in node.get("properties", {}) if name not in names)
        pending.extend(node.get("allOf", ()))
    return sorted(names)


def _checkable(schema: dict[str, Any]) -> dict[str, Any]:
    """The request schema as storyloom checks it: ``model`` optional, and each
    ``oneOf`` with a ``discriminator`` (a message's ``role``) checked as the
    discriminator means it -- only the variant the key names -- which gives
    errors about that variant and is ten times faster than trying them all."""
    relaxed = copy.deepcopy(schema)
    for part in relaxed.get("allOf", ()):
        if "model" in part.get("required", ()):
            part["required"] = [key for key in part["required"] if key != "model"]
    defs = relaxed["$defs"]
    for name, node in defs.items():
        key = (node.get("discriminator") or {}).get("propertyName")
        if key and "oneOf" in node:
            defs[name] = _dispatch(key, node["oneOf"], defs)
    return relaxed


def _dispatch(key: str, variants: list[dict[str, Any]], defs: dict[str, Any]) -> dict[str, Any]:
    values, cases = [], []
    for variant in variants:
        target = defs[variant["$ref"].removeprefix("#/$defs/")]
        for value in target["properties"][key]["enum"]:
            values.append(value)
            cases.append({"if": {"properties": {key: {"const": value}}}, "then": variant})
    return {"type": "object", "required": [key], "properties": {key: {"enum": values}}, "allOf": cases}


_TOKENS = {"type": ["integer", "null"], "minimum": 1}
#: What storyloom can send, on top of the request schema.
LIMITS: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        **dict.fromkeys(_known_fields(REQUEST_SCHEMA), True),
        "max_tokens": _TOKENS,
        "max_completion_tokens": _TOKENS,
        "n": {"enum": [1, None], "x-message": "storyloom asks for one reply per request: expected 1, got {got}"},
        "messages": {"type": "array", "items": {"type": "object", "properties": {
            "role": {"enum": list(ROLES), "x-message": f"storyloom sends {', '.join(ROLES)} messages, got {{got}} "
                                                       "(tool calls are not supported)"},
            "content": {"anyOf": [
                {"type": "string"},
                {"type": "array", "items": {"type": "object", "required": ["type", "text"],
                                            "properties": {"type": {"const": "text"}, "text": {"type": "string"}}}},
            ], "x-message": "only text content is supported (a string or {type: text, text: ...} parts), "
                            "got {got}"},
        }}},
    },
}
_REQUEST = compile_schema(_checkable(REQUEST_SCHEMA), "the OpenAI chat request schema")
_LIMITS = compile_schema(LIMITS, "storyloom's chat request limits")


def check_body(entry: dict[str, Any], text: str, file: str, line: int) -> None:
    """Raise a ConfigError at ``file:line:col: at body.FIELD`` if ``entry["body"]``
    (``entry`` is the parsed line, ``text`` its source) is a request the
    provider, or storyloom, would refuse."""
    body = entry["body"]
    if _REQUEST.is_valid(body) and _LIMITS.is_valid(body):
        return
    parts: list[tuple[tuple[str, ...], Draft202012Validator]] = [(("body",), _REQUEST), (("body",), _LIMITS)]
    try:
        doc = parse_json_text(text, file, line)
    except ConfigError:
        doc = None
    if doc is not None and isinstance(doc.data.get("body"), dict):
        validate_parts(doc, parts)  # raises, located in the line
    # The positioned re-read disagreed with json (it never should): say it at the line.
    error = best_match([*_REQUEST.iter_errors(body), *_LIMITS.iter_errors(body)])
    raise ConfigError(Location(file, line, 1), format_path(("body", *error.absolute_path)), error.message)
