"""Load job files and ``storyloom.yaml``: parse, validate, build.

Every problem is a :class:`~storyloom.errors.ConfigError` that says where
(``file:line:column``, then the path inside the document) and what was
expected, for the CLI to print as ``error: {err}``::

    jobs/x.yaml:12:5: at items[3].chapter_num: expected integer, got string 'five'

Loading runs in three stages, each with its own errors:

1. :func:`parse_document` reads YAML or JSON into plain values and remembers
   where each value sits (syntax, encoding, duplicate keys, alias bombs);
2. the JSON Schemas in ``storyloom.schemas`` check shapes and types;
3. semantic checks look names up in the settings and in the plugin
   registries (:class:`KnownNames`), expand chapter ranges, compute
   priorities and build a :class:`~storyloom.job.Job` or
   :class:`~storyloom.settings.Settings`.
"""

from __future__ import annotations

import difflib
import functools
import importlib.resources
import json
import math
import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass, replace
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Callable

import yaml
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError, best_match

from .durations import expand_chapters, parse_duration
from .errors import ConfigError, ErrorKind, Location
from .job import Item, Job, JobConfig, Priority
from .pricing import default_price
from .settings import (
    BUILTIN_MODELS,
    DEFAULT_PROGRESS,
    DEFAULT_REPORTS,
    BatchLimit,
    FailurePolicy,
    ModelSpec,
    Price,
    RetryConfig,
    RetryDelay,
    Settings,
    Webhook,
)

__all__ = [
    "Document",
    "KnownNames",
    "check_settings",
    "expand_chapters",
    "find_settings",
    "load_job",
    "load_job_document",
    "load_settings",
    "parse_document",
    "parse_duration",
    "peek_plugins",
    "settings_from_document",
]

#: The settings file :func:`find_settings` looks for.
SETTINGS_FILE = "storyloom.yaml"
#: Limits that make hostile or broken files fail fast instead of eating memory.
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_NODES = 100_000  # values after expanding aliases
MAX_DEPTH = 64
#: Items in one job after expanding chapter ranges.
MAX_ITEMS = 100_000
#: A job's ``input:`` JSONL file (the OpenAI Batch API's own limit for one file).
MAX_INPUT_BYTES = 200 * 1024 * 1024
#: What each line of an ``input:`` file holds: the Batch API's request fields.
_INPUT_KEYS = ("custom_id", "method", "url", "body")
_INPUT_URL = "/v1/chat/completions"

PathKey = tuple[str | int, ...]


# ---------------------------------------------------------------------------
# Stage 1: parsing, with positions
# ---------------------------------------------------------------------------


class Document:
    """A parsed YAML or JSON file: plain values plus where each one was written.

    ``data`` is the top-level mapping (dicts, lists, str, int, float, bool,
    None; timestamps stay strings). ``file`` is the path as given.
    """

    def __init__(
        self,
        file: str,
        data: dict[str, Any],
        values: dict[PathKey, tuple[int, int]],
        keys: dict[PathKey, tuple[int, int]],
        plain: dict[PathKey, str],
    ) -> None:
        self.file = file
        self.data = data
        self._values = values
        self._keys = keys
        self._plain = plain

    def location(self, path: Iterable[str | int] = ()) -> Location:
        """Where the value at ``path`` starts (1-based line and column); for a
        path that does not exist, where its nearest existing parent starts."""
        path = tuple(path)
        for end in range(len(path), -1, -1):
            position = self._values.get(path[:end])
            if position is not None:
                return Location(self.file, *position)
        return Location(self.file, 1, 1)

    def key_location(self, path: Iterable[str | int]) -> Location:
        """Where the mapping key ending ``path`` is written (for "unknown key")."""
        path = tuple(path)
        position = self._keys.get(path)
        return Location(self.file, *position) if position else self.location(path)

    def plain_text(self, path: Iterable[str | int]) -> str | None:
        """The source text of an unquoted scalar that YAML did not read as a
        string (``no`` -> False), so errors can suggest quoting it."""
        return self._plain.get(tuple(path))


def parse_document(path: Path) -> Document:
    """Read a YAML or JSON file (JSON by a ``.json`` suffix) into a :class:`Document`.

    YAML scalars resolve as with ``yaml.safe_load`` except timestamps, which stay
    strings. Aliases are expanded, up to :data:`MAX_NODES` values and
    :data:`MAX_DEPTH` levels; ``<<`` merge keys work.

    :raises ConfigError: unreadable, larger than :data:`MAX_FILE_BYTES`, not
        UTF-8, malformed, empty, not a mapping at the top, duplicate or
        non-string keys, unsupported tags, too large once aliases are expanded.
    """
    file = str(path)
    raw = _read_bytes(Path(path), file)
    text = _decode(raw, file)
    is_json = Path(path).suffix.lower() == ".json"
    if is_json:
        text = _json_as_yaml(text)
    root = _compose(text, file, is_json)
    if root is None:
        raise ConfigError(Location(file, 1, 1), "", "the file is empty; expected a mapping such as 'job_id: ...'")
    builder = _Builder(file, is_json)
    data = builder.build(root, (), 0)
    if not isinstance(data, dict):
        raise ConfigError(
            Location(file, *_position(root)), "", f"expected a mapping of keys at the top level, got {describe(data)}"
        )
    return Document(file, data, builder.values, builder.keys, builder.plain)


