"""Every row of the providers' error mapping, through httpx.MockTransport,
and docs/providers.md checked against the code's tables."""

from __future__ import annotations

import email.utils
import json
import re
import time
from pathlib import Path

import httpx
import pytest
import trio

from storyloom import ErrorKind, ProviderError
from storyloom.plugins.providers import anthropic, gemini, openai
from storyloom.plugins.providers.http import (
    TRANSPORT_ERRORS,
    ErrorInfo,
    Rule,
    classify,
    error_info,
    retry_after,
    transport_error_kind,
)
from storyloom.provider import Request
from storyloom.settings import ModelSpec

KEY = "sk-test-9f8e7d6c5b4a39281706f5e4d3c2b1a0"
KEY_ENV = "LOOM_TEST_PROVIDER_KEY"
REQUEST = Request(messages=({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}),
                  max_tokens=100)
PROVIDERS = {"openai": openai.OpenAIProvider, "anthropic": anthropic.AnthropicProvider,
             "gemini": gemini.GeminiProvider}
DOCS = Path(__file__).resolve().parent.parent / "docs" / "providers.md"

K = ErrorKind


def make(kind: str, handler, monkeypatch, **options):
    monkeypatch.setenv(KEY_ENV, KEY)
    spec = ModelSpec(name="m", provider=kind, model="model-1", api_key_env=KEY_ENV, options=options)
    return PROVIDERS[kind](spec, transport=httpx.MockTransport(handler))


def failure(provider, request: Request = REQUEST) -> ProviderError:
    async def go():
        try:
            await provider.complete(request)
        finally:
            await provider.aclose()

    with pytest.raises(ProviderError) as info:
        trio.run(go)
    return info.value


# -- bodies in each API's own format ------------------------------------------


def oai(message="oops", type_="invalid_request_error", code=None):
    return {"error": {"message": message, "type": type_, "param": None, "code": code}}


def ant(type_, message="oops"):
    return {"type": "error", "error": {"type": type_, "message": message}}


def gem(code, status, message="oops", details=None):
    error = {"code": code, "message": message, "status": status}
    if details is not None:
        error["details"] = details
    return {"error": error}


def quota_failure(quota_id):
    return {"@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [{"quotaMetric": "generativelanguage.googleapis.com/generate_content_requests",
                            "quotaId": quota_id}]}


HTTP_DATE = "date"  # replaced by an HTTP date 30 s ahead

