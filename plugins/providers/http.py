"""What the HTTP providers share: the client, keys, options, error mapping, SSE.

A provider module subclasses :class:`HTTPProvider` and fills in the wire
format (URL, headers, body, reply and stream-event parsing), its table of
:class:`Rule` s, its vendor's list prices (``default_prices``) and the names
of its vendor's rate-limit headers (``rate_limit_headers``). Everything else
-- one pooled ``httpx.AsyncClient`` per model (on :class:`.transport.TrioTransport`), timeouts, reading the key,
turning statuses and transport failures into :class:`storyloom.ErrorKind` s,
``retry-after``, reading rate-limit headers into the kernel's
:class:`storyloom.provider.RateLimitFeedback`, SSE -- lives here once.

Timeouts are per phase, never overall (the kernel owns the overall timeout
with ``trio.fail_after``). Options on the model entry::

    connect_timeout: 10        # seconds to open a connection
    read_timeout: 600          # without streaming: the whole generation happens before the first byte
    stream_read_timeout: 120   # with streaming: the longest silence between bytes

Requests go through httpx's API on :class:`.transport.TrioTransport` (trio
streams and h11, a fair pool of ``max_parallel`` connections: see that
module for why not httpcore's pool); behind a proxy from the environment,
httpx's own transport carries them. A request with a JSON reply is built as
``client.post(url, json=...)`` would build it and handed straight to the
transport (``HTTPProvider._send_json``); streams go through the client.
"""

from __future__ import annotations

import dataclasses
import email.utils
import functools
import json
import logging
import math
import os
import re
import time
import urllib.request
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, AsyncIterator, Callable, ClassVar, Mapping

import httpx
import trio

from storyloom import ErrorKind, ProviderError
from storyloom.provider import (NO_DATA, BaseProvider, RawReply, Request, Response, merge_options, spec_error,
                                structured_data)
from storyloom.ratelimit import MAX_COOL_DOWN_S
from storyloom.settings import ModelSpec
from storyloom.store import mask_url
from storyloom.tokens import estimate_request_tokens, estimate_tokens

from .transport import TrioTransport

log = logging.getLogger("storyloom.providers")
_httpx_log = logging.getLogger("httpx")  # httpx's own line for each request, kept on the direct path

#: Connections per model when the model entry sets no ``max_parallel``.
DEFAULT_MAX_PARALLEL = 100
COMMON_OPTIONS: dict[str, Any] = {"connect_timeout": 10.0, "read_timeout": 600.0, "stream_read_timeout": 120.0}
#: Longest provider error message kept in a ProviderError.
MAX_MESSAGE = 500

# ---------------------------------------------------------------------------
# Error mapping: a table of rules per provider, first match wins
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ErrorInfo:
    """What a failed (or suspicious) reply says, normalised across providers.

    ``code``, ``type``, ``status`` and ``message`` are the fields of the
    provider's error object (Gemini's ``status`` is e.g. ``RESOURCE_EXHAUSTED``);
    ``details`` is Gemini's ``error.details`` as JSON text; ``finish`` is the
    finish / stop reason of a 2xx reply.
    """

    http_status: int
    code: str = ""
    type: str = ""
    status: str = ""
    message: str = ""
    details: str = ""
    finish: str = ""


_FIELDS = {f.name for f in dataclasses.fields(ErrorInfo)} - {"http_status"}
_STATUS_ITEM = re.compile(r"^(?:[1-5]\d\d|[1-5]xx)$")


