"""Structured output: each provider's native request fields, its reply shape
parsed into ``Response.data`` and checked against the schema, over real HTTP
to the fake provider server; INVALID_OUTPUT and its bounded retries."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import trio
from fakeprovider import FakeProviderServer, fake_provider  # noqa: F401
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT202012

from storyloom import ErrorKind, ProviderError
from storyloom.config import Options, make_config
from storyloom.plugins.providers import anthropic, gemini, openai
from storyloom.plugins.retry import ExponentialBackoff
from storyloom.provider import Request, Response
from storyloom.settings import RetryConfig

KINDS = ("openai", "anthropic", "gemini")
CLASSES = {"openai": openai.OpenAIProvider, "anthropic": anthropic.AnthropicProvider,
           "gemini": gemini.GeminiProvider}
SPEC_FILE = Path(__file__).parent / "data" / "openai-chat-completions.openapi.json"

SHEET = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "traits"],
    "properties": {
        "name": {"type": "string", "minLength": 1},
        "traits": {"type": "array", "minItems": 2, "items": {"type": "string"}},
    },
}
GOOD = {"name": "มะลิ", "traits": ["กล้าหาญ", "ดื้อ"]}
REQUEST = Request(messages=({"role": "system", "content": "You write character sheets."},
                            {"role": "user", "content": "A sheet for the lead."}),
                  max_tokens=300, response_schema=SHEET, schema_name="character_sheet", language="th")


def streamed(request: Request) -> Request:
    return Request(messages=request.messages, max_tokens=request.max_tokens, stream=True,
                   response_schema=request.response_schema, schema_name=request.schema_name)


async def ask(fake: FakeProviderServer, kind: str, request: Request) -> Response:
    instance = CLASSES[kind](fake.model_spec(kind, "m1"))
    try:
        return await instance.complete(request)
    finally:
        await instance.aclose()


def run(fake: FakeProviderServer, kind: str, request: Request) -> Response:
    return trio.run(ask, fake, kind, request)


def refused(fake: FakeProviderServer, kind: str, request: Request) -> ProviderError:
    with pytest.raises(ProviderError) as info:
        run(fake, kind, request)
    return info.value


# -- the request bodies -------------------------------------------------------------


def test_openai_sends_response_format_json_schema_strict(fake_provider):  # noqa: F811
    fake_provider.configure("m1", data=GOOD)
    run(fake_provider, "openai", REQUEST)
    (sent,) = fake_provider.requests
    assert sent.body["response_format"] == {"type": "json_schema", "json_schema": {
        "name": "character_sheet", "schema": SHEET, "strict": True}}


def test_the_openai_structured_body_follows_the_published_schema(fake_provider):  # noqa: F811
    fake_provider.configure("m1", data=GOOD)
    run(fake_provider, "openai", REQUEST)
    document = json.loads(SPEC_FILE.read_text(encoding="utf-8"))
    registry = Registry().with_resource("urn:openai-chat", Resource.from_contents(
        document, default_specification=DRAFT202012))
    validator = jsonschema.Draft202012Validator(
        {"$ref": "urn:openai-chat#/components/schemas/CreateChatCompletionRequest"}, registry=registry)
    (sent,) = fake_provider.requests
    assert [e.message for e in validator.iter_errors(sent.body)] == []
    broken = {**sent.body, "response_format": {"type": "json_schema", "json_schema": {"schema": SHEET}}}
    assert not validator.is_valid(broken)  # the check can fail: name is required


def test_anthropic_forces_one_tool_with_the_schema(fake_provider):  # noqa: F811
    fake_provider.configure("m1", data=GOOD)
    run(fake_provider, "anthropic", REQUEST)
    (sent,) = fake_provider.requests
    assert sent.body["tools"] == [{"name": "character_sheet", "description": "Record the answer.",
                                   "input_schema": SHEET}]
    assert sent.body["tool_choice"] == {"type": "tool", "name": "character_sheet"}
    assert sent.body["system"] == "You write character sheets."


def test_gemini_asks_for_json_with_the_schema(fake_provider):  # noqa: F811
    fake_provider.configure("m1", data=GOOD)
    run(fake_provider, "gemini", REQUEST)
    (sent,) = fake_provider.requests
    assert sent.body["generationConfig"] == {"maxOutputTokens": 300, "responseMimeType": "application/json",
                                             "responseJsonSchema": SHEET}


@pytest.mark.parametrize("kind", KINDS)
def test_a_plain_request_sends_no_structured_fields(kind, fake_provider):  # noqa: F811
    response = run(fake_provider, kind, Request(messages=({"role": "user", "content": "Hi"},)))
    (sent,) = fake_provider.requests
    text = json.dumps(sent.body)
    for field in ("response_format", "tools", "tool_choice", "responseMimeType", "responseJsonSchema"):
        assert field not in text
    assert response.data is None and response.text


# -- the replies ------------------------------------------------------------------


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_valid_reply_is_parsed_into_data(kind, streaming, fake_provider):  # noqa: F811
    fake_provider.configure("m1", data=GOOD, output_tokens=30)
    response = run(fake_provider, kind, streamed(REQUEST) if streaming else REQUEST)
    assert response.data == GOOD
    assert json.loads(response.text) == GOOD  # the text is the JSON, for the store and the outputs
    assert response.finish_reason == "stop"
    assert response.output_tokens == 30


@pytest.mark.parametrize("streaming", [False, True], ids=["json", "sse"])
@pytest.mark.parametrize("kind", KINDS)
def test_a_reply_failing_the_schema_is_invalid_output(kind, streaming, fake_provider):  # noqa: F811
    fake_provider.configure("m1", data={"name": "Mali", "traits": ["brave"]}, output_tokens=25)
    error = refused(fake_provider, kind, streamed(REQUEST) if streaming else REQUEST)
    assert error.kind is ErrorKind.INVALID_OUTPUT
    assert error.message.startswith(f"{kind}: the reply fails the schema 'character_sheet' at traits:")
    assert error.output_tokens == 25  # the reply still cost its tokens


@pytest.mark.parametrize("kind", ["openai", "gemini"])
def test_a_reply_that_is_not_json_is_invalid_output(kind, fake_provider):  # noqa: F811
    fake_provider.configure("m1", text="Here is the sheet: {name: Mali")
    error = refused(fake_provider, kind, REQUEST)
    assert error.kind is ErrorKind.INVALID_OUTPUT
    assert "the reply is not JSON" in error.message
    assert "'Here is the sheet: {name: Mali'" in error.message


def test_an_anthropic_reply_without_the_tool_is_invalid_output(fake_provider):  # noqa: F811
    fake_provider.configure("m1", text="I would rather chat.", ignore_tools=True)
    error = refused(fake_provider, "anthropic", REQUEST)
    assert error.kind is ErrorKind.INVALID_OUTPUT and "not JSON" in error.message


def test_an_openai_refusal_is_not_retried_as_invalid_output(fake_provider):  # noqa: F811
    # The fake has no refusal switch; a tiny server of our own sends one.
    import http.server
    import threading

    reply = {"id": "x", "object": "chat.completion", "model": "m1", "choices": [{
        "index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": None,
                                                         "refusal": "I can't help with that."}}],
             "usage": {"prompt_tokens": 5, "completion_tokens": 3}}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            self.rfile.read(int(self.headers["content-length"]))
            data = json.dumps(reply).encode()
            self.send_response(200)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        spec = fake_provider.model_spec("openai", "m1", base_url=f"http://127.0.0.1:{server.server_address[1]}/v1")

        async def go():
            instance = openai.OpenAIProvider(spec)
            try:
                return await instance.complete(REQUEST)
            finally:
                await instance.aclose()

        with pytest.raises(ProviderError) as info:
            trio.run(go)
    finally:
        server.shutdown()
        server.server_close()
    assert info.value.kind is ErrorKind.INVALID_INPUT
    assert "refused: I can't help with that." in info.value.message


# -- retries --------------------------------------------------------------------------


def invalid() -> ProviderError:
    return ProviderError(ErrorKind.INVALID_OUTPUT, "the reply is not JSON")


def test_invalid_output_is_retried_invalid_output_retries_times():
    policy = ExponentialBackoff(RetryConfig())  # max_retries 3, invalid_output_retries 2
    assert [policy.decide(invalid(), n, 3).retry for n in (1, 2, 3)] == [True, True, False]
    assert "invalid_output_retries 2" in policy.decide(invalid(), 3, 3).reason
    # another kind keeps the whole max_retries
    timeout = ProviderError(ErrorKind.TIMEOUT, "slow")
    assert [policy.decide(timeout, n, 3).retry for n in (1, 2, 3, 4)] == [True, True, True, False]


def test_invalid_output_retries_never_pass_max_retries():
    policy = ExponentialBackoff(RetryConfig(invalid_output_retries=5))
    assert [policy.decide(invalid(), n, 1).retry for n in (1, 2)] == [True, False]
    assert not ExponentialBackoff(RetryConfig(invalid_output_retries=0)).decide(invalid(), 1, 3).retry


def test_invalid_output_retries_is_read_from_the_settings(tmp_path):
    (tmp_path / "storyloom.yaml").write_text("retry_config:\n  invalid_output_retries: 4\n")
    with make_config(Options(autoload=False), start_dir=tmp_path) as config:
        assert config.settings.retry_config.invalid_output_retries == 4
        assert ErrorKind.INVALID_OUTPUT in config.settings.retry_config.retryable_errors
    (tmp_path / "storyloom.yaml").write_text("retry_config:\n  invalid_output_retries: -1\n")
    with pytest.raises(Exception, match=r"storyloom.yaml:2:27: at retry_config.invalid_output_retries"):
        make_config(Options(autoload=False), start_dir=tmp_path)