# (provider, status, body, headers, kind, retry_after)
CASES = [
    # openai
    ("openai", 429, oai("You exceeded your current quota", "insufficient_quota", "insufficient_quota"), {}, K.QUOTA_EXCEEDED, None),
    ("openai", 429, oai("You exceeded your current quota", "insufficient_quota", None), {}, K.QUOTA_EXCEEDED, None),
    ("openai", 429, oai("Rate limit reached for gpt-4o on tokens per day (TPD): Limit 90000", "tokens", "rate_limit_exceeded"), {}, K.QUOTA_EXCEEDED, None),
    ("openai", 429, oai("Rate limit reached", "requests", "rate_limit_exceeded"), {"retry-after-ms": "1500", "retry-after": "2"}, K.API_RATE_LIMIT, 1.5),
    ("openai", 429, oai("Rate limit reached", "requests", "rate_limit_exceeded"), {"retry-after": "7"}, K.API_RATE_LIMIT, 7.0),
    ("openai", 429, oai("Rate limit reached", "requests", "rate_limit_exceeded"), {"retry-after": HTTP_DATE}, K.API_RATE_LIMIT, 30.0),
    ("openai", 429, oai("Rate limit reached", "requests", "rate_limit_exceeded"), {}, K.API_RATE_LIMIT, None),
    ("openai", 402, oai("Payment required"), {}, K.QUOTA_EXCEEDED, None),
    ("openai", 408, oai("Request timeout"), {}, K.TIMEOUT, None),
    ("openai", 500, oai("The server had an error", "server_error"), {}, K.TEMPORARY_ERROR, None),
    ("openai", 502, "<html>Bad gateway</html>", {}, K.TEMPORARY_ERROR, None),
    ("openai", 503, oai("The engine is currently overloaded", "server_error"), {"retry-after": "4"}, K.TEMPORARY_ERROR, 4.0),
    ("openai", 504, "Gateway Timeout", {}, K.TIMEOUT, None),
    ("openai", 400, oai("Invalid 'messages'"), {}, K.INVALID_INPUT, None),
    ("openai", 404, oai("The model does not exist", code="model_not_found"), {}, K.INVALID_INPUT, None),
    ("openai", 422, {"detail": [{"msg": "field required"}]}, {}, K.INVALID_INPUT, None),
    ("openai", 413, oai("Request too large"), {}, K.INVALID_INPUT, None),
    ("openai", 401, oai("Incorrect API key provided", code="invalid_api_key"), {}, K.AUTH_ERROR, None),
    ("openai", 403, oai("Country not supported", code="unsupported_country_region_territory"), {}, K.AUTH_ERROR, None),
    ("openai", 302, "", {"location": "https://elsewhere"}, K.TEMPORARY_ERROR, None),
    # anthropic
    ("anthropic", 529, ant("overloaded_error", "Overloaded"), {}, K.TEMPORARY_ERROR, None),
    ("anthropic", 400, ant("billing_error", "Payment issue"), {}, K.QUOTA_EXCEEDED, None),
    ("anthropic", 400, ant("invalid_request_error", "Your credit balance is too low to access the Anthropic API."), {}, K.QUOTA_EXCEEDED, None),
    ("anthropic", 403, ant("permission_error", "Please update your billing details"), {}, K.QUOTA_EXCEEDED, None),
    ("anthropic", 400, ant("invalid_request_error", "You have reached your specified API usage limits."), {}, K.QUOTA_EXCEEDED, None),
    ("anthropic", 429, ant("rate_limit_error", "Number of requests has exceeded your rate limit"), {"retry-after": "3"}, K.API_RATE_LIMIT, 3.0),
    ("anthropic", 401, ant("authentication_error", "invalid x-api-key"), {}, K.AUTH_ERROR, None),
    ("anthropic", 403, ant("permission_error", "Your API key does not have permission"), {}, K.AUTH_ERROR, None),
    ("anthropic", 400, ant("invalid_request_error", "messages: roles must alternate"), {}, K.INVALID_INPUT, None),
    ("anthropic", 404, ant("not_found_error", "model: claude-x"), {}, K.INVALID_INPUT, None),
    ("anthropic", 413, ant("request_too_large", "Request exceeds the maximum size"), {}, K.INVALID_INPUT, None),
    ("anthropic", 500, ant("api_error", "Internal server error"), {}, K.TEMPORARY_ERROR, None),
    ("anthropic", 504, "upstream timeout", {}, K.TIMEOUT, None),
    # gemini
    ("gemini", 429, gem(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing details.",
                        [quota_failure("GenerateRequestsPerDayPerProjectPerModel-FreeTier")]), {}, K.QUOTA_EXCEEDED, None),
    ("gemini", 429, gem(429, "RESOURCE_EXHAUSTED", "Quota exceeded for metric: generate_content_free_tier_input_token_count, limit: 0, model: gemini-2.5-pro"), {}, K.QUOTA_EXCEEDED, None),
    ("gemini", 429, gem(429, "RESOURCE_EXHAUSTED", "Your prepayment credits are depleted."), {}, K.QUOTA_EXCEEDED, None),
    ("gemini", 429, gem(429, "RESOURCE_EXHAUSTED", "You exceeded your current quota, please check your plan and billing details.",
                        [quota_failure("GenerateRequestsPerMinutePerProjectPerModel"),
                         {"@type": "type.googleapis.com/google.rpc.RetryInfo", "retryDelay": "23s"}]), {}, K.API_RATE_LIMIT, 23.0),
    ("gemini", 429, gem(429, "RESOURCE_EXHAUSTED", "Resource has been exhausted (e.g. check quota)."), {"retry-after": "5"}, K.API_RATE_LIMIT, 5.0),
    ("gemini", 400, gem(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key.",
                        [{"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": "API_KEY_INVALID"}]), {}, K.AUTH_ERROR, None),
    ("gemini", 400, gem(400, "INVALID_ARGUMENT", "API key not valid. Please pass a valid API key."), {}, K.AUTH_ERROR, None),
    ("gemini", 400, gem(400, "INVALID_ARGUMENT", "Invalid JSON payload received."), {}, K.INVALID_INPUT, None),
    ("gemini", 400, gem(400, "FAILED_PRECONDITION", "User location is not supported for the API use."), {}, K.INVALID_INPUT, None),
    ("gemini", 403, gem(403, "PERMISSION_DENIED", "Method doesn't allow unregistered callers."), {}, K.AUTH_ERROR, None),
    ("gemini", 404, gem(404, "NOT_FOUND", "models/gemini-9 is not found"), {}, K.INVALID_INPUT, None),
    ("gemini", 500, gem(500, "INTERNAL", "An internal error has occurred."), {}, K.TEMPORARY_ERROR, None),
    ("gemini", 503, gem(503, "UNAVAILABLE", "The model is overloaded."), {}, K.TEMPORARY_ERROR, None),
    ("gemini", 504, gem(504, "DEADLINE_EXCEEDED", "Deadline expired."), {}, K.TIMEOUT, None),
]


