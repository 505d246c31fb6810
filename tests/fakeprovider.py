"""A fake OpenAI / Anthropic / Gemini server on 127.0.0.1, for tests and benches.

Real HTTP (stdlib ``ThreadingHTTPServer`` in a daemon thread, a thread per
request, HTTP/1.1 keep-alive, chunked SSE), so providers are tested through
httpx's real network stack::

    server = FakeProviderServer().start()
    server.configure("m1", rpm=1200, tpm=100_000, latency=0.2, error_rate=0.05,
                     hang_rate=0.02, hang_seconds=20, seed=1)
    spec = server.model_spec("openai", "m1")      # base_url and api_key_env filled in
    os.environ.update(server.env())               # the keys the server accepts
    ...
    server.stats("m1").rate_limited               # counters
    server.close()

Endpoints (``base_url(kind)`` gives the part before the API's own path):

* ``openai``: ``POST /openai/v1/chat/completions`` (``Authorization: Bearer``)
* ``anthropic``: ``POST /anthropic/v1/messages`` (``x-api-key``, ``anthropic-version``)
* ``gemini``: ``POST /gemini/v1beta/models/{model}:generateContent`` and
  ``:streamGenerateContent?alt=sse`` (``x-goog-api-key``)

Rate limits are enforced per model the way providers quantise per-minute
limits: a bucket holding one second's worth (``rpm/60`` requests, ``tpm/60``
tokens, at least one request), refilled continuously; a request costs its
prompt estimate plus ``max_tokens`` and may overdraw a full bucket (so a big
request is not refused for ever). Excess gets the provider's 429 with
``retry-after`` (and ``x-ratelimit-*`` / ``anthropic-ratelimit-*`` headers).
``configure(model, headers={...})`` adds fixed headers to every reply (a
vendor's "nothing left until ..." fixtures), over the computed ones.

The pytest fixture ``fake_provider`` is at the bottom; nothing here needs
pytest otherwise, so benches can import this module.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import re
import secrets
import threading
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from storyloom.tokens import estimate_tokens

KINDS = ("openai", "anthropic", "gemini")
KEY_HEADERS = {"openai": "authorization", "anthropic": "x-api-key", "gemini": "x-goog-api-key"}
_THAI = re.compile(r"[\u0e00-\u0e7f]")


@dataclass
class ModelConfig:
    """How the fake answers one model. Rates are probabilities per request."""

    rpm: int | None = None
    tpm: int | None = None
    latency: float = 0.0  # seconds before answering (before the first byte)
    error_rate: float = 0.0  # answered with the provider's 5xx
    hang_rate: float = 0.0  # sleeps hang_seconds (streams: after the first event)
    hang_seconds: float = 20.0
    quota_after: int | None = None  # admitted requests before the quota error
    auth_fail: bool = False  # every request is refused as a bad key
    output_tokens: int = 20  # reply length; longer than max_tokens -> truncated reply
    input_token_factor: float = 1.0  # reported prompt tokens = estimate * factor
    stream_delay: float = 0.0  # between stream events
    text: str | None = None  # reply text (default: filler in the prompt's language)
    #: The object a structured request (response_format json_schema, a forced
    #: Anthropic tool, Gemini's responseMimeType application/json) is answered
    #: with, in the API's own shape (JSON text; Anthropic's tool_use input).
    #: None: ``text`` (or filler) as the text, which is then not JSON.
    data: Any = None
    #: Answer a forced Anthropic tool with a text block (a model ignoring it).
    ignore_tools: bool = False
    seed: int = 0
    #: Sent with every reply past the key check, over the computed rate-limit
    #: headers: fixtures of a vendor's headers ("remaining 0, reset in 1m30s").
    headers: dict[str, str] = field(default_factory=dict)


@dataclass
class Stats:
    """Counters for one model (or all of them)."""

    requests: int = 0  # every well-formed request (bad_requests are not counted)
    ok: int = 0
    rate_limited: int = 0
    errors: int = 0  # injected 5xx
    hangs: int = 0
    quota: int = 0
    auth_failures: int = 0
    bad_requests: int = 0
    in_flight: int = 0  # may lag a client that already has its reply
    max_concurrency: int = 0
    prompt_tokens: int = 0  # reported in usage
    completion_tokens: int = 0
    admitted_at: list[float] = field(default_factory=list)  # time.monotonic() of each admitted request


@dataclass(frozen=True)
class Recorded:
    kind: str
    model: str
    path: str
    headers: dict[str, str]  # the key header's value replaced by "<key>"
    body: Any


class _Bucket:
    def __init__(self, per_minute: float, now: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.t = now

    def refill(self, now: float) -> None:
        self.level = min(self.capacity, self.level + (now - self.t) * self.rate)
        self.t = now

    def wait(self, units: float) -> float:
        need = min(units, self.capacity)
        return 0.0 if self.level >= need else (need - self.level) / self.rate

    def reset_in(self) -> float:
        return max(0.0, (self.capacity - self.level) / self.rate)


class FakeProviderServer:
    def __init__(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._configs: dict[str, ModelConfig] = {}
        self._stats: dict[str, Stats] = {}
        self._buckets: dict[str, tuple[_Bucket | None, _Bucket | None]] = {}
        self._admitted: dict[str, int] = {}
        self._rngs: dict[str, random.Random] = {}
        self.keys = {kind: f"fake-{kind}-{secrets.token_hex(12)}" for kind in KINDS}
        self.requests: list[Recorded] = []
        self.max_concurrency = 0
        self.connections = 0  # TCP connections accepted (keep-alive reuses them)
        self._in_flight = 0
        server = self

        class Handler(_Handler):
            fake = server

        self._httpd = _Server((host, port), Handler)
        self._thread: threading.Thread | None = None

    # -- lifetime ----------------------------------------------------------

    def start(self) -> FakeProviderServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),  # poll interval: quick close
                                        name="fake-provider", daemon=True)
        self._thread.start()
        return self

    def close(self) -> None:
        self._stop.set()  # wakes hanging requests
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> FakeProviderServer:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- configuration -----------------------------------------------------

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    def base_url(self, kind: str) -> str:
        """The ``base_url`` a provider of ``kind`` should be given."""
        root = f"http://127.0.0.1:{self.port}"
        return {"openai": f"{root}/openai/v1", "anthropic": f"{root}/anthropic",
                "gemini": f"{root}/gemini/v1beta"}[kind]

    @staticmethod
    def key_env(kind: str) -> str:
        return f"STORYLOOM_FAKE_{kind.upper()}_KEY"

    def env(self) -> dict[str, str]:
        """Environment variables holding the keys this server accepts."""
        return {self.key_env(kind): key for kind, key in self.keys.items()}

    def model_spec(self, kind: str, model: str, name: str | None = None, **fields: Any):
        """A ModelSpec for provider ``kind`` pointed at this server; keywords that
        are not ModelSpec fields become provider options (``read_timeout=1``)."""
        from storyloom.settings import ModelSpec

        known = {f.name for f in dataclasses.fields(ModelSpec)}
        options = {**fields.pop("options", {}), **{k: fields.pop(k) for k in list(fields) if k not in known}}
        fields.setdefault("base_url", self.base_url(kind))
        fields.setdefault("api_key_env", self.key_env(kind))
        return ModelSpec(name=name or model, provider=kind, model=model, options=options, **fields)

    def configure(self, model: str, **settings: Any) -> ModelConfig:
        """Set how ``model`` is answered (see :class:`ModelConfig`); resets its
        rate-limit buckets and random draws, keeps its counters."""
        with self._lock:
            config = dataclasses.replace(self._configs.get(model, ModelConfig()), **settings)
            self._configs[model] = config
            self._buckets.pop(model, None)
            self._rngs[model] = random.Random(config.seed)
            return config

    def stats(self, model: str | None = None) -> Stats:
        """A snapshot of one model's counters, or the sum over all models."""
        with self._lock:
            if model is not None:
                s = self._stats.get(model, Stats())
                return dataclasses.replace(s, admitted_at=list(s.admitted_at))
            total = Stats(max_concurrency=self.max_concurrency)
            for s in self._stats.values():
                for f in dataclasses.fields(Stats):
                    if f.name not in ("max_concurrency", "admitted_at"):
                        setattr(total, f.name, getattr(total, f.name) + getattr(s, f.name))
                total.admitted_at.extend(s.admitted_at)
            total.admitted_at.sort()
            return total

    def reset_stats(self) -> None:
        with self._lock:
            self._stats.clear()
            self.requests.clear()
            self.max_concurrency = 0
            self.connections = 0

    # -- decisions (called by the handler threads) ---------------------------

    def _config(self, model: str) -> ModelConfig:
        return self._configs.get(model) or ModelConfig()

    def _admit(self, kind: str, model: str, cost: int) -> tuple[str, float, dict[str, str]]:
        """("ok" | "quota" | "rate" | "error" | "hang" | "auth", retry_after, headers)."""
        with self._lock:
            config = self._config(model)
            stats = self._stats.setdefault(model, Stats())
            stats.requests += 1
            if config.auth_fail:
                stats.auth_failures += 1
                return "auth", 0.0, {}
            admitted = self._admitted.get(model, 0)
            if config.quota_after is not None and admitted >= config.quota_after:
                stats.quota += 1
                return "quota", 0.0, {}
            now = time.monotonic()
            if model not in self._buckets:
                self._buckets[model] = (_Bucket(config.rpm, now) if config.rpm else None,
                                        _Bucket(config.tpm, now) if config.tpm else None)
            requests, tokens = self._buckets[model]
            wait = 0.0
            for bucket, units in ((requests, 1), (tokens, cost)):
                if bucket is not None:
                    bucket.refill(now)
                    wait = max(wait, bucket.wait(units))
            if wait > 0:
                stats.rate_limited += 1
                return "rate", wait, self._limit_headers(kind, config, requests, tokens)
            for bucket, units in ((requests, 1), (tokens, cost)):
                if bucket is not None:
                    bucket.level -= units
            self._admitted[model] = admitted + 1
            stats.admitted_at.append(now)
            headers = self._limit_headers(kind, config, requests, tokens)
            rng = self._rngs.setdefault(model, random.Random(config.seed))
            draw = rng.random()
            if draw < config.error_rate:
                stats.errors += 1
                return "error", 0.0, headers
            if draw < config.error_rate + config.hang_rate:
                stats.hangs += 1
                return "hang", 0.0, headers
            return "ok", 0.0, headers

    @staticmethod
    def _limit_headers(kind: str, config: ModelConfig, requests: _Bucket | None,
                       tokens: _Bucket | None) -> dict[str, str]:
        # Remaining is reported per minute, like the providers do: 0 only when
        # the one-second bucket is (nearly) empty.
        headers: dict[str, str] = {}
        for what, bucket, limit in (("requests", requests, config.rpm), ("tokens", tokens, config.tpm)):
            if bucket is None or kind == "gemini":
                continue
            remaining = max(0, math.floor(bucket.level / bucket.capacity * limit))
            reset = bucket.reset_in()
            if kind == "openai":
                headers[f"x-ratelimit-limit-{what}"] = str(limit)
                headers[f"x-ratelimit-remaining-{what}"] = str(remaining)
                headers[f"x-ratelimit-reset-{what}"] = f"{math.ceil(reset * 1000)}ms"
            else:
                when = datetime.fromtimestamp(time.time() + reset, timezone.utc)
                headers[f"anthropic-ratelimit-{what}-limit"] = str(limit)
                headers[f"anthropic-ratelimit-{what}-remaining"] = str(remaining)
                headers[f"anthropic-ratelimit-{what}-reset"] = when.isoformat().replace("+00:00", "Z")
        return headers

    def _enter(self, model: str) -> None:
        with self._lock:
            stats = self._stats.setdefault(model, Stats())
            stats.in_flight += 1
            stats.max_concurrency = max(stats.max_concurrency, stats.in_flight)
            self._in_flight += 1
            self.max_concurrency = max(self.max_concurrency, self._in_flight)

    def _leave(self, model: str) -> None:
        with self._lock:
            self._stats.setdefault(model, Stats()).in_flight -= 1
            self._in_flight -= 1

    def _count(self, model: str, outcome: str, prompt: int = 0, completion: int = 0) -> None:
        # Counted before the reply is written, so a client that has its reply
        # (and stopped reading at the end marker) already sees it in the stats.
        with self._lock:
            stats = self._stats.setdefault(model, Stats())
            if outcome == "ok":
                stats.ok += 1
                stats.prompt_tokens += prompt
                stats.completion_tokens += completion
            elif outcome == "bad":
                stats.bad_requests += 1
            elif outcome == "badkey":
                stats.requests += 1
                stats.auth_failures += 1

    def _record(self, item: Recorded) -> None:
        with self._lock:
            self.requests.append(item)


