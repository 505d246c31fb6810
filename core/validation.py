"""Stage 2 of loading a file: JSON Schema validation, with human messages.

The schemas shipped in ``storyloom.schemas`` (and the item schemas job types
declare) check shapes and types. Of all the errors a document has, one is
reported per value: the most telling (:data:`_RANK`), worded in the user's
terms (:func:`describe`, :func:`format_path`, :func:`unknown_name`) and
located by the :class:`~storyloom.document.Document`; every value's, in file
order, up to :data:`MAX_ERRORS` (a :class:`~storyloom.errors.ConfigErrors`
when there are several).
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import json
from collections.abc import Iterable
from datetime import date, datetime
from typing import TYPE_CHECKING, Any

from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import SchemaError, ValidationError, best_match

from .errors import ConfigError, ConfigErrors, ErrorKind
from .wording import describe, format_path

if TYPE_CHECKING:
    from .document import Document, PathKey

__all__ = ["compile_schema", "describe", "format_path", "schema", "unknown_name", "validate", "validate_parts"]

_FORMATS = FormatChecker(formats=())
#: The most problems one file reports; the rest are counted ("and 3 more").
MAX_ERRORS = 20


@_FORMATS.checks("date")
def _is_date(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        date.fromisoformat(value)
    except ValueError:
        return False
    return True


@_FORMATS.checks("date-time")
def _is_date_time(value: object) -> bool:
    if not isinstance(value, str):
        return True
    try:
        datetime.fromisoformat(value)
    except ValueError:
        return False
    return not _is_date(value)  # Python also reads a bare date as a date-time


@functools.cache
def _validator(name: str) -> Draft202012Validator:
    """The validator for a schema shipped in ``storyloom.schemas`` (works from a wheel)."""
    text = importlib.resources.files("storyloom.schemas").joinpath(name).read_text(encoding="utf-8")
    schema = json.loads(text)
    kinds = schema.get("$defs", {}).get("errorKinds")
    if kinds is not None:  # ErrorKind is the one source of truth; the file's copy is for editors
        kinds["items"]["enum"] = [kind.value for kind in ErrorKind]
    return Draft202012Validator(schema, format_checker=_FORMATS)


def schema(name: str) -> dict[str, Any]:
    """A shipped schema as a dict, e.g. ``schema("job.schema.json")``."""
    return _validator(name).schema


def validate(doc: Document, schema_name: str,
             parts: Iterable[tuple[PathKey, Draft202012Validator]] = ()) -> None:
    """Check ``doc`` against a shipped schema, and each value at a path in
    ``parts`` against its own validator (a job type's items, say); report
    the errors of all of them, the first in the file first.

    :raises ConfigError: ``file:line:col: at path: message``
        (:class:`~storyloom.errors.ConfigErrors` for several).
    """
    validate_parts(doc, parts, list(_validator(schema_name).iter_errors(doc.data)))


def validate_parts(doc: Document, parts: Iterable[tuple[PathKey, Draft202012Validator]],
                   errors: list[ValidationError] | None = None) -> None:
    """Check each value at a path in ``parts`` against its own validator (a
    Batch API line's body, say); report the first error in the file.

    :raises ConfigError: ``file:line:col: at path: message``.
    """
    errors = list(errors or ())
    for prefix, validator in parts:
        value: Any = doc.data
        for part in prefix:
            value = value[part]
        for error in validator.iter_errors(value):
            error.relative_path.extendleft(reversed(prefix))  # children's paths build on this one
            errors.append(error)
    if errors:
        raise config_errors(doc, errors)


def config_errors(doc: Document, errors: list[ValidationError]) -> ConfigError:
    """One error per value that has any (the most telling of its errors),
    and one per unknown key, in file order, at most :data:`MAX_ERRORS`:
    a ConfigError, or a ConfigErrors for several."""
    by_value: dict[tuple[Any, ...], list[ValidationError]] = {}
    for error in errors:
        by_value.setdefault(tuple(error.absolute_path), []).append(error)
    picked = sorted((_pick(doc, group) for group in by_value.values()), key=lambda e: _key(doc, e))
    found: list[ConfigError] = []
    for error in picked:
        for problem in _config_errors(doc, error):
            if str(problem) not in {str(f) for f in found}:
                found.append(problem)
    if len(found) == 1:
        return found[0]
    return ConfigErrors(found[:MAX_ERRORS], more=max(0, len(found) - MAX_ERRORS))


def compile_schema(schema: dict[str, Any], owner: str) -> Draft202012Validator:
    """A validator for a schema given in code (a job type's items), checked once.

    :raises SchemaError: with ``owner`` named, if the schema itself is invalid.
    """
    key = id(schema)
    cached = _COMPILED.get(key)
    if cached is None or cached[0] is not schema:
        try:
            Draft202012Validator.check_schema(schema)
        except SchemaError as err:
            raise SchemaError(f"{owner}: invalid JSON Schema: {err.message}") from None
        cached = _COMPILED[key] = (schema, Draft202012Validator(schema, format_checker=_FORMATS))
    return cached[1]


# id(schema) -> (schema, validator); the schema is kept so that its id stays its own.
_COMPILED: dict[int, tuple[dict[str, Any], Draft202012Validator]] = {}

# Among errors on the same value the first of these explains the others best:
# a misspelt key also shows up as a missing required one.
_RANK = {"additionalProperties": 0, "type": 1, "enum": 2, "format": 3, "required": 9}


def _pick(doc: Document, errors: list[ValidationError]) -> ValidationError:
    """One error to report: the first in the file, the most telling on a tie."""

    return min(errors, key=lambda error: _key(doc, error))


def _key(doc: Document, error: ValidationError) -> tuple[int, int, int]:
    where = doc.location(error.absolute_path)
    return (where.line or 0, where.column or 0, _RANK.get(str(error.validator), 5))


def _config_errors(doc: Document, error: ValidationError) -> list[ConfigError]:
    """``error`` in the user's terms: one ConfigError, or one per unknown key."""
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        path = tuple(error.absolute_path)
        return [ConfigError(doc.key_location(path + (key,)), format_path(path + (key,)),
                            unknown_name("key", key, allowed))
                for key in error.instance if key not in allowed]
    return [_config_error(doc, error)]


def _config_error(doc: Document, error: ValidationError) -> ConfigError:
    path = tuple(error.absolute_path)
    value = error.instance
    if error.validator == "additionalProperties":
        allowed = list(error.schema.get("properties", {}))
        key = next(k for k in value if k not in allowed)
        key_path = path + (key,)
        return ConfigError(doc.key_location(key_path), format_path(key_path), unknown_name("key", key, allowed))
    custom = error.schema.get("x-message") if isinstance(error.schema, dict) else None
    if custom and error.validator not in ("type", "required"):
        message = custom.replace("{got}", describe(value))
    elif error.validator in ("anyOf", "oneOf") and error.context:
        # A value that is not null is better told what else it could be than "expected null".
        context = [e for e in error.context if not (e.validator == "type" and e.validator_value == "null")]
        return _config_error(doc, best_match(context or error.context))
    else:
        message = _message(doc, error, path)
    return ConfigError(doc.location(path), format_path(path), message)


_TYPE_NAMES = {"object": "a mapping", "array": "a list", "boolean": "true or false"}


def _message(doc: Document, error: ValidationError, path: PathKey) -> str:
    """A message for one schema keyword, in the user's terms."""
    keyword, expected, value = error.validator, error.validator_value, error.instance
    got = describe(value)
    if keyword == "type":
        names = [expected] if isinstance(expected, str) else list(expected)
        message = f"expected {' or '.join(_TYPE_NAMES.get(n, n) for n in names)}, got {got}"
        text = doc.plain_text(path)
        if "string" in names and text is not None:
            message += f" (YAML reads an unquoted {text} as {json.dumps(value)}; quote it: \"{text}\")"
        return message
    if keyword == "required":
        missing = next((k for k in expected if k not in value), expected[0])
        return f"missing required key '{missing}'"
    if keyword == "enum":
        choices = [str(c) for c in expected]
        hint = _suggest(value, choices) if isinstance(value, str) else ""
        return f"expected one of {', '.join(choices)}, got {got}{hint}"
    if keyword in _BOUNDS:
        kind = error.schema.get("type")
        kind = kind if isinstance(kind, str) else "a number"
        return f"expected {kind} {_BOUNDS[keyword]} {expected}, got {got}"
    if keyword == "minItems":
        return "expected a non-empty list, got an empty list" if expected == 1 else (
            f"expected at least {expected} entries, got {len(value)}"
        )
    if keyword == "uniqueItems":
        return f"{describe(_first_repeat(value))} is listed twice; list each once"
    if keyword == "minLength":
        return "expected a non-empty string" if expected == 1 else f"expected at least {expected} characters"
    if keyword == "format":
        example = {"date": "2025-01-15", "date-time": "2025-01-15T09:00:00Z"}.get(expected, "")
        return f"expected a {expected} like {example}, got {got}"
    if keyword == "pattern":
        return f"expected text matching {expected}, got {got}"
    return error.message


_BOUNDS = {"minimum": ">=", "maximum": "<=", "exclusiveMinimum": ">", "exclusiveMaximum": "<"}


def _first_repeat(values: list[Any]) -> Any:
    seen: list[Any] = []
    for value in values:
        if value in seen:
            return value
        seen.append(value)
    return None


def unknown_name(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown job_type 'x'; did you mean 'y'? (known: ...)``."""
    names = sorted(set(known))
    listing = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") if names else "none registered"
    return f"unknown {kind} '{name}'{_suggest(name, names)} (known: {listing})"


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""