@pytest.mark.parametrize("kind,status,body,headers,expected,wait", CASES,
                         ids=[f"{c[0]}-{c[1]}-{i}" for i, c in enumerate(CASES)])
def test_http_error_kinds(kind, status, body, headers, expected, wait, monkeypatch):
    headers = dict(headers)
    if headers.get("retry-after") == HTTP_DATE:
        headers["retry-after"] = email.utils.formatdate(time.time() + 30, usegmt=True)
    seen = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        if isinstance(body, str):
            return httpx.Response(status, text=body, headers=headers)
        return httpx.Response(status, json=body, headers=headers)

    error = failure(make(kind, handler, monkeypatch))
    assert len(seen) == 1
    assert error.kind is expected
    assert error.input_tokens == error.output_tokens == 0
    assert f"HTTP {status}" in error.message
    if wait is None:
        assert error.retry_after is None
    else:
        assert error.retry_after == pytest.approx(wait, abs=1.5 if wait == 30.0 else 1e-9)


# -- 2xx replies that are still failures -----------------------------------------


def openai_reply(finish):
    return {"model": "model-1", "choices": [{"index": 0, "message": {"role": "assistant", "content": "partial"},
                                             "finish_reason": finish}],
            "usage": {"prompt_tokens": 11, "completion_tokens": 100}}


def anthropic_reply(stop):
    return {"model": "model-1", "content": [{"type": "text", "text": "partial"}], "stop_reason": stop,
            "usage": {"input_tokens": 11, "output_tokens": 100}}


def gemini_reply(finish):
    return {"candidates": [{"content": {"role": "model", "parts": [{"text": "partial"}]}, "finishReason": finish}],
            "usageMetadata": {"promptTokenCount": 11, "candidatesTokenCount": 60, "thoughtsTokenCount": 40}}


REPLY_CASES = [
    ("openai", openai_reply("length"), K.OUTPUT_TRUNCATED),
    ("openai", openai_reply("content_filter"), K.INVALID_INPUT),
    ("anthropic", anthropic_reply("max_tokens"), K.OUTPUT_TRUNCATED),
    ("anthropic", anthropic_reply("refusal"), K.INVALID_INPUT),
    ("gemini", gemini_reply("MAX_TOKENS"), K.OUTPUT_TRUNCATED),
    ("gemini", gemini_reply("SAFETY"), K.INVALID_INPUT),
    ("gemini", gemini_reply("RECITATION"), K.INVALID_INPUT),
]


