"""Checks an OpenAI Batch API line's ``body`` before anything is stored.

The Batch API input format is OpenAI's, so OpenAI's published request schema
is the contract of the file, whichever provider the job's models use: a body
is checked against ``CreateChatCompletionRequest`` (shipped beside this
module as ``openai-chat-request.schema.json``, extracted from the published
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
import functools
import importlib.resources
import json
from typing import Any, NamedTuple

from jsonschema import Draft202012Validator
from jsonschema.exceptions import best_match

from storyloom import ConfigError
from storyloom.document import parse_json_text, value_at
from storyloom.errors import Location
from storyloom.validation import compile_schema, format_path, validate_parts

__all__ = ["LIMITS", "REQUEST_SCHEMA", "ROLES", "check_body"]

#: OpenAI's CreateChatCompletionRequest, with its $defs (package data).
REQUEST_SCHEMA: dict[str, Any] = json.loads(
    importlib.resources.files(__package__).joinpath("openai-chat-request.schema.json")
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


#: The request schema's message: a oneOf of one variant per role, its ``discriminator``.
_MESSAGE = "ChatCompletionRequestMessage"


def _checkable(schema: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """The request schema as storyloom checks it, and a schema per message role.

    ``model`` is optional. A ``oneOf`` with a ``discriminator`` is checked as
    the discriminator means it -- only the variant its key names -- which
    gives errors about that variant and is far faster than trying them all.
    Messages, the bulk of a body, leave the request schema with their role
    checked only; :func:`check_body` checks each against its role's variant.
    """
    relaxed = copy.deepcopy(schema)
    for part in relaxed.get("allOf", ()):
        if "model" in part.get("required", ()):
            part["required"] = [key for key in part["required"] if key != "model"]
    defs = relaxed["$defs"]
    by_role = _variants("role", defs[_MESSAGE]["oneOf"], defs)
    for name, node in defs.items():
        key = (node.get("discriminator") or {}).get("propertyName")
        if key and "oneOf" in node and name != _MESSAGE:
            cases = [{"if": {"properties": {key: {"const": value}}}, "then": {"$ref": ref}}
                     for value, ref in _variants(key, node["oneOf"], defs).items()]
            defs[name] = {"type": "object", "required": [key], "properties": {key: {"enum": [
                case["if"]["properties"][key]["const"] for case in cases]}}, "allOf": cases}
    defs[_MESSAGE] = {"type": "object", "required": ["role"], "properties": {"role": {"enum": list(by_role)}}}
    return relaxed, {role: {"$defs": defs, "$ref": ref} for role, ref in by_role.items()}


def _variants(key: str, variants: list[dict[str, Any]], defs: dict[str, Any]) -> dict[str, str]:
    """Discriminator value -> the $ref of the variant it names."""
    return {value: variant["$ref"] for variant in variants
            for value in defs[variant["$ref"].removeprefix("#/$defs/")]["properties"][key]["enum"]}


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
class _Validators(NamedTuple):
    request: Draft202012Validator
    roles: dict[str, Draft202012Validator]
    limits: Draft202012Validator
    limits_message: Draft202012Validator


@functools.cache
def _validators() -> _Validators:
    """Compiled on the first body checked, not at import: every command imports
    the prompts plugin, and compiling OpenAI's schema takes a good part of a second."""
    relaxed, by_role = _checkable(REQUEST_SCHEMA)
    return _Validators(
        request=compile_schema(relaxed, "the OpenAI chat request schema"),
        roles={role: compile_schema(variant, f"the OpenAI {role} message schema") for role, variant in by_role.items()},
        limits=compile_schema(LIMITS, "storyloom's chat request limits"),
        limits_message=compile_schema(LIMITS["properties"]["messages"]["items"], "storyloom's chat message limits"),
    )


#: Verdicts by JSON text: a Batch file repeats its settings and system message on every line.
_SEEN: dict[str, bool] = {}
_SEEN_MAX = 4096
#: Stands in for the messages while the rest of a body is checked.
_PLACEHOLDER = ({"role": "user", "content": ""},)


def _message_parts(body: dict[str, Any]) -> list[tuple[tuple[str | int, ...], Draft202012Validator]]:
    messages = body.get("messages")
    if not isinstance(messages, list):
        return []
    roles = _validators().roles
    return [(("body", "messages", i), roles[m["role"]]) for i, m in enumerate(messages)
            if isinstance(m, dict) and isinstance(m.get("role"), str) and m["role"] in roles]


def _seen(key: str, check: Any) -> bool:
    verdict = _SEEN.get(key)
    if verdict is None:
        if len(_SEEN) >= _SEEN_MAX:
            _SEEN.clear()
        verdict = _SEEN[key] = bool(check())
    return verdict


def _valid(body: dict[str, Any]) -> bool:
    """Whether every schema accepts ``body``: the fields besides ``messages``,
    then each message, each verdict remembered. The schemas check each field
    on its own, so the parts' verdicts are the whole's. False sends
    :func:`check_body` to the full, located check."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        return False
    rest = {key: value for key, value in body.items() if key != "messages"}
    stand_in = {**rest, "messages": list(_PLACEHOLDER)}
    if not _seen("body:" + json.dumps(rest, sort_keys=True),
                 lambda: _validators().request.is_valid(stand_in) and _validators().limits.is_valid(stand_in)):
        return False
    for message in messages:
        role = message.get("role") if isinstance(message, dict) else None
        if not isinstance(role, str) or role not in _validators().roles:
            return False
        if not _seen("message:" + json.dumps(message, sort_keys=True),
                     lambda: _validators().roles[role].is_valid(message)
                     and _validators().limits_message.is_valid(message)):
            return False
    return True


def check_body(entry: dict[str, Any], text: str, file: str, line: int) -> None:
    """Raise a ConfigError at ``file:line:col: at body.FIELD`` if ``entry["body"]``
    (``entry`` is the parsed line, ``text`` its source) is a request the
    provider, or storyloom, would refuse."""
    body = entry["body"]
    if _valid(body):
        return
    parts = [(("body",), _validators().request), (("body",), _validators().limits), *_message_parts(body)]
    try:
        doc = parse_json_text(text, file, line)
    except ConfigError:
        doc = None
    if doc is not None and isinstance(doc.data.get("body"), dict):
        validate_parts(doc, parts)  # raises, located in the line, if any schema refuses the body
        return
    # The positioned re-read failed (it never should): say it at the line.
    for prefix, validator in parts:
        error = best_match(validator.iter_errors(value_at(entry, prefix)))
        if error is not None:
            raise ConfigError(Location(file, line, 1), format_path((*prefix, *error.absolute_path)), error.message)