# ---------------------------------------------------------------------------
# Wire formats
# ---------------------------------------------------------------------------


def _prompt_texts(kind: str, body: dict[str, Any]) -> list[str]:
    if kind == "gemini":
        texts = [p.get("text", "") for c in body.get("contents") or [] for p in c.get("parts") or []]
        system = body.get("systemInstruction") or {}
        return texts + [p.get("text", "") for p in system.get("parts") or []]
    texts = [m.get("content") if isinstance(m.get("content"), str) else json.dumps(m.get("content"))
             for m in body.get("messages") or []]
    if kind == "anthropic" and isinstance(body.get("system"), str):
        texts.append(body["system"])
    return texts


def _max_tokens(kind: str, body: dict[str, Any]) -> int:
    if kind == "gemini":
        return int((body.get("generationConfig") or {}).get("maxOutputTokens") or 8192)
    if kind == "openai":
        return int(body.get("max_completion_tokens") or body.get("max_tokens") or 4096)
    return int(body.get("max_tokens") or 0)


def _error_body(kind: str, status: int, what: str, message: str) -> dict[str, Any]:
    if kind == "openai":
        codes = {"rate": ("requests", "rate_limit_exceeded"), "quota": ("insufficient_quota", "insufficient_quota"),
                 "auth": ("invalid_request_error", "invalid_api_key"), "bad": ("invalid_request_error", None),
                 "error": ("server_error", None)}
        err_type, code = codes[what]
        return {"error": {"message": message, "type": err_type, "param": None, "code": code}}
    if kind == "anthropic":
        types = {"rate": "rate_limit_error", "quota": "invalid_request_error", "auth": "authentication_error",
                 "bad": "invalid_request_error", "error": "overloaded_error" if status == 529 else "api_error"}
        return {"type": "error", "error": {"type": types[what], "message": message}}
    statuses = {"rate": "RESOURCE_EXHAUSTED", "quota": "RESOURCE_EXHAUSTED", "auth": "INVALID_ARGUMENT",
                "bad": "INVALID_ARGUMENT", "error": "UNAVAILABLE" if status == 503 else "INTERNAL"}
    error: dict[str, Any] = {"code": status, "message": message, "status": statuses[what]}
    if what in ("rate", "quota"):
        per = "PerMinute" if what == "rate" else "PerDay"
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{
            "quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
            "quotaId": f"GenerateRequests{per}PerProjectPerModel"}]}]
    if what == "auth":
        error["details"] = [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID",
                             "domain": "googleapis.com"}]
    return {"error": error}