@pytest.mark.parametrize("kind,body,expected", REPLY_CASES, ids=[f"{c[0]}-{c[2]}" for c in REPLY_CASES])
def test_stopped_replies_carry_their_tokens(kind, body, expected, monkeypatch):
    error = failure(make(kind, lambda r: httpx.Response(200, json=body), monkeypatch))
    assert error.kind is expected
    assert (error.input_tokens, error.output_tokens) == (11, 100)


def test_gemini_blocked_prompt_is_invalid_input(monkeypatch):
    body = {"promptFeedback": {"blockReason": "PROHIBITED_CONTENT"}, "usageMetadata": {"promptTokenCount": 9}}
    error = failure(make("gemini", lambda r: httpx.Response(200, json=body), monkeypatch))
    assert error.kind is K.INVALID_INPUT
    assert "PROMPT_BLOCKED" in error.message
    assert error.input_tokens == 9


def test_truncated_stream_is_output_truncated(monkeypatch):
    events = (
        'data: {"choices":[{"index":0,"delta":{"content":"par"},"finish_reason":null}]}\n\n'
        'data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}]}\n\n'
        'data: {"choices":[],"usage":{"prompt_tokens":12,"completion_tokens":100}}\n\n'
        "data: [DONE]\n\n"
    )
    handler = lambda r: httpx.Response(200, text=events, headers={"content-type": "text/event-stream"})  # noqa: E731
    error = failure(make("openai", handler, monkeypatch), Request(messages=REQUEST.messages, stream=True))
    assert error.kind is K.OUTPUT_TRUNCATED
    assert (error.input_tokens, error.output_tokens) == (12, 100)


STREAM_ERRORS = [
    ("anthropic", 'event: message_start\ndata: {"type":"message_start","message":{"model":"m","usage":{"input_tokens":10,"output_tokens":1}}}\n\n'
                  'event: error\ndata: {"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}\n\n',
     K.TEMPORARY_ERROR, 10),
    ("anthropic", 'event: error\ndata: {"type":"error","error":{"type":"rate_limit_error","message":"slow down"}}\n\n',
     K.API_RATE_LIMIT, 0),
    ("openai", 'data: {"error":{"message":"The server had an error","type":"server_error"}}\n\n', K.TEMPORARY_ERROR, 0),
    ("gemini", 'data: {"error":{"code":503,"message":"The model is overloaded.","status":"UNAVAILABLE"}}\n\n',
     K.TEMPORARY_ERROR, 0),
    # The stream stops without a finish reason: the reply is incomplete.
    ("openai", 'data: {"choices":[{"index":0,"delta":{"content":"half"},"finish_reason":null}]}\n\n',
     K.TEMPORARY_ERROR, 0),
]


@pytest.mark.parametrize("kind,events,expected,input_tokens", STREAM_ERRORS)
def test_errors_inside_streams(kind, events, expected, input_tokens, monkeypatch):
    handler = lambda r: httpx.Response(200, text=events, headers={"content-type": "text/event-stream"})  # noqa: E731
    error = failure(make(kind, handler, monkeypatch), Request(messages=REQUEST.messages, stream=True))
    assert error.kind is expected
    assert error.input_tokens == input_tokens


def test_unreadable_reply_is_temporary(monkeypatch):
    error = failure(make("openai", lambda r: httpx.Response(200, text="<html>proxy</html>"), monkeypatch))
    assert error.kind is K.TEMPORARY_ERROR
    assert "not JSON" in error.message


# -- below HTTP --------------------------------------------------------------------

