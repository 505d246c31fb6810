"""Stage 1 of loading a file: YAML or JSON into plain values, with positions.

:func:`parse_document` reads a job or settings file into a :class:`Document`:
the plain values (dicts, lists, str, int, float, bool, None) plus where each
value and key was written, so later stages can say ``file:line:column``.
Syntax, encoding, duplicate keys and alias bombs fail here, each as a
:class:`~storyloom.errors.ConfigError`; limits make hostile files fail fast.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import yaml

from .durations import parse_duration
from .errors import ConfigError, Location
from .inputfile import FileTooLarge, NotRegularFile, read_regular_file
from .wording import describe, format_path

__all__ = ["MAX_DEPTH", "MAX_FILE_BYTES", "MAX_NODES", "LONE_SURROGATE", "Document", "PathKey", "decode_utf8",
           "duration_at", "error_at", "find_lone_surrogate", "int_or_none", "locate", "parse_document",
           "parse_json_text", "value_at"]

#: Limits that make hostile or broken files fail fast instead of eating memory.
MAX_FILE_BYTES = 10 * 1024 * 1024
MAX_NODES = 100_000  # values after expanding aliases
MAX_DEPTH = 64

#: A path inside a document: ``("items", 3, "chapter_num")``.
PathKey = tuple[str | int, ...]

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

    :raises ConfigError: unreadable, not a regular file (a FIFO, a device, a
        folder: refused without reading or blocking; a symlink to a file is
        fine), larger than :data:`MAX_FILE_BYTES`, not UTF-8, malformed, empty, not a mapping at the top, duplicate or
        non-string keys, unsupported tags, too large once aliases are expanded.
    """
    file = str(path)
    raw = _read_bytes(Path(path), file)
    text = decode_utf8(raw, file)
    is_json = Path(path).suffix.lower() == ".json"
    source = text
    if is_json:
        text = _json_as_yaml(text)
    root = _compose(text, file, is_json)
    if root is None:
        raise ConfigError(Location(file, 1, 1), "", "the file is empty; expected a mapping such as 'job_id: ...'")
    builder = _Builder(file, is_json)
    data = builder.build(root, (), 0)
    if is_json:
        _check_json(source, file)  # after YAML's friendlier errors: what is left, YAML accepts and JSON not
    if not isinstance(data, dict):
        raise ConfigError(
            Location(file, *_position(root)), "", f"expected a mapping of keys at the top level, got {describe(data)}"
        )
    return Document(file, data, builder.values, builder.keys, builder.plain)


def parse_json_text(text: str, file: str, line: int = 1) -> Document:
    """One JSON object written on line ``line`` of ``file`` (a JSONL line) as a
    :class:`Document`, so errors in it can say ``file:line:column``.

    :raises ConfigError: as :func:`parse_document`, or the text is not an object.
    """
    root = _compose(_json_as_yaml(text), file, True)
    builder = _Builder(file, True)
    data = builder.build(root, (), 0) if root is not None else None
    if not isinstance(data, dict):
        raise ConfigError(Location(file, line, 1), "", f"expected a JSON object, got {describe(data)}")

    def shifted(positions: dict[PathKey, tuple[int, int]]) -> dict[PathKey, tuple[int, int]]:
        return {path: (row + line - 1, column) for path, (row, column) in positions.items()}

    # No plain texts: they serve YAML's "quote it" hints, which JSON does not need.
    return Document(file, data, shifted(builder.values), shifted(builder.keys), {})


def _read_bytes(path: Path, file: str) -> bytes:
    # A job or settings file may be a symlink (to a shared file); what it leads to must be a regular file.
    try:
        return read_regular_file(path, MAX_FILE_BYTES, follow_links=True)
    except FileNotFoundError:
        raise ConfigError(file, "", "file not found") from None
    except NotRegularFile as err:
        raise ConfigError(file, "", f"is not a regular file ({err.kind})") from None
    except FileTooLarge:
        mb, rest = divmod(MAX_FILE_BYTES, 1024 * 1024)
        limit = f"{mb} MB" if mb and not rest else f"{MAX_FILE_BYTES:,} bytes"
        raise ConfigError(file, "", f"the file is larger than {limit}") from None
    except OSError as err:
        raise ConfigError(file, "", f"cannot read the file: {err.strerror or err}") from None


