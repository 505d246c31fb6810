"""The HTTP providers against the fake provider server: real HTTP, under trio."""

from __future__ import annotations

import functools
import json
import logging
import math
import re
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import jsonschema
import pytest
import trio
from fakeprovider import FakeProviderServer, fake_provider  # noqa: F401
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from storyloom import ConfigError, ErrorKind, ProviderError
from storyloom.plugins.providers import anthropic, gemini, openai
from storyloom.plugins.providers.http import google_retry_delay, parse_reset, retry_after
from storyloom.ratelimit import MAX_COOL_DOWN_S
from storyloom.provider import Provider, Request, Response
from storyloom.ratelimit import RateLimiter
from storyloom.settings import ModelSpec
from storyloom.tokens import estimate_tpm_cost

KINDS = ("openai", "anthropic", "gemini")
CLASSES = {"openai": openai.OpenAIProvider, "anthropic": anthropic.AnthropicProvider,
           "gemini": gemini.GeminiProvider}
SPEC_FILE = Path(__file__).parent / "data" / "openai-chat-completions.openapi.json"

THAI_REQUEST = Request(
    messages=({"role": "system", "content": "แปลเป็นภาษาอังกฤษ"}, {"role": "user", "content": "ฝนตกพรำ ๆ ทั้งคืน"}),
    max_tokens=200, metadata={"language": "th", "item_id": "ch1", "attempt": 1})