def _read_bytes(path: Path, file: str) -> bytes:
    try:
        with path.open("rb") as stream:
            raw = stream.read(MAX_FILE_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(file, "", "file not found") from None
    except IsADirectoryError:
        raise ConfigError(file, "", "is a directory, not a file") from None
    except OSError as err:
        raise ConfigError(file, "", f"cannot read the file: {err.strerror or err}") from None
    if len(raw) > MAX_FILE_BYTES:
        mb, rest = divmod(MAX_FILE_BYTES, 1024 * 1024)
        limit = f"{mb} MB" if mb and not rest else f"{MAX_FILE_BYTES:,} bytes"
        raise ConfigError(file, "", f"the file is larger than {limit}")
    return raw


def _decode(raw: bytes, file: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        line_start = raw.rfind(b"\n", 0, err.start) + 1
        column = len(raw[line_start : err.start].decode("utf-8", "replace")) + 1
        raise ConfigError(
            Location(file, line, column),
            "",
            f"the file is not valid UTF-8 (byte 0x{raw[err.start]:02x}); save it as UTF-8",
        ) from None


# In JSON, tabs may only appear between tokens (where a space means the same)
# and these characters only inside strings (where the escape means the same),
# but YAML refuses tabs there and reads the others as line breaks.
_JSON_ESCAPE_RE = re.compile("[\x7f-\x9f\u2028\u2029]")


def _json_as_yaml(text: str) -> str:
    text = text.replace("\t", " ")
    return _JSON_ESCAPE_RE.sub(lambda m: f"\\u{ord(m[0]):04x}", text)


class _LimitError(yaml.MarkedYAMLError):
    """The document is too deep or too large to compose (not a syntax error)."""


class _Loader(yaml.SafeLoader):
    """Composes nodes only, refusing documents too deep or too large up front."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0
        self._count = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        self._count += 1
        try:
            if self._depth > MAX_DEPTH:
                raise _LimitError(problem=f"the document is nested deeper than {MAX_DEPTH} levels",
                                  problem_mark=self.peek_event().start_mark)
            if self._count > MAX_NODES:
                raise _LimitError(problem=f"the document has more than {MAX_NODES:,} values",
                                  problem_mark=self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _compose(text: str, file: str, is_json: bool) -> yaml.Node | None:
    kind = "JSON" if is_json else "YAML"
    loader = None
    try:
        loader = _Loader(text)  # the reader checks every character here already
        return loader.get_single_node()
    except _LimitError as err:
        mark = err.problem_mark
        raise ConfigError(Location(file, mark.line + 1, mark.column + 1), "", err.problem) from None
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        where = Location(file, mark.line + 1, mark.column + 1) if mark else Location(file, 1, 1)
        raise ConfigError(where, "", f"invalid {kind}: {_yaml_problem(err)}") from None
    except yaml.reader.ReaderError as err:
        line, column = _line_column(text, err.position)
        character = f"#x{err.character:04x}" if isinstance(err.character, int) else repr(err.character)
        raise ConfigError(
            Location(file, line, column), "", f"invalid {kind}: control character {character} is not allowed"
        ) from None
    except yaml.YAMLError as err:  # not raised by PyYAML 6 in practice; keep the promise anyway
        raise ConfigError(Location(file, 1, 1), "", f"invalid {kind}: {err}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _yaml_problem(err: yaml.MarkedYAMLError) -> str:
    problem = err.problem or "syntax error"
    if err.context and err.context_mark and err.problem_mark:
        return f"{problem} ({err.context} at line {err.context_mark.line + 1})"
    return problem if not err.context else f"{err.context}: {problem}"


def _line_column(text: str, index: int) -> tuple[int, int]:
    line = text.count("\n", 0, index) + 1
    return line, index - (text.rfind("\n", 0, index) + 1) + 1


def _position(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


_TAG = "tag:yaml.org,2002:"
_SCALAR_TAGS = {_TAG + name for name in ("null", "bool", "int", "float", "str")}
_TIMESTAMP_TAG = _TAG + "timestamp"
_MERGE_TAG = _TAG + "merge"


class _Builder:
    """Turns composed nodes into plain values, recording each value's position."""

    def __init__(self, file: str, is_json: bool) -> None:
        self.file = file
        self.is_json = is_json
        self.values: dict[PathKey, tuple[int, int]] = {}
        self.keys: dict[PathKey, tuple[int, int]] = {}
        self.plain: dict[PathKey, str] = {}
        self.count = 0
        self._constructor = yaml.constructor.SafeConstructor()

    def error(self, node: yaml.Node, path: PathKey, message: str) -> ConfigError:
        return ConfigError(Location(self.file, *_position(node)), format_path(path), message)

    def build(self, node: yaml.Node, path: PathKey, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise self.error(node, path, f"the document expands to more than {MAX_NODES:,} values "
                             "(an alias (*name) repeating a large anchor?)")
        if depth > MAX_DEPTH:
            raise self.error(node, path[:8], f"the document is nested deeper than {MAX_DEPTH} levels "
                             "(an alias inside its own anchor?)")
        self.values[path] = _position(node)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node, path)
        if isinstance(node, yaml.SequenceNode) and node.tag == _TAG + "seq":
            return [self.build(child, path + (i,), depth + 1) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode) and node.tag == _TAG + "map":
            return self.mapping(node, path, depth)
        raise self.error(node, path, f"unsupported YAML tag {node.tag!r}")

    def scalar(self, node: yaml.ScalarNode, path: PathKey) -> Any:
        value = self._scalar_value(node, path)
        if isinstance(value, float) and not math.isfinite(value):
            raise self.error(node, path, f"expected a finite number, got {node.value!r}")
        if isinstance(value, str):
            value = _join_surrogates(value)
        elif node.style is None:
            self.plain[path] = node.value
        return value

    def _scalar_value(self, node: yaml.ScalarNode, path: PathKey) -> Any:
        if self.is_json and node.style is None:
            try:
                value = json.loads(node.value)
            except ValueError:
                value = ...
            if value is ... or isinstance(value, (str, list, dict)):
                raise self.error(node, path, f"invalid JSON value {node.value!r} (strings need double quotes)")
            return value
        if node.tag == _TIMESTAMP_TAG:
            return node.value  # dates stay text: the schema decides what they mean
        if node.tag not in _SCALAR_TAGS:
            raise self.error(node, path, f"unsupported YAML tag {node.tag!r}")
        try:
            return self._constructor.yaml_constructors[node.tag](self._constructor, node)
        except Exception:  # PyYAML raises ValueError, KeyError... for `!!int abc` and the like
            kind = node.tag.removeprefix(_TAG)
            raise self.error(node, path, f"cannot read {node.value!r} as {kind}") from None

    def mapping(self, node: yaml.MappingNode, path: PathKey, depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        # Merged (<<) entries first, so that the mapping's own keys override them.
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                self.merge(value_node, path, depth, result)
        seen: dict[str, yaml.Node] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _MERGE_TAG:
                continue
            key = self.key(key_node, path)
            if key in seen:
                first = seen[key].start_mark.line + 1
                raise self.error(key_node, path + (key,), f"duplicate key '{key}' (first given on line {first})")
            seen[key] = key_node
            self.keys[path + (key,)] = _position(key_node)
            result[key] = self.build(value_node, path + (key,), depth + 1)
        return result

    def merge(self, node: yaml.Node, path: PathKey, depth: int, into: dict[str, Any]) -> None:
        sources = node.value if isinstance(node, yaml.SequenceNode) else [node]
        # In a list of merged mappings the first one wins: apply them last to first.
        for source in reversed(sources):
            if not isinstance(source, yaml.MappingNode):
                raise self.error(source, path, "a merge key (<<) needs a mapping or a list of mappings")
            position = self.values[path]
            merged = self.build(source, path, depth + 1)  # counted and depth-checked like any value
            self.values[path] = position  # the mapping still starts where it is written
            into.update(merged)

    def key(self, node: yaml.Node, path: PathKey) -> str:
        if not isinstance(node, yaml.ScalarNode):
            raise self.error(node, path, "mapping keys must be strings, not lists or mappings")
        self.count += 1
        key = self._scalar_value(node, path)
        if not isinstance(key, str):
            raise self.error(node, path, f"mapping keys must be strings; quote the key \"{node.value}\"")
        return _join_surrogates(key)


def _join_surrogates(text: str) -> str:
    """JSON writes characters outside the BMP as two \\u escapes; join them."""
    if not any("\ud800" <= ch <= "\udfff" for ch in text):
        return text
    try:
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        return text.encode("utf-8", "replace").decode("utf-8")  # a lone surrogate: keep it visible as '?'


# ---------------------------------------------------------------------------
# Stage 2: JSON Schema, with human messages
# ---------------------------------------------------------------------------

_FORMATS = FormatChecker(formats=())


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


def _validate(doc: Document, schema_name: str) -> None:
    errors = list(_validator(schema_name).iter_errors(doc.data))
    if errors:
        raise _config_error(doc, _pick(doc, errors))


# Among errors on the same value the first of these explains the others best:
# a misspelt key also shows up as a missing required one.
_RANK = {"additionalProperties": 0, "type": 1, "enum": 2, "format": 3, "required": 9}


def _pick(doc: Document, errors: list[ValidationError]) -> ValidationError:
    """One error to report: the first in the file, the most telling on a tie."""

    def key(error: ValidationError) -> tuple[int, int, int]:
        where = doc.location(error.absolute_path)
        return (where.line or 0, where.column or 0, _RANK.get(str(error.validator), 5))

    return min(errors, key=key)


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
        return _config_error(doc, best_match(error.context))
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


def describe(value: object) -> str:
    """A value as an error message shows it: ``string 'five'``, ``integer 5``, ``a list``."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {str(value).lower()}"
    if isinstance(value, int):
        return f"integer {value}" if abs(value) < 10**30 else "a very large integer"
    if isinstance(value, float):
        return f"number {value}"
    if isinstance(value, str):
        shown = value if len(value) <= 60 else value[:57] + "..."
        return "an empty string" if not value else f"string {shown!r}"
    if isinstance(value, list):
        return "an empty list" if not value else "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def format_path(path: Iterable[str | int]) -> str:
    """``("items", 2, "item_id")`` -> ``items[2].item_id``; odd keys are quoted."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif re.fullmatch(r"[A-Za-z0-9_-]+", part):
            out += f".{part}" if out else part
        else:
            out += f"[{part!r}]"
    return out


def unknown_name(kind: str, name: str, known: Iterable[str]) -> str:
    """``unknown job_type 'x'; did you mean 'y'? (known: ...)``."""
    names = sorted(set(known))
    listing = ", ".join(names[:20]) + (", ..." if len(names) > 20 else "") if names else "none registered"
    return f"unknown {kind} '{name}'{_suggest(name, names)} (known: {listing})"


def _suggest(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, list(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


# ---------------------------------------------------------------------------
# Stage 3: names the plugins registered
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class KnownNames:
    """The names registered by the loaded plugins, to check files against.

    A field left as None is not checked (a partial registry, or a test); an
    empty collection means nothing of that kind is registered.
    """

    job_types: Collection[str] | None = None
    providers: Collection[str] | None = None
    strategies: Collection[str] | None = None
    retry_policies: Collection[str] | None = None
    sinks: Collection[str] | None = None
    renderers: Collection[str] | None = None


def _check_name(kind: str, name: str, known: Collection[str] | None, fail: Callable[[str], ConfigError]) -> None:
    if known is not None and name not in known:
        raise fail(unknown_name(kind, name, known))


def peek_plugins(doc: Document) -> list[tuple[str, Location]]:
    """The module names under ``plugins:`` in a job or settings document, with
    where each is written, checked only enough to import them.

    :raises ConfigError: ``plugins`` is not a list of module names.
    """
    modules = doc.data.get("plugins", [])
    if not isinstance(modules, list):
        raise _error(doc, ("plugins",), f"expected a list of module names, got {describe(modules)}")
    module_schema = schema("job.schema.json")["$defs"]["moduleList"]["items"]
    found = []
    for i, name in enumerate(modules):
        if not isinstance(name, str) or not re.fullmatch(module_schema["pattern"], name):
            raise _error(doc, ("plugins", i), module_schema["x-message"].replace("{got}", describe(name)))
        found.append((name, doc.location(("plugins", i))))
    return found


# ---------------------------------------------------------------------------
# Settings
# ---------------------------------------------------------------------------


def find_settings(start_dir: Path) -> Path | None:
    """The nearest ``storyloom.yaml`` in ``start_dir`` or one of its parents, or None."""
    start = Path(start_dir).resolve()
    for folder in (start, *start.parents):
        candidate = folder / SETTINGS_FILE
        if candidate.is_file():
            return candidate
    return None


def load_settings(path: Path | None) -> Settings:
    """Settings from a ``storyloom.yaml``; ``None`` gives the defaults.

    Names that depend on plugins (providers, strategies, sinks...) are checked
    later, by :func:`check_settings`.

    :raises ConfigError: unreadable, malformed or invalid.
    """
    if path is None:
        return Settings()
    return settings_from_document(parse_document(path))


def settings_from_document(doc: Document) -> Settings:
    """Validate a parsed settings document and build :class:`Settings` (``path`` = ``doc.file``)."""
    _validate(doc, "settings.schema.json")
    data, defaults = doc.data, Settings()
    models = dict(BUILTIN_MODELS)
    for name, entry in data.get("models", {}).items():
        models[name] = _model_spec(doc, name, entry)
    default_models = tuple(data.get("default_models", defaults.default_models))
    for i, name in enumerate(default_models):
        if name not in models:
            raise _error(doc, ("default_models", i), unknown_name("model", name, models))
    return Settings(
        path=doc.file,
        batch_limits={name: _batch_limit(doc, name, entry) for name, entry in data.get("batch_limits", {}).items()},
        retry_config=_retry_config(doc, data.get("retry_config", {})),
        models=models,
        default_models=default_models,
        routing=dict(data.get("routing", defaults.routing)),
        plugins=tuple(data.get("plugins", defaults.plugins)),
        progress=tuple(data.get("progress", defaults.progress)),
        reports=tuple(data.get("reports", defaults.reports)),
        webhooks=tuple(_webhook(doc, i, entry) for i, entry in enumerate(data.get("webhooks", ()))),
        failure_policy=_failure_policy(doc, data.get("failure_policy", {})),
        grace_period=_duration(doc, ("grace_period",), defaults.grace_period),
        aging=_duration(doc, ("aging",), defaults.aging, positive=True),
        synchronous=data.get("synchronous", defaults.synchronous),
        store=data.get("store", defaults.store),
    )


_MODEL_KEYS = {"provider", "model", "base_url", "api_key_env", "rpm", "tpm", "max_parallel", "max_spend_usd", "price"}


def _model_spec(doc: Document, name: str, entry: dict[str, Any]) -> ModelSpec:
    provider = entry.get("provider")
    if provider is None:
        if name not in BUILTIN_MODELS:
            raise _error(doc, ("models", name), "missing required key 'provider' (which provider calls this model?)")
        provider = BUILTIN_MODELS[name].provider
    model_id = entry.get("model", name)
    if "price" in entry:
        price = Price(input=float(entry["price"].get("input", 0.0)), output=float(entry["price"].get("output", 0.0)))
    else:  # the bundled list price of a known model, or free (a local or simulated one)
        price = default_price(model_id) or Price()
    return ModelSpec(
        name=name,
        provider=provider,
        model=model_id,
        base_url=entry.get("base_url"),
        api_key_env=entry.get("api_key_env"),
        rpm=_int_or_none(entry.get("rpm")),
        tpm=_int_or_none(entry.get("tpm")),
        max_parallel=_int_or_none(entry.get("max_parallel")),
        max_spend_usd=float(entry["max_spend_usd"]) if "max_spend_usd" in entry else None,
        price=price,
        options={key: value for key, value in entry.items() if key not in _MODEL_KEYS},
    )


def _batch_limit(doc: Document, job_type: str, entry: dict[str, Any]) -> BatchLimit:
    return BatchLimit(
        max_parallel=_int_or_none(entry.get("max_parallel")),
        timeout_per_item=_duration(doc, ("batch_limits", job_type, "timeout_per_item"), None, positive=True),
    )


def _webhook(doc: Document, index: int, entry: dict[str, Any]) -> Webhook:
    if ("url" in entry) == ("url_env" in entry):
        raise _error(doc, ("webhooks", index), "give either url or url_env (the variable holding the URL)")
    defaults = Webhook()
    return Webhook(
        url=entry.get("url"),
        url_env=entry.get("url_env"),
        events=tuple(entry.get("events", defaults.events)),
        timeout=_duration(doc, ("webhooks", index, "timeout"), defaults.timeout),
        retries=int(entry.get("retries", defaults.retries)),
    )


def _failure_policy(doc: Document, data: dict[str, Any]) -> FailurePolicy:
    defaults = FailurePolicy()
    policy = FailurePolicy(
        min_items=int(data.get("min_items", defaults.min_items)),
        notify_from=float(data.get("notify_from", defaults.notify_from)),
        pause_above=float(data.get("pause_above", defaults.pause_above)),
    )
    if policy.notify_from > policy.pause_above:
        raise _error(doc, ("failure_policy", "notify_from"),
                     f"notify_from ({policy.notify_from:g}) is above pause_above ({policy.pause_above:g})")
    return policy


def _retry_config(doc: Document, data: dict[str, Any]) -> RetryConfig:
    defaults = RetryConfig()
    delay = data.get("retry_delay", {})
    retry_delay = RetryDelay(
        initial=_duration(doc, ("retry_config", "retry_delay", "initial"), defaults.retry_delay.initial),
        multiplier=float(delay.get("multiplier", defaults.retry_delay.multiplier)),
        max=_duration(doc, ("retry_config", "retry_delay", "max"), defaults.retry_delay.max),
    )
    if retry_delay.initial > retry_delay.max:
        raise _error(doc, ("retry_config", "retry_delay", "initial"),
                     f"the initial delay ({retry_delay.initial:g}s) is longer than max ({retry_delay.max:g}s)")
    retryable, non_retryable = _error_kinds(doc, data, defaults)
    return RetryConfig(
        max_retries=int(data.get("max_retries", defaults.max_retries)),
        retry_delay=retry_delay,
        retryable_errors=retryable,
        non_retryable_errors=non_retryable,
        policy=data.get("policy", defaults.policy),
        rate_limit_timeout=_duration(doc, ("retry_config", "rate_limit_timeout"), defaults.rate_limit_timeout,
                                     positive=True),
    )


def _error_kinds(doc: Document, data: dict[str, Any], defaults: RetryConfig) -> tuple[frozenset[ErrorKind], ...]:
    """(retryable, non-retryable) kinds.

    A kind listed in neither is not retried, so once a list is given the second
    set is everything the first is not; non_retryable_errors given alone takes
    its kinds out of the default retryable ones.
    """
    given_retryable = data.get("retryable_errors")
    given_non = data.get("non_retryable_errors")
    if given_retryable is None and given_non is None:
        return defaults.retryable_errors, defaults.non_retryable_errors
    if given_retryable is None:
        retryable = defaults.retryable_errors - frozenset(map(ErrorKind, given_non))
    else:
        retryable = frozenset(map(ErrorKind, given_retryable))
        for i, kind in enumerate(given_non or ()):
            if kind in retryable:
                raise _error(doc, ("retry_config", "non_retryable_errors", i),
                             f"{kind} is listed in both retryable_errors and non_retryable_errors")
    return retryable, frozenset(ErrorKind) - retryable


def check_settings(settings: Settings, known: KnownNames) -> None:
    """Check the settings' plugin names (providers, routing strategy, retry
    policy, progress sinks, report renderers) against what is registered.

    Errors point into the settings file. :func:`load_job` calls this.

    :raises ConfigError: a name is not registered.
    """

    def at(path: PathKey) -> Callable[[str], ConfigError]:
        return lambda message: ConfigError(_settings_location(settings, path), format_path(path), message)

    for name, spec in settings.models.items():
        _check_name("provider", spec.provider, known.providers, at(("models", name, "provider")))
    _check_name("routing strategy", settings.routing.get("strategy", ""), known.strategies, at(("routing", "strategy")))
    _check_name("retry policy", settings.retry_config.policy, known.retry_policies, at(("retry_config", "policy")))
    if settings.progress != DEFAULT_PROGRESS:
        for i, sink in enumerate(settings.progress):
            _check_name("progress sink", sink, known.sinks, at(("progress", i)))
    if settings.reports != DEFAULT_REPORTS:
        for i, renderer in enumerate(settings.reports):
            _check_name("report renderer", renderer, known.renderers, at(("reports", i)))


def _settings_location(settings: Settings, path: PathKey) -> Location:
    """Where ``path`` is in the settings file; re-read only on this error path."""
    if settings.path is None:
        return Location("<built-in settings>")
    try:
        return parse_document(Path(settings.path)).location(path)
    except ConfigError:
        return Location(settings.path)


# ---------------------------------------------------------------------------
# Jobs
# ---------------------------------------------------------------------------


def load_job(path: Path, settings: Settings, known: KnownNames, now: datetime | None = None) -> Job:
    """Parse, validate and build the job in ``path``; see :func:`load_job_document`."""
    return load_job_document(parse_document(path), settings, known, now)


def load_job_document(doc: Document, settings: Settings, known: KnownNames, now: datetime | None = None) -> Job:
    """Validate a parsed job against the schema, the settings and the registered
    names, and build the :class:`Job` (``source`` = ``doc.file``).

    ``now`` (default: the current UTC time; naive means UTC) turns deadlines into
    priorities. All datetimes in the job are timezone-aware.

    :raises ConfigError: the first problem found, in the job or in the settings.
    """
    _validate(doc, "job.schema.json")
    check_settings(settings, known)
    return _JobBuilder(doc, settings, known, _aware(now or datetime.now(timezone.utc))).build()


class _JobBuilder:
    """The semantic checks and the build of one job document, in file order."""

    def __init__(self, doc: Document, settings: Settings, known: KnownNames, now: datetime) -> None:
        self.doc, self.settings, self.known, self.now = doc, settings, known, now
        self.data = doc.data
        self._id_pattern = schema("job.schema.json")["$defs"]["identifier"]["pattern"]

    def fail(self, path: PathKey) -> Callable[[str], ConfigError]:
        return lambda message: _error(self.doc, path, message)

    def build(self) -> Job:
        data = self.data
        self.check_id(data["job_id"], ("job_id",))
        _check_name("job_type", data["job_type"], self.known.job_types, self.fail(("job_type",)))
        models = self.models()
        routing = dict(data.get("routing", {}))
        if routing:
            strategy_path = ("routing", "strategy")
            _check_name("routing strategy", routing["strategy"], self.known.strategies, self.fail(strategy_path))
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

    def check_id(self, value: str, path: PathKey, what: str = "") -> None:
        # The schema's pattern ends in `$`, which Python also matches before a
        # final newline; fullmatch does not.
        if not re.fullmatch(self._id_pattern, value):
            message = schema("job.schema.json")["$defs"]["identifier"]["x-message"]
            raise _error(self.doc, path, what + message.replace("{got}", describe(value)))

    def models(self) -> tuple[str, ...]:
        names = tuple(self.data.get("models", ()))
        for i, name in enumerate(names):
            _check_name("model", name, self.settings.models, self.fail(("models", i)))
        return names

    def when(self, path: PathKey) -> datetime | None:
        value = _get(self.data, path)
        return None if value is None else _parse_when(value, self.doc, path)

    def config(self) -> JobConfig:
        data = self.data.get("config", {})
        if "timeout_per_item" in data and "timeout_per_item" in self.data:
            raise _error(self.doc, ("timeout_per_item",),
                         "timeout_per_item is given twice: here and under config; keep one")
        path = ("config", "timeout_per_item") if "timeout_per_item" in data else ("timeout_per_item",)
        return JobConfig(
            max_parallel=_int_or_none(data.get("max_parallel")),
            timeout_per_item=_duration(self.doc, path, None, positive=True),
            retry_on_failure=data.get("retry_on_failure", True),
            max_retries=_int_or_none(data.get("max_retries")),
            model_rotation=data.get("model_rotation", False),
            max_tokens=_int_or_none(data.get("max_tokens")),
            stream=data.get("stream", False),
        )

    def items(self, job_level: Priority, job_deadline: datetime | None, models: tuple[str, ...]) -> tuple[Item, ...]:
        items: list[Item] = []
        first_seen: dict[str, PathKey] = {}
        for i, entry in enumerate(self.data["items"]):
            for item, id_path in self.expand(entry, ("items", i), job_level, job_deadline, models):
                if item.item_id in first_seen:
                    first = first_seen[item.item_id]
                    line = self.doc.location(first).line
                    raise _error(self.doc, id_path, f"duplicate item_id '{item.item_id}' "
                                 f"(first used at {format_path(first[:2])}, line {line})")
                first_seen[item.item_id] = id_path
                items.append(item)
                if len(items) > MAX_ITEMS:
                    raise _error(self.doc, id_path, f"the job has more than {MAX_ITEMS:,} items")
        return tuple(items)

    def input_items(self, job_level: Priority, job_deadline: datetime | None) -> tuple[Item, ...]:
        """Items from ``input:``, a JSONL file in the OpenAI Batch API input
        format: item_id is the line's custom_id, the body goes in the fields."""
        path = Path(self.doc.file).parent / self.data["input"]
        file = str(path)
        try:
            with path.open("rb") as stream:
                raw = stream.read(MAX_INPUT_BYTES + 1)
        except OSError as err:
            reason = "file not found" if isinstance(err, FileNotFoundError) else err.strerror or str(err)
            raise _error(self.doc, ("input",), f"cannot read {file}: {reason}") from None
        if len(raw) > MAX_INPUT_BYTES:
            raise _error(self.doc, ("input",), f"{file} is larger than {MAX_INPUT_BYTES // (1024 * 1024)} MB")
        level = Priority.from_deadline(job_deadline, self.now, job_level) if job_deadline else job_level
        fields = {"language": self.data["language"]} if "language" in self.data else {}
        items: list[Item] = []
        first_line: dict[str, int] = {}
        # split, not splitlines: JSON strings may hold U+2028 and friends unescaped.
        for number, line in enumerate(_decode(raw, file).split("\n"), 1):
            if not line.strip():
                continue
            entry = _input_line(line, file, number)
            custom_id = entry["custom_id"]
            if custom_id in first_line:
                raise ConfigError(Location(file, number, 1), "custom_id",
                                  f"duplicate custom_id '{custom_id}' (first on line {first_line[custom_id]})")
            first_line[custom_id] = number
            items.append(Item(item_id=custom_id, priority=level, deadline=job_deadline,
                              fields={**fields, "body": entry["body"]}))
            if len(items) > MAX_ITEMS:
                raise ConfigError(Location(file, number, 1), "", f"the job has more than {MAX_ITEMS:,} items")
        if not items:
            raise _error(self.doc, ("input",), f"{file} holds no requests")
        return tuple(items)

    def expand(self, entry: dict[str, Any], path: PathKey, job_level: Priority,
               job_deadline: datetime | None, models: tuple[str, ...]) -> Iterable[tuple[Item, PathKey]]:
        """The item(s) one entry stands for, each with the path its id came from."""
        for key in ("item_id", "project_id"):
            if key in entry:
                self.check_id(entry[key], path + (key,))
        if "model" in entry and entry["model"] not in models:
            raise _error(self.doc, path + ("model",), unknown_name("model", entry["model"], models)
                         .replace("(known:", "(the job's models:"))
        own_deadline = self.when(path + ("deadline",))
        deadline = own_deadline or job_deadline
        level = Priority[entry["priority"].upper()] if "priority" in entry else job_level
        if deadline is not None:
            level = Priority.from_deadline(deadline, self.now, level)
        template = Item(
            item_id=entry.get("item_id", ""),
            project_id=entry.get("project_id"),
            chapter_num=_int_or_none(entry.get("chapter_num")),
            status="skipped" if entry.get("status") in ("skipped", "completed") else "pending",
            priority=level,
            deadline=deadline,
            model=entry.get("model"),
            fields=self.fields(entry),
        )
        if "chapters" not in entry:
            return [(template, path + ("item_id",))]
        return self.chapters(entry, path, template)

    def chapters(self, entry: dict[str, Any], path: PathKey, template: Item) -> list[tuple[Item, PathKey]]:
        try:
            numbers = expand_chapters(entry["chapters"])
        except ValueError as err:
            raise _error(self.doc, path + ("chapters",), str(err)) from None
        prefix = entry.get("item_id") or entry["project_id"]
        out = []
        for number in numbers:
            item_id = f"{prefix}-ch{number}"
            self.check_id(item_id, path + ("chapters",), what="the expanded item_id: ")
            item = replace(template, item_id=item_id, chapter_num=number, fields=dict(template.fields))
            out.append((item, path + ("chapters",)))
        return out

    def fields(self, entry: dict[str, Any]) -> dict[str, Any]:
        """What the item's template sees besides ids: genre, language (default:
        the job's), title, prompt, and ``vars`` kept as one nested mapping."""
        fields = {key: entry[key] for key in ("genre", "language", "title", "prompt", "messages", "vars")
                  if key in entry}
        if "language" not in fields and "language" in self.data:
            fields["language"] = self.data["language"]
        return fields


# ---------------------------------------------------------------------------
# Small shared helpers
# ---------------------------------------------------------------------------


def _input_line(line: str, file: str, number: int) -> dict[str, Any]:
    """One request of an ``input:`` file, checked; errors name the file and line."""
    try:
        entry = json.loads(line)
    except ValueError as err:
        column = getattr(err, "colno", 1)
        raise ConfigError(Location(file, number, column), "", f"invalid JSON: {getattr(err, 'msg', err)}") from None
    where = Location(file, number, 1)
    if not isinstance(entry, dict):
        raise ConfigError(where, "", f"expected a request object ({', '.join(_INPUT_KEYS)}), got {describe(entry)}")
    for key in entry:
        if key not in _INPUT_KEYS:
            raise ConfigError(where, format_path((key,)), unknown_name("key", key, _INPUT_KEYS))
    for key in _INPUT_KEYS:
        if key not in entry:
            raise ConfigError(where, "", f"missing required key '{key}'")
    identifier = schema("job.schema.json")["$defs"]["identifier"]
    custom_id = entry["custom_id"]
    if not isinstance(custom_id, str) or not re.fullmatch(identifier["pattern"], custom_id):
        raise ConfigError(where, "custom_id", "custom_id becomes the item_id: "
                          + identifier["x-message"].replace("{got}", describe(custom_id)))
    if entry["method"] != "POST":
        raise ConfigError(where, "method", f"expected POST, got {describe(entry['method'])}")
    if entry["url"] != _INPUT_URL:
        raise ConfigError(where, "url", f"expected {_INPUT_URL} (only chat requests are supported), "
                                        f"got {describe(entry['url'])}")
    body = entry["body"]
    if not isinstance(body, dict):
        raise ConfigError(where, "body", f"expected a chat completions request body, got {describe(body)}")
    if not isinstance(body.get("messages"), list) or not body["messages"]:
        raise ConfigError(where, "body.messages", f"expected a non-empty list of messages, got "
                                                  f"{describe(body.get('messages'))}")
    return entry


def _error(doc: Document, path: PathKey, message: str) -> ConfigError:
    return ConfigError(doc.location(path), format_path(path), message)


def _get(data: Any, path: PathKey) -> Any:
    for part in path:
        if not isinstance(data, (dict, list)):
            return None
        try:
            data = data[part]
        except (KeyError, IndexError):
            return None
    return data


def _duration(doc: Document, path: PathKey, default: float | None, *, positive: bool = False) -> float | None:
    """The duration at ``path`` in seconds, or ``default`` where none is given."""
    value = _get(doc.data, path)
    if value is None:
        return default
    return parse_duration(value, doc.location(path), format_path(path), positive=positive)


def _int_or_none(value: Any) -> int | None:
    # The schema's "integer" also admits 5.0.
    return None if value is None else int(value)


def _aware(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def _parse_when(text: str, doc: Document, path: PathKey) -> datetime:
    """A date-time or a date (00:00 that day); naive means UTC."""
    try:
        return _aware(datetime.fromisoformat(text))
    except (ValueError, TypeError):  # the schema has checked already; keep the promise anyway
        raise _error(doc, path, f"expected a date-time like 2025-01-15T09:00:00Z or a date like 2025-01-15; "
                                f"got {describe(text)}") from None