_STATUS = {"rate": 429, "auth": 401, "bad": 400}
_QUOTA_STATUS = {"openai": 429, "anthropic": 400, "gemini": 429}
_QUOTA_MESSAGE = {
    "openai": "You exceeded your current quota, please check your plan and billing details.",
    "anthropic": "Your credit balance is too low to access the Anthropic API. "
                 "Please go to Plans & Billing to upgrade or purchase credits.",
    "gemini": "You exceeded your current quota, please check your plan and billing details. "
              "Quota exceeded for metric: generate_content_requests_per_day.",
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a hanging request must not keep the process alive
    request_queue_size = 1024  # the default backlog of 5 resets bursts of connections


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    fake: FakeProviderServer

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def setup(self) -> None:
        super().setup()
        with self.fake._lock:
            self.fake.connections += 1

    def do_POST(self) -> None:  # noqa: N802
        try:
            self._handle()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (a timeout, say)

    def _handle(self) -> None:
        path, _, query = self.path.partition("?")
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        kind, model, stream = self._route(path, query)
        if kind is None:
            return self._send_json(404, {"error": {"message": f"no route for {path}"}})
        try:
            body = json.loads(raw)
        except ValueError:
            return self._send_json(400, _error_body(kind, 400, "bad", "the body is not JSON"))
        if kind != "gemini":
            model = body.get("model") or ""
            stream = bool(body.get("stream"))
        headers = {k.lower(): v for k, v in self.headers.items()}
        sent_key = headers.get(KEY_HEADERS[kind], "")
        if kind == "openai":
            sent_key = sent_key.removeprefix("Bearer ")
        if sent_key:
            headers[KEY_HEADERS[kind]] = "<key>"
        self.fake._record(Recorded(kind, model, self.path, headers, body))
        fake = self.fake
        fake._enter(model)
        try:
            problem = self._check(kind, body, headers)
            if problem:
                fake._count(model, "bad")
                return self._send_json(400, _error_body(kind, 400, "bad", problem))
            if sent_key != fake.keys[kind]:
                fake._count(model, "badkey")
                # Echo the key as some providers do, so tests can check it is redacted.
                return self._send_error(kind, "auth", f"Incorrect API key provided: {sent_key}.")
            texts = _prompt_texts(kind, body)
            estimate = sum(estimate_tokens(t) for t in texts) + 4 * len(texts) + 3
            max_tokens = _max_tokens(kind, body)
            decision, wait, limit_headers = fake._admit(kind, model, estimate + max_tokens)
            config = fake._config(model)
            limit_headers = {**limit_headers, **config.headers}
            if decision == "auth":
                return self._send_error(kind, "auth", f"Incorrect API key provided: {sent_key}.")
            if decision == "quota":
                return self._send_json(_QUOTA_STATUS[kind], _error_body(kind, _QUOTA_STATUS[kind], "quota",
                                                                       _QUOTA_MESSAGE[kind]))
            if decision == "rate":
                return self._send_error(kind, "rate", f"Rate limit reached for {model}. Please try again in "
                                        f"{wait:.3f}s.", wait=wait, extra=limit_headers)
            if config.latency:
                fake._stop.wait(config.latency)
            if decision == "error":
                status = fake._rngs[model].choice({"openai": [500, 502, 503], "anthropic": [500, 529],
                                                   "gemini": [500, 503]}[kind])
                return self._send_json(status, _error_body(kind, status, "error", "The server had an error."),
                                       extra=limit_headers)
            prompt = max(1, round(estimate * config.input_token_factor))
            completion = min(config.output_tokens, max_tokens)
            finish = "stop" if config.output_tokens <= max_tokens else "length"
            thai = any(_THAI.search(t) for t in texts)
            text = config.text if config.text is not None else _filler(completion, thai)
            tool = None if config.ignore_tools else _forced_tool(kind, body)
            if tool is None and config.data is not None and _structured(kind, body):
                text = json.dumps(config.data, ensure_ascii=False)
            hang = config.hang_seconds if decision == "hang" else 0.0
            if not hang:
                fake._count(model, "ok", prompt, completion)
            if stream:
                self._send_stream(kind, model, text, prompt, completion, finish, hang, config.stream_delay,
                                  limit_headers, body, (tool, config.data) if tool else None)
            else:
                if hang:
                    fake._stop.wait(hang)
                reply = _reply(kind, model, text, prompt, completion, finish)
                if tool is not None:
                    reply["content"] = [{"type": "tool_use", "id": "toolu_fake", "name": tool, "input": config.data}]
                    reply["stop_reason"] = "tool_use" if finish == "stop" else "max_tokens"
                self._send_json(200, reply, extra=limit_headers)
            if hang:
                fake._count(model, "ok", prompt, completion)  # if the client is still there
        finally:
            fake._leave(model)

    def _route(self, path: str, query: str) -> tuple[str | None, str, bool]:
        if path == "/openai/v1/chat/completions":
            return "openai", "", False
        if path == "/anthropic/v1/messages":
            return "anthropic", "", False
        match = re.fullmatch(r"/gemini/v1beta/models/([^/:]+):(generateContent|streamGenerateContent)", path)
        if match:
            stream = match.group(2) == "streamGenerateContent"
            if stream and "alt=sse" not in query:
                return None, "", False  # only the SSE form is served
            return "gemini", match.group(1), stream
        return None, "", False

    @staticmethod
    def _check(kind: str, body: Any, headers: dict[str, str]) -> str:
        if not isinstance(body, dict):
            return "the body must be an object"
        if kind == "openai" and not (body.get("model") and body.get("messages")):
            return "model and messages are required"
        if kind == "anthropic":
            if "anthropic-version" not in headers:
                return "anthropic-version header is required"
            if not (body.get("model") and body.get("messages") and isinstance(body.get("max_tokens"), int)):
                return "model, messages and max_tokens are required"
            if any(m.get("role") not in ("user", "assistant") for m in body["messages"]):
                return "messages: roles must be user or assistant (system is a top-level field)"
        if kind == "gemini" and not body.get("contents"):
            return "contents is required"
        return _check_structured(kind, body)

    # -- writing -----------------------------------------------------------

    def _send_error(self, kind: str, what: str, message: str, wait: float = 0.0,
                    extra: dict[str, str] | None = None) -> None:
        status = 400 if (kind == "gemini" and what == "auth") else _STATUS[what]
        body = _error_body(kind, status, what, message)
        headers = dict(extra or {})
        if what == "rate":
            headers["retry-after"] = str(max(1, math.ceil(wait)))
            if kind == "openai":
                headers["retry-after-ms"] = str(max(1, math.ceil(wait * 1000)))
            if kind == "gemini":
                body["error"].setdefault("details", []).append(
                    {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": f"{max(wait, 0.001):.3f}s"})
        self._send_json(status, body, extra=headers)

    def _send_json(self, status: int, body: Any, extra: dict[str, str] | None = None) -> None:
        try:
            data = json.dumps(body, ensure_ascii=False).encode()
        except UnicodeEncodeError:  # a lone surrogate in a configured text: JSON can still send it escaped
            data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def _send_stream(self, kind: str, model: str, text: str, prompt: int, completion: int, finish: str,
                     hang: float, delay: float, extra: dict[str, str], body: dict[str, Any],
                     tool: tuple[str, Any] | None = None) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("cache-control", "no-cache")
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        events = _stream_events(kind, model, text, prompt, completion, finish, body, tool)
        for i, event in enumerate(events):
            data = event.encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
            if i == 0 and hang:
                self.fake._stop.wait(hang)  # an idle stream: the client's read timeout should fire
            elif delay:
                self.fake._stop.wait(delay)
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


def _structured(kind: str, body: dict[str, Any]) -> bool:
    """Whether the request asks for structured data in its API's own way."""
    if kind == "openai":
        return (body.get("response_format") or {}).get("type") == "json_schema"
    if kind == "gemini":
        return (body.get("generationConfig") or {}).get("responseMimeType") == "application/json"
    return _forced_tool(kind, body) is not None


def _forced_tool(kind: str, body: dict[str, Any]) -> str | None:
    """The tool an Anthropic request forces (``tool_choice: {type: tool, name}``), or None."""
    choice = body.get("tool_choice") if kind == "anthropic" else None
    return choice.get("name") if isinstance(choice, dict) and choice.get("type") == "tool" else None


_SCHEMA_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


def _check_structured(kind: str, body: dict[str, Any]) -> str:
    """What the real APIs refuse (400) in a structured request."""
    if kind == "openai" and "response_format" in body:
        fmt = body["response_format"]
        spec = fmt.get("json_schema") if isinstance(fmt, dict) else None
        if not isinstance(spec, dict) or not _SCHEMA_NAME.match(str(spec.get("name", ""))) \
                or not isinstance(spec.get("schema"), dict):
            return "response_format.json_schema needs a name ([A-Za-z0-9_-]{1,64}) and a schema object"
    if kind == "anthropic" and "tool_choice" in body:
        name = _forced_tool(kind, body)
        tools = {t.get("name"): t for t in body.get("tools") or [] if isinstance(t, dict)}
        if name not in tools:
            return "tool_choice names a tool that is not in tools"
        if not _SCHEMA_NAME.match(name) or (tools[name].get("input_schema") or {}).get("type") != "object":
            return "tools[].input_schema must be a JSON Schema of type object"
    if kind == "gemini":
        config = body.get("generationConfig") or {}
        if "responseJsonSchema" in config and config.get("responseMimeType") != "application/json":
            return "responseJsonSchema needs responseMimeType application/json"
    return ""


def _filler(tokens: int, thai: bool) -> str:
    word = "ฝนตก " if thai else "rain "
    return (word * tokens).rstrip() if tokens else ""


def _pieces(text: str, n: int = 4) -> list[str]:
    size = max(1, math.ceil(len(text) / n))
    return [text[i:i + size] for i in range(0, len(text), size)] or [""]


def _reply(kind: str, model: str, text: str, prompt: int, completion: int, finish: str) -> dict[str, Any]:
    if kind == "openai":
        return {"id": "chatcmpl-fake", "object": "chat.completion", "created": int(time.time()), "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                             "finish_reason": finish}],
                "usage": {"prompt_tokens": prompt, "completion_tokens": completion,
                          "total_tokens": prompt + completion}}
    if kind == "anthropic":
        return {"id": "msg_fake", "type": "message", "role": "assistant", "model": model,
                "content": [{"type": "text", "text": text}],
                "stop_reason": "end_turn" if finish == "stop" else "max_tokens", "stop_sequence": None,
                "usage": {"input_tokens": prompt, "output_tokens": completion}}
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": text}]}, "index": 0,
                            "finishReason": "STOP" if finish == "stop" else "MAX_TOKENS"}],
            "usageMetadata": {"promptTokenCount": prompt, "candidatesTokenCount": completion,
                              "totalTokenCount": prompt + completion},
            "modelVersion": model}