def trio_test(fn):
    """Run an async test function with trio.run (the project does not use pytest-trio)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        return trio.run(functools.partial(fn, *args, **kwargs))

    return wrapper


def provider(fake: FakeProviderServer, kind: str, model: str = "m1", **fields):
    return CLASSES[kind](fake.model_spec(kind, model, **fields))


async def complete(instance, request: Request) -> Response:
    try:
        return await instance.complete(request)
    finally:
        await instance.aclose()


async def failure(instance, request: Request) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        await complete(instance, request)
    return info.value


def stream(request: Request) -> Request:
    return Request(messages=request.messages, max_tokens=request.max_tokens, temperature=request.temperature,
                   stream=True, metadata=request.metadata)


# -- success ---------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("kind", KINDS)
@trio_test
async def test_a_reply_with_usage(kind, streaming, fake_provider):  # noqa: F811
    fake_provider.configure("m1", output_tokens=12, input_token_factor=1.5)
    request = stream(THAI_REQUEST) if streaming else THAI_REQUEST
    response = await complete(provider(fake_provider, kind), request)
    stats = fake_provider.stats("m1")
    assert stats.ok == 1
    assert response.text == " ".join(["ฝนตก"] * 12)  # Thai survives SSE decoding
    assert response.input_tokens == stats.prompt_tokens > 0
    assert response.output_tokens == 12
    assert response.finish_reason == "stop"
    assert response.model == "m1"


@pytest.mark.parametrize("kind", KINDS)
@trio_test
async def test_providers_follow_the_protocol(kind, fake_provider):  # noqa: F811
    instance = provider(fake_provider, kind)
    assert isinstance(instance, Provider)
    await instance.aclose()


@pytest.mark.parametrize("kind", KINDS)
def test_built_outside_trio_used_inside(kind, fake_provider):  # noqa: F811
    # The kernel builds providers before trio.run; httpx picks the trio backend on first use.
    instance = provider(fake_provider, kind)
    response = trio.run(complete, instance, THAI_REQUEST)
    assert response.output_tokens > 0


@trio_test
async def test_openai_request_shape(fake_provider):  # noqa: F811
    await complete(provider(fake_provider, "openai"), stream(THAI_REQUEST))
    (sent,) = fake_provider.requests
    assert sent.path == "/openai/v1/chat/completions"
    assert sent.headers["authorization"] == "<key>"
    assert sent.body["stream"] is True and sent.body["stream_options"] == {"include_usage": True}
    assert sent.body["max_completion_tokens"] == 200
    assert sent.body["messages"][0] == {"role": "system", "content": "แปลเป็นภาษาอังกฤษ"}
    assert "metadata" not in sent.body  # request metadata is never sent as-is


@trio_test
async def test_anthropic_request_shape(fake_provider):  # noqa: F811
    await complete(provider(fake_provider, "anthropic"), THAI_REQUEST)
    (sent,) = fake_provider.requests
    assert sent.path == "/anthropic/v1/messages"
    assert sent.headers["x-api-key"] == "<key>"
    assert sent.headers["anthropic-version"] == "2023-06-01"
    assert sent.body["system"] == "แปลเป็นภาษาอังกฤษ"
    assert sent.body["messages"] == [{"role": "user", "content": "ฝนตกพรำ ๆ ทั้งคืน"}]
    assert sent.body["max_tokens"] == 200


@trio_test
async def test_gemini_request_shape(fake_provider):  # noqa: F811
    request = Request(messages=(*THAI_REQUEST.messages, {"role": "assistant", "content": "It rained."},
                                {"role": "user", "content": "Again."}), max_tokens=64, temperature=0.3)
    await complete(provider(fake_provider, "gemini", "models/gemini-x", thinking_budget=0), request)
    await complete(provider(fake_provider, "gemini", "gemini-x"), stream(request))
    plain, streamed = fake_provider.requests
    assert plain.path == "/gemini/v1beta/models/gemini-x:generateContent"
    assert streamed.path == "/gemini/v1beta/models/gemini-x:streamGenerateContent?alt=sse"
    assert plain.headers["x-goog-api-key"] == "<key>"
    assert "key=" not in plain.path  # never in the URL
    assert plain.body["systemInstruction"] == {"parts": [{"text": "แปลเป็นภาษาอังกฤษ"}]}
    assert [c["role"] for c in plain.body["contents"]] == ["user", "model", "user"]
    assert plain.body["generationConfig"] == {"maxOutputTokens": 64, "temperature": 0.3,
                                              "thinkingConfig": {"thinkingBudget": 0}}


# -- the OpenAI bodies against the published schema ---------------------------------


@pytest.fixture(scope="module")
def chat_request_validator():
    document = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
    registry = Registry().with_resource("urn:openai-chat", Resource.from_contents(
        document, default_specification=DRAFT202012))
    schema = {"$ref": "urn:openai-chat#/components/schemas/CreateChatCompletionRequest"}
    return jsonschema.Draft202012Validator(schema, registry=registry)


def test_the_validator_can_fail(chat_request_validator):
    assert not chat_request_validator.is_valid({"model": "gpt-4o"})  # no messages
    assert not chat_request_validator.is_valid({"model": "gpt-4o", "messages": [{"role": "narrator", "content": "x"}]})
    assert not chat_request_validator.is_valid({"model": "gpt-4o", "messages": [{"role": "user", "content": "x"}],
                                                "temperature": 3})


@pytest.mark.parametrize("options,request_", [
    ({}, THAI_REQUEST),
    ({}, stream(THAI_REQUEST)),
    ({"max_tokens_param": "max_tokens"}, THAI_REQUEST),
    ({}, Request(messages=({"role": "developer", "content": "Be terse."}, {"role": "user", "content": "Hi"},
                           {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Again"}),
                 max_tokens=64, temperature=2.0)),
    ({}, Request(messages=({"role": "user", "content": "Hi"},), temperature=0.0, stream=True)),
], ids=["plain", "stream", "max_tokens", "roles", "temperature-0"])
def test_openai_bodies_follow_the_published_schema(options, request_, fake_provider,  # noqa: F811
                                                   chat_request_validator):
    trio.run(complete, provider(fake_provider, "openai", **{"options": options}), request_)
    (sent,) = fake_provider.requests
    errors = [e.message for e in chat_request_validator.iter_errors(sent.body)]
    assert errors == []


# -- failures over real HTTP ----------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@trio_test
async def test_rate_limited(kind, fake_provider):  # noqa: F811
    fake_provider.configure("m1", rpm=1)  # one request, then a minute's wait
    instance = provider(fake_provider, kind)
    await instance.complete(THAI_REQUEST)
    error = await failure(instance, THAI_REQUEST)
    assert error.kind is ErrorKind.API_RATE_LIMIT
    assert error.retry_after is not None and 1 <= error.retry_after <= 61
    assert fake_provider.stats("m1").rate_limited == 1


@pytest.mark.parametrize("kind", KINDS)
@trio_test
async def test_quota_exhausted(kind, fake_provider):  # noqa: F811
    fake_provider.configure("m1", quota_after=2)
    instance = provider(fake_provider, kind)
    for _ in range(2):
        await instance.complete(THAI_REQUEST)
    error = await failure(instance, THAI_REQUEST)
    assert error.kind is ErrorKind.QUOTA_EXCEEDED


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("kind", KINDS)
@trio_test
async def test_server_errors_are_temporary(kind, streaming, fake_provider):  # noqa: F811
    fake_provider.configure("m1", error_rate=1.0)
    request = stream(THAI_REQUEST) if streaming else THAI_REQUEST
    error = await failure(provider(fake_provider, kind), request)
    assert error.kind is ErrorKind.TEMPORARY_ERROR
    assert fake_provider.stats("m1").errors == 1


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("kind", KINDS)
@trio_test
async def test_truncated_replies(kind, streaming, fake_provider):  # noqa: F811
    fake_provider.configure("m1", output_tokens=500)
    request = Request(messages=THAI_REQUEST.messages, max_tokens=50, stream=streaming)
    error = await failure(provider(fake_provider, kind), request)
    assert error.kind is ErrorKind.OUTPUT_TRUNCATED
    assert error.output_tokens == 50
    assert error.input_tokens == fake_provider.stats("m1").prompt_tokens


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("kind", KINDS)
@trio_test
async def test_a_silent_server_times_out_on_the_read_timeout(kind, streaming, fake_provider):  # noqa: F811
    fake_provider.configure("m1", hang_rate=1.0, hang_seconds=10)
    options = {"read_timeout": 0.3, "stream_read_timeout": 0.3}
    request = stream(THAI_REQUEST) if streaming else THAI_REQUEST
    with trio.fail_after(5):
        error = await failure(provider(fake_provider, kind, options=options), request)
    assert error.kind is ErrorKind.TIMEOUT
    assert "ReadTimeout" in error.message
    if kind == "anthropic" and streaming:
        assert error.input_tokens > 0  # message_start arrived before the stream went quiet


@trio_test
async def test_a_slow_but_steady_stream_is_not_a_timeout(fake_provider):  # noqa: F811
    # 0.15 s between events, 0.4 s idle allowed: the whole reply takes longer than that.
    fake_provider.configure("m1", stream_delay=0.15, output_tokens=8)
    options = {"stream_read_timeout": 0.4}
    response = await complete(provider(fake_provider, "openai", options=options), stream(THAI_REQUEST))
    assert response.output_tokens == 8


@trio_test
async def test_the_kernel_timeout_cancels_cleanly(fake_provider):  # noqa: F811
    fake_provider.configure("m1", hang_rate=1.0, hang_seconds=10)
    instance = provider(fake_provider, "openai")
    with pytest.raises(trio.TooSlowError):
        with trio.fail_after(0.3):
            await instance.complete(THAI_REQUEST)
    fake_provider.configure("m1", hang_rate=0.0)
    assert (await complete(instance, THAI_REQUEST)).output_tokens > 0  # still usable afterwards


@pytest.mark.parametrize("kind", KINDS)
@trio_test
async def test_connection_refused_is_temporary(kind):
    with trio.socket.socket() as sock:  # a port nobody listens on
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    spec = ModelSpec(name="m1", provider=kind, model="m1", base_url=f"http://127.0.0.1:{port}",
                     api_key_env="LOOM_TEST_REFUSED_KEY")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOM_TEST_REFUSED_KEY", "k")
        error = await failure(CLASSES[kind](spec), THAI_REQUEST)
    assert error.kind is ErrorKind.TEMPORARY_ERROR
    assert "ConnectError" in error.message


@pytest.mark.parametrize("text, kept", [
    ("plain text,\nover two lines", "plain text,\nover two lines"),
    ("the key {key} echoed", "the key [redacted] echoed"),
    ("half a pair \ud800 here", "half a pair \ufffd here"),
    ("ฝนตก {key}", "ฝนตก [redacted]"),
], ids=["plain", "key", "surrogate", "thai-and-key"])
@trio_test
async def test_the_kept_reply_is_redacted_and_repaired(text, kept, fake_provider):  # noqa: F811
    # Response.raw is stored and written to results files: the key never,
    # half a surrogate pair never (it cannot be written as UTF-8).
    key = fake_provider.keys["openai"]
    fake_provider.configure("m1", text=text.format(key=key))
    response = await complete(provider(fake_provider, "openai"), THAI_REQUEST)
    assert response.raw.body["choices"][0]["message"]["content"] == kept
    assert key not in json.dumps(response.raw.body)


@trio_test
async def test_a_cookie_the_server_sets_is_sent_back(fake_provider):  # noqa: F811
    fake_provider.configure("m1", headers={"set-cookie": "lb=blue; Path=/"})
    instance = provider(fake_provider, "openai")
    try:
        for _ in range(2):
            await instance.complete(THAI_REQUEST)
    finally:
        await instance.aclose()
    first, second = fake_provider.requests[-2:]
    assert "cookie" not in first.headers
    assert second.headers["cookie"] == "lb=blue"


@pytest.mark.parametrize("kind", KINDS)
@trio_test
async def test_a_reply_is_asked_for_as_client_post_would(kind, fake_provider):  # noqa: F811
    # The provider hands a JSON request straight to its transport, past the
    # client's pipeline: the request must be the one client.post builds.
    import httpx

    seen: list[httpx.Request] = []

    def handler(sent: httpx.Request) -> httpx.Response:
        seen.append(sent)
        return httpx.Response(500, json={"error": {"message": "stop here"}})

    spec = fake_provider.model_spec(kind, "m1")
    instance = CLASSES[kind](spec, transport=httpx.MockTransport(handler))
    reference = CLASSES[kind](spec)
    try:
        with pytest.raises(ProviderError):
            await instance.complete(THAI_REQUEST)
        expected = reference._client.build_request("POST", reference.url(THAI_REQUEST),
                                                   json=reference.build_body(THAI_REQUEST))
    finally:
        await instance.aclose()
        await reference.aclose()
    (sent,) = seen
    assert (sent.method, sent.url, sent.headers.raw, sent.content) == (
        expected.method, expected.url, expected.headers.raw, expected.content)
    assert sent.extensions["timeout"] == expected.extensions["timeout"]


# -- keys ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_the_key_never_leaks(kind, fake_provider, monkeypatch, caplog):  # noqa: F811
    caplog.set_level(logging.DEBUG)
    good = fake_provider.keys[kind]
    bad = "sk-wrong-" + "7" * 32
    monkeypatch.setenv("LOOM_TEST_WRONG_KEY", bad)
    texts = []

    async def main():
        ok = provider(fake_provider, kind)
        texts.append(repr(ok))
        response = await complete(ok, THAI_REQUEST)
        texts.append(repr(response))
        wrong = provider(fake_provider, kind, api_key_env="LOOM_TEST_WRONG_KEY")
        texts.append(repr(wrong))
        error = await failure(wrong, THAI_REQUEST)  # the server echoes the key it got
        assert error.kind is ErrorKind.AUTH_ERROR
        assert "[redacted]" in error.message
        texts.extend([str(error), repr(error), error.message, str(error.args)])
        fake_provider.configure("m1", auth_fail=True)
        error = await failure(provider(fake_provider, kind), stream(THAI_REQUEST))
        assert error.kind is ErrorKind.AUTH_ERROR
        texts.extend([str(error), repr(error), str(error.args)])

    trio.run(main)
    assert caplog.records  # httpx did log at DEBUG
    for text in [*texts, caplog.text]:
        assert good not in text
        assert bad not in text


@pytest.mark.parametrize("kind", KINDS)
@trio_test
async def test_a_missing_key_names_the_variable_and_sends_nothing(kind, fake_provider):  # noqa: F811
    error = await failure(provider(fake_provider, kind, api_key_env="LOOM_TEST_NO_SUCH_KEY"), THAI_REQUEST)
    assert error.kind is ErrorKind.AUTH_ERROR
    assert "LOOM_TEST_NO_SUCH_KEY" in error.message
    assert fake_provider.requests == []


# -- connections and rate limits -------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
@trio_test
async def test_connections_are_pooled_up_to_max_parallel(kind, fake_provider):  # noqa: F811
    fake_provider.configure("m1", latency=0.1)
    instance = provider(fake_provider, kind, max_parallel=4)
    responses = []

    async def one():
        responses.append(await instance.complete(THAI_REQUEST))

    async with trio.open_nursery() as nursery:
        for _ in range(16):
            nursery.start_soon(one)
    await instance.aclose()
    assert len(responses) == 16
    assert fake_provider.stats("m1").max_concurrency == 4


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("kind", KINDS)
@trio_test
async def test_connections_are_reused(kind, streaming, fake_provider):  # noqa: F811
    instance = provider(fake_provider, kind)
    request = stream(THAI_REQUEST) if streaming else THAI_REQUEST
    for _ in range(3):
        await instance.complete(request)
    await instance.aclose()
    assert fake_provider.connections == 1


class Feedback:
    """What the kernel hands a provider (a RateLimitFeedback), recording each call."""

    def __init__(self) -> None:
        self.resets: list[float | None] = []

    def exhausted(self, reset_in: float | None) -> None:
        self.resets.append(reset_in)


WALL = 1_700_000_000.0
#: Fixtures: each vendor's "nothing left" headers (remaining 0 with a reset).
OPENAI_HEADERS = {"x-ratelimit-limit-requests": "600", "x-ratelimit-remaining-requests": "12",
                  "x-ratelimit-reset-requests": "6m0s",  # some left: says nothing
                  "x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "1m30s"}
ANTHROPIC_HEADERS = {"Anthropic-Ratelimit-Requests-Remaining": "0",
                     "anthropic-ratelimit-requests-reset": datetime.fromtimestamp(WALL + 20, timezone.utc)
                     .isoformat().replace("+00:00", "Z"),
                     "anthropic-ratelimit-output-tokens-remaining": "1000",
                     "anthropic-ratelimit-output-tokens-reset": "2025-01-01T00:00:00Z"}
#: Each provider reads its own vendor's headers only; Gemini sends none.
EXPECTED_RESETS = {"openai": [90.0], "anthropic": [20.0], "gemini": []}


@pytest.mark.parametrize("outcome", ["ok", "error"])
@pytest.mark.parametrize("streaming", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("kind", KINDS)
@trio_test
async def test_a_vendors_rate_limit_headers_reach_the_feedback(kind, streaming, outcome, fake_provider):  # noqa: F811
    # Both vendors' headers on every reply (a 5xx too): each provider picks out its own.
    fake_provider.configure("m1", headers={**OPENAI_HEADERS, **ANTHROPIC_HEADERS},
                            error_rate=1.0 if outcome == "error" else 0.0)
    instance = provider(fake_provider, kind)
    instance.wall_clock = lambda: WALL
    feedback = Feedback()
    instance.bind_rate_limits(feedback)
    request = stream(THAI_REQUEST) if streaming else THAI_REQUEST
    if outcome == "ok":
        await complete(instance, request)
    else:
        assert (await failure(instance, request)).kind is ErrorKind.TEMPORARY_ERROR
    assert feedback.resets == pytest.approx(EXPECTED_RESETS[kind])


@pytest.mark.parametrize("kind,headers", [
    ("openai", {"x-ratelimit-remaining-requests": "0"}),
    ("openai", {"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": "later"}),
    ("anthropic", {"anthropic-ratelimit-input-tokens-remaining": "0"}),
])
@trio_test
async def test_nothing_left_without_a_readable_reset_is_reported_as_unknown(kind, headers, fake_provider):  # noqa: F811
    fake_provider.configure("m1", headers=headers)
    instance = provider(fake_provider, kind)
    feedback = Feedback()
    instance.bind_rate_limits(feedback)
    await complete(instance, THAI_REQUEST)
    assert feedback.resets == [None]  # the limiter then waits one slice


@pytest.mark.parametrize("kind,headers,cooling", [
    ("openai", OPENAI_HEADERS, 90.0),
    ("anthropic", {"anthropic-ratelimit-tokens-remaining": "0", "anthropic-ratelimit-tokens-reset": "RESET"}, 20.0),
    ("openai", {"x-ratelimit-remaining-tokens": "5", "x-ratelimit-reset-tokens": "20ms"}, None),
])
@trio_test
async def test_headers_saying_nothing_left_cool_the_models_limiter_down(kind, headers, cooling, fake_provider):  # noqa: F811
    reset = datetime.fromtimestamp(time.time() + 20, timezone.utc).isoformat()
    fake_provider.configure("m1", headers={k: v.replace("RESET", reset) for k, v in headers.items()})
    limiter = RateLimiter(rpm=6000, tpm=None)
    instance = provider(fake_provider, kind)
    instance.bind_rate_limits(limiter)
    await complete(instance, THAI_REQUEST)
    if cooling is None:
        assert limiter.cooling_until == -math.inf
    else:
        assert limiter.cooling_until - trio.current_time() == pytest.approx(cooling, abs=1.5)
        assert limiter.wait_time() > cooling - 1.5


@trio_test
async def test_the_fakes_computed_headers_reach_the_feedback(fake_provider):  # noqa: F811
    # Without fixtures the fake reports its own buckets; a drained one says 0 left.
    fake_provider.configure("m1", rpm=60)  # a bucket of one request a second
    instance = provider(fake_provider, "openai")
    feedback = Feedback()
    instance.bind_rate_limits(feedback)
    await complete(instance, THAI_REQUEST)
    assert len(feedback.resets) == 1 and 0 < feedback.resets[0] <= 1.1


def test_a_provider_without_feedback_reads_no_headers(fake_provider):  # noqa: F811
    fake_provider.configure("m1", headers=OPENAI_HEADERS)
    trio.run(complete, provider(fake_provider, "openai"), THAI_REQUEST)  # nothing bound: nothing to tell


@pytest.mark.parametrize("value,expected", [
    ("1s", 1.0), ("6m0s", 360.0), ("20ms", 0.02), ("2m3.5s", 123.5), ("1h2m3.5s", MAX_COOL_DOWN_S), ("2.5", 2.5), ("7", 7.0),
    ("", None), (None, None), ("later", None), ("1x", None),
    ("inf", None), ("nan", None), ("-inf", None), ("1m1m", None), ("1s1m", None), ("2ms2ms", None),
    ("1e300", MAX_COOL_DOWN_S), ("99999h", MAX_COOL_DOWN_S),
])
def test_parse_reset(value, expected):
    assert parse_reset(value) == (pytest.approx(expected) if expected is not None else None)


def test_parse_reset_timestamps():
    ahead = datetime.fromtimestamp(WALL, timezone.utc) + timedelta(seconds=12)
    assert parse_reset(ahead.isoformat(), lambda: WALL) == pytest.approx(12)
    assert parse_reset(ahead.isoformat(), lambda: WALL + 60) == 0.0
    assert parse_reset("2025-01-01T00:00:00", lambda: WALL) is None  # no zone: ambiguous


async def burst_of_requests(fake, limiter: RateLimiter | None, count: int) -> None:
    instance = provider(fake, "openai")
    if limiter is not None:
        instance.bind_rate_limits(limiter)

    async def one():
        if limiter is not None:
            await limiter.acquire(estimate_tpm_cost(THAI_REQUEST))
        try:
            await instance.complete(THAI_REQUEST)
        except ProviderError as exc:
            assert exc.kind is ErrorKind.API_RATE_LIMIT
            if limiter is not None:
                limiter.cool_down(exc.retry_after or 1)

    async with trio.open_nursery() as nursery:
        for _ in range(count):
            nursery.start_soon(one)
    await instance.aclose()


@trio_test
async def test_the_limiter_keeps_a_model_under_its_limits(fake_provider):  # noqa: F811
    fake_provider.configure("m1", rpm=1200)  # 20 a second, quantised to one second
    await burst_of_requests(fake_provider, None, 40)
    unlimited = fake_provider.stats("m1").rate_limited
    fake_provider.reset_stats()
    fake_provider.configure("m1", rpm=1200)  # a fresh bucket
    await burst_of_requests(fake_provider, RateLimiter(rpm=1200, tpm=None, burst_seconds=0.5), 40)
    assert unlimited >= 10  # without the limiter the server refuses many
    assert fake_provider.stats("m1").rate_limited == 0
    assert fake_provider.stats("m1").ok == 40


# -- configuration ------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_unknown_options_are_config_errors(kind, fake_provider):  # noqa: F811
    with pytest.raises(ConfigError, match="did you mean 'read_timeout'"):
        provider(fake_provider, kind, options={"read_timout": 5})
    with pytest.raises(ConfigError, match="connect_timeout"):
        provider(fake_provider, kind, options={"connect_timeout": 0})
    with pytest.raises(ConfigError, match="base_url"):
        provider(fake_provider, kind, base_url="ftp://example.com")


def test_provider_specific_options_are_checked(fake_provider):  # noqa: F811
    with pytest.raises(ConfigError, match="max_tokens_param"):
        provider(fake_provider, "openai", options={"max_tokens_param": "tokens"})
    with pytest.raises(ConfigError, match="thinking_budget"):
        provider(fake_provider, "gemini", options={"thinking_budget": "lots"})
    with pytest.raises(ConfigError, match="anthropic_version"):
        provider(fake_provider, "anthropic", options={"anthropic_version": 2023})
    with pytest.raises(ConfigError, match="unknown option 'thinking_budget'"):
        provider(fake_provider, "openai", options={"thinking_budget": 0})


@pytest.mark.parametrize("kind,base_url,expected", [
    ("openai", None, "https://api.openai.com/v1/chat/completions"),
    ("openai", "http://gpu:8000/v1/", "http://gpu:8000/v1/chat/completions"),
    ("anthropic", None, "https://api.anthropic.com/v1/messages"),
    ("anthropic", "https://proxy.example/v1", "https://proxy.example/v1/messages"),
    ("gemini", None, "https://generativelanguage.googleapis.com/v1beta/models/m1:generateContent"),
])
def test_default_urls(kind, base_url, expected):
    instance = CLASSES[kind](ModelSpec(name="x", provider=kind, model="m1", base_url=base_url))
    assert instance.url(THAI_REQUEST) == expected


def test_each_module_registers_its_provider():
    registered = {}
    for module in (openai, anthropic, gemini):
        module.loom_register_providers(lambda name, factory: registered.__setitem__(name, factory))
    assert registered == CLASSES


def _expand(pattern: str) -> set[str]:
    """``a-{b,c}-{d,e}`` -> the four names, as the docs write header families."""
    match = re.search(r"\{([^}]*)\}", pattern)
    if not match:
        return {pattern}
    return {name for choice in match.group(1).split(",")
            for name in _expand(pattern[:match.start()] + choice + pattern[match.end():])}


def test_docs_list_the_rate_limit_headers_each_provider_reads():
    text = (Path(__file__).parent.parent / "docs" / "providers.md").read_text(encoding="utf-8")
    for kind in KINDS:
        row = next(line for line in text.splitlines() if line.startswith(f"| `{kind}` | ") and "header" not in line
                   and ("ratelimit" in line or "none" in line))
        documented = set().union(*(_expand(name) for name in re.findall(r"`([a-z-]+(?:\{[^}]*\}[a-z-]*)*)`",
                                                                          row.split("|")[2])))
        declared = {name for pair in CLASSES[kind].rate_limit_headers for name in pair}
        assert documented == declared, kind


@pytest.mark.parametrize("kind", KINDS)
def test_repr_masks_a_password_in_the_base_url(kind, fake_provider):  # noqa: F811
    instance = provider(fake_provider, kind, base_url="http://user:s3cret@127.0.0.1:9/v1")
    assert "s3cret" not in repr(instance) and "127.0.0.1:9" in repr(instance), repr(instance)


@pytest.mark.parametrize("headers,expected", [
    ({"retry-after": "inf"}, None), ({"retry-after": "nan"}, None), ({"retry-after-ms": "inf"}, None),
    ({"retry-after": "1e300"}, MAX_COOL_DOWN_S), ({"retry-after-ms": "1e300"}, MAX_COOL_DOWN_S),
    ({"retry-after": "Fri, 01 Jan 9999 00:00:00 GMT"}, MAX_COOL_DOWN_S),
])
def test_retry_after_is_finite_and_capped(headers, expected):
    assert retry_after(headers) == expected


@pytest.mark.parametrize("reset", ["1e300", "inf", "99999h"])
@trio_test
async def test_a_servers_huge_reset_cools_the_limiter_down_for_the_cap_at_most(reset, fake_provider):  # noqa: F811
    fake_provider.configure("m1", headers={"x-ratelimit-remaining-tokens": "0", "x-ratelimit-reset-tokens": reset})
    limiter = RateLimiter(rpm=6000, tpm=None)
    instance = provider(fake_provider, "openai")
    instance.bind_rate_limits(limiter)
    await complete(instance, THAI_REQUEST)
    assert 0 < limiter.cooling_until - trio.current_time() <= MAX_COOL_DOWN_S


def test_a_huge_gemini_retry_delay_is_capped():
    assert google_retry_delay('{"retryDelay": "99999999999s"}') == MAX_COOL_DOWN_S
    assert google_retry_delay('{"retryDelay": "23s"}') == 23.0
