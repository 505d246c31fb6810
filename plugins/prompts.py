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
Batch API files move to storyloom and back unchanged:

- ``custom_id`` is any non-empty string, unique in the file (spaces, ``/``,
  any script), kept verbatim in the item's fields and in every output line.
  The item's id (its output file's name) is the custom_id itself when it is a
  safe name, else :func:`item_id_for`'s slug and hash of it.
- ``model`` in a body picks the model: the job's model (``models:``, else
  the settings' ``default_models``) whose settings entry names that provider
  model id (``model: gpt-4o-mini``) answers the line (the item is pinned to
  it); a line whose model none of them has is refused at its line. With
  ``input_model: job`` in the job file the body's model is ignored on purpose
  and the job's models and routing choose, as for inline items.
- The body is sent as written: ``messages``, ``temperature`` and every other
  field (``top_p``, ``stop``, ``response_format``, ``max_tokens`` /
  ``max_completion_tokens``, ...) ride along in
  ``Request.metadata["extra_body"]``; a line without a cap sends none
  (``metadata["send_max_tokens"] = False``). ``Request.max_tokens`` is then
  only the worst case the budget and rate limits count: the line's cap, else
  the job's ``config.max_tokens``, else :data:`UNCAPPED_WORST_TOKENS`.
  ``stream`` is storyloom's to decide and ``n`` must be 1.

An item takes the fields in ``schemas/prompts-item.schema.json`` (``prompt``,
``messages``, ``language``, ``vars``); an item without its own ``language``
takes the job's. The schema is a JSON file, like the story job types', so it
is a contract editors and the schema tests can read. ``chapters:`` and the
story fields are not this job type's: they are errors here.