def decode_utf8(raw: bytes, file: str) -> str:
    """``raw`` as text (a BOM is dropped); not UTF-8 is a ConfigError at the first bad byte."""
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


def _check_json(text: str, file: str) -> None:
    """A ConfigError at the first place ``text`` is not strict JSON (a trailing
    comma, a comment, single quotes); values are checked later, with positions."""
    try:
        json.loads(text)
    except json.JSONDecodeError as err:
        before = text[:err.pos].rstrip()
        hint = " (a trailing comma?)" if before.endswith(",") and text[err.pos:err.pos + 1] in "]}" else ""
        raise ConfigError(Location(file, err.lineno, err.colno), "", f"invalid JSON: {err.msg}{hint}") from None
    except RecursionError:  # nested deeper than json can read: the depth limit below says so
        pass


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
            value = self.text(node, path, value)
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
        return self.text(node, path, key)

    def text(self, node: yaml.Node, path: PathKey, value: str) -> str:
        """A string with escaped surrogate pairs joined; a lone one is an error,
        not a '?': storing it would fail, and changing it would alter the data."""
        joined = _join_surrogates(value)
        if joined is None:
            raise self.error(node, path, LONE_SURROGATE)
        return joined


#: The message for text holding half of a UTF-16 surrogate pair.
LONE_SURROGATE = ("a lone surrogate escape (\\ud800-\\udfff without its pair) is not text; "
                  "write the character itself, or both halves of its pair")
_SURROGATE = re.compile("[\ud800-\udfff]")
_ESCAPE = re.compile(r"\\(?:u([0-9a-fA-F]{4})|.)", re.DOTALL)


def _join_surrogates(text: str) -> str | None:
    """JSON writes characters outside the BMP as two \\u escapes; join them.
    None if a lone surrogate is left."""
    if not _SURROGATE.search(text):
        return text
    try:
        return text.encode("utf-16", "surrogatepass").decode("utf-16")
    except UnicodeDecodeError:
        return None


def find_lone_surrogate(json_text: str) -> int | None:
    """The 0-based index in ``json_text`` (JSON source) of the first ``\\uXXXX``
    escape that is half a surrogate pair without its other half, or None."""
    pending_high: int | None = None  # index of a high surrogate escape awaiting its low half
    end = -1
    for match in _ESCAPE.finditer(json_text):
        code = int(match[1], 16) if match[1] else None
        adjacent = match.start() == end
        end = match.end()
        if pending_high is not None:
            if adjacent and code is not None and 0xDC00 <= code <= 0xDFFF:
                pending_high = None
                continue
            return pending_high
        if code is None:
            continue
        if 0xD800 <= code <= 0xDBFF:
            pending_high = match.start()
        elif 0xDC00 <= code <= 0xDFFF:
            return match.start()
    return pending_high


# -- located values, for the stages after parsing


def error_at(doc: Document, path: PathKey, message: str) -> ConfigError:
    """A ConfigError at ``path`` in ``doc``: ``file:line:col: at path: message``."""
    return ConfigError(doc.location(path), format_path(path), message)


def locate(file: str, path: PathKey, *, key: bool = False) -> Location:
    """Where the value at ``path`` (with ``key``: its key) is written in
    ``file``, re-read for it: for errors found after parsing (a settings
    entry checked by a plugin). The file alone if it cannot be read now."""
    try:
        doc = parse_document(Path(file))
    except ConfigError:
        return Location(file)
    return doc.key_location(path) if key else doc.location(path)


def value_at(data: Any, path: PathKey) -> Any:
    """The value at ``path`` inside ``data``, or None where there is none."""
    for part in path:
        if not isinstance(data, (dict, list)):
            return None
        try:
            data = data[part]
        except (KeyError, IndexError):
            return None
    return data


def duration_at(doc: Document, path: PathKey, default: float | None, *, positive: bool = False) -> float | None:
    """The duration at ``path`` in seconds, or ``default`` where none is given."""
    value = value_at(doc.data, path)
    if value is None:
        return default
    return parse_duration(value, doc.location(path), format_path(path), positive=positive)


def int_or_none(value: Any) -> int | None:
    # The schema's "integer" also admits 5.0.
    return None if value is None else int(value)
