"""Batch API lines are checked at validate time against the provider's request
schema (OpenAI's CreateChatCompletionRequest, shipped as package data) and
storyloom's own limits, whatever provider the job's models use."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from storyloom import ConfigError
from storyloom.document import value_at
from storyloom.api import validate_job

from openai_schema import SHIPPED, extract, render

OK_BODY = {"model": "gpt-4o-mini", "max_tokens": 100, "messages": [{"role": "user", "content": "Hello"}]}


def test_the_shipped_schema_is_the_published_one_extracted():
    from storyloom.plugins.support.chatbody import REQUEST_SCHEMA

    assert SHIPPED.read_text(encoding="utf-8") == render(extract())  # regenerate: python tests/openai_schema.py
    assert REQUEST_SCHEMA == extract()
    assert "nullable" not in SHIPPED.read_text(encoding="utf-8")  # OpenAPI's, not JSON Schema's


def validate(loom, body: dict, *, settings: str | None = None, input_model: str = "job") -> None:
    """Validate a file of OK_BODY then ``body``; by default with ``input_model:
    job`` (these tests are about the body, not which model answers it)."""
    loom.write("storyloom.yaml", settings or "default_models: [simulated]\n")
    ok = {"custom_id": "ok", "method": "POST", "url": "/v1/chat/completions", "body": OK_BODY}
    bad = {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions", "body": body}
    loom.write("requests.jsonl", json.dumps(ok) + "\n" + json.dumps(bad) + "\n")
    path = loom.write("job.yaml", f"job_id: j\njob_type: prompts\ninput: requests.jsonl\ninput_model: {input_model}\n")
    validate_job(path, options=loom.options())


@pytest.mark.parametrize("change,where,words", [
    ({"max_tokens": 0}, "body.max_tokens", "expected a number >= 1, got integer 0"),
    ({"max_tokens": -3}, "body.max_tokens", ">= 1"),
    ({"max_tokens": "100"}, "body.max_tokens", "expected integer or null, got string '100'"),
    ({"max_completion_tokens": 0}, "body.max_completion_tokens", ">= 1"),
    ({"n": 2}, "body.n", "one reply per request"),
    ({"temperature": 2.5}, "body.temperature", "expected number <= 2"),
    ({"temperature": -0.1}, "body.temperature", "expected number >= 0"),
    ({"temperature": "warm"}, "body.temperature", "expected number, got string 'warm'"),
    ({"top_p": 1.5}, "body.top_p", "<= 1"),
    ({"messages": [{"role": "narrator", "content": "x"}]}, "body.messages[0].role",
     "expected one of developer, system, user, assistant, tool, function, got string 'narrator'"),
    ({"messages": [{"role": "tool", "content": "x", "tool_call_id": "c"}]}, "body.messages[0].role",
     "tool calls are not supported"),
    ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]},
     "body.messages[0].content", "only text content"),
    ({"messages": {"role": "user", "content": "x"}}, "body.messages", "expected a list, got a mapping"),
    ({"temprature": 1}, "body.temprature", "unknown key 'temprature'; did you mean 'temperature'?"),
    ({"model": 4}, "body.model", "expected string, got integer 4"),
])
def test_a_body_the_provider_would_refuse_fails_validate_at_its_line_and_field(loom, change, where, words):
    with pytest.raises(ConfigError) as info:
        validate(loom, {**OK_BODY, **change})
    message = str(info.value)
    prefix = f"{loom.path / 'requests.jsonl'}:2:"
    assert message.startswith(prefix), message
    column = int(message[len(prefix):].split(":")[0])
    assert column > 1  # the field's own column in the line
    assert f": at {where}: " in message and words in message, message


def test_the_column_is_where_the_field_is_written(loom):
    with pytest.raises(ConfigError) as info:
        validate(loom, {**OK_BODY, "temperature": 9})
    line = (loom.path / "requests.jsonl").read_text().splitlines()[1]
    assert info.value.location.column == line.index('9}') + 1  # the value, 1-based


def test_model_in_a_body_need_not_be_given_and_input_model_job_ignores_it(loom):
    validate(loom, {"messages": [{"role": "user", "content": "x"}]})  # no model: fine
    validate(loom, {**OK_BODY, "model": "no-such-model", "temperature": 0.7, "seed": 3})
    # By default (input_model: match) a model no configured entry has is refused at its line.
    settings = "models:\n  mini: {provider: simulated, model: %s}\ndefault_models: [mini]\n" % OK_BODY["model"]
    validate(loom, {"messages": [{"role": "user", "content": "x"}]}, settings=settings, input_model="match")
    with pytest.raises(ConfigError, match=r"requests.jsonl:2:\d+: at body.model: model \"no-such-model\" is not"):
        validate(loom, {**OK_BODY, "model": "no-such-model"}, settings=settings, input_model="match")


def test_the_check_holds_for_models_of_other_providers(loom):
    settings = ("models:\n  claude: {provider: anthropic, model: claude-x, api_key_env: LOOM_TEST_SET_KEY}\n"
                "default_models: [claude]\n")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("LOOM_TEST_SET_KEY", "k")
        with pytest.raises(ConfigError, match=r"requests.jsonl:2:\d+: at body.n: "):
            validate(loom, {**OK_BODY, "n": 3}, settings=settings)


# The quick check (fields and messages apart, verdicts remembered) must say
# what the full check says, for every body.
_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-3, 300), st.floats(-1, 3, allow_nan=False),
                    st.sampled_from(["", "x", "auto", "text"]), st.lists(st.integers(0, 3), max_size=2),
                    st.fixed_dictionaries({"type": st.sampled_from(["text", "json_object", "nope"])}))
_MESSAGES = st.lists(st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "developer", "user", "assistant", "tool", "who"]),
                           "content": st.one_of(st.text(max_size=3), st.integers(), st.lists(
                               st.fixed_dictionaries({"type": st.sampled_from(["text", "image_url"]),
                                                      "text": st.text(max_size=2)}), max_size=2))},
                          optional={"name": st.text(max_size=2), "tool_call_id": st.text(max_size=2)}),
    st.integers(), st.text(max_size=2)), max_size=3)
_BODIES = st.fixed_dictionaries({}, optional={
    "messages": st.one_of(_MESSAGES, st.text(max_size=2)),
    **{name: _VALUES for name in ("model", "max_tokens", "max_completion_tokens", "n", "temperature", "top_p",
                                  "stream", "seed", "stop", "response_format", "logprobs", "temprature")}})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=_BODIES)
def test_the_quick_check_agrees_with_the_full_one(body):
    from storyloom.plugins.support import chatbody

    full = not any(any(True for _ in validator.iter_errors(value_at({"body": body}, prefix)))
                   for prefix, validator in [(("body",), chatbody._validators().request), (("body",), chatbody._validators().limits),
                                             *chatbody._message_parts(body)])
    assert chatbody._valid(body) == full
    text = json.dumps({"body": body})
    if full:
        chatbody.check_body({"body": body}, text, "f.jsonl", 1)
    else:
        with pytest.raises(ConfigError, match=r"^f\.jsonl:1:\d+: "):
            chatbody.check_body({"body": body}, text, "f.jsonl", 1)