def _stream_events(kind: str, model: str, text: str, prompt: int, completion: int, finish: str,
                   body: dict[str, Any], tool: tuple[str, Any] | None = None) -> list[str]:
    def sse(data: Any, event: str | None = None) -> str:
        head = f"event: {event}\n" if event else ""
        return f"{head}data: {json.dumps(data, ensure_ascii=False)}\n\n"

    pieces = _pieces(text)
    if kind == "openai":
        base = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": int(time.time()), "model": model}
        events = [sse({**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                            "finish_reason": None}]})]
        events += [sse({**base, "choices": [{"index": 0, "delta": {"content": p}, "finish_reason": None}]})
                   for p in pieces]
        events.append(sse({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]}))
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append(sse({**base, "choices": [], "usage": {
                "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}}))
        return events + ["data: [DONE]\n\n"]
    if kind == "anthropic":
        events = [
            sse({"type": "message_start", "message": {
                "id": "msg_fake", "type": "message", "role": "assistant", "model": model, "content": [],
                "stop_reason": None, "usage": {"input_tokens": prompt, "output_tokens": 1}}}, "message_start"),
            sse({"type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""}},
                "content_block_start"),
            sse({"type": "ping"}, "ping"),
        ]
        events += [sse({"type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": p}},
                       "content_block_delta") for p in pieces]
        stop = "end_turn"
        if tool is not None:  # a forced tool: its input streams as JSON pieces
            stop = "tool_use"
            events += [sse({"type": "content_block_stop", "index": 0}, "content_block_stop"),
                       sse({"type": "content_block_start", "index": 1, "content_block": {
                           "type": "tool_use", "id": "toolu_fake", "name": tool[0], "input": {}}},
                           "content_block_start")]
            events += [sse({"type": "content_block_delta", "index": 1,
                            "delta": {"type": "input_json_delta", "partial_json": p}}, "content_block_delta")
                       for p in _pieces(json.dumps(tool[1], ensure_ascii=False))]
        events += [
            sse({"type": "content_block_stop", "index": 1 if tool else 0}, "content_block_stop"),
            sse({"type": "message_delta", "delta": {"stop_reason": stop if finish == "stop" else "max_tokens",
                                                    "stop_sequence": None},
                 "usage": {"output_tokens": completion}}, "message_delta"),
            sse({"type": "message_stop"}, "message_stop"),
        ]
        return events
    events = []
    for i, p in enumerate(pieces):
        chunk: dict[str, Any] = {"candidates": [{"content": {"role": "model", "parts": [{"text": p}]}, "index": 0}],
                                 "usageMetadata": {"promptTokenCount": prompt, "totalTokenCount": prompt},
                                 "modelVersion": model}
        if i == len(pieces) - 1:
            chunk["candidates"][0]["finishReason"] = "STOP" if finish == "stop" else "MAX_TOKENS"
            chunk["usageMetadata"] = {"promptTokenCount": prompt, "candidatesTokenCount": completion,
                                      "totalTokenCount": prompt + completion}
        events.append(sse(chunk))
    return events


# ---------------------------------------------------------------------------
# The pytest fixture (pytest is only needed here)
# ---------------------------------------------------------------------------

try:
    import pytest
except ImportError:  # a bench without pytest
    pytest = None

if pytest is not None:

    @pytest.fixture
    def fake_provider(monkeypatch):
        """A started :class:`FakeProviderServer`; its keys are in the environment
        (``server.key_env(kind)``) for the test's duration."""
        server = FakeProviderServer().start()
        for name, value in server.env().items():
            monkeypatch.setenv(name, value)
        try:
            yield server
        finally:
            server.close()