TRANSPORT_CASES = [
    (httpx.ConnectTimeout, K.TIMEOUT),
    (httpx.ReadTimeout, K.TIMEOUT),
    (httpx.WriteTimeout, K.TIMEOUT),
    (httpx.PoolTimeout, K.TIMEOUT),
    (httpx.ConnectError, K.TEMPORARY_ERROR),
    (httpx.ReadError, K.TEMPORARY_ERROR),
    (httpx.RemoteProtocolError, K.TEMPORARY_ERROR),
    (httpx.ProxyError, K.TEMPORARY_ERROR),
    (httpx.UnsupportedProtocol, K.INVALID_INPUT),
]


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
@pytest.mark.parametrize("exc,expected", TRANSPORT_CASES, ids=[c[0].__name__ for c in TRANSPORT_CASES])
def test_transport_errors(provider, exc, expected, monkeypatch):
    def handler(request):
        raise exc("boom", request=request)

    error = failure(make(provider, handler, monkeypatch))
    assert error.kind is expected
    assert exc.__name__ in error.message
    assert isinstance(error.__cause__, exc)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_missing_key_is_auth_error_naming_the_variable(provider, monkeypatch):
    monkeypatch.delenv("LOOM_TEST_ABSENT_KEY", raising=False)
    calls = []
    spec = ModelSpec(name="m", provider=provider, model="model-1", api_key_env="LOOM_TEST_ABSENT_KEY")
    instance = PROVIDERS[provider](spec, transport=httpx.MockTransport(lambda r: calls.append(r)))
    error = failure(instance)
    assert error.kind is K.AUTH_ERROR
    assert "LOOM_TEST_ABSENT_KEY" in error.message
    assert calls == []  # nothing was sent


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_default_key_variable(provider, monkeypatch):
    env = {"openai": "OPENAI_API_KEY", "anthropic": "ANTHROPIC_API_KEY", "gemini": "GEMINI_API_KEY"}[provider]
    monkeypatch.delenv(env, raising=False)
    spec = ModelSpec(name="m", provider=provider, model="model-1")
    error = failure(PROVIDERS[provider](spec, transport=httpx.MockTransport(lambda r: httpx.Response(200))))
    assert error.kind is K.AUTH_ERROR and env in error.message


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_an_echoed_key_is_redacted(provider, monkeypatch):
    body = {"openai": oai(f"Incorrect API key provided: {KEY}", code="invalid_api_key"),
            "anthropic": ant("authentication_error", f"invalid x-api-key {KEY}"),
            "gemini": gem(401, "UNAUTHENTICATED", f"bad key {KEY}")}[provider]
    instance = make(provider, lambda r: httpx.Response(401, json=body), monkeypatch)
    error = failure(instance)
    assert error.kind is K.AUTH_ERROR
    assert "[redacted]" in error.message
    for text in (str(error), repr(error), error.message, repr(instance), str(error.args)):
        assert KEY not in text


# -- headers -------------------------------------------------------------------------


@pytest.mark.parametrize("headers,expected", [
    ({"retry-after-ms": "250"}, 0.25),
    ({"retry-after": "12"}, 12.0),
    ({"retry-after": "0.5"}, 0.5),
    ({"retry-after": "soon"}, None),
    ({}, None),
    ({"retry-after-ms": "x", "retry-after": "3"}, 3.0),
])
def test_retry_after_headers(headers, expected):
    assert retry_after(headers) == expected


def test_retry_after_http_date():
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 42, usegmt=True)
    assert retry_after({"retry-after": date}, wall_clock=lambda: now) == pytest.approx(42)
    assert retry_after({"retry-after": date}, wall_clock=lambda: now + 100) == 0.0


# -- docs/providers.md matches the code ------------------------------------------------