Each reply is written to ``storyloom-out/<job_id>/<item_id>.txt`` (by the
outputs plugin), and when a batch ends ``storyloom-out/<job_id>/results.jsonl``
is rewritten from the store in the Batch API output format, one line per
finished item, in the items' order: ``{"id": "batch_req_...", "custom_id",
"response": {"status_code", "request_id", "body"}, "error": null}`` with the
server's own status, ``x-request-id`` and JSON body, error replies (4xx, 5xx)
included; a request that got no HTTP reply has ``"response": null`` and
``"error": {"code", "message"}`` (:data:`NO_REPLY_CODES`). As OpenAI's error
file does, ``errors.jsonl`` beside it holds the lines that failed (no reply,
or a status that is not 2xx). A provider with no HTTP reply (the simulated
one) gets a chat.completion body built from the stored result. Items not
finished yet (a paused batch) are left out until a resume finishes them; a
cancelled job's items that never ran are ``batch_cancelled`` lines.
"""

from __future__ import annotations

import hashlib
import json
import re
import time
import unicodedata
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import jinja2

from storyloom import ConfigError, ErrorKind, ProviderError, UsageError, hookimpl
from storyloom.document import LONE_SURROGATE, decode_utf8, find_lone_surrogate, locate, parse_json_text
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
#: The failed lines, as OpenAI's error file (``error_file_id``) holds them.
ERRORS_FILE = "errors.jsonl"
#: max_tokens for an inline prompt that sets none (nor the job's config.max_tokens).
DEFAULT_MAX_TOKENS = 1024
#: The worst case counted (budget, rate limits) for a Batch line that sets no
#: cap and so sends none, when the job sets no config.max_tokens: the largest
#: output of the GPT-4o / GPT-4.1 class models (16,384 tokens).
UNCAPPED_WORST_TOKENS = 16_384
#: Body fields the request is built from, or that the kernel decides instead.
_USED = frozenset({"messages", "temperature", "n"})
_IGNORED = frozenset({"model", "stream", "stream_options"})
#: ``input_model:`` values (job file): match body.model, or let the job's models choose.
INPUT_MODEL_MODES = ("match", "job")
#: The ``error.code`` of a request that got no HTTP reply, by storyloom's error
#: kind (OpenAI's code where it has one); any other kind is its name in lower
#: case, as OpenAI's codes are (``invalid_input``, ``auth_error``, ...).
NO_REPLY_CODES = {"TIMEOUT": "request_timeout", "TEMPORARY_ERROR": "connection_error"}
#: A safe item id's pattern is job.schema.json's identifier; a slug keeps this much of a custom_id.
_SLUG_MAX = 48

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
        kernel): the custom_id and body go in the fields (with the job's
        language), the item_id is :func:`item_id_for` the custom_id, and the
        item is pinned to the model its body names (see the module doc)."""
        file, raw = source.name, source.data
        fields = {"language": where.job["language"]} if "language" in where.job else {}
        models = _ModelMatch(where)
        first_line: dict[str, int] = {}
        id_line: dict[str, tuple[int, str]] = {}
        # split, not splitlines: JSON strings may hold U+2028 and friends unescaped.
        for number, line in enumerate(decode_utf8(raw, file).split("\n"), 1):
            if not line.strip():
                continue
            entry = _input_line(line, file, number)
            custom_id = entry["custom_id"]
            if custom_id in first_line:
                raise ConfigError(Location(file, number, 1), "custom_id",
                                  f"duplicate custom_id {_shown(custom_id)} (first on line {first_line[custom_id]})")
            first_line[custom_id] = number
            item_id = item_id_for(custom_id)
            if item_id in id_line:  # a safe custom_id written as another one's derived id
                other_line, other = id_line[item_id]
                raise ConfigError(Location(file, number, 1), "custom_id",
                                  f"custom_id {_shown(custom_id)} and custom_id {_shown(other)} (line {other_line}) "
                                  f"would both be item {item_id!r}; rename one")
            id_line[item_id] = (number, custom_id)
            model = models.pin(entry["body"], line, file, number)
            yield replace(template, item_id=item_id, model=model,
                          fields={**fields, "custom_id": custom_id, "body": entry["body"]})
        if not first_line:
            raise where.error((), f"{file} holds no requests")
        if models.problem is not None:
            raise models.problem  # after every line is read: a line that is not a request is the first error

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
        data = {"model": response.model, "finish_reason": response.finish_reason, "created": int(time.time()),
                "input_tokens": response.input_tokens, "output_tokens": response.output_tokens}
        if response.raw is not None:
            data["reply"] = response.raw.as_dict()  # the server's own answer, for results.jsonl
        return Result(text=response.text, file_name=f"{item.item_id}.txt", data=data)


def item_id_for(custom_id: str) -> str:
    """The item id of a Batch line: its custom_id when that is a safe name,
    else a slug of it (ASCII letters, digits, ``.``, ``_``, ``-``) and 12 hex
    digits of its SHA-256, so different custom_ids give different ids and the
    same custom_id always the same one."""
    if not identifier_problem(custom_id):
        return custom_id
    ascii_text = unicodedata.normalize("NFKD", custom_id).encode("ascii", "ignore").decode()
    slug = re.sub(r"[^A-Za-z0-9._-]+", "-", ascii_text).strip("-._")[:_SLUG_MAX].rstrip("-._")
    digest = hashlib.sha256(custom_id.encode("utf-8", "surrogatepass")).hexdigest()[:12]
    return f"{slug}-{digest}" if slug else f"id-{digest}"


def _shown(text: str) -> str:
    """A custom_id quoted for a message: JSON, so control characters show escaped."""
    shown = json.dumps(text, ensure_ascii=False)
    return shown if len(shown) <= 80 else shown[:76] + '..."'


