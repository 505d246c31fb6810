"""The ``prompts`` job type: inline chat requests and OpenAI Batch API files,
run against the fake provider (real HTTP), and results.jsonl."""

from __future__ import annotations

import json
import re

import pytest

from storyloom import ConfigError, ErrorKind, ProviderError, hookimpl
from storyloom.job import Item, Job, JobConfig
from storyloom.loader import KnownNames, load_job
from storyloom.plugins.prompts import UNCAPPED_WORST_TOKENS, PromptsJobType
from storyloom.settings import Settings

KNOWN = KnownNames(job_types={"prompts": PromptsJobType()})

# As OpenAI's Batch API documentation writes them, plus the fields people add
# (the model is the provider model id of the settings' m1).
BATCH_INPUT = [
    {"custom_id": "request-1", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "m1", "max_tokens": 100,
              "messages": [{"role": "system", "content": "You are a helpful assistant."},
                           {"role": "user", "content": "Hello world!"}]}},
    {"custom_id": "request-2", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "m1", "max_completion_tokens": 60, "temperature": 0.2, "top_p": 0.9,
              "messages": [{"role": "developer", "content": "Answer in Thai."},
                           {"role": "user", "content": [{"type": "text", "text": "ฝนตกไหม"},
                                                        {"type": "text", "text": "ที่เชียงใหม่"}]}]}},
    {"custom_id": "request-3", "method": "POST", "url": "/v1/chat/completions",
     "body": {"model": "m1", "messages": [{"role": "user", "content": "Three"},
                                                   {"role": "assistant", "content": "Four"},
                                                   {"role": "user", "content": "Five?"}]}},
]


def settings(fake, extra: str = "") -> str:
    return (f"models:\n  m1: {{provider: openai, model: m1, base_url: '{fake.base_url('openai')}', "
            f"api_key_env: {fake.key_env('openai')}}}\n"
            "default_models: [m1]\nprogress: []\nreports: []\n"
            "retry_config: {max_retries: 1, retry_delay: {initial: 0.01s, max: 0.02s}}\n" + extra)


def write_jsonl(loom, lines: list, name: str = "requests.jsonl") -> None:
    loom.write(name, "".join((line if isinstance(line, str) else json.dumps(line, ensure_ascii=False)) + "\n"
                             for line in lines))


