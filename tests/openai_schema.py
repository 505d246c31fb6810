"""Extract the chat request schema storyloom ships from OpenAI's published spec.

``plugins/support/openai-chat-request.schema.json`` is ``CreateChatCompletionRequest``
from ``tests/data/openai-chat-completions.openapi.json`` (a copy of the published
OpenAPI spec) with every ``$ref`` it needs, as plain JSON Schema 2020-12:
OpenAPI's ``nullable`` becomes a ``null`` type, and prose (descriptions,
examples, ``x-`` extensions) is left out. The test in
``test_chat_request_schema.py`` keeps the shipped file equal to this
extraction; regenerate it with ``python tests/openai_schema.py``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SPEC = ROOT / "tests" / "data" / "openai-chat-completions.openapi.json"
SHIPPED = ROOT / "plugins" / "support" / "openai-chat-request.schema.json"
TOP = "CreateChatCompletionRequest"
_PREFIX = "#/components/schemas/"
#: Keywords whose value is a mapping of names to schemas.
_NAMED = ("properties", "patternProperties", "$defs", "dependentSchemas")
#: Keywords whose value is one schema, or a list of them.
_ONE = ("items", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames")
_MANY = ("allOf", "anyOf", "oneOf", "prefixItems")
_PROSE = ("description", "example", "examples", "title", "deprecated")


def extract(spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """The shipped schema, built from the spec (read from :data:`SPEC` by default)."""
    spec = spec if spec is not None else json.loads(SPEC.read_text(encoding="utf-8"))
    components = spec["components"]["schemas"]
    needed: dict[str, Any] = {}
    pending = [TOP]
    while pending:
        name = pending.pop()
        if name in needed:
            continue
        needed[name] = _convert(components[name], pending)
    top = needed.pop(TOP)
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": "https://storyloom.dev/schemas/openai-chat-request.schema.json",
        "title": "OpenAI CreateChatCompletionRequest",
        "$comment": f"Extracted from {spec['info'].get('source', 'the OpenAI OpenAPI spec')} "
                    "by tests/openai_schema.py; do not edit by hand.",
        **top,
        "$defs": dict(sorted(needed.items())),
    }


def _convert(node: Any, pending: list[str]) -> Any:
    """One schema node: refs rewritten (and queued), nullable made a type, prose dropped."""
    if isinstance(node, list):
        return [_convert(child, pending) for child in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key in _PROSE or key.startswith("x-") or key == "nullable":
            continue
        if key == "$ref":
            name = value.removeprefix(_PREFIX)
            pending.append(name)
            out[key] = f"#/$defs/{name}"
        elif key in _NAMED:
            out[key] = {name: _convert(child, pending) for name, child in value.items()}
        elif key in _ONE or key in _MANY:
            out[key] = _convert(value, pending)
        else:
            out[key] = value  # data: enum, required, default, const...
    if node.get("nullable") is True:
        out = _nullable(out)
    return out


def _nullable(schema: dict[str, Any]) -> dict[str, Any]:
    if "enum" in schema and None not in schema["enum"]:
        schema["enum"] = [*schema["enum"], None]
    kind = schema.get("type")
    if isinstance(kind, str):
        schema["type"] = [kind, "null"]
    elif isinstance(kind, list):
        schema["type"] = [*kind, *(["null"] if "null" not in kind else [])]
    elif "enum" not in schema:
        return {"anyOf": [{"type": "null"}, schema]}
    return schema


def render(schema: dict[str, Any]) -> str:
    return json.dumps(schema, indent=1, ensure_ascii=False) + "\n"


if __name__ == "__main__":
    SHIPPED.write_text(render(extract()), encoding="utf-8")
    print(f"wrote {SHIPPED}")