def doc_tables() -> dict[str, list[list[str]]]:
    """Tables under each ``### heading`` of docs/providers.md, as rows of cells."""
    tables: dict[str, list[list[str]]] = {}
    heading = None
    for line in DOCS.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            heading = line.lstrip("#").strip() if line.startswith("### ") else None
            continue
        if heading and line.startswith("|"):
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if set("".join(cells)) <= set("-: "):
                continue  # the separator row
            tables.setdefault(heading, []).append(cells)
    return {name: rows[1:] for name, rows in tables.items()}  # drop header rows


def doc_rule(cells: list[str]) -> Rule:
    status, when, kind = cells[0], cells[1].strip("`"), cells[2]
    return Rule(status, "" if when == "(any)" else when, ErrorKind(kind))


def samples(rule: Rule) -> list[ErrorInfo]:
    """ErrorInfos meeting the row's condition, over every status its spec covers."""
    if rule.status == "other":
        statuses = [101, 301, 302, 399]
    else:
        statuses = []
        for item in rule.status.split(","):
            statuses += range(int(item[0]) * 100, int(item[0]) * 100 + 100) if item.endswith("xx") else [int(item)]
    fields = {}
    if rule.when:
        name, op, text = re.match(r"^(\w+)([=~])(.+)$", rule.when).groups()
        fields[name] = text.split(",")[0] if op == "=" else f"... {text.upper()} ..."
    return [ErrorInfo(status, **fields) for status in statuses]


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_docs_error_table_is_the_code_table(provider):
    rules = PROVIDERS[provider].rules
    documented = [doc_rule(cells) for cells in doc_tables()[provider]]
    assert documented == list(rules)


@pytest.mark.parametrize("provider", sorted(PROVIDERS))
def test_every_documented_row_maps_as_documented(provider):
    rules = PROVIDERS[provider].rules
    for index, cells in enumerate(doc_tables()[provider]):
        row = doc_rule(cells)
        reached = 0
        for info in samples(row):
            first = next(i for i, rule in enumerate(rules) if rule.matches(info))
            if first == index:  # not shadowed by an earlier row
                reached += 1
                assert classify(rules, info) is row.kind, (cells, info)
        assert reached, f"row {cells} can never match: earlier rows cover it"


def test_docs_transport_table_is_the_code_table():
    rows = doc_tables()["Transport failures"]
    assert [(r[0].strip("`"), r[1]) for r in rows] == [(f"httpx.{cls.__name__}", str(kind)) for cls, kind in TRANSPORT_ERRORS]
    for name, kind, _ in rows:
        cls = getattr(httpx, name.strip("`").removeprefix("httpx."))
        assert transport_error_kind(cls("x")) is ErrorKind(kind)


def test_2xx_without_a_matching_row_is_success():
    for rules in (openai.RULES, anthropic.RULES, gemini.RULES):
        assert classify(rules, ErrorInfo(200, finish="stop")) is None
        assert classify(rules, ErrorInfo(204)) is None


@pytest.mark.parametrize("status,when", [("42", ""), ("4xy", ""), ("429", "colour=red"), ("429", "message"),
                                         ("429", "message!x")])
def test_bad_rules_are_refused(status, when):
    with pytest.raises(ValueError):
        Rule(status, when, ErrorKind.TIMEOUT)


def test_error_info_reads_each_format():
    assert error_info(429, oai("m", "insufficient_quota", "insufficient_quota")).code == "insufficient_quota"
    assert error_info(400, ant("billing_error", "m")).type == "billing_error"
    info = error_info(429, [gem(429, "RESOURCE_EXHAUSTED", "m", [quota_failure("XPerDayY")])])
    assert info.status == "RESOURCE_EXHAUSTED" and "XPerDayY" in info.details
    assert error_info(400, {"error": "plain text"}).message == "plain text"
    assert error_info(422, {"detail": "field required"}).message == "field required"
    assert error_info(500, None) == ErrorInfo(500)
    assert json.loads(info.details)[0]["violations"][0]["quotaId"] == "XPerDayY"