def results(loom, job_id: str) -> list[dict]:
    text = (loom.out_dir / job_id / "results.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines()]


# -- Batch API files, end to end --------------------------------------------------


def test_a_batch_api_input_file_runs_unchanged(loom, fake_provider):
    fake_provider.configure("m1", text="Hi there.", output_tokens=7)
    loom.write("storyloom.yaml", settings(fake_provider))
    write_jsonl(loom, BATCH_INPUT)
    result = loom.run("job_id: batch1\njob_type: prompts\ninput: requests.jsonl\n")
    result.assert_outcomes(completed=3)

    sent = {r.body["messages"][-1]["content"]: r.body for r in fake_provider.requests}
    assert sent["Hello world!"]["messages"] == BATCH_INPUT[0]["body"]["messages"]
    # Each line's cap as written (max_tokens stays max_tokens), and none where it gave none.
    assert sent["Hello world!"]["max_tokens"] == 100 and "max_completion_tokens" not in sent["Hello world!"]
    second = sent["ฝนตกไหม\nที่เชียงใหม่"]  # text parts joined
    assert second["messages"][0] == {"role": "developer", "content": "Answer in Thai."}
    assert second["max_completion_tokens"] == 60 and second["temperature"] == 0.2
    assert "max_completion_tokens" not in sent["Five?"] and "max_tokens" not in sent["Five?"]
    assert [m["role"] for m in sent["Five?"]["messages"]] == ["user", "assistant", "user"]
    assert all(body["model"] == "m1" for body in sent.values())  # the line's model, configured as m1

    lines = results(loom, "batch1")
    assert [line["custom_id"] for line in lines] == ["request-1", "request-2", "request-3"]
    stats = fake_provider.stats("m1")
    for line in lines:
        assert line["error"] is None and line["id"].startswith("batch_req_")
        response = line["response"]
        assert response["status_code"] == 200
        body = response["body"]
        assert body["object"] == "chat.completion" and body["model"] == "m1"
        assert body["choices"][0]["message"]["content"] == "Hi there."
        assert body["choices"][0]["finish_reason"] == "stop"
        usage = body["usage"]
        assert usage["completion_tokens"] == 7
        assert usage["total_tokens"] == usage["prompt_tokens"] + 7
    assert sum(line["response"]["body"]["usage"]["prompt_tokens"] for line in lines) == stats.prompt_tokens
    # The server's x-request-id, not an invented one.
    assert sorted(line["response"]["request_id"] for line in lines) == sorted(
        r.request_id for r in fake_provider.requests)
    # The outputs plugin still writes each reply on its own.
    assert (loom.out_dir / "batch1" / "request-2.txt").read_text(encoding="utf-8") == "Hi there."


def test_failed_requests_carry_the_error_kind(loom, fake_provider):
    fake_provider.configure("m1", auth_fail=True)
    loom.write("storyloom.yaml", settings(fake_provider))
    write_jsonl(loom, BATCH_INPUT[:1])
    result = loom.run("job_id: batch2\njob_type: prompts\ninput: requests.jsonl\n")
    result.assert_outcomes(failed=1)
    assert result.summary.exit_code == 1
    (failed,) = results(loom, "batch2")
    assert failed["custom_id"] == "request-1" and failed["response"] is None
    # The model was taken out of the batch (a bad key): the item ends with no model left, no reply.
    assert failed["error"]["code"] == ErrorKind.AUTH_ERROR.lower()


def test_lines_the_request_would_fail_on_are_refused_before_anything_is_stored(loom, fake_provider):
    loom.write("storyloom.yaml", settings(fake_provider))
    for body, where in (({"messages": [{"role": "tool", "content": "42", "tool_call_id": "x"}]},
                         "at body.messages[0].role: storyloom sends"),
                        ({"n": 2, "messages": [{"role": "user", "content": "Twice"}]}, "at body.n:")):
        write_jsonl(loom, [BATCH_INPUT[0], {"custom_id": "bad", "method": "POST", "url": "/v1/chat/completions",
                                            "body": body}])
        with pytest.raises(ConfigError, match=r"requests.jsonl:2:\d+: " + re.escape(where)):
            loom.run("job_id: batch2\njob_type: prompts\ninput: requests.jsonl\n")
    assert fake_provider.requests == [] and loom.stored_jobs() == []


class PauseAtStart:
    """Pauses the batch as it starts, as a review plugin might."""

    @hookimpl
    def loom_batch_started(self, job, plan, control):
        control.pause("held for review")


def test_results_are_rewritten_when_a_paused_job_is_resumed(loom, fake_provider):
    loom.write("storyloom.yaml", settings(fake_provider))
    write_jsonl(loom, BATCH_INPUT)
    paused = loom.run("job_id: batch3\njob_type: prompts\ninput: requests.jsonl\nconfig: {max_parallel: 1}\n",
                      plugins=(PauseAtStart(),))
    assert paused.summary.status == "paused" and paused.summary.reason == "held for review"
    assert results(loom, "batch3") == []  # nothing finished yet
    loom.resume("batch3").assert_outcomes(completed=3)
    assert [line["custom_id"] for line in results(loom, "batch3")] == ["request-1", "request-2", "request-3"]


def test_other_job_types_write_no_results_file(loom):
    result = loom.run("job_id: qc\njob_type: qc_processing\nitems:\n  - {item_id: a}\n")
    result.assert_outcomes(completed=1)
    assert not (loom.out_dir / "qc" / "results.jsonl").exists()


# -- inline items ---------------------------------------------------------------


def test_inline_prompts_are_templates_and_messages_are_sent_as_written(loom, fake_provider):
    loom.write("storyloom.yaml", settings(fake_provider))
    result = loom.run("""
        job_id: inline
        job_type: prompts
        vars: {system: "You write blurbs for {{ studio }}.", studio: Loom Books, tone: warm}
        config: {max_tokens: 80}
        items:
          - {item_id: b1, prompt: "A {{ tone }} blurb for {{ vars.title }}.", vars: {title: Rain, tone: dry}}
          - item_id: b2
            messages: [{role: user, content: "Say {{ hello }} as written."}]
    """)
    result.assert_outcomes(completed=2)
    sent = {r.body["messages"][-1]["content"]: r.body for r in fake_provider.requests}
    first = sent["A dry blurb for Rain."]  # the item's vars win over the job's
    assert first["messages"][0] == {"role": "system", "content": "You write blurbs for Loom Books."}
    assert first["max_completion_tokens"] == 80
    assert sent["Say {{ hello }} as written."]["messages"] == [
        {"role": "user", "content": "Say {{ hello }} as written."}]
    assert [line["custom_id"] for line in results(loom, "inline")] == ["b1", "b2"]


def test_a_prompt_naming_a_missing_var_is_refused_before_anything_is_stored(loom, fake_provider):
    loom.write("storyloom.yaml", settings(fake_provider))
    with pytest.raises(ConfigError, match=r"job.yaml:4:26: at items\[0\]\.prompt: the template uses 'nobody'"):
        loom.run("job_id: missing\njob_type: prompts\nitems:\n  - {item_id: a, prompt: 'Hi {{ nobody }}'}\n")
    assert loom.stored_jobs() == []
    assert fake_provider.requests == []


@pytest.mark.parametrize("item,message", [
    ("{item_id: a, vars: {title: no prompt}}", "needs a prompt or messages"),
    ("{item_id: a, prompt: x, messages: [{role: user, content: y}]}", "gives prompt and messages"),
    ("{item_id: a, messages: [{role: robot, content: y}]}", "messages[0].role"),
])
def test_inline_items_are_checked_before_anything_is_stored(loom, item, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        loom.run(f"job_id: bad\njob_type: prompts\nitems:\n  - {item}\n")
    assert loom.stored_jobs() == []


def test_body_fields_become_the_request():
    job = Job(job_id="j", job_type="prompts", items=(), config=JobConfig(max_tokens=500))
    body = {"model": "gpt-4o", "stream": True, "max_tokens": 64, "temperature": 0, "seed": 7,
            "response_format": {"type": "json_object"}, "messages": [{"role": "user", "content": "x"}]}
    request = PromptsJobType().build_request(Item("a", fields={"body": body}), job)
    assert request.max_tokens == 64 and request.temperature == 0.0 and not request.stream
    # The cap rides along as written; the provider sends no cap of its own.
    assert request.metadata["extra_body"] == {"seed": 7, "max_tokens": 64, "response_format": {"type": "json_object"}}
    assert request.metadata["send_max_tokens"] is False
    no_limit = PromptsJobType().build_request(Item("b", fields={"body": {"messages": body["messages"]}}), job)
    # No cap sent; the job's max_tokens is the worst case counted, else UNCAPPED_WORST_TOKENS.
    assert no_limit.max_tokens == 500 and no_limit.metadata == {"send_max_tokens": False}
    bare = PromptsJobType().build_request(Item("b", fields={"body": {"messages": body["messages"]}}),
                                          Job(job_id="j", job_type="prompts", items=()))
    assert bare.max_tokens == UNCAPPED_WORST_TOKENS
    with pytest.raises(ProviderError, match="body.max_tokens: expected a positive integer"):
        PromptsJobType().build_request(Item("d", fields={"body": {**body, "max_tokens": "64"}}), job)
    with pytest.raises(ProviderError, match="only text parts"):
        PromptsJobType().build_request(Item("c", fields={"body": {"messages": [
            {"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}}), job)


# -- loading input: files ------------------------------------------------------------


def load(loom, job_text: str, lines: list | None = None):
    if lines is not None:
        write_jsonl(loom, lines)
    return load_job(loom.write("job.yaml", job_text), Settings(), KNOWN)


def test_input_lines_become_items(loom):
    job = load(loom, "job_id: j\njob_type: prompts\nlanguage: th\npriority: high\ninput: requests.jsonl\n"
                     "input_model: job\n",
               BATCH_INPUT[:2] + [""])  # a blank last line is fine
    assert [item.item_id for item in job.items] == ["request-1", "request-2"]
    assert job.items[1].fields == {"language": "th", "custom_id": "request-2", "body": BATCH_INPUT[1]["body"]}
    assert job.items[1].model is None  # input_model: job: the job's models choose
    assert {item.priority.name for item in job.items} == {"HIGH"}


def test_input_is_relative_to_the_job_file(loom):
    write_jsonl(loom, BATCH_INPUT[:1], "batches/nightly.jsonl")
    path = loom.write("jobs/job.yaml", "job_id: j\njob_type: prompts\ninput: ../batches/nightly.jsonl\n"
                                       "input_model: job\n")
    with pytest.raises(ConfigError, match="outside the job file's folder"):  # unless the settings allow it
        load_job(path, Settings(), KNOWN)
    allowed = Settings(input_roots=(str(loom.path / "batches"),))
    assert [item.item_id for item in load_job(path, allowed, KNOWN).items] == ["request-1"]


def line(custom_id="r1", **changes) -> dict:
    entry = {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions",
             "body": {"messages": [{"role": "user", "content": "x"}]}}
    entry.update(changes)
    return entry


@pytest.mark.parametrize("lines,where,message", [
    ([line("r1"), line("")], 2, "at custom_id: expected a non-empty string, got an empty string"),
    ([line(5)], 1, "at custom_id: expected a non-empty string, got"),
    ([line("r1"), line("r2"), line("r1")], 3, 'duplicate custom_id "r1" (first on line 1)'),
    ([line("a b"), line("a b")], 2, 'duplicate custom_id "a b" (first on line 1)'),
    ([line("r1"), '{"custom_id": "r2", '], 2, "invalid JSON"),
    ([line(url="/v1/embeddings")], 1, "at url: expected /v1/chat/completions"),
    ([line(method="GET")], 1, "at method: expected POST"),
    ([line(body={"prompt": "x"})], 1, "at body.prompt: unknown key 'prompt'"),
    ([line(body={"max_tokens": 5})], 1, "at body: missing required key 'messages'"),
    ([line(body={"messages": []})], 1, "at body.messages: expected a non-empty list, got an empty list"),
    ([{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions"}], 1, "missing required key 'body'"),
    ([line(customid="x")], 1, "unknown key 'customid'"),
    (["[1, 2]"], 1, "expected a request object"),
])
def test_a_bad_line_names_the_file_and_line(loom, lines, where, message):
    with pytest.raises(ConfigError) as info:
        load(loom, "job_id: j\njob_type: prompts\ninput: requests.jsonl\n", lines)
    text = str(info.value)
    assert text.startswith(f"{loom.path / 'requests.jsonl'}:{where}:"), text
    assert message in text, text


GOOD_LINE = '{"custom_id": "r1", "method": "POST", "url": "/v1/chat/completions", "body": {%s"messages": []}}'


@pytest.mark.parametrize("text,column,message", [
    (GOOD_LINE % '"temperature": NaN, ', 94, "NaN is not valid JSON"),
    (GOOD_LINE % '"temperature": Infinity, ', 94, "Infinity is not valid JSON"),
    (GOOD_LINE % '"temperature": -Infinity, ', 94, "-Infinity is not valid JSON"),
    (GOOD_LINE % '"x": "NaN", "temperature": NaN, ', 106, "NaN is not valid JSON"),
    ('{"custom_id": "b", "custom_id": "c", "method": "POST"}', 20, "duplicate key 'custom_id'"),
    ('{"custom_id": "\\u0062", "custom_id": "c"}', 25, "duplicate key 'custom_id'"),
    (GOOD_LINE % '"max_tokens": 5, "stop": {"a": 1}, "max_tokens": 6, ', 114, "duplicate key 'max_tokens'"),
    ('{"a": {"k": 1}, "b": {"k": 1, "k": 2}}', 31, "duplicate key 'k'"),
])
def test_an_input_line_must_be_strict_json(loom, text, column, message):
    with pytest.raises(ConfigError) as info:
        load(loom, "job_id: j\njob_type: prompts\ninput: requests.jsonl\n", [line("r0"), text])
    error = str(info.value)
    assert error.startswith(f"{loom.path / 'requests.jsonl'}:2:{column}: "), error
    assert message in error, error


@pytest.mark.parametrize("job_text,message", [
    ("job_id: j\njob_type: prompts\n", "give either items"),
    ("job_id: j\njob_type: prompts\ninput: requests.jsonl\nitems:\n  - {item_id: a, prompt: x}\n",
     "give either items"),
    ("job_id: j\njob_type: prompts\ninput: nowhere.jsonl\n", "nowhere.jsonl: file not found"),
    ("job_id: j\njob_type: prompts\ninput: requests.jsonl\n", "holds no requests"),
])
def test_input_or_items_but_not_both(loom, job_text, message):
    loom.write("requests.jsonl", "\n")
    with pytest.raises(ConfigError, match=message):
        load(loom, job_text)
