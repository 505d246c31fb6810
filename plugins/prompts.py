"""The ``prompts`` job type: every item is one chat request, as written.

Items are given inline, in the job file::

    job_id: blurbs
    job_type: prompts
    vars: {system: "You write back-cover blurbs."}     # the system message (optional)
    items:
      - {item_id: b1, prompt: "A blurb for {{ title }}.", vars: {title: Rain}}
      - item_id: b2
        messages: [{role: user, content: "Say hello."}]

or from an existing OpenAI Batch API input file, used as it is::

    job_id: nightly
    job_type: prompts
    input: requests.jsonl      # one {"custom_id", "method", "url", "body"} per line

An inline ``prompt`` (and the ``system`` var) is a Jinja2 template over the
job's ``vars`` with the item's own ``vars`` on top (``{{ title }}`` or
``{{ vars.title }}``); ``messages`` and Batch API bodies are sent as written.
Templates render in the sandbox (``storyloom.plugins.support.templates``) and
are checked as the job loads (:meth:`PromptsJobType.expand_item`, and
``loom_validate_job`` for a job built in code): a syntax error, an unsafe
attribute or an unknown name is a ConfigError at the template's line.
Each body is checked when the job is loaded, against OpenAI's request
schema and storyloom's limits (``storyloom.plugins.support.chatbody``), with
errors at the file's line and the field's column.
From a body, ``messages``, ``max_completion_tokens`` (or ``max_tokens``) and
``temperature`` make the request; the job's models and routing choose the
model, so ``model`` and ``stream`` in a body are ignored; every other field
(``top_p``, ``stop``, ``response_format``, ...) rides along in
``Request.metadata["extra_body"]`` for a provider that can send it.

An item takes the fields in ``schemas/prompts-item.schema.json`` (``prompt``,
``messages``, ``language``, ``vars``); an item without its own ``language``
takes the job's. The schema is a JSON file, like the story job types', so it
is a contract editors and the schema tests can read. ``chapters:`` and the
story fields are not this job type's: they are errors here.

Each reply is written to ``storyloom-out/<job_id>/<item_id>.txt`` (by the
outputs plugin), and when a batch ends ``storyloom-out/<job_id>/results.jsonl``
is rewritten from the store in the Batch API output format: one line per
finished item, in the items' order. Items not finished yet (a paused batch)
are left out until a resume finishes them.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jinja2

from storyloom import ConfigError, ErrorKind, ProviderError, hookimpl
from storyloom.document import LONE_SURROGATE, decode_utf8, find_lone_surrogate, locate
from storyloom.errors import Location
from storyloom.inputfile import InputFile
from storyloom.document import error_at
from storyloom.job import Item, Job
from storyloom.jobtype import ItemSite, Result, identifier_problem
from storyloom.outputs import Output, job_folder, write_output
from storyloom.plugins.support.chatbody import ROLES, check_body
from storyloom.projection import STOPPED_STATES
from storyloom.provider import Request, Response
from storyloom.plugins.support.templates import compiled, template_problem
from storyloom.validation import describe, format_path, schema, unknown_name

NAME = "prompts"
#: The item fields a prompts item takes (package data: storyloom.schemas).
ITEM_SCHEMA = schema("prompts-item.schema.json")
#: What each line of an ``input:`` file holds: the Batch API's request fields.
_INPUT_KEYS = ("custom_id", "method", "url", "body")
_INPUT_URL = "/v1/chat/completions"
RESULTS_FILE = "results.jsonl"
#: max_tokens for a request that sets none (nor the job's config.max_tokens).
DEFAULT_MAX_TOKENS = 1024
#: Body fields the request is built from, or that the kernel decides instead.
_USED = frozenset({"messages", "max_tokens", "max_completion_tokens", "temperature", "n"})
_IGNORED = frozenset({"model", "stream", "stream_options"})

#: The names a prompt's context holds besides the job's and the item's vars.
CONTEXT_NAMES = ("vars", "item_id", "job_id", "language")


@dataclass(frozen=True)
class PromptsJobType:
    name: str = NAME
    #: Generic chat requests are usually short; the models' rpm/tpm bound the real rate.
    max_parallel: int = 32
    timeout_per_item: float = 120.0
    item_schema: Mapping[str, Any] = field(default_factory=lambda: ITEM_SCHEMA, compare=False, repr=False)

    def expand_item(self, item: Item, entry: Mapping[str, Any], where: ItemSite) -> list[tuple[Item, tuple]]:
        """The entry as one item, its templates checked (at the prompt's or
        ``vars.system``'s own line in the job file)."""
        fields = dict(item.fields)
        if "language" not in fields and "language" in where.job:
            fields["language"] = where.job["language"]
        for path, problem in template_problems(fields, where.job.get("vars") or {}):
            if path[0] == "vars" and "system" not in (fields.get("vars") or {}):
                raise error_at(where.doc, path, problem)  # the job's own vars.system
            raise where.error(path, problem)
        return [(replace(item, fields=fields), ("item_id",))]

    def read_input(self, source: InputFile, template: Item, where: ItemSite) -> Iterator[Item]:
        """Items from an OpenAI Batch API input file (checked and read by the
        kernel): item_id is each line's custom_id, the body goes in the fields
        (with the job's language)."""
        file, raw = source.name, source.data
        fields = {"language": where.job["language"]} if "language" in where.job else {}
        first_line: dict[str, int] = {}
        # split, not splitlines: JSON strings may hold U+2028 and friends unescaped.
        for number, line in enumerate(decode_utf8(raw, file).split("\n"), 1):
            if not line.strip():
                continue
            entry = _input_line(line, file, number)
            custom_id = entry["custom_id"]
            if custom_id in first_line:
                raise ConfigError(Location(file, number, 1), "custom_id",
                                  f"duplicate custom_id '{custom_id}' (first on line {first_line[custom_id]})")
            first_line[custom_id] = number
            yield replace(template, item_id=custom_id, fields={**fields, "body": entry["body"]})
        if not first_line:
            raise where.error((), f"{file} holds no requests")

    def build_request(self, item: Item, job: Job) -> Request:
        fields = item.fields
        if "body" in fields:
            return _from_body(fields["body"], job)
        context = _context(item, job)
        if "messages" in fields:
            messages = _messages(fields["messages"], "messages")
        elif "prompt" in fields:
            messages = [{"role": "user", "content": _render(fields["prompt"], context, "prompt")}]
            system = context.get("system")
            if system:
                messages.insert(0, {"role": "system", "content": _render(str(system), context, "vars.system")})
        else:
            raise ProviderError(ErrorKind.INVALID_INPUT, "the item has no prompt, messages or body")
        return Request(messages=tuple(messages), max_tokens=job.config.max_tokens or DEFAULT_MAX_TOKENS)

    def handle_result(self, item: Item, job: Job, response: Response) -> Result:
        # An empty reply is a reply: a generic request has no notion of "too short".
        return Result(text=response.text, file_name=f"{item.item_id}.txt", data={
            "model": response.model, "finish_reason": response.finish_reason, "created": int(time.time()),
            "input_tokens": response.input_tokens, "output_tokens": response.output_tokens})


def _input_line(line: str, file: str, number: int) -> dict[str, Any]:
    """One request of an ``input:`` file, checked; errors name the file and line."""
    try:
        entry = json.loads(line, parse_constant=_refuse_constant, object_pairs_hook=_unique_keys)
    except _NotStrictJSON as err:  # json.loads took it; strict JSON does not
        column, message = _not_strict_json(line)
        raise ConfigError(Location(file, number, column), "", message or str(err)) from None
    except ValueError as err:
        column = getattr(err, "colno", 1)
        raise ConfigError(Location(file, number, column), "", f"invalid JSON: {getattr(err, 'msg', err)}") from None
    lone = find_lone_surrogate(line)
    if lone is not None:  # json.loads keeps it, and the store could never encode it
        raise ConfigError(Location(file, number, lone + 1), "", LONE_SURROGATE)
    where = Location(file, number, 1)
    if not isinstance(entry, dict):
        raise ConfigError(where, "", f"expected a request object ({', '.join(_INPUT_KEYS)}), got {describe(entry)}")
    for key in entry:
        if key not in _INPUT_KEYS:
            raise ConfigError(where, format_path((key,)), unknown_name("key", key, _INPUT_KEYS))
    for key in _INPUT_KEYS:
        if key not in entry:
            raise ConfigError(where, "", f"missing required key '{key}'")
    problem = identifier_problem(entry["custom_id"])
    if problem:
        raise ConfigError(where, "custom_id", "custom_id becomes the item_id: " + problem)
    if entry["method"] != "POST":
        raise ConfigError(where, "method", f"expected POST, got {describe(entry['method'])}")
    if entry["url"] != _INPUT_URL:
        raise ConfigError(where, "url", f"expected {_INPUT_URL} (only chat requests are supported), "
                                        f"got {describe(entry['url'])}")
    body = entry["body"]
    if not isinstance(body, dict):
        raise ConfigError(where, "body", f"expected a chat completions request body, got {describe(body)}")
    check_body(entry, line, file, number)  # as the provider would: OpenAI's request schema, then ours
    return entry


class _NotStrictJSON(ValueError):
    """A line Python's json reads but JSON does not allow (found again, with
    its column, by :func:`_not_strict_json`)."""


def _refuse_constant(name: str) -> Any:
    raise _NotStrictJSON(f"invalid JSON: {name} is not valid JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    entry = dict(pairs)
    if len(entry) != len(pairs):  # json.loads would silently keep the last
        raise _NotStrictJSON("invalid JSON: a duplicate key")
    return entry


def _not_strict_json(line: str) -> tuple[int, str]:
    """(column, message) of the first NaN/Infinity or duplicate key in
    ``line``, which json.loads has read (so it is JSON in every other way)."""
    keys: list[set[str]] = []  # the keys of each object open at this point
    i = 0
    while i < len(line):
        char = line[i]
        if char == '"':
            text, end = json.decoder.scanstring(line, i + 1)
            if keys and line[end:].lstrip().startswith(":"):
                if text in keys[-1]:
                    return i + 1, f"invalid JSON: duplicate key {text!r} in one object (JSON would keep only the last)"
                keys[-1].add(text)
            i = end
            continue
        if char == "{":
            keys.append(set())
        elif char == "}":
            keys.pop()
        else:
            for name in ("-Infinity", "Infinity", "NaN"):
                if line.startswith(name, i):
                    return i + 1, f"invalid JSON: {name} is not valid JSON (JSON numbers are finite)"
        i += 1
    return 1, ""


def template_problems(fields: Mapping[str, Any], job_vars: Mapping[str, Any]) -> Iterator[tuple[tuple, str]]:
    """(path, problem) for each template of a prompt item (``prompt``, and
    ``vars.system`` beside it) that could not render: a syntax error, an
    unsafe attribute, a name the item's context does not give."""
    if not isinstance(fields.get("prompt"), str):
        return
    merged = {**job_vars, **(fields.get("vars") or {})}
    names = {*merged, *CONTEXT_NAMES}
    for path, text in ((("prompt",), fields["prompt"]), (("vars", "system"), merged.get("system"))):
        if isinstance(text, str) and "{" in text:
            problem = template_problem(text, names, merged)
            if problem:
                yield path, problem


def _context(item: Item, job: Job) -> dict[str, Any]:
    merged = {**job.vars, **(item.fields.get("vars") or {})}
    return {**merged, "vars": merged, "item_id": item.item_id, "job_id": job.job_id,
            "language": item.fields.get("language") or job.language}


def _render(text: str, context: dict[str, Any], where: str) -> str:
    if "{" not in text:  # nothing to render: skip compiling a template per item
        return text
    try:
        return compiled(text).render(context)
    # The sandbox's SecurityError ("... is unsafe"); and what a template can
    # raise itself: '{0}{}'.format(1), a macro calling itself, ints too long for text.
    except (jinja2.TemplateError, ArithmeticError, ValueError, TypeError, RecursionError, MemoryError) as exc:
        raise ProviderError(ErrorKind.INVALID_INPUT, f"{where}: {type(exc).__name__ if not str(exc) else exc}") \
            from None


def _from_body(body: dict[str, Any], job: Job) -> Request:
    def invalid(message: str) -> ProviderError:
        return ProviderError(ErrorKind.INVALID_INPUT, message)

    if body.get("n") not in (None, 1):
        raise invalid(f"body.n is {body['n']!r}: storyloom asks for one reply per request")
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens")
    if max_tokens is not None and (isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1):
        raise invalid(f"body.max_tokens: expected a positive integer, got {max_tokens!r}")
    temperature = body.get("temperature")
    if temperature is not None and (isinstance(temperature, bool) or not isinstance(temperature, (int, float))):
        raise invalid(f"body.temperature: expected a number, got {temperature!r}")
    extra = {key: value for key, value in body.items() if key not in _USED | _IGNORED}
    return Request(
        messages=tuple(_messages(body.get("messages"), "body.messages")),
        max_tokens=max_tokens or job.config.max_tokens or DEFAULT_MAX_TOKENS,
        temperature=float(temperature) if temperature is not None else None,
        metadata={"extra_body": extra} if extra else {},
    )


def _messages(messages: Any, where: str) -> list[dict[str, str]]:
    """Chat messages with text content; content given as text parts is joined."""
    problem = message_problem(messages, where)
    if problem:
        raise ProviderError(ErrorKind.INVALID_INPUT, problem)
    out = []
    for message in messages:
        content = message["content"]
        if isinstance(content, list):
            content = "\n".join(part["text"] for part in content)
        out.append({"role": message["role"], "content": content})
    return out


def message_problem(messages: Any, where: str) -> str:
    """What is wrong with a list of chat messages, or "" if nothing is."""
    if not isinstance(messages, list) or not messages:
        return f"{where}: expected a non-empty list of messages"
    for i, message in enumerate(messages):
        at = f"{where}[{i}]"
        if not isinstance(message, dict):
            return f"{at}: expected a mapping with role and content"
        if message.get("role") not in ROLES:
            return (f"{at}.role: expected one of {', '.join(sorted(ROLES))}, got {message.get('role')!r} "
                    "(tool calls are not supported)")
        content = message.get("content")
        if isinstance(content, list):
            if not all(isinstance(p, dict) and p.get("type") == "text" and isinstance(p.get("text"), str)
                       for p in content):
                return f"{at}.content: only text parts ({{type: text, text: ...}}) are supported"
        elif not isinstance(content, str):
            return f"{at}.content: expected text, got {type(content).__name__}"
    return ""


# -- results.jsonl --------------------------------------------------------


def _ids(job_id: str, item_id: str) -> str:
    return hashlib.sha256(f"{job_id}\0{item_id}".encode()).hexdigest()[:24]


def completed_line(job_id: str, item_id: str, text: str, data: dict[str, Any]) -> dict[str, Any]:
    """One Batch API output line for a completed item."""
    h = _ids(job_id, item_id)
    prompt, completion = int(data.get("input_tokens") or 0), int(data.get("output_tokens") or 0)
    body = {
        "id": f"chatcmpl-{h}",
        "object": "chat.completion",
        "created": data.get("created") or int(time.time()),
        "model": data.get("model"),
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": None, "finish_reason": data.get("finish_reason") or "stop"}],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }
    return {"id": f"batch_req_{h}", "custom_id": item_id,
            "response": {"status_code": 200, "request_id": f"req_{h}", "body": body}, "error": None}


def failed_line(job_id: str, item_id: str, kind: str | None, message: str | None) -> dict[str, Any]:
    """One Batch API output line for a failed item: the error kind is the code."""
    return {"id": f"batch_req_{_ids(job_id, item_id)}", "custom_id": item_id, "response": None,
            "error": {"code": kind or str(ErrorKind.INTERNAL_ERROR), "message": message or ""}}


async def results_jsonl(job: Job, store) -> str:
    """``results.jsonl`` as the store has it: a line per finished item, in the items' order."""
    lines = []
    for row in await store.items(job.job_id):
        if row.state == "completed":
            stored = await store.result(job.job_id, row.item_id)
            text, data = stored if stored is not None else ("", None)
            lines.append(completed_line(job.job_id, row.item_id, text, data or {}))
        elif row.state == "failed":
            lines.append(failed_line(job.job_id, row.item_id, row.error_kind, row.error))
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


class BatchResults:
    """Writes ``results.jsonl`` for prompts jobs when a batch ends; it is a
    projection of the store, so a rebuild writes the same bytes."""

    def __init__(self, config) -> None:
        self.config = config

    @hookimpl
    def loom_batch_finished(self, job, summary, store):
        if job.job_type != NAME:
            return None

        async def write() -> None:
            text = await results_jsonl(job, store)
            write_output(self.config, job.job_id, job_folder(self.config, job.job_id) / RESULTS_FILE, text)

        return write

    @hookimpl
    def loom_job_outputs(self, job, store):
        if job.job_type != NAME:
            return None

        async def results() -> list[Output]:
            row = await store.get_job(job.job_id)
            if row is None or row.state not in STOPPED_STATES:
                return []  # written when a run ends: a running job's file is the last run's
            return [Output(RESULTS_FILE, await results_jsonl(job, store))]

        return results


@hookimpl
def loom_register_job_types(register):
    register(PromptsJobType())


@hookimpl
def loom_validate_job(job, config):
    """Refuse inline items that could never make a request, before anything is stored."""
    if job.job_type != NAME:
        return
    for i, item in enumerate(job.items):
        given = [key for key in ("prompt", "messages", "body") if key in item.fields]
        where = f"items[{i}]"
        if not given:
            raise ConfigError(_item_location(job, i), where, f"item {item.item_id!r} needs a prompt or messages")
        if len(given) > 1:
            raise ConfigError(_item_location(job, i), where,
                              f"item {item.item_id!r} gives {' and '.join(given)}; give one")
        if "messages" in given:
            problem = message_problem(item.fields["messages"], "messages")
            if problem:
                raise ConfigError(_item_location(job, i), where, problem)
        # A job built in code never went through expand_item: check its templates here too.
        for path, problem in template_problems(item.fields, job.vars):
            raise ConfigError(_item_location(job, i), f"{where}.{'.'.join(path)}", problem)


def _item_location(job: Job, index: int) -> Location | str:
    """Where ``items[index]`` is written in the job file (re-read: an error path)."""
    return locate(job.source, ("items", index)) if job.source else "job"


@hookimpl
def loom_configure(config):
    config.register_plugin(BatchResults(config), name="prompts-results")