@dataclass(frozen=True)
class Rule:
    """One row of a provider's error table.

    ``status``: ``"429"``, ``"400,403"``, ``"4xx"``, or ``"other"`` (any status
    that is not 2xx). ``when``: ``""`` (always), ``"FIELD=A,B"`` (the
    :class:`ErrorInfo` field equals one of the values, case-insensitively) or
    ``"FIELD~text"`` (the field contains the text, case-insensitively).
    """

    status: str
    when: str
    kind: ErrorKind

    def __post_init__(self) -> None:
        if self.status != "other" and not all(_STATUS_ITEM.match(s) for s in self.status.split(",")):
            raise ValueError(f"bad status {self.status!r}")
        if self.when:
            name, op, _ = self._condition()
            if name not in _FIELDS or op not in "=~":
                raise ValueError(f"bad condition {self.when!r}")

    def _condition(self) -> tuple[str, str, str]:
        return _parse_condition(self.when)

    def status_matches(self, status: int) -> bool:
        if self.status == "other":
            return not 200 <= status < 300
        codes, classes = _parse_statuses(self.status)
        code = str(status)
        return code in codes or (len(code) == 3 and code[0] in classes)

    def matches(self, info: ErrorInfo) -> bool:
        if not self.status_matches(info.http_status):
            return False
        if not self.when:
            return True
        name, op, text = self._condition()
        value = str(getattr(info, name) or "").lower()
        if op == "=":
            return value in {v.strip().lower() for v in text.split(",")}
        return text.lower() in value


# Parsed once per distinct text: every reply, a 2xx too, is checked against
# the whole table, and re-parsing it cost more CPU than reading the reply.
@functools.lru_cache(maxsize=None)
def _parse_condition(when: str) -> tuple[str, str, str]:
    match = re.match(r"^(\w+)([=~])(.+)$", when)
    if not match:
        raise ValueError(f"bad condition {when!r}")
    return match.group(1), match.group(2), match.group(3)


@functools.lru_cache(maxsize=None)
def _parse_statuses(status: str) -> tuple[frozenset[str], frozenset[str]]:
    """("429,5xx") -> ({"429"}, {"5"}): exact codes and status classes."""
    items = status.split(",")
    return (frozenset(i for i in items if not i.endswith("xx")),
            frozenset(i[0] for i in items if i.endswith("xx")))


#: Rows every provider ends with, after its own.
COMMON_RULES: tuple[Rule, ...] = (
    Rule("402", "", ErrorKind.QUOTA_EXCEEDED),
    Rule("408", "", ErrorKind.TIMEOUT),
    Rule("429", "", ErrorKind.API_RATE_LIMIT),
    Rule("401,403", "", ErrorKind.AUTH_ERROR),
    Rule("400,404,422", "", ErrorKind.INVALID_INPUT),
    Rule("4xx", "", ErrorKind.INVALID_INPUT),
    Rule("504", "", ErrorKind.TIMEOUT),
    Rule("5xx", "", ErrorKind.TEMPORARY_ERROR),
    Rule("other", "", ErrorKind.TEMPORARY_ERROR),
)


def classify(rules: tuple[Rule, ...], info: ErrorInfo) -> ErrorKind | None:
    """The kind of the first matching rule; None means "not an error" (a 2xx
    reply no rule objects to)."""
    for rule in rules:
        if rule.matches(info):
            return rule.kind
    return None


@functools.lru_cache(maxsize=256)
def _classify_finish(rules: tuple[Rule, ...], finish: str) -> ErrorKind | None:
    """classify() of a 2xx reply: it depends on the finish reason alone, and
    walking the table for every reply cost more than parsing the reply."""
    return classify(rules, ErrorInfo(200, finish=finish))


#: Failures below HTTP, first match (by isinstance) wins.
TRANSPORT_ERRORS: tuple[tuple[type[Exception], ErrorKind], ...] = (
    (httpx.TimeoutException, ErrorKind.TIMEOUT),
    (httpx.UnsupportedProtocol, ErrorKind.INVALID_INPUT),
    (httpx.TransportError, ErrorKind.TEMPORARY_ERROR),
    (httpx.DecodingError, ErrorKind.TEMPORARY_ERROR),
    (httpx.RequestError, ErrorKind.TEMPORARY_ERROR),
)