class _ModelMatch:
    """Maps a Batch line's ``body.model`` (a provider model id) onto one of the
    job's configured models, per the job's ``input_model:``."""

    def __init__(self, where: ItemSite) -> None:
        self.mode = where.job.get("input_model", "match")
        settings = where.settings
        self.specs = {}
        if settings is not None:
            names = where.job.get("models") or settings.default_models
            self.specs = {name: settings.models[name] for name in names if name in settings.models}
        self.by_id: dict[str, str] = {}
        #: The first line whose model none of the job's models has.
        self.problem: ConfigError | None = None
        for name, spec in self.specs.items():
            self.by_id.setdefault(spec.model, name)  # the first of the job's models with that id

    def pin(self, body: dict[str, Any], line: str, file: str, number: int) -> str | None:
        model = body.get("model")
        if self.mode != "match" or not isinstance(model, str) or not self.specs:
            return None
        name = self.by_id.get(model)
        if name is not None or self.problem is not None:
            return name
        known = ", ".join(f"{n} ({spec.model})" for n, spec in self.specs.items())
        message = (f"model {_shown(model)} is not the provider model id of any of the job's models: {known}; "
                   f"add a model with 'model: {model}' to the settings and the job's models, or set "
                   "'input_model: job' in the job file to let the job's models answer every line")
        self.problem = error_at(parse_json_text(line, file, number), ("body", "model"), message)
        return None


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
    if not isinstance(entry["custom_id"], str) or not entry["custom_id"]:
        raise ConfigError(where, "custom_id", f"expected a non-empty string, got {describe(entry['custom_id'])}")
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
    # The cap (or none) is the body's own, sent as written among the extra fields;
    # max_tokens here is the worst case the kernel counts.
    extra = {key: value for key, value in body.items() if key not in _USED | _IGNORED}
    return Request(
        messages=tuple(_messages(body.get("messages"), "body.messages")),
        max_tokens=max_tokens or job.config.max_tokens or UNCAPPED_WORST_TOKENS,
        temperature=float(temperature) if temperature is not None else None,
        metadata={"extra_body": extra, "send_max_tokens": False} if extra else {"send_max_tokens": False},
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


def _line(job_id: str, item_id: str, custom_id: str, response: dict[str, Any] | None,
          error: dict[str, str] | None) -> dict[str, Any]:
    return {"id": f"batch_req_{_ids(job_id, item_id)}", "custom_id": custom_id, "response": response, "error": error}


def _reply(stored: Any) -> dict[str, Any] | None:
    """A stored HTTP reply ({status_code, request_id, body}) fit for an output
    line: a JSON object body and an integer status; else None."""
    if not isinstance(stored, dict) or not isinstance(stored.get("status_code"), int):
        return None
    if not isinstance(stored.get("body"), dict):
        return None  # a stream's reply, or a body that was not a JSON object: rebuilt instead
    request_id = stored.get("request_id")
    return {"status_code": stored["status_code"], "request_id": request_id if isinstance(request_id, str) else None,
            "body": stored["body"]}


def completed_line(job_id: str, item_id: str, text: str, data: dict[str, Any],
                   custom_id: str | None = None) -> dict[str, Any]:
    """One Batch API output line for a completed item: the server's reply as
    it came, else (no HTTP reply was kept: the simulated provider, a stream)
    a chat.completion body built from the result."""
    custom_id = item_id if custom_id is None else custom_id
    reply = _reply(data.get("reply"))
    if reply is not None:
        if reply["request_id"] is None:
            reply["request_id"] = f"req_{_ids(job_id, item_id)}"  # the server sent none (Gemini): still a string
        return _line(job_id, item_id, custom_id, reply, None)
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
    stored = data.get("reply") if isinstance(data.get("reply"), dict) else {}
    request_id = stored.get("request_id") if isinstance(stored.get("request_id"), str) else f"req_{h}"
    return _line(job_id, item_id, custom_id, {"status_code": 200, "request_id": request_id, "body": body}, None)


def failed_line(job_id: str, item_id: str, kind: str | None, message: str | None,
                custom_id: str | None = None, reply: Any = None) -> dict[str, Any]:
    """One Batch API output line for a failed item: the server's reply when
    there was one (its 4xx/5xx status and error body, ``error: null``), else
    ``response: null`` and ``error: {code, message}`` (:data:`NO_REPLY_CODES`)."""
    custom_id = item_id if custom_id is None else custom_id
    response = _reply(reply)
    if response is not None:
        if response["request_id"] is None:
            response["request_id"] = f"req_{_ids(job_id, item_id)}"
        return _line(job_id, item_id, custom_id, response, None)
    kind = kind or str(ErrorKind.INTERNAL_ERROR)
    code = NO_REPLY_CODES.get(kind, kind.lower())
    return _line(job_id, item_id, custom_id, None, {"code": code, "message": message or ""})


def cancelled_line(job_id: str, item_id: str, custom_id: str | None = None) -> dict[str, Any]:
    """The line of a request a cancelled job never sent, as OpenAI writes it."""
    custom_id = item_id if custom_id is None else custom_id
    return _line(job_id, item_id, custom_id, None, {"code": "batch_cancelled",
                                                    "message": "The job was cancelled before this request ran."})


def is_error_line(line: dict[str, Any]) -> bool:
    """Whether an output line belongs in the error file: no reply, or not a 2xx one."""
    response = line["response"]
    return response is None or not 200 <= response["status_code"] < 300


def _custom_id(row) -> str:
    custom_id = (row.definition.get("fields") or {}).get("custom_id")
    return custom_id if isinstance(custom_id, str) else row.item_id


async def result_lines(job: Job, store) -> list[dict[str, Any]]:
    """The output lines as the store has them: one per finished item (and per
    never-run item of a cancelled job), in the items' order."""
    row = await store.get_job(job.job_id)
    cancelled = row is not None and row.state == "cancelled"
    lines = []
    for row in await store.items(job.job_id):
        custom_id = _custom_id(row)
        if row.state == "completed":
            stored = await store.result(job.job_id, row.item_id)
            text, data = stored if stored is not None else ("", None)
            lines.append(completed_line(job.job_id, row.item_id, text, data or {}, custom_id))
        elif row.state == "failed":
            reply = (row.route or {}).get("reply")
            lines.append(failed_line(job.job_id, row.item_id, row.error_kind, row.error, custom_id, reply))
        elif row.state == "skipped" and cancelled and row.definition.get("status") != "skipped":  # not skipped in the file
            lines.append(cancelled_line(job.job_id, row.item_id, custom_id))
    return lines


def _jsonl(lines: list[dict[str, Any]]) -> str:
    return "".join(json.dumps(line, ensure_ascii=False) + "\n" for line in lines)


async def results_jsonl(job: Job, store) -> str:
    """``results.jsonl`` as the store has it: a line per finished item, in the items' order."""
    return _jsonl(await result_lines(job, store))


async def output_files(job: Job, store) -> dict[str, str]:
    """``results.jsonl`` and ``errors.jsonl`` (its failed lines), by file name."""
    lines = await result_lines(job, store)
    return {RESULTS_FILE: _jsonl(lines), ERRORS_FILE: _jsonl([line for line in lines if is_error_line(line)])}


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
            for name, text in (await output_files(job, store)).items():
                write_output(self.config, job.job_id, job_folder(self.config, job.job_id) / name, text)

        return write

    @hookimpl
    def loom_job_outputs(self, job, store):
        if job.job_type != NAME:
            return None

        async def results() -> list[Output]:
            row = await store.get_job(job.job_id)
            if row is None or row.state not in STOPPED_STATES:
                return []  # written when a run ends: a running job's file is the last run's
            return [Output(name, text) for name, text in (await output_files(job, store)).items()]

        return results


@hookimpl
def loom_register_job_types(register):
    register(PromptsJobType())


@hookimpl
def loom_validate_job(job, config):
    """Refuse inline items that could never make a request, before anything is stored."""
    if job.job_type != NAME:
        return
    chosen = getattr(getattr(config, "options", None), "models", None)
    if chosen:  # --models replaces the job's: a line pinned to one of the job's models would have no provider
        for item in job.items:
            if item.model and item.model not in chosen:
                custom_id = item.fields.get("custom_id", item.item_id)
                raise UsageError(f"the request {_shown(custom_id)} names the provider model of {item.model!r}, "
                                 f"which --models ({', '.join(chosen)}) leaves out; add it, or set "
                                 "'input_model: job' in the job file to let the chosen models answer every line")
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