def transport_error_kind(exc: Exception) -> ErrorKind:
    """The kind for an httpx exception raised while sending or reading."""
    for cls, kind in TRANSPORT_ERRORS:
        if isinstance(exc, cls):
            return kind
    return ErrorKind.TEMPORARY_ERROR


def error_info(status: int, body: Any) -> ErrorInfo:
    """Read the error object of any of the three APIs (and common
    OpenAI-compatible servers) into an :class:`ErrorInfo`."""
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]  # Gemini's non-SSE stream endpoint wraps errors in a list
    if not isinstance(body, dict):
        return ErrorInfo(status)
    err = body.get("error", body)
    if isinstance(err, str):
        return ErrorInfo(status, message=err)
    if not isinstance(err, dict):
        return ErrorInfo(status)
    message = err.get("message") or err.get("detail") or ""
    details = err.get("details")
    return ErrorInfo(
        status,
        code=_text(err.get("code")),
        type=_text(err.get("type")),
        status=_text(err.get("status")),
        message=message if isinstance(message, str) else json.dumps(message, ensure_ascii=False),
        details=json.dumps(details, ensure_ascii=False) if details else "",
    )


def _text(value: Any) -> str:
    return "" if value is None else str(value)


# ---------------------------------------------------------------------------
# Headers
# ---------------------------------------------------------------------------


def _seconds(value: float) -> float | None:
    """A server's wait in seconds, from 0 to MAX_COOL_DOWN_S; None if not finite."""
    return min(max(0.0, value), MAX_COOL_DOWN_S) if math.isfinite(value) else None


def retry_after(headers: Mapping[str, str], wall_clock: Callable[[], float] = time.time) -> float | None:
    """The server's wait hint in seconds: ``retry-after-ms`` (milliseconds), else
    ``retry-after`` (seconds or an HTTP date); None if absent, unreadable or not
    finite, and at most ``MAX_COOL_DOWN_S``."""
    value = headers.get("retry-after-ms")
    if value is not None:
        try:
            return _seconds(float(value) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return _seconds(float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, OverflowError):
        return None
    if when.tzinfo is None:
        return None
    return _seconds(when.timestamp() - wall_clock())


_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")
_UNIT_ORDER = ("h", "m", "s", "ms")


def parse_reset(value: str | None, wall_clock: Callable[[], float] = time.time) -> float | None:
    """Seconds until a rate-limit reset, from ``"1s"``, ``"6m0s"``, ``"250ms"``,
    ``"1h2m3.5s"`` (each unit once, largest first), a bare number of seconds, or
    an RFC 3339 time. None if unreadable or not finite; at most ``MAX_COOL_DOWN_S``."""
    if value is None:
        return None
    value = value.strip()
    if not value:
        return None
    try:
        return _seconds(float(value))
    except ValueError:
        pass
    parts = _DURATION_PART.findall(value)
    if parts and "".join(n + u for n, u in parts) == value:
        units = [_UNIT_ORDER.index(u) for _, u in parts]
        if units != sorted(set(units)):
            return None  # "1m1m", "1s1m": not a duration a server means
        scale = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
        return _seconds(sum(float(n) * scale[u] for n, u in parts))
    try:
        when = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        return None
    return _seconds(when.timestamp() - wall_clock())


def exhausted_budgets(headers: Mapping[str, str], pairs: tuple[tuple[str, str], ...],
                      wall_clock: Callable[[], float] = time.time) -> list[float | None]:
    """For each ``(remaining header, reset header)`` pair whose remaining count
    is 0 (or less), the seconds until its reset (None if the reset is missing
    or unreadable). Header names are matched case-insensitively; a pair whose
    remaining header is absent or not a number says nothing."""
    lower = {k.lower(): v for k, v in headers.items()}
    found: list[float | None] = []
    for remaining_name, reset_name in pairs:
        remaining = lower.get(remaining_name.lower())
        if remaining is None:
            continue
        try:
            left = float(remaining)
        except ValueError:
            continue
        if left <= 0:
            found.append(parse_reset(lower.get(reset_name.lower()), wall_clock))
    return found


def google_retry_delay(details: str) -> float | None:
    """``retryDelay`` ("23s", "1.5s") from Gemini's ``google.rpc.RetryInfo`` detail, at most ``MAX_COOL_DOWN_S``."""
    match = re.search(r'"retryDelay":\s*"(\d+(?:\.\d+)?)s"', details)
    return _seconds(float(match.group(1))) if match else None


# ---------------------------------------------------------------------------
# Server-sent events
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class SSEEvent:
    event: str
    data: str


async def iter_sse(response: httpx.Response) -> AsyncIterator[SSEEvent]:
    """Parse a ``text/event-stream`` body into events (``event`` defaults to
    ``"message"``; multi-line ``data`` is joined with newlines; comments skipped)."""
    event, data = "", []
    async for line in response.aiter_lines():
        if not line:
            if data:
                yield SSEEvent(event or "message", "\n".join(data))
            event, data = "", []
            continue
        if line.startswith(":"):
            continue
        name, _, value = line.partition(":")
        if value.startswith(" "):
            value = value[1:]
        if name == "event":
            event = value
        elif name == "data":
            data.append(value)
    if data:
        yield SSEEvent(event or "message", "\n".join(data))


#: After a stream's end marker, how long to wait for the body to end so the
#: connection can be reused (servers end it at once; a stuck one is dropped).
DRAIN_SECONDS = 1.0


async def _drain(events: AsyncIterator[SSEEvent]) -> None:
    with trio.move_on_after(DRAIN_SECONDS):
        try:
            async for _ in events:
                pass
        except httpx.HTTPError:
            pass  # the reply is complete; only the connection is lost


# ---------------------------------------------------------------------------
# The provider base class
# ---------------------------------------------------------------------------


def _proxied(base_url: str) -> bool:
    """Whether the environment sends ``base_url`` through a proxy
    (``HTTPS_PROXY`` and the like, less ``NO_PROXY``): then httpx's own
    transport, which speaks to proxies, carries the requests."""
    url = httpx.URL(base_url)
    proxies = urllib.request.getproxies()
    if not (proxies.get(url.scheme) or proxies.get("all")):
        return False
    return not urllib.request.proxy_bypass(url.host)


class _Cookies(httpx.Cookies):
    """httpx's cookie jar, read only from replies that set a cookie: building
    the jar's urllib view of every reply cost a tenth of a request's CPU."""

    def extract_cookies(self, response: httpx.Response) -> None:
        if "set-cookie" in response.headers:
            super().extract_cookies(response)


class _Client(httpx.AsyncClient):
    """httpx's client with :class:`_Cookies` as its jar; otherwise the same."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.cookies = self._cookies

    @property
    def cookies(self) -> httpx.Cookies:
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        self._cookies = _Cookies(cookies)


@dataclass
class Reply:
    """A reply being read, from one JSON body or many stream events."""

    parts: list[str] = field(default_factory=list)
    input_tokens: int | None = None
    output_tokens: int | None = None
    finish: str | None = None
    model: str | None = None
    done: bool = False  # stop reading the stream (its end marker arrived)
    #: An object the API handed over as such (Anthropic's ``tool_use.input``);
    #: None: a structured reply is the text, as JSON.
    data: Any = None
    has_data: bool = False
    #: The stream's content block that is the reply, once one starts
    #: (Anthropic's tool_use block of a structured request); None: the text.
    block: int | None = None
    #: The HTTP reply as it came (status, request id, JSON body; no body for a stream).
    raw: RawReply | None = None

    @property
    def text(self) -> str:
        return "".join(self.parts)


class HTTPProvider(BaseProvider):
    """Base of the HTTP providers. ``Subclass(spec)`` is the registered factory;
    tests may pass ``transport=httpx.MockTransport(...)``.

    Every response's headers (error replies too) are read for the pairs in
    :attr:`rate_limit_headers`; a budget the server says is used up is passed
    to the kernel's rate-limit feedback (:meth:`bind_rate_limits`) with the
    seconds until its reset.
    """

    name: ClassVar[str]
    default_base_url: ClassVar[str]
    default_key_env: ClassVar[str]
    #: The provider's own options and their defaults (besides COMMON_OPTIONS).
    options: ClassVar[dict[str, Any]] = {}
    #: Error table, first match wins; ends with COMMON_RULES.
    rules: ClassVar[tuple[Rule, ...]]
    #: Finish reasons of a normal end, reported as ``finish_reason="stop"``.
    stop_reasons: ClassVar[frozenset[str]]
    #: The vendor's ``(remaining, reset)`` rate-limit header names; a
    #: remaining count of 0 cools the model down until the reset (see
    #: :func:`parse_reset` for the reset formats). Empty: it sends none.
    rate_limit_headers: ClassVar[tuple[tuple[str, str], ...]] = ()
    #: The reply header holding the server's id for the request (kept in
    #: ``Response.raw`` / ``ProviderError.raw``).
    request_id_header: ClassVar[str] = "x-request-id"
    #: Reads RFC 3339 reset times; tests may replace it.
    wall_clock: Callable[[], float] = staticmethod(time.time)

    def __init__(self, spec: ModelSpec, *, transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(spec)
        self.opts = self.resolve_options(spec)
        self.base_url = (spec.base_url or self.default_base_url).rstrip("/")
        self.key_env = spec.api_key_env or self.default_key_env
        self._key = os.environ.get(self.key_env) or None
        self._key_bytes = self._key.encode("utf-8", "surrogatepass") if self._key else None
        self._key_plain = (self._key is not None and self._key.isascii() and self._key.isprintable()
                           and not set(self._key) & set('"\\/'))
        self.max_parallel = spec.max_parallel or DEFAULT_MAX_PARALLEL
        timeout = dict(connect=self.opts["connect_timeout"], write=self.opts["read_timeout"], pool=None)
        self._timeout = httpx.Timeout(read=self.opts["read_timeout"], **timeout)
        self._stream_timeout = httpx.Timeout(read=self.opts["stream_read_timeout"], **timeout)
        self._urls: dict[str, httpx.URL] = {}
        if transport is None and not _proxied(self.base_url):
            # A connection per allowed request in flight; waiting for one is
            # bounded by the kernel's timeout, not a pool timeout.
            transport = TrioTransport(max_connections=self.max_parallel)
        #: Where a reply that is one JSON body is sent (see :meth:`_send_json`);
        #: None behind a proxy, where the client picks httpx's proxy transport.
        self._transport = transport
        self._timeouts = self._timeout.as_dict()
        self._client = _Client(
            headers=self.headers(self._key) if self._key else {},
            timeout=self._timeout,
            # Only used behind a proxy (httpx's own transport reads *_PROXY).
            limits=httpx.Limits(max_connections=self.max_parallel, max_keepalive_connections=self.max_parallel),
            transport=transport,
        )

    # -- what subclasses provide ---------------------------------------------

    def headers(self, key: str) -> dict[str, str]:
        """Headers on every request, including the key."""
        raise NotImplementedError

    def url(self, request: Request) -> str:
        raise NotImplementedError

    def build_body(self, request: Request) -> dict[str, Any]:
        raise NotImplementedError

    def parse_reply(self, data: Any, reply: Reply) -> None:
        """Fill ``reply`` from a non-streaming 2xx JSON body."""
        raise NotImplementedError

    def on_event(self, event: SSEEvent, reply: Reply) -> None:
        """Fold one stream event into ``reply``; set ``reply.done`` at the end
        marker; raise (see :meth:`error_from_body`) on an error event."""
        raise NotImplementedError

    @classmethod
    def validate_options(cls, opts: dict[str, Any], spec: ModelSpec) -> None:
        """Check the provider's own options (merged over their defaults);
        raise ``storyloom.provider.spec_error(spec, (OPTION,), ...)``."""

    # -- the ProviderFactory protocol (besides the constructor) -------------

    @classmethod
    def check_spec(cls, spec: ModelSpec) -> None:
        """The entry's options and base_url, checked without building a client."""
        cls.resolve_options(spec)

    @classmethod
    def required_env(cls, spec: ModelSpec) -> tuple[str, ...]:
        """The key's variable: ``api_key_env``, else the provider's default."""
        return (spec.api_key_env or cls.default_key_env,)

    # -- the Provider protocol -----------------------------------------------

    async def complete(self, request: Request) -> Response:
        """Send one request; raise ProviderError with a kind from :attr:`rules`."""
        if self._key is None:
            raise ProviderError(ErrorKind.AUTH_ERROR,
                                f"{self.name}: no API key: set the environment variable {self.key_env}",
                                billed=False)  # nothing was sent
        reply = Reply()
        try:
            if request.stream:
                await self._stream(request, reply)
            else:
                await self._post(request, reply)
        except httpx.RequestError as exc:
            kind = transport_error_kind(exc)
            detail = str(exc) or "no detail"
            # No connection, no request: surely not billed. Past that (a read
            # timeout, a dropped connection) it may have been.
            refused = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
            raise ProviderError(kind, self._redact(f"{self.name}: {type(exc).__name__}: {detail}"),
                                input_tokens=reply.input_tokens or 0,
                                output_tokens=reply.output_tokens or 0,
                                billed=False if refused else None) from exc
        except ProviderError as exc:
            # A stream that failed half-way still consumed what it reported.
            if not (exc.input_tokens or exc.output_tokens):
                exc.input_tokens, exc.output_tokens = reply.input_tokens or 0, reply.output_tokens or 0
            if exc.raw is None and reply.raw is not None and reply.raw.body is not None:
                exc.raw = reply.raw  # a whole reply storyloom refused (a refusal, a bad structure)
            raise
        return self._response(request, reply)

    async def aclose(self) -> None:
        await self._client.aclose()

    def __repr__(self) -> str:
        return (f"<{type(self).__name__} model={self.spec.model!r} base_url={mask_url(self.base_url)!r} "
                f"key_env={self.key_env!r} key={'set' if self._key else 'missing'}>")

    # -- internals -------------------------------------------------------------

    async def _post(self, request: Request, reply: Reply) -> None:
        response = await self._send_json(self._parsed_url(request), self.build_body(request))
        self._saw(response)
        if not 200 <= response.status_code < 300:
            raise self._http_error(response)
        data = self._json(response.content, "reply")
        reply.raw = self._raw(response, data)
        if not isinstance(data, (dict, list)):
            raise ProviderError(ErrorKind.TEMPORARY_ERROR, f"{self.name}: unexpected reply: {str(data)[:100]}")
        self.parse_reply(data, reply)
        if reply.finish is None:
            reply.finish = "stop"  # some compatible servers leave it out of complete replies

    async def _stream(self, request: Request, reply: Reply) -> None:
        async with self._client.stream("POST", self._parsed_url(request), json=self.build_body(request),
                                       timeout=self._stream_timeout) as response:
            self._saw(response)
            if not 200 <= response.status_code < 300:
                await response.aread()
                raise self._http_error(response)
            reply.raw = self._raw(response, None)
            events = iter_sse(response)
            async for event in events:
                self.on_event(event, reply)
                if reply.done:
                    break
            if reply.done:
                await _drain(events)
        if reply.finish is None:
            raise ProviderError(ErrorKind.TEMPORARY_ERROR,
                                f"{self.name}: the stream ended before the reply finished")

    async def _send_json(self, url: httpx.URL, body: Any) -> httpx.Response:
        """POST a JSON body and read the whole reply: what ``client.post(url,
        json=body)`` does (the client's headers, timeouts and cookie jar, the
        same body bytes, httpx's log line), handed straight to the transport.
        The client's general pipeline (merging arguments, auth and redirect
        flows, event hooks, the stream wrapper) cost as much CPU per request
        as the transport itself, for none of which a provider has a use."""
        if self._transport is None:
            return await self._client.post(url, json=body)
        # httpx's own encoding and header order (Host, the client's, Content-Length,
        # Content-Type), given whole: filling them in one by one cost more.
        content = json.dumps(body, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode("utf-8")
        headers = [(b"Host", url.netloc), *self._client.headers.raw, (b"Content-Length", b"%d" % len(content)),
                   (b"Content-Type", b"application/json")]
        request = httpx.Request("POST", url, headers=headers, stream=httpx.ByteStream(content),
                                extensions={"timeout": self._timeouts})  # a fresh dict: a request may add to it
        request.read()
        cookies = self._client.cookies
        if cookies:
            cookies.set_cookie_header(request)
        response = await self._transport.handle_async_request(request)
        response.request = request
        try:
            if isinstance(response.stream, httpx.SyncByteStream):
                response.read()  # bytes in memory already (the transport's small replies)
            else:
                await response.aread()
        finally:
            await response.aclose()
        cookies.extract_cookies(response)
        if _httpx_log.isEnabledFor(logging.INFO):
            _httpx_log.info('HTTP Request: %s %s "%s %d %s"', request.method, request.url, response.http_version,
                            response.status_code, response.reason_phrase)
        return response

    def _parsed_url(self, request: Request) -> httpx.URL:
        # A provider posts to one or two URLs; parsing the text each time cost
        # as much CPU as the rest of building the request.
        text = self.url(request)
        url = self._urls.get(text)
        if url is None:
            if len(self._urls) >= 64:
                self._urls.clear()
            url = self._urls[text] = httpx.URL(text)
        return url

    def _response(self, request: Request, reply: Reply) -> Response:
        input_tokens = reply.input_tokens if reply.input_tokens is not None else estimate_request_tokens(request)
        output_tokens = reply.output_tokens if reply.output_tokens is not None else estimate_tokens(reply.text)
        finish = reply.finish or "stop"
        kind = _classify_finish(self.rules, finish)
        if kind is ErrorKind.OUTPUT_TRUNCATED:
            raise ProviderError(kind, f"{self.name}: the reply hit the length limit ({finish}) after "
                                      f"{output_tokens} tokens (max_tokens {request.max_tokens})",
                                input_tokens=input_tokens, output_tokens=output_tokens, raw=reply.raw)
        if kind is not None:
            raise ProviderError(kind, f"{self.name}: the reply was stopped ({finish})",
                                input_tokens=input_tokens, output_tokens=output_tokens, raw=reply.raw)
        data = None
        if request.response_schema is not None:
            given = reply.data if reply.has_data else NO_DATA
            data = structured_data(request, reply.text, given, who=self.name, input_tokens=input_tokens,
                                   output_tokens=output_tokens)
        text = reply.text if not reply.has_data else json.dumps(reply.data, ensure_ascii=False)
        return Response(text=text, input_tokens=input_tokens, output_tokens=output_tokens,
                        finish_reason="stop" if finish in self.stop_reasons else finish.lower(),
                        model=reply.model or self.spec.model, data=data, raw=reply.raw)

    def _saw(self, response: httpx.Response) -> None:
        if self.rate_limits is None or not self.rate_limit_headers:
            return
        for reset_in in exhausted_budgets(response.headers, self.rate_limit_headers, self.wall_clock):
            self.rate_limits.exhausted(reset_in)

    def _http_error(self, response: httpx.Response) -> ProviderError:
        try:
            body = json.loads(response.content)
        except ValueError:
            body = None
        error = self.error_from_body(response.status_code, body, response.headers,
                                     fallback=response.content.decode("utf-8", "replace"))
        error.raw = self._raw(response, body)
        return error

    def _raw(self, response: httpx.Response, body: Any) -> RawReply:
        """The reply as it is kept (stored, written to results files): the key
        redacted wherever the server echoed it, half a surrogate pair replaced
        by U+FFFD, as in the reply's text."""
        if body is not None and not self._plain(response.content):
            text = json.dumps(body, ensure_ascii=False)
            if (self._key and self._key in text) or not text.isascii():
                fixed = self._redact(text.encode("utf-16", "surrogatepass").decode("utf-16", "replace"))
                if fixed != text:
                    body = json.loads(fixed)
        request_id = response.headers.get(self.request_id_header)
        return RawReply(response.status_code, self._redact(request_id) if request_id else None, body)

    def _plain(self, content: bytes) -> bool:
        """Whether a JSON body surely holds neither the key nor a character
        outside ASCII (so nothing in it to redact or repair), read from its
        bytes instead of re-encoding the parsed body: ASCII without a ``\\u``
        escape decodes to ASCII, and a key without ``"``, ``\\`` or ``/`` can
        only appear in it as written."""
        if not content.isascii() or b"\\u" in content:
            return False
        return self._key_bytes is None or (self._key_bytes not in content and self._key_plain)

    def error_from_body(self, status: int, body: Any, headers: Mapping[str, str] | None = None,
                        fallback: str = "") -> ProviderError:
        """The ProviderError for an error reply (or a stream's error event,
        with the status it stands for)."""
        info = error_info(status, body)
        kind = classify(self.rules, info) or ErrorKind.TEMPORARY_ERROR
        wait = retry_after(headers) if headers is not None else None
        if wait is None and info.details:
            wait = google_retry_delay(info.details)
        label = info.code if info.code and info.code != str(status) else (info.type or info.status)
        message = (info.message or fallback).strip()[:MAX_MESSAGE]
        text = f"{self.name}: HTTP {status}" + (f" {label}" if label else "") + (f": {message}" if message else "")
        log.debug("%s %s -> %s (%s)", self.name, self.spec.model, status, kind)
        # A 4xx is a rejection, not billed; a 5xx or a stream's error event may
        # come after the model ran, so it stays "maybe" (None).
        return ProviderError(kind, self._redact(text), retry_after=wait,
                             billed=False if 400 <= status < 500 else None)

    def _json(self, content: bytes, what: str) -> Any:
        try:
            return json.loads(content)
        except ValueError:
            raise ProviderError(ErrorKind.TEMPORARY_ERROR, f"{self.name}: unreadable {what} (not JSON)") from None

    def _redact(self, text: str) -> str:
        if self._key:
            text = text.replace(self._key, "[redacted]")
        return text

    @classmethod
    def resolve_options(cls, spec: ModelSpec) -> dict[str, Any]:
        """The entry's options over the defaults, checked (and base_url with them).

        :raises ConfigError: at the option in the settings file.
        """
        opts = merge_options(spec, {**COMMON_OPTIONS, **cls.options}, cls.name)
        for key in COMMON_OPTIONS:
            value = opts[key]
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
                raise spec_error(spec, (key,), f"expected a positive number of seconds, got {value!r}")
            opts[key] = float(value)
        text = (spec.base_url or cls.default_base_url).rstrip("/")
        try:
            url = httpx.URL(text)
        except httpx.InvalidURL as err:
            detail = str(err).replace(text, mask_url(text))
            raise spec_error(spec, ("base_url",), f"expected an http(s) URL, got {mask_url(text)!r} ({detail})") from None
        if url.scheme not in ("http", "https") or not url.host:
            raise spec_error(spec, ("base_url",), f"expected an http(s) URL, got {mask_url(text)!r}")
        cls.validate_options(opts, spec)
        return opts
